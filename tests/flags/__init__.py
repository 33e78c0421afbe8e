"""Tests of the flags package."""

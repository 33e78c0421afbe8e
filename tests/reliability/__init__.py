"""Fault, load and soak tests: real processes, every message accounted for (issue 15)."""

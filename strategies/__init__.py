"""Strategies: turn a rollout's intent into route plans, policies and flags (DESIGN §2, §7)."""

from strategies._canary import CanaryStrategy

__all__ = ["CanaryStrategy"]

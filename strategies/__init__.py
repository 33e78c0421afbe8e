"""Strategies: turn a rollout's intent into route plans, policies and flags (DESIGN §2, §7)."""

from strategies._canary import CanaryStrategy
from strategies._flag_rollout import FlagRollout, FlagRolloutError, FlagRolloutResult

__all__ = ["CanaryStrategy", "FlagRollout", "FlagRolloutError", "FlagRolloutResult"]

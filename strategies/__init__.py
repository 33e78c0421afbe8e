"""Strategies: turn a rollout's intent into route plans, policies and flags (DESIGN §2, §7)."""

from strategies._canary import CanaryStrategy
from strategies._flag_rollout import FlagRollout, FlagRolloutError, FlagRolloutResult
from strategies._fleet import Fleet, fleet_of

__all__ = [
    "CanaryStrategy",
    "FlagRollout",
    "FlagRolloutError",
    "FlagRolloutResult",
    "Fleet",
    "fleet_of",
]

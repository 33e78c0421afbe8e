"""Strategies: turn a rollout's intent into route plans, policies and flags (DESIGN §2, §7)."""

from strategies._canary import CanaryStrategy
from strategies._flag_rollout import (
    MIN_OUTCOMES,
    FlagRollout,
    FlagRolloutError,
    FlagRolloutResult,
    ServiceReading,
    failure_rate,
    on_off_variants,
)
from strategies._fleet import Fleet, fleet_of

__all__ = [
    "MIN_OUTCOMES",
    "CanaryStrategy",
    "FlagRollout",
    "FlagRolloutError",
    "FlagRolloutResult",
    "Fleet",
    "ServiceReading",
    "failure_rate",
    "fleet_of",
    "on_off_variants",
]

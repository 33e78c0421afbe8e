"""Strategies: turn a rollout's intent into route plans, policies and flags (DESIGN §2, §7)."""

from strategies._bluegreen import BlueGreenStrategy
from strategies._canary import CanaryStrategy
from strategies._flag_rollout import (
    MIN_OUTCOMES,
    FlagRollout,
    FlagRolloutError,
    ServiceReading,
    failure_rate,
    on_off_variants,
)
from strategies._fleet import Fleet, fleet_of
from strategies._protocols import MetricSource, Strategy
from strategies._shadow import ShadowPolicy, shadow_report

__all__ = [
    "MIN_OUTCOMES",
    "BlueGreenStrategy",
    "CanaryStrategy",
    "FlagRollout",
    "FlagRolloutError",
    "Fleet",
    "MetricSource",
    "ServiceReading",
    "ShadowPolicy",
    "Strategy",
    "failure_rate",
    "fleet_of",
    "on_off_variants",
    "shadow_report",
]

"""The registry: instances, versions, outcomes, plans, measures and passwords, in Redis.

It records what the routers observe and decides which versions stay valid;
its Lua scripts (``lua/``) make each decision atomic.
"""

from communicator.registry._events import Event, EventType, parse_event
from communicator.registry._measures import Measurements, Totals
from communicator.registry._outcomes import (
    MAX_WINDOW_BUCKETS,
    FailureRecord,
    InvalidationPolicy,
    OutcomeKind,
    OutcomeResult,
    VersionInfo,
    VersionState,
    VersionStatus,
)
from communicator.registry._passwords import (
    AuthResult,
    AuthStatus,
    PasswordStore,
    ThrottlePolicy,
    hash_password,
    verify_password,
)
from communicator.registry._plans import (
    Mirror,
    PlanStore,
    Pool,
    RoutePlan,
    routed_weights,
    traffic_shares,
    with_mirror,
)
from communicator.registry._registry import InstanceInfo, Registry

__all__ = [
    "MAX_WINDOW_BUCKETS",
    "AuthResult",
    "AuthStatus",
    "Event",
    "EventType",
    "FailureRecord",
    "InstanceInfo",
    "InvalidationPolicy",
    "Measurements",
    "Mirror",
    "OutcomeKind",
    "OutcomeResult",
    "PasswordStore",
    "PlanStore",
    "Pool",
    "Registry",
    "RoutePlan",
    "ThrottlePolicy",
    "Totals",
    "VersionInfo",
    "VersionState",
    "VersionStatus",
    "hash_password",
    "parse_event",
    "routed_weights",
    "traffic_shares",
    "verify_password",
    "with_mirror",
]

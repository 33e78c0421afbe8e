"""The rollback rules that protect production: what stays valid, and the latency limit.

``why_keep_valid`` is the invariant "a rollback never invalidates what serves
production" as one pure function (the rollout model test tries to break it);
``LatencyGuard`` trips a rollback when the canary's p99 reply time passes the
playbook's ``max_latency_p99``.
"""

from __future__ import annotations

from typing import Any

from controller.analysis._statistics import percentile
from controller.engine._rollout import Rollout
from controller.playbook._playbook import Playbook
from strategies import Fleet, MetricSource

#: Reply times the canary needs within the failure window before max_latency_p99 may trip.
LATENCY_MIN_SAMPLES = 50
#: Seconds between two reads of a canary's reply times (an XRANGE of up to 20,000 entries).
LATENCY_CHECK_EVERY = 1.0


def why_keep_valid(rollout: Rollout, fleet: Fleet) -> str | None:
    """Why the canary must stay valid through a rollback, or None if it need not."""
    service, canary = rollout.service, rollout.canary
    if canary == rollout.stable:
        return f"{canary} is also the stable version"
    if rollout.origin_production == canary:
        return f"{canary} served production when the rollout started"
    if not fleet.serves_without(canary):
        return (
            f"no other valid version of {service} has a live instance; start instances of "
            f"{rollout.stable}, then `deployctl version invalidate {service} {canary}`"
        )
    return None


class LatencyGuard:
    """Reads a canary's reply times at most every LATENCY_CHECK_EVERY seconds, per rollout."""

    def __init__(self, measurements: MetricSource) -> None:
        self._measurements = measurements
        self._checked: dict[str, float] = {}  # rollout id -> when

    def forget(self, rollout_id: str) -> None:
        """The rollout ended: drop its state."""
        self._checked.pop(rollout_id, None)

    async def too_slow(
        self, rollout: Rollout, playbook: Playbook, now: float
    ) -> tuple[str, dict[str, Any]] | None:
        """The reason and evidence when the canary's p99 reply time is above the policy's limit."""
        limit = playbook.rollback.max_latency_p99
        if limit is None or now - self._checked.get(rollout.id, 0.0) < LATENCY_CHECK_EVERY:
            return None
        self._checked[rollout.id] = now
        window = playbook.rollback.failure_window
        since = max(now - window, rollout.started_at or rollout.created_at)
        latencies = await self._measurements.latencies(rollout.service, rollout.canary, since=since)
        if len(latencies) < LATENCY_MIN_SAMPLES:
            return None
        p99 = percentile(latencies, 0.99)
        if p99 <= limit:
            return None
        evidence = {
            "latency_p99": p99,
            "max_latency_p99": limit,
            "samples": len(latencies),
            "window_seconds": now - since,
        }
        return (
            f"canary p99 reply time {p99 * 1000:.0f} ms above the limit of {limit * 1000:.0f} ms "
            f"({len(latencies)} replies in the last {now - since:.0f}s)",
            {"latency": evidence},
        )

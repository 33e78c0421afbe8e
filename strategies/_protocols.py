"""The two plug-in points of the rollout engine: a ``Strategy`` and a ``MetricSource``.

The engine (``controller.engine``) knows a rollout's steps and when each is
due; a strategy knows what a step means for the traffic. ``CanaryStrategy``
is the first implementation (weights between a stable and a canary version);
blue-green is the next. A metric source gives the numbers analyses judge by;
``communicator.Measurements`` is the one in production, tests may bring
their own.

A strategy keeps the invariants of docs/architecture.md: traffic goes where
its plan says (the communicator applies exactly the plans a strategy writes),
and a rollback never invalidates what serves production (the engine decides
``invalidate`` with the fleet a strategy reports).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from communicator import InvalidationPolicy, RoutePlan, Totals
from strategies._fleet import Fleet


@runtime_checkable
class Strategy(Protocol):
    """Turns a rollout's intent into route plans and policies, and judges the canary's health."""

    #: The strategy's name, as playbooks write it (``strategy: canary``).
    kind: str

    async def protect(self, service: str, canary: str, policy: InvalidationPolicy) -> None:
        """Let the communicator cut ``canary`` off by itself when it crosses ``policy``."""
        ...

    async def set_weight(
        self,
        service: str,
        *,
        stable: str,
        canary: str,
        weight: int,
        sticky: str | None = None,
        reason: str = "",
    ) -> RoutePlan:
        """The plan from an intent: ``weight`` % of the traffic to ``canary``, the rest stable."""
        ...

    async def set_mirror(
        self, service: str, *, canary: str, percent: float, max_inflight: int, compare: bool
    ) -> None:
        """Copy ``percent`` % of the traffic to ``canary``, its replies swallowed."""
        ...

    async def clear_mirror(self, service: str, *, canary: str) -> None:
        """Stop copying traffic to ``canary``."""
        ...

    async def fleet(self, service: str) -> Fleet:
        """What serves ``service`` now: live versions and the share of traffic each gets."""
        ...

    async def canary_invalid(self, service: str, canary: str) -> tuple[bool, str, Any]:
        """The health judgement: whether ``canary`` was cut off, why, and the evidence."""
        ...

    async def promote(self, service: str, *, canary: str, reason: str = "") -> RoutePlan:
        """Every message to ``canary``: it becomes what serves production."""
        ...

    async def rollback(
        self,
        service: str,
        *,
        stable: str,
        canary: str,
        reason: str,
        invalidate: bool,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Traffic back to ``stable`` at once; ``canary`` invalidated when ``invalidate``."""
        ...

    async def reinstate(self, service: str, canary: str, reason: str) -> None:
        """Make ``canary`` valid again (a retried rollout, or the only version left)."""
        ...


@runtime_checkable
class MetricSource(Protocol):
    """The numbers an analysis judges a version by."""

    async def totals(self, service: str, version: str) -> Totals:
        """Running outcome counts of one version (successes, failures by kind), with their time."""
        ...

    async def latencies(
        self, service: str, version: str, *, since: float, until: float | None = None
    ) -> list[float]:
        """Reply times (seconds) of one version between two times (epoch seconds)."""
        ...

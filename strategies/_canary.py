"""The canary strategy: turn "send N % to the new version" into route plans and policies.

It writes data the communicator applies (route plans, invalidation policies);
the rollout engine in ``controller`` decides when.
"""

from __future__ import annotations

import logging
from typing import Any

from communicator import (
    InvalidationPolicy,
    Mirror,
    PlanStore,
    Pool,
    Registry,
    RoutePlan,
    with_mirror,
)
from strategies._fleet import Fleet, fleet_of

logger = logging.getLogger(__name__)


class CanaryStrategy:
    """Weights between a stable and a canary version of one service."""

    kind = "canary"

    def __init__(self, *, plans: PlanStore, registry: Registry) -> None:
        self._plans = plans
        self._registry = registry

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
        """Send ``weight`` % of the service's traffic to ``canary``, the rest to ``stable``."""
        if not 0 <= weight <= 100:
            raise ValueError(f"weight {weight} is not a percentage (0-100)")
        current = await self._plans.get(service)
        pools = [Pool(version=stable, weight=100 - weight), Pool(version=canary, weight=weight)]
        if stable == canary:
            pools = [Pool(version=canary, weight=100)]
        plan = RoutePlan(
            pools=pools,
            sticky=sticky,
            mirrors=current.mirrors if current else [],
            revision=(current.revision + 1) if current else 1,
            reason=reason or f"canary {canary} at {weight}%",
        )
        await self._plans.set(service, plan)
        logger.info("%s: %s at %d%% (stable %s)", service, canary, weight, stable)
        return plan

    async def set_mirror(
        self, service: str, *, canary: str, percent: float, max_inflight: int, compare: bool
    ) -> None:
        """Shadow: copy ``percent`` % of the messages to ``canary`` (its replies swallowed)."""
        plan = await self._plans.get(service) or RoutePlan()
        mirror = Mirror(version=canary, percent=percent, max_inflight=max_inflight, compare=compare)
        reason = f"shadow {canary}: {percent:g}% mirrored"
        await self._plans.set(service, with_mirror(plan, mirror, reason=reason))

    async def clear_mirror(self, service: str, *, canary: str) -> None:
        """Stop copying messages to ``canary``."""
        plan = await self._plans.get(service)
        if plan is not None and any(m.version == canary for m in plan.mirrors):
            mirrors = [m for m in plan.mirrors if m.version != canary]
            await self._plans.set(
                service,
                plan.model_copy(
                    update={
                        "mirrors": mirrors,
                        "revision": plan.revision + 1,
                        "reason": f"shadow {canary} ended",
                    }
                ),
            )

    async def fleet(self, service: str) -> Fleet:
        """What serves ``service`` now: live versions and the traffic share each gets."""
        return await fleet_of(service, registry=self._registry, plans=self._plans)

    async def protect(self, service: str, canary: str, policy: InvalidationPolicy) -> None:
        """Make the communicator cut ``canary`` off by itself when it crosses ``policy``."""
        await self._registry.set_policy(service, policy, version=canary)

    async def promote(self, service: str, *, canary: str, reason: str = "") -> RoutePlan:
        """All traffic to ``canary``: it becomes the stable version."""
        return await self.set_weight(
            service, stable=canary, canary=canary, weight=100, reason=reason or "promoted"
        )

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
        """Weight 0 for ``canary`` at once; mark it invalid too when asked (and not already)."""
        await self.set_weight(service, stable=stable, canary=canary, weight=0, reason=reason)
        if invalidate and await self._registry.is_valid(service, canary):
            await self._registry.invalidate(service, canary, reason, evidence)

    async def reinstate(self, service: str, canary: str, reason: str) -> None:
        """Make ``canary`` valid again (a retried rollout)."""
        await self._registry.reinstate(service, canary, reason)

    async def canary_invalid(self, service: str, canary: str) -> tuple[bool, str, Any]:
        """Whether the communicator has cut ``canary`` off, with its reason and evidence."""
        state = await self._registry.version_state(service, canary)
        return (not state.valid, state.reason, state.evidence)

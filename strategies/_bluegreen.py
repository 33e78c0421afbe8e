"""The blue-green strategy: a preview color, one switch, an instant way back.

Two colors (``blue``, ``green``) name two versions of a service. While a new
version is previewed, the plan's active color (the version serving
production) takes every ordinary message and the preview color only messages
that ask for it (``preview=yes``), so it can be exercised before anyone
depends on it. The switch is one plan change: every communicator applies it
when Redis announces it and says so, and the switch returns once all have.
The old color stays in the plan, registered, until the rollout ends, so a
rollback is one plan change too.

Mirrors, failure policies, the fleet and validity are what they are for a
canary: those parts are the canary strategy's.
"""

from __future__ import annotations

import logging
from typing import Any

from communicator import InvalidationPolicy, PlanStore, Registry, RoutePlan
from strategies._canary import CanaryStrategy
from strategies._fleet import Fleet

logger = logging.getLogger(__name__)

COLORS = ("blue", "green")
#: Seconds a plan change waits for every live communicator to route by it.
APPLY_TIMEOUT = 2.0


class BlueGreenStrategy:
    """Preview, switch and roll back between two colors of one service."""

    kind = "bluegreen"

    def __init__(self, *, plans: PlanStore, registry: Registry) -> None:
        self._plans = plans
        self._registry = registry
        self._canary = CanaryStrategy(plans=plans, registry=registry)

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
        """Weight 0: ``canary`` is the preview; 100: the switch. Blue-green has nothing between.

        Raises:
            ValueError: Any other weight.
        """
        if weight not in (0, 100):
            raise ValueError(
                f"weight {weight}: blue-green sends a version all traffic or none "
                "(0: preview, 100: switch); use a canary playbook for shares"
            )
        current = await self._plans.get(service)
        colors = _colors(current, stable, canary)
        plan = RoutePlan(
            colors={colors[stable]: stable, colors[canary]: canary},
            active_color=colors[canary if weight == 100 else stable],
            preview_color=None if weight == 100 else colors[canary],
            sticky=sticky,
            mirrors=current.mirrors if current else [],
            revision=(current.revision + 1) if current else 1,
            reason=reason or (f"switched to {canary}" if weight == 100 else f"previewing {canary}"),
        )
        await self._write(service, plan)
        logger.info(
            "%s: %s", service, f"{canary} active" if weight == 100 else f"{canary} in preview"
        )
        return plan

    async def promote(self, service: str, *, canary: str, reason: str = "") -> RoutePlan:
        """``canary`` is the only color left: the old one is retired from the plan."""
        current = await self._plans.get(service)
        held = {v: c for c, v in (current.colors if current else {}).items()}
        color = held.get(canary, COLORS[0])
        plan = RoutePlan(
            colors={color: canary},
            active_color=color,
            mirrors=current.mirrors if current else [],
            revision=(current.revision + 1) if current else 1,
            reason=reason or f"{canary} promoted; the old color retired",
        )
        await self._write(service, plan)
        return plan

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
        """Every message to ``stable`` at once; ``canary`` out of the plan (invalid if asked).

        A blue-green plan never falls back to another color, so switching to a
        ``stable`` with no live instance would send production nowhere: then
        ``canary`` keeps serving (and stays in the plan) until ``stable`` is back.
        """
        current = await self._plans.get(service)
        colors = _colors(current, stable, canary)
        fleet = await self.fleet(service)
        if stable not in fleet.live and (canary in fleet.live or canary in fleet.barred):
            logger.warning(
                "%s: not switching back to %s, which has no live instance: %s serves on",
                service, stable, canary,
            )  # fmt: skip
            plan = RoutePlan(
                colors={colors[stable]: stable, colors[canary]: canary},
                active_color=colors[canary],
                mirrors=current.mirrors if current else [],
                revision=(current.revision + 1) if current else 1,
                reason=f"{reason}; {canary} serves on: {stable} has no live instance",
            )
            await self._write(service, plan)
            return
        plan = RoutePlan(
            colors={colors[stable]: stable},
            active_color=colors[stable],
            mirrors=[m for m in (current.mirrors if current else []) if m.version != canary],
            revision=(current.revision + 1) if current else 1,
            reason=reason,
        )
        await self._write(service, plan)
        if invalidate and await self._registry.is_valid(service, canary):
            await self._registry.invalidate(service, canary, reason, evidence)

    async def _write(self, service: str, plan: RoutePlan) -> None:
        """Write the plan, and return once every live communicator routes by it.

        So a switch (or a rollback) that returned is done: no message is routed
        by the old plan afterwards. A communicator that does not confirm within
        ``APPLY_TIMEOUT`` (dying, or cut off from Redis) is named in the log.
        """
        await self._plans.set(service, plan)
        lagging = await self._plans.wait_applied(service, plan.revision, timeout=APPLY_TIMEOUT)
        if lagging:
            logger.warning(
                "%s: plan %d not confirmed within %gs by %s",
                service, plan.revision, APPLY_TIMEOUT, ", ".join(lagging),
            )  # fmt: skip

    async def protect(self, service: str, canary: str, policy: InvalidationPolicy) -> None:
        """Let the communicator cut ``canary`` off by itself when it crosses ``policy``."""
        await self._canary.protect(service, canary, policy)

    async def set_mirror(
        self, service: str, *, canary: str, percent: float, max_inflight: int, compare: bool
    ) -> None:
        """Copy ``percent`` % of the active color's traffic to ``canary``."""
        await self._canary.set_mirror(
            service, canary=canary, percent=percent, max_inflight=max_inflight, compare=compare
        )

    async def clear_mirror(self, service: str, *, canary: str) -> None:
        """Stop copying traffic to ``canary``."""
        await self._canary.clear_mirror(service, canary=canary)

    async def fleet(self, service: str) -> Fleet:
        """What serves ``service`` now (the preview color takes no ordinary traffic)."""
        return await self._canary.fleet(service)

    async def canary_invalid(self, service: str, canary: str) -> tuple[bool, str, Any]:
        """Whether the communicator has cut ``canary`` off, with its reason and evidence."""
        return await self._canary.canary_invalid(service, canary)

    async def reinstate(self, service: str, canary: str, reason: str) -> None:
        """Make ``canary`` valid again."""
        await self._canary.reinstate(service, canary, reason)


def _colors(current: RoutePlan | None, stable: str, canary: str) -> dict[str, str]:
    """Version -> color: the stable keeps the color it has; the canary takes the other.

    With no colors yet, the stable is blue (unless the canary already is).
    """
    by_version = {version: color for color, version in (current.colors if current else {}).items()}
    stable_color = by_version.get(stable)
    if stable_color not in COLORS:
        stable_color = COLORS[0] if by_version.get(canary) != COLORS[0] else COLORS[1]
    canary_color = COLORS[1] if stable_color == COLORS[0] else COLORS[0]
    return {stable: stable_color, canary: canary_color}

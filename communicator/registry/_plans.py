"""Route plans: how the instances of one service share its traffic.

A plan is data written into Redis by a strategy (canary weights, the active
blue-green color, shadow mirrors, a sticky parameter). The communicator only
applies it. A service without a plan gets the default: every valid version,
in proportion to its number of instances.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Annotated, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from redis.asyncio import Redis

from communicator.backends._keys import Keys
from communicator.backends._replies import text
from communicator.wire._message import name_problem


def _parameter_name(value: str | None) -> str | None:
    if value is not None:
        problem = name_problem("sticky parameter", value)
        if problem:
            raise ValueError(problem)
    return value


class Pool(BaseModel):
    """A share of a service's traffic for one version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    weight: int = Field(ge=0, le=1_000_000)


class Mirror(BaseModel):
    """Shadow traffic: a copy of a share of the messages, sent fire-and-forget to a version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    percent: float = Field(default=100.0, ge=0, le=100)
    max_inflight: int = Field(default=100, ge=1)
    """Copies in flight to this mirror beyond which new copies are dropped."""
    compare: bool = False
    started_at: float | None = None
    """When this mirroring began: reports count from here (``with_mirror`` sets it)."""


class RoutePlan(BaseModel):
    """How one service's messages are spread over its versions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: list[Pool] = Field(default_factory=list)
    """Weighted versions; empty means every valid version, weighted by its instances."""
    colors: dict[str, str] = Field(default_factory=dict)
    """Blue-green: color name -> version."""
    active_color: str | None = None
    """Blue-green: when set, all traffic goes to this color's version (pools are ignored)."""
    preview_color: str | None = None
    """Blue-green: the color only preview traffic (``preview=yes``) reaches, never the rest."""
    sticky: Annotated[str | None, AfterValidator(_parameter_name)] = None
    """Parameter whose value keeps one user on one version (hashed, stable)."""
    mirrors: list[Mirror] = Field(default_factory=list)
    revision: int = 0
    """Bumped by the writer on every change; lets caches ignore stale updates."""
    reason: str = ""
    """Why the plan is what it is (shown by the CLI, kept in history)."""

    @model_validator(mode="after")
    def _check(self) -> RoutePlan:
        if self.active_color is not None and self.active_color not in self.colors:
            raise ValueError(
                f"active_color {self.active_color!r} is not one of the colors "
                f"({', '.join(self.colors) or 'none defined'})"
            )
        if self.preview_color is not None:
            if self.active_color is None or self.preview_color not in self.colors:
                raise ValueError(
                    f"preview_color {self.preview_color!r} needs an active_color, and must be "
                    f"one of the colors ({', '.join(self.colors) or 'none defined'})"
                )
            if self.colors[self.preview_color] == self.colors[self.active_color]:
                raise ValueError("the preview color and the active color run the same version")
        versions = [pool.version for pool in self.pools]
        if len(versions) != len(set(versions)):
            raise ValueError("a version appears in two pools; merge them")
        return self

    @property
    def preview_version(self) -> str | None:
        """The version of the preview color, if there is one."""
        return self.colors[self.preview_color] if self.preview_color is not None else None

    def primary_excluded(self) -> frozenset[str]:
        """Versions ordinary traffic never reaches: mirrors (copies only) and the preview."""
        excluded = {mirror.version for mirror in self.mirrors}
        if self.preview_version is not None:
            excluded.add(self.preview_version)
        return frozenset(excluded)

    def effective_pools(self) -> list[Pool]:
        """The pools that apply: the active color's version alone, or the weighted pools."""
        if self.active_color is not None:
            return [Pool(version=self.colors[self.active_color], weight=1)]
        return [pool for pool in self.pools if pool.weight > 0]


DEFAULT_PLAN = RoutePlan()


def routed_weights(
    plan: RoutePlan, live: Mapping[str, int], *, preview: bool = False
) -> list[tuple[str, int]]:
    """The weights the router applies, given the versions that can take the traffic now.

    ``live`` maps each version with at least one live, valid instance to its
    number of instances. Ordinary traffic never reaches a version the plan
    excludes (a mirror's, the preview color's). The plan's pools whose version
    is live keep their weights; a pool with nothing live drops out and the
    others share its traffic (renormalised). When none of the plan's pools is
    live, a weighted plan lets every other live version take the traffic in
    proportion to its instances, while a blue-green plan sends it nowhere: its
    messages wait (cached) for the active color, they never go to another.

    Preview traffic (``preview``) goes to the preview color's version alone,
    or nowhere while it has no live instance; with no preview color it is
    ordinary traffic.

    This one function is what the router routes by and what ``deployctl``
    shows as the effective weights, so the two cannot disagree.
    """
    if preview and plan.preview_version is not None:
        version = plan.preview_version
        return [(version, 1)] if live.get(version, 0) > 0 else []
    excluded = plan.primary_excluded()
    serving = {v: n for v, n in live.items() if n > 0 and v not in excluded}
    pools = [(p.version, p.weight) for p in plan.effective_pools() if p.version in serving]
    if pools or plan.active_color is not None:
        return pools
    return sorted(serving.items())


def traffic_shares(
    plan: RoutePlan, live: Mapping[str, int], *, preview: bool = False
) -> dict[str, float]:
    """Each version's share of the traffic (0-1, summing to 1) under ``plan``; empty if none."""
    weights = routed_weights(plan, live, preview=preview)
    total = sum(weight for _, weight in weights)
    return {version: weight / total for version, weight in weights} if total else {}


def with_mirror(plan: RoutePlan, mirror: Mirror, *, reason: str) -> RoutePlan:
    """``plan`` mirroring to ``mirror.version`` from now on, replacing any mirror to it.

    The mirror is stamped with the time: its report starts afresh, so counts of
    an earlier mirroring to the same version are never mixed in.
    """
    stamped = mirror.model_copy(update={"started_at": time.time()})
    mirrors = [m for m in plan.mirrors if m.version != mirror.version] + [stamped]
    return RoutePlan.model_validate(
        plan.model_copy(
            update={"mirrors": mirrors, "revision": plan.revision + 1, "reason": reason}
        ).model_dump()
    )


class PlanStore:
    """Route plans in Redis; every change is announced so each communicator applies it at once."""

    def __init__(self, *, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, service: str) -> RoutePlan | None:
        """The plan of ``service``, or ``None`` for the default."""
        raw = await self._redis.get(self._keys.plan(service))
        return None if raw is None else RoutePlan.model_validate_json(raw)

    async def applied(self, service: str, revision: int) -> list[str]:
        """The live communicators not yet routing ``service`` by a plan of ``revision`` or later."""
        live = cast(list[bytes], await self._redis.zrange(self._keys.routers(), 0, -1))
        applied = await self._redis.hgetall(self._keys.plan_applied(service))
        done = {text(k): int(v) for k, v in applied.items()}
        return sorted(r for r in map(text, live) if done.get(r, -1) < revision)

    async def wait_applied(self, service: str, revision: int, *, timeout: float = 2.0) -> list[str]:
        """Wait until every live communicator routes by ``revision``; who still did not, if any.

        A switch that returns only then means what it says: no message is
        routed by the old plan after it (a communicator that died meanwhile
        is waited for until ``timeout``, then named).
        """
        deadline = time.monotonic() + timeout
        lagging = await self.applied(service, revision)
        while lagging and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            lagging = await self.applied(service, revision)
        return lagging

    async def set(self, service: str, plan: RoutePlan | None) -> None:
        """Write (or, with ``None``, remove) the plan of ``service`` and announce it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            if plan is None:
                pipe.delete(self._keys.plan(service))
            else:
                pipe.set(self._keys.plan(service), plan.model_dump_json())
            pipe.publish(self._keys.changes(), service)
            await pipe.execute()

"""``deployctl controller run``: one leader advances every rollout; the others stand by.

Leadership is a Redis key with a TTL, renewed while the leader lives; a
standby takes it when it lapses and resumes every rollout from its state in
Redis. The leader advances each active rollout (and each flag rollout by
steps) on a short tick, and at once when something happens to it (an
operator request, or the communicator invalidating its canary).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator import Keys, Measurements, PlanStore, Registry, Settings
from controller._alerts import StatusFlagRaiser
from controller._engine import RolloutEngine
from controller._flag_runs import FlagRunEngine, FlagRunStore
from controller._keys import ControllerKeys
from controller._rollout import RolloutStore
from flags import FlagKeys, FlagStore
from flags._publisher import FlagPublisher
from strategies import CanaryStrategy, FlagRollout

logger = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class Controller:
    """One controller process: stands by, or leads and advances the rollouts."""

    def __init__(
        self,
        *,
        settings: Settings,
        redis: Redis,
        controller_id: str | None = None,
        tick: float = 0.25,
        lease_ttl: float = 3.0,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.id = (
            controller_id
            or f"controller-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.keys = ControllerKeys(settings.key_prefix)
        communicator_keys = Keys(settings.key_prefix)
        self._events_channel = communicator_keys.events()
        registry = Registry(redis=redis, keys=communicator_keys)
        measurements = Measurements(redis=redis, keys=communicator_keys)
        self.store = RolloutStore(redis=redis, keys=self.keys)
        self.engine = RolloutEngine(
            store=self.store,
            strategy=CanaryStrategy(
                plans=PlanStore(redis=redis, keys=communicator_keys), registry=registry
            ),
            measurements=measurements,
        )
        self.flag_runs = FlagRunEngine(
            store=FlagRunStore(redis=redis, keys=self.keys),
            strategy=FlagRollout(
                store=FlagStore(redis=redis, keys=FlagKeys(settings.key_prefix)),
                registry=registry,
                measurements=measurements,
            ),
        )
        self.alerts = StatusFlagRaiser(redis=redis, key_prefix=settings.key_prefix)
        self.flag_publisher = FlagPublisher(settings=settings, redis=redis)
        self._tick = tick
        self._ttl_ms = int(lease_ttl * 1000)
        self._renew = redis.register_script(_RENEW)
        self._wake = asyncio.Event()
        self._urgent: set[str] = set()
        self.leading = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to finish (leadership is released)."""
        self._stopping.set()

    async def run(self) -> None:
        """Stand by or lead until stopped."""
        try:
            while not self._stopping.is_set():
                try:
                    if await self.redis.set(self.keys.leader(), self.id, nx=True, px=self._ttl_ms):
                        logger.info("controller %s leads", self.id)
                        await self._lead()
                except (RedisError, OSError) as exc:
                    logger.warning("controller %s: Redis unavailable (%s)", self.id, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._ttl_ms / 3000)
        finally:
            with contextlib.suppress(RedisError, OSError):
                if self.leading.is_set():
                    await self.redis.delete(self.keys.leader())
            self.leading.clear()

    async def _lead(self) -> None:
        self.leading.set()
        try:
            async with asyncio.TaskGroup() as tasks:
                listener = tasks.create_task(self._listen(), name="controller-listen")
                advancer = tasks.create_task(self._advance_loop(), name="controller-advance")
                # Only the leader raises status flags, or each would be counted twice.
                alerts = tasks.create_task(self.alerts.run(), name="controller-status-flags")
                flags = tasks.create_task(self.flag_publisher.run(), name="controller-flags")
                await self._keep_leading()
                for task in (listener, advancer, alerts, flags):
                    task.cancel()
        finally:
            self.leading.clear()

    async def _keep_leading(self) -> None:
        """Renew the lease until it is lost or we stop."""
        while not self._stopping.is_set():
            if not await self._renew(keys=[self.keys.leader()], args=[self.id, self._ttl_ms]):
                logger.warning("controller %s lost the lead", self.id)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._ttl_ms / 3000)

    async def _listen(self) -> None:
        """Wake the engine on operator requests and on invalidations of a version."""
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(self.keys.wakeup(), self._events_channel)
            async for item in pubsub.listen():
                if item["type"] != "message":
                    continue
                data = item["data"].decode() if isinstance(item["data"], bytes) else item["data"]
                channel = (
                    item["channel"].decode()
                    if isinstance(item["channel"], bytes)
                    else item["channel"]
                )
                if channel == self._events_channel:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._urgent.add(json.loads(data)["service"])
                else:
                    self._urgent.add(data)
                self._wake.set()

    async def _advance_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)
            self._wake.clear()
            urgent, self._urgent = self._urgent, set()
            try:
                await self.advance_all(first=urgent)
                await self.flag_runs.advance_all()
            except (RedisError, OSError) as exc:
                logger.warning("cannot advance rollouts now: %s", exc)

    async def advance_all(self, first: set[str] | None = None) -> None:
        """Advance every active rollout (the services in ``first`` before the others)."""
        rollouts = await self.store.all()
        rollouts.sort(key=lambda r: r.service not in (first or set()))
        for rollout in rollouts:
            requests = await self.store.take_requests(rollout.service)
            if not rollout.phase.active and not requests:
                continue
            started = time.monotonic()
            try:
                await self.engine.advance(rollout, requests)
            except (RedisError, OSError):
                raise
            except Exception:  # one rollout's bug must not stop the others
                logger.exception("failed to advance the rollout of %s", rollout.service)
            logger.debug(
                "advanced %s in %.1f ms", rollout.service, (time.monotonic() - started) * 1e3
            )

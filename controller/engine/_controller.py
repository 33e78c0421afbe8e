"""``deployctl controller run``: one leader advances every rollout; the others stand by.

Leadership is a Redis key with a TTL, renewed while the leader lives; a
standby takes it when it lapses and resumes every rollout from its state in
Redis. The leader advances each active rollout (and each flag rollout by
steps) on a short tick, and at once when something happens to it (an
operator request, or the communicator invalidating its canary).

Every controller, leading or standing by, writes a health record every
``health_interval`` seconds (``ControllerKeys.health``, with a TTL of
``health_ttl``), which ``deployctl controller --check`` reads.
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
from typing import Any

from aiomqtt import MqttError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator import (
    Keys,
    Measurements,
    PlanStore,
    Registry,
    Settings,
    __version__,
    keep_trying,
)
from communicator.backends import Throttled, being_cancelled, cancel_and_wait
from controller.engine._alerts import StatusFlagRaiser
from controller.engine._clock import ClockWatch
from controller.engine._engine import RolloutEngine
from controller.engine._flag_runs import FlagRunEngine, FlagRunStore
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import RolloutStore
from flags import FlagKeys, FlagPublisher, FlagStore
from strategies import BlueGreenStrategy, CanaryStrategy, FlagRollout

logger = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: Index members older than this are dropped by the writers (their records expired long ago).
HEALTH_INDEX_KEEP = 3600.0


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
        plans = PlanStore(redis=redis, keys=communicator_keys)
        self.engine = RolloutEngine(
            store=self.store,
            strategy=CanaryStrategy(plans=plans, registry=registry),
            strategies=[BlueGreenStrategy(plans=plans, registry=registry)],
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
        self.clock = ClockWatch(settings=settings, registry=registry, flags=self.alerts.flags)
        self._tick = tick
        self._ttl_ms = int(lease_ttl * 1000)
        self._renew = redis.register_script(_RENEW)
        self._wake = asyncio.Event()
        self._log = Throttled(logger)  # a Redis outage must not write a line per tick
        self._urgent: set[str] = set()
        self.leading = asyncio.Event()
        self._stopping = asyncio.Event()
        self.started = time.time()
        self._clock = time.monotonic()
        self.rollouts_active = 0  # at the last advance (by this process, when it led)
        self.last_advance: float | None = None  # epoch seconds of this process's last advance

    def stop(self) -> None:
        """Ask :meth:`run` to finish (leadership is released)."""
        self._stopping.set()

    async def run(self) -> None:
        """Stand by or lead until stopped; Redis outages are waited out, never fatal."""
        health = asyncio.create_task(self._report_health(), name="controller-health")
        try:
            await keep_trying(self._stand_by_or_lead, what=f"controller {self.id}", transient=_down)
        finally:
            await cancel_and_wait([health])
            with contextlib.suppress(RedisError, OSError):
                if self.leading.is_set():
                    await self.redis.delete(self.keys.leader())
                await self._withdraw_health()
            self.leading.clear()

    async def _stand_by_or_lead(self) -> None:
        standing_by = False
        while not self._stopping.is_set():
            if await self.redis.set(self.keys.leader(), self.id, nx=True, px=self._ttl_ms):
                logger.info("controller %s leads", self.id)
                standing_by = False
                await self._lead()
            elif not standing_by:
                leader = await self.redis.get(self.keys.leader())
                logger.info("controller %s stands by (leader: %s)", self.id, _text(leader))
                standing_by = True
            await wait_event(self._stopping, self._ttl_ms / 3000)

    async def _lead(self) -> None:
        self.leading.set()
        try:
            async with asyncio.TaskGroup() as tasks:
                # Each loop waits out Redis and broker outages itself: one failing must
                # not end the others, nor the lead.
                loops = {
                    "controller-listen": self._listen,
                    "controller-advance": self._advance_loop,
                    # Only the leader raises status flags, or each would be counted twice.
                    "controller-status-flags": self.alerts.run,
                    "controller-flags": self.flag_publisher.run,
                    "controller-clock": self.clock.run,
                }
                running = [
                    tasks.create_task(
                        keep_trying(loop, what=f"controller {self.id}: {name}", transient=_down),
                        name=name,
                    )
                    for name, loop in loops.items()
                ]
                await self._keep_leading()
                await cancel_and_wait(running)
        finally:
            self.leading.clear()

    async def _keep_leading(self) -> None:
        """Renew the lease until it is lost or we stop.

        While Redis does not answer, renewal is retried until the lease would
        have lapsed: a standby may lead from then on, so this one steps down.
        """
        renewed = time.monotonic()
        while not self._stopping.is_set():
            try:
                # Bounded: a renewal that never answers must not keep a stopping or
                # partitioned leader in place (CI once saw one hang past a stop).
                async with asyncio.timeout(self._ttl_ms / 3000):
                    kept = await self._renew(
                        keys=[self.keys.leader()], args=[self.id, self._ttl_ms]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                if time.monotonic() - renewed >= self._ttl_ms / 1000:
                    logger.warning("controller %s steps down: Redis unavailable (%s)", self.id, exc)
                    return
                logger.warning("controller %s: cannot renew its lead yet (%s)", self.id, exc)
                kept = True
            else:
                renewed = time.monotonic() if kept else renewed
            if not kept:
                logger.warning("controller %s lost the lead", self.id)
                return
            await wait_event(self._stopping, self._ttl_ms / 3000)

    async def _listen(self) -> None:
        """Wake the engine on operator requests and on invalidations of a version."""
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(self.keys.wakeup(), self._events_channel)
            self._wake.set()  # what was announced while we were not listening
            async for item in pubsub.listen():
                if item["type"] != "message":
                    continue
                data = _text(item["data"])
                if _text(item["channel"]) == self._events_channel:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._urgent.add(json.loads(data)["service"])
                else:
                    self._urgent.add(data)
                self._wake.set()

    async def _advance_loop(self) -> None:
        while True:
            await wait_event(self._wake, self._tick)
            self._wake.clear()
            urgent, self._urgent = self._urgent, set()
            try:
                await self.advance_all(first=urgent)
                await self.flag_runs.advance_all()
            except (RedisError, OSError) as exc:
                if being_cancelled():  # redis-py can turn our cancellation into its error
                    raise asyncio.CancelledError from exc
                self._log.warning(
                    "advance",
                    "cannot advance rollouts now (%s); they wait where they are. "
                    "Check Redis: that it runs and has memory (maxmemory)",
                    exc,
                )

    async def advance_all(self, first: set[str] | None = None) -> None:
        """Advance every active rollout (the services in ``first`` before the others)."""
        rollouts = await self.store.all()
        rollouts.sort(key=lambda r: r.service not in (first or set()))
        self.rollouts_active = sum(rollout.phase.active for rollout in rollouts)
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
        self.last_advance = time.time()

    # -- the health record (``deployctl controller --check``) -----------------------------

    async def health_record(self) -> dict[str, Any]:
        """What this controller says of itself in its health record (docs/operations.md)."""
        leading = self.leading.is_set()
        leader = self.id if leading else await self.redis.get(self.keys.leader())
        return {
            "controller_id": self.id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "time": time.time(),
            "started": self.started,
            "uptime": round(time.monotonic() - self._clock, 3),
            "role": "leader" if leading else "standby",
            "leading": leading,
            "leader": None if leader is None else _text(leader),
            "rollouts_active": self.rollouts_active if leading else None,
            "last_advance": self.last_advance,
            "interval": self.settings.health_interval,
        }

    async def write_health(self) -> None:
        """Store this controller's record for ``health_ttl`` seconds and index it."""
        record, ttl = await self.health_record(), self.settings.health_ttl
        index = self.keys.controllers_health()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.health(self.id), json.dumps(record), px=int(ttl * 1000))
            pipe.zadd(index, {self.id: record["time"]})
            pipe.zremrangebyscore(index, "-inf", record["time"] - max(ttl, HEALTH_INDEX_KEEP))
            await pipe.execute()

    async def _report_health(self) -> None:
        """Write the record every ``health_interval`` seconds, leading or standing by."""
        failing = False
        while True:
            try:
                await self.write_health()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                if not failing:
                    logger.warning("controller %s: health record not written (%s)", self.id, exc)
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.settings.health_interval)

    async def _withdraw_health(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.health(self.id))
            pipe.zrem(self.keys.controllers_health(), self.id)
            await pipe.execute()


async def read_health(redis: Redis, keys: ControllerKeys) -> list[dict[str, Any]]:
    """The records of every controller that reported within its TTL, leaders first."""
    found: list[Any] = await redis.zrange(keys.controllers_health(), 0, -1)
    members = [_text(m) for m in found]
    if not members:
        return []
    records = []
    for raw in await redis.mget([keys.health(m) for m in members]):
        if raw is None:
            continue  # expired since the index was read
        with contextlib.suppress(ValueError, TypeError):
            record = json.loads(raw)
            if isinstance(record, dict) and "controller_id" in record:
                records.append(record)
    return sorted(records, key=lambda r: (not r.get("leading"), str(r["controller_id"])))


def _down(exc: BaseException) -> bool:
    """Redis or the broker is away (worth waiting for), as opposed to a bug."""
    return isinstance(exc, RedisError | OSError | MqttError)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, whichever comes first.

    Not ``asyncio.wait_for``: on Python 3.11 a cancellation that lands as its
    timeout fires can be swallowed (CPython gh-86296), and the loop around it
    then never ends; CI saw a stopping controller hang so. ``asyncio.timeout``
    keeps the cancellation.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()

"""The router's bookkeeping between messages: successes flushed, timeouts judged, ttl passed.

Every ``flush_every`` seconds the counted successes and latencies go to Redis
in one round trip, shadow copies and held replies past their time are ended,
requests without a reply by their deadline count as timeouts, and cached
messages whose ttl passed are dropped. With Redis away, it all waits for the
next round (nothing counted is lost but latency samples).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from communicator.backends._backoff import being_cancelled
from communicator.backends._logs import Throttled
from communicator.registry._measures import Measurements
from communicator.registry._registry import Registry
from communicator.router._ports import OutcomeRecorder
from communicator.router._tracking import OutcomeTracker

logger = logging.getLogger(__name__)


#: One piece of the round, e.g. ``Shadow.housekeeping``.
Chore = Callable[[], Awaitable[None]]


class Housekeeping:
    """Runs the bookkeeping rounds of one router.

    ``shadow_copies`` ends the shadow copies past their deadline, ``held_replies``
    routes the replies held too long for a hand-off, ``cached_messages`` drops the
    cached messages past their ttl.
    """

    def __init__(
        self,
        *,
        tracker: OutcomeTracker,
        registry: Registry,
        measurements: Measurements,
        outcomes: OutcomeRecorder,
        shadow_copies: Chore,
        held_replies: Chore,
        cached_messages: Chore,
        log: Throttled,
        every: float,
    ) -> None:
        self._tracker = tracker
        self._registry = registry
        self._measurements = measurements
        self._outcomes = outcomes
        self._shadow_copies = shadow_copies
        self._held_replies = held_replies
        self._cached_messages = cached_messages
        self._log = log
        self._every = every

    async def loop(self) -> None:
        """A round every ``every`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self._every)
            self._log.flush()
            try:
                await self.round()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                self._log.warning(
                    "housekeeping",
                    "housekeeping postponed (%s); the counted outcomes wait in memory. "
                    "Check Redis: that it runs and has memory (maxmemory)",
                    exc,
                )

    async def round(self) -> None:
        """One round: successes, shadow copies, held replies, timeouts, then the cache."""
        await self.flush()
        await self._shadow_copies()
        await self._held_replies()
        await self._record_timeouts()
        await self._cached_messages()

    async def _record_timeouts(self) -> None:
        for pending in self._tracker.timed_out():
            await self._outcomes.record(
                pending.service,
                pending.version,
                "timeout",
                reason="no reply in time",
                instance=pending.instance,
                server=pending.server,
                reporter=pending.requester,
            )

    async def flush(self) -> None:
        """Write the counted successes and latencies (put back if Redis fails)."""
        successes, latencies = self._tracker.take_successes()
        if not successes:
            return
        try:
            await self._registry.record_successes(successes)
        except (RedisError, OSError):
            self._tracker.restore(successes)  # latencies are samples: losing some is fine
            raise
        await self._measurements.record_latencies(latencies)

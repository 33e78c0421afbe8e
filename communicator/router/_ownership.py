"""Which partitions this communicator routes: leases, take-overs and checkpoints.

See :mod:`communicator.router._partitions` for the table and docs/protocol.md §7 for
the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from redis.exceptions import RedisError

from communicator.backends._backoff import being_cancelled
from communicator.backends._logs import Throttled
from communicator.router._cache import MessageCache
from communicator.router._leases import Leases
from communicator.router._partitions import PartitionTable
from communicator.router._ports import CachedDelivery, LinkStatus, Routing

logger = logging.getLogger(__name__)


class Ownership:
    """The partition loops of one router."""

    def __init__(
        self,
        *,
        table: PartitionTable,
        leases: Leases,
        cache: MessageCache,
        routing: Routing,
        cached: CachedDelivery,
        link: LinkStatus,
        ready: asyncio.Event,
        log: Throttled,
        lease_ttl: float,
        renew_every: float,
        checkpoint_every: float,
    ) -> None:
        self._table = table
        self._leases = leases
        self._cache = cache
        self._routing = routing
        self._cached = cached
        self._link = link
        self._ready = ready
        self._log = log
        self._lease_ttl = lease_ttl
        self._renew_every = renew_every
        self._checkpoint_every = checkpoint_every
        self._free_last_round: set[int] = set()

    async def lease_loop(self) -> None:
        """Renew our leases and claim free partitions, every ``renew_every`` seconds."""
        margin = self._renew_every
        while True:
            try:
                await self.lease_round(margin)
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                self._log.warning(
                    "leases",
                    "cannot renew partition leases (%s); routing pauses when they lapse. "
                    "Check Redis: that it runs and has memory (maxmemory)",
                    exc,
                )
            await asyncio.sleep(self._renew_every)

    async def lease_round(self, margin: float) -> None:
        """One round: renew, drop lost leases, claim our share and any orphaned partition.

        Until it listens to every instance (subscribed), a communicator neither
        counts as live nor claims anything: messages it did not hear would be lost.
        Back from a lost broker connection, it waits ``lease_ttl`` before claiming.
        Past its share, with nothing free, it hands the extra partitions to the
        others (:meth:`shed`), so communicators started later share the work.
        """
        ttl = self._lease_ttl
        self._table.trim()
        leased = self._table.leased()  # lapsed ones too: a late renewal must not lose them
        started = time.monotonic()
        for partition, ok in zip(leased, await self._leases.renew(leased), strict=True):
            if ok:
                await self.resume(partition, started + ttl - margin)
            else:
                logger.warning("lost the lease of partition %d", partition)
                self._table.drop(partition)
                self._cache.forget(partition)
        if not self._link.listening:
            return
        live = await self._leases.heartbeat(time.time(), stale_after=ttl)
        share = Leases.share(self._table.count, live)
        mine = set(self._table.leased())
        owners = await self._leases.owners(self._table.count)
        free = [p for p in range(self._table.count) if p not in owners and p not in mine]
        random.shuffle(free)
        # Claim our share of the free partitions; and any left free a whole round, whatever
        # our share, so that nothing waits on a peer that is late or gone.
        orphans = set(free) & self._free_last_round
        self._free_last_round = set(free)
        if self._link.connections > 1 and time.monotonic() - self._link.listening_since < ttl:
            # Back after losing the broker: peers heard what we missed, so they take our old
            # partitions (free a whole round); we claim again once they had the time.
            free = []
        for partition in free:
            if len(mine) >= share and partition not in orphans:
                continue
            started = time.monotonic()
            if await self._leases.claim(partition):
                self._table.lease(partition)
                await self.take_over(partition, started + ttl - margin)
                mine.add(partition)
        if not free:
            for partition in sorted(mine, reverse=True)[: max(len(mine) - share, 0)]:
                # Checked right before: shed does not yield first.
                if partition != self._routing.in_flight:
                    await self.shed(partition)
        if not self._ready.is_set() and self._link.connected:
            self._ready.set()

    async def shed(self, partition: int) -> None:
        """Hand ``partition`` over: stop routing it, checkpoint, release its lease.

        Called between two messages of it (never while one is routed), so the
        checkpoint covers everything this communicator sent; the next owner
        replays what came after it from its own buffer.
        """
        prints = self._table.release(partition)  # from here on, its messages are held, not routed
        self._cache.forget(partition)
        if prints:
            await self._leases.save_checkpoints([(partition, prints)])
        await self._leases.release([partition])
        logger.info("handed partition %d over (more than our share)", partition)

    async def shed_all(self) -> int:
        """Hand every partition over (we stop, or lost the broker); how many there were.

        Only between messages: at shutdown, or from the MQTT loop itself when its
        connection dropped. If Redis fails meanwhile, the leases lapse in ``lease_ttl``.
        """
        owned = self._table.leased()
        prints = [(partition, self._table.release(partition)) for partition in owned]
        for partition in owned:
            self._cache.forget(partition)
        with contextlib.suppress(RedisError, OSError):
            await self._leases.save_checkpoints([(p, fp) for p, fp in prints if fp])
            await self._leases.release(owned)
        return len(owned)

    async def take_over(self, partition: int, deadline: float) -> None:
        """Own ``partition``: load its cache, replay its buffer after the last checkpoint."""
        await self._cache.load(partition)
        checkpoint = await self._leases.checkpoint(partition)
        self._table.skip_to(partition, checkpoint[1] if checkpoint else None)
        replayed = await self._replay(partition, deadline)
        if replayed:
            logger.info("took partition %d over; replayed %d messages", partition, replayed)
        await self._cached.deliver_cached()

    async def resume(self, partition: int, deadline: float) -> None:
        """Route ``partition`` on after a renewal: first what was held while the lease lapsed.

        A renewal that succeeds proves the lease stayed ours all along, so nobody
        else routed what we held meanwhile: it is replayed, in order, before any
        newer message of the partition.
        """
        if replayed := await self._replay(partition, deadline):
            logger.warning(
                "partition %d: lease renewed late; routed the %d messages held meanwhile",
                partition,
                replayed,
            )

    async def _replay(self, partition: int, deadline: float) -> int:
        """Route the held messages of ``partition``, then route it live until ``deadline``.

        Messages that arrive meanwhile are held behind the ones replayed, so the
        order is kept. If ``deadline`` passes first, the rest waits for the next
        renewal (routing past it could race a new owner).
        """
        replayed = 0
        while time.monotonic() < deadline:
            received = self._table.next_held(partition)
            if received is None:
                self._table.extend(partition, deadline)  # no await since the buffer was found empty
                break
            await self._routing.route(partition, received)
            replayed += 1
        return replayed

    async def checkpoint_loop(self) -> None:
        """Record our progress in each partition we route, every ``checkpoint_every`` seconds."""
        while True:
            await asyncio.sleep(self._checkpoint_every)
            items = list(self._table.checkpoints())
            try:
                await self._leases.save_checkpoints(items)
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                self._log.warning(
                    "checkpoints",
                    "cannot save checkpoints (%s); routing goes on, but a take-over would "
                    "replay more. Check Redis: that it runs and has memory (maxmemory)",
                    exc,
                )

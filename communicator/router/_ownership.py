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
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from communicator.backends._backoff import being_cancelled
from communicator.router._leases import Leases

if TYPE_CHECKING:
    from communicator.router._router import Router

logger = logging.getLogger(__name__)


class Ownership:
    """The partition loops of one router."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._free_last_round: set[int] = set()

    async def lease_loop(self) -> None:
        """Renew our leases and claim free partitions, every ``renew_every`` seconds."""
        r = self._router
        config = r.config
        margin = config.renew_every
        while True:
            try:
                await self.lease_round(margin)
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                logger.warning(
                    "cannot renew partition leases (%s); routing pauses when they lapse", exc
                )
            await asyncio.sleep(config.renew_every)

    async def lease_round(self, margin: float) -> None:
        """One round: renew, drop lost leases, claim our share and any orphaned partition.

        Until it listens to every instance (subscribed), a communicator neither
        counts as live nor claims anything: messages it did not hear would be lost.
        Back from a lost broker connection, it waits ``lease_ttl`` before claiming.
        Past its share, with nothing free, it hands the extra partitions to the
        others (:meth:`shed`), so communicators started later share the work.
        """
        r = self._router
        ttl = r.config.lease_ttl
        r.table.trim()
        leased = r.table.leased()  # lapsed ones too: a late renewal must not lose them
        started = time.monotonic()
        for partition, ok in zip(leased, await r.leases.renew(leased), strict=True):
            if ok:
                await self.resume(partition, started + ttl - margin)
            else:
                logger.warning("lost the lease of partition %d", partition)
                r.table.drop(partition)
                r.cache.forget(partition)
        if not r.listening:
            return
        live = await r.leases.heartbeat(time.time(), stale_after=ttl)
        share = Leases.share(r.table.count, live)
        mine = set(r.table.leased())
        owners = await r.leases.owners(r.table.count)
        free = [p for p in range(r.table.count) if p not in owners and p not in mine]
        random.shuffle(free)
        # Claim our share of the free partitions; and any left free a whole round, whatever
        # our share, so that nothing waits on a peer that is late or gone.
        orphans = set(free) & self._free_last_round
        self._free_last_round = set(free)
        if r.connections > 1 and time.monotonic() - r.listening_since < ttl:
            # Back after losing the broker: peers heard what we missed, so they take our old
            # partitions (free a whole round); we claim again once they had the time.
            free = []
        for partition in free:
            if len(mine) >= share and partition not in orphans:
                continue
            started = time.monotonic()
            if await r.leases.claim(partition):
                r.table.lease(partition)
                await self.take_over(partition, started + ttl - margin)
                mine.add(partition)
        if not free:
            for partition in sorted(mine, reverse=True)[: max(len(mine) - share, 0)]:
                if partition != r.in_flight:  # checked right before: shed does not yield first
                    await self.shed(partition)
        if not r.ready.is_set() and r.connected:
            r.ready.set()

    async def shed(self, partition: int) -> None:
        """Hand ``partition`` over: stop routing it, checkpoint, release its lease.

        Called between two messages of it (never while one is routed), so the
        checkpoint covers everything this communicator sent; the next owner
        replays what came after it from its own buffer.
        """
        r = self._router
        prints = r.table.release(partition)  # from here on, its messages are held, not routed
        r.cache.forget(partition)
        if prints:
            await r.leases.save_checkpoints([(partition, prints)])
        await r.leases.release([partition])
        logger.info("handed partition %d over (more than our share)", partition)

    async def shed_all(self) -> int:
        """Hand every partition over (we stop, or lost the broker); how many there were.

        Only between messages: at shutdown, or from the MQTT loop itself when its
        connection dropped. If Redis fails meanwhile, the leases lapse in ``lease_ttl``.
        """
        r = self._router
        owned = r.table.leased()
        prints = [(partition, r.table.release(partition)) for partition in owned]
        for partition in owned:
            r.cache.forget(partition)
        with contextlib.suppress(RedisError, OSError):
            await r.leases.save_checkpoints([(p, fp) for p, fp in prints if fp])
            await r.leases.release(owned)
        return len(owned)

    async def take_over(self, partition: int, deadline: float) -> None:
        """Own ``partition``: load its cache, replay its buffer after the last checkpoint."""
        r = self._router
        await r.cache.load(partition)
        checkpoint = await r.leases.checkpoint(partition)
        r.table.skip_to(partition, checkpoint[1] if checkpoint else None)
        replayed = await self._replay(partition, deadline)
        if replayed:
            logger.info("took partition %d over; replayed %d messages", partition, replayed)
        await r.deliver_cached()

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
        r = self._router
        replayed = 0
        while time.monotonic() < deadline:
            received = r.table.next_held(partition)
            if received is None:
                r.table.extend(partition, deadline)  # no await since the buffer was found empty
                break
            r.in_flight = partition
            try:
                await r.route(partition, received)
            finally:
                r.in_flight = None
            replayed += 1
        return replayed

    async def checkpoint_loop(self) -> None:
        """Record our progress in each partition we route, every ``checkpoint_every`` seconds."""
        r = self._router
        while True:
            await asyncio.sleep(r.config.checkpoint_every)
            items = list(r.table.checkpoints())
            try:
                await r.leases.save_checkpoints(items)
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                logger.warning("cannot save checkpoints: %s", exc)

"""Watching requests: their replies, errors and timeouts, also across communicators.

A request (a message with ``message_id``) delivered to an instance is watched
until its reply (``in_reply_to``) comes or its deadline passes; the outcome
counts for the replier's version (:mod:`communicator.router._tracking` keeps the
watches of one communicator).

A request is routed by the communicator that owns its sender's partition; the
reply, by the one that owns the replier's. When those differ, the first hands
the watch (who asked, which version answers, when it was sent, the deadline)
to the replier's partition on ``<prefix>track/<partition>``; every
communicator reads that topic and keeps the entries of the partitions it owns.
The owner then counts the reply as a success with its latency, or an ERROR as
an error_reply, or the silence as a timeout, as if it had routed the request
itself.

A reply may overtake its hand-off: a reply nobody here watched is held (not
delivered) until its hand-off comes, then judged and delivered to the
requester; after ``ORPHAN_SECONDS`` without one (a reply to a request that
timed out, or whose hand-off was lost) it is routed by its address. Latencies across two
communicators use wall clocks (``time.time()``), so hosts must keep them in
step (NTP). Hand-offs are at most once: one in flight while its partition
changes owner is lost, and that request is not judged.

Hand-offs are signed (HMAC-SHA256 with a secret the communicators share in
Redis, which clients cannot read) and carry their time: one that is unsigned,
forged, older than ``HANDOFF_SECONDS`` or seen before is dropped and counted,
so no client can plant a watch that later counts as a timeout.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from communicator.backends._logs import Throttled
from communicator.router._directory import Instance
from communicator.router._ports import (
    AddressRouter,
    OutcomeRecorder,
    Partitions,
    Publisher,
    ReplyObserver,
    Senders,
    Stats,
)
from communicator.router._tracking import OutcomeTracker, Pending
from communicator.router._watches import HandoffSeal, Watches
from communicator.wire._message import Message

logger = logging.getLogger(__name__)

#: How long an unwatched reply waits for the hand-off of its request.
ORPHAN_SECONDS = 5.0
#: Unwatched replies remembered at most (the oldest go first).
MAX_ORPHANS = 50_000
#: Least time between two reads of the secret after a hand-off failed to verify.
SECRET_RELOAD_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Orphan:
    """A reply that arrived before the hand-off of its request, held back."""

    arrived: float  # wall clock
    partition: int  # the replier's
    replier: Instance
    message: Message


_Watch = tuple[str, str, str, str, str, str, str, float, float, bool]


def _watch(entry: object) -> _Watch | None:
    """One hand-off entry, checked; ``None`` when it is not one (garbage is only logged).

    The fields: replier, message id, requester, service, version, instance,
    server, sent and deadline (seconds since the epoch), then whether the
    request is judged (``1``; ``0`` for probes; absent from older peers: judged).
    """
    if not isinstance(entry, list) or len(entry) < 9:
        return None
    names = entry[:7]
    if not all(isinstance(name, str) for name in names):
        return None
    try:
        sent, deadline = float(entry[7]), float(entry[8])
    except (TypeError, ValueError):
        return None
    judged = entry[9] != 0 if len(entry) > 9 else True
    return (*names, sent, deadline, judged)


class Requests:
    """Judges the replies to watched requests, and takes the watches peers hand over."""

    def __init__(
        self,
        *,
        tracker: OutcomeTracker,
        partitions: Partitions,
        senders: Senders,
        publisher: Publisher,
        outcomes: OutcomeRecorder,
        observer: ReplyObserver,
        by_address: AddressRouter,
        seal: HandoffSeal,
        watches: Watches,
        stats: Stats,
        log: Throttled,
    ) -> None:
        self._tracker = tracker
        self._partitions = partitions
        self._senders = senders
        self._publisher = publisher
        self._outcomes = outcomes
        self._observer = observer
        self._by_address_router = by_address
        self._seal = seal
        self._watches = watches
        self._stats = stats
        self._log = log
        self._orphans: OrderedDict[tuple[str, str], _Orphan] = OrderedDict()
        self.taken = 0  # watches taken from another communicator
        self.matched_late = 0  # replies that came before their hand-off
        self.refused = 0  # hand-offs dropped: unsigned, forged, stale or replayed

    @property
    def handed(self) -> int:
        """Watches handed to another partition's owner (by the outgoing half, ``Watches``)."""
        return self._watches.handed

    async def on_reply(
        self, partition: int, replier: Instance, in_reply_to: str, message: Message
    ) -> bool:
        """Judge a reply and deliver it to its requester (or hold it); False: route by address."""
        error = message.command == "ERROR"
        answer = self._tracker.answer(replier.client_id, in_reply_to, error=error)
        if answer is not None:
            return await self.answered(answer.pending, replier, in_reply_to, message)
        if len(self._partitions.leased()) == self._partitions.count:
            return False  # no other communicator routes requests: nobody will hand this over
        # Another communicator routed the request: hold the reply until its hand-off comes.
        await self.hold(partition, replier, in_reply_to, message)
        return True

    async def answered(
        self, pending: Pending, replier: Instance, in_reply_to: str, message: Message
    ) -> bool:
        """Deliver a watched request's reply to its requester (False: it is gone)."""
        self._observer.primary_reply(pending.requester, in_reply_to, message)
        if message.command == "ERROR" and pending.judged:
            await self._outcomes.record(
                replier.service,
                replier.version,
                "error_reply",
                reason=message.parameters.get("reason", ""),
                instance=replier.instance,
                server=replier.server,
                reporter=pending.requester,
            )
        requester = self._senders.sender(pending.requester)
        if requester is None:
            return False
        await self._publisher.publish(requester.client_id, message)
        self._stats["routed"] += 1
        return True

    # -- hand-offs from other communicators ----------------------------------------------------

    async def take(self, partition: int, payload: bytes) -> None:
        """Keep the watches handed to ``partition`` if this communicator owns it."""
        if not self._partitions.owns(partition):
            return
        entries = await self._entries(partition, payload)
        if entries is None:
            return
        now_wall, now = time.time(), time.monotonic()
        for entry in entries:
            watch = _watch(entry)
            if watch is None:
                self._log.warning("watches", "malformed request watch %r: ignored", entry)
                continue
            (
                replier,
                message_id,
                requester,
                service,
                version,
                instance,
                server,
                sent,
                deadline,
                judged,
            ) = watch
            pending = Pending(
                requester,
                service,
                version,
                instance,
                server,
                now - (now_wall - sent),
                now + (deadline - now_wall),
                judged,
            )
            self.taken += 1
            orphan = self._orphans.pop((replier, message_id), None)
            if orphan is None:
                self._tracker.expect(replier, message_id, pending)
            else:
                self.matched_late += 1
                await self._release(orphan, message_id, pending, latency=orphan.arrived - sent)

    async def _entries(self, partition: int, payload: bytes) -> list[object] | None:
        """The entries of a hand-off, verified and decoded; None (logged) when it is not one."""
        seal = self._seal
        body = seal.verified(payload)
        if body is None and time.monotonic() - seal.read_at > SECRET_RELOAD_SECONDS:
            await seal.load()  # Redis may have lost it, and a peer made another
            body = seal.verified(payload)
        if body is None:
            self.refused += 1
            self._log.warning(
                "forged",
                "request hand-off on partition %d not signed by a communicator, "
                "stale or replayed: ignored (is a client publishing on track topics? "
                "see deployctl broker-config)",
                partition,
            )
            return None
        try:
            entries = json.loads(body)
        except ValueError:
            entries = None
        if not isinstance(entries, list):
            self._log.warning(
                "watches", "unreadable request watches on partition %d: ignored", partition
            )
            return None
        return entries

    # -- replies that came first ---------------------------------------------------------------

    async def hold(
        self, partition: int, replier: Instance, in_reply_to: str, message: Message
    ) -> None:
        """Hold a reply nobody here watched: its request's hand-off may still come."""
        orphan = _Orphan(time.time(), partition, replier, message)
        self._orphans[replier.client_id, in_reply_to] = orphan
        if len(self._orphans) > MAX_ORPHANS:
            _, oldest = self._orphans.popitem(last=False)
            logger.warning("too many replies held; %s routed by address", oldest.message.command)
            await self._by_address(oldest)

    async def expire(self) -> None:
        """Route by address the replies held ``ORPHAN_SECONDS`` without a hand-off."""
        limit = time.time() - ORPHAN_SECONDS
        while self._orphans:
            key, orphan = next(iter(self._orphans.items()))
            if orphan.arrived > limit:
                break
            del self._orphans[key]
            await self._by_address(orphan)

    async def _by_address(self, orphan: _Orphan) -> None:
        await self._by_address_router.route_by_address(
            orphan.partition, orphan.replier, orphan.message
        )

    async def _release(
        self, orphan: _Orphan, message_id: str, pending: Pending, *, latency: float
    ) -> None:
        """Judge a held reply now that its request is known, and deliver it to the requester."""
        if orphan.message.command != "ERROR" and pending.judged:
            key = (pending.service, pending.version)
            self._tracker.successes[key] += 1
            self._tracker.latencies.setdefault(key, []).append(max(latency, 0.0))
        if not await self.answered(pending, orphan.replier, message_id, orphan.message):
            await self._by_address(orphan)

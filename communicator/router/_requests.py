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

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from communicator.router._directory import Instance
from communicator.router._tracking import Pending
from communicator.wire._message import Message
from communicator.wire._validators import parse_duration

if TYPE_CHECKING:
    from communicator.router._router import Router

logger = logging.getLogger(__name__)

#: How long an unwatched reply waits for the hand-off of its request.
ORPHAN_SECONDS = 5.0
#: Unwatched replies remembered at most (the oldest go first).
MAX_ORPHANS = 50_000
#: How old a hand-off may be when it arrives (wall clocks, so within NTP's reach).
HANDOFF_SECONDS = 10.0
_SIGNATURE_BYTES = 16
#: Least time between two reads of the secret after a hand-off failed to verify.
SECRET_RELOAD_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Orphan:
    """A reply that arrived before the hand-off of its request, held back."""

    arrived: float  # wall clock
    partition: int  # the replier's
    replier: Instance
    message: Message


_Watch = tuple[str, str, str, str, str, str, str, float, float]


def _watch(entry: object) -> _Watch | None:
    """One hand-off entry, checked; ``None`` when it is not one (garbage is only logged).

    The fields: replier, message id, requester, service, version, instance,
    server, sent and deadline (seconds since the epoch).
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
    return (*names, sent, deadline)


class Requests:
    """Watches the requests a router delivers, and hands watches to (and takes them from) peers."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._outgoing: dict[int, list[list[Any]]] = {}
        self._orphans: OrderedDict[tuple[str, str], _Orphan] = OrderedDict()
        self.handed = 0  # watches handed to another partition's owner
        self.taken = 0  # watches taken from another communicator
        self.matched_late = 0  # replies that came before their hand-off
        self.refused = 0  # hand-offs dropped: unsigned, forged, stale or replayed
        self._secret = b""
        self._secret_read = 0.0  # monotonic time the secret was last read
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signatures, by arrival

    async def load_secret(self) -> None:
        """Read (or, the first communicator, create) the secret hand-offs are signed with."""
        router = self._router
        key = router.keys.router_secret()
        await router.redis.set(key, secrets.token_hex(32), nx=True)
        value = await router.redis.get(key)
        text = value.decode() if isinstance(value, bytes) else str(value)
        self._secret = bytes.fromhex(text)
        self._secret_read = time.monotonic()

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def _verified(self, payload: bytes) -> bytes | None:
        """The body of a hand-off signed by a communicator, new and recent; else None."""
        signature, body = payload[:_SIGNATURE_BYTES], payload[_SIGNATURE_BYTES:]
        if not self._secret or not hmac.compare_digest(signature, self._sign(body)):
            return None
        stamp, _, entries = body.partition(b" ")
        try:
            age = time.time() - float(stamp)
        except ValueError:
            return None
        now = time.monotonic()
        while self._seen and next(iter(self._seen.values())) < now - 2 * HANDOFF_SECONDS:
            self._seen.popitem(last=False)
        if abs(age) > HANDOFF_SECONDS or signature in self._seen:
            return None
        self._seen[signature] = now
        return entries

    def watch(self, target: Instance, message: Message, *, requester: str) -> None:
        """Start watching the outcome of ``message``, just delivered to ``target``."""
        router = self._router
        message_id = message.parameters.get("message_id")
        if message_id is None:
            router.tracker.delivered(target.service, target.version)  # one-way: delivered is done
            return
        timeout = router.config.request_timeout
        if "timeout" in message.parameters:
            with contextlib.suppress(ValueError):
                timeout = parse_duration(message.parameters["timeout"])
        # A timeout below the service's floor is the requester's impatience, not the
        # replier's fault: the communicator judges such a request by its default.
        definition = router.service_definitions.get(target.service)
        floor = definition.min_timeout if definition else router.config.min_timeout
        if timeout < floor:
            timeout = router.config.request_timeout
        now = time.monotonic()
        pending = Pending(
            requester,
            target.service,
            target.version,
            target.instance,
            target.server,
            now,
            now + timeout,
        )
        partition = router.table.partition(target.client_id)
        if router.table.owns(partition, now):
            router.tracker.expect(target.client_id, message_id, pending)
        else:  # another communicator routes the reply: it watches for it
            self.give(partition, target.client_id, message_id, pending)

    async def on_reply(
        self, partition: int, replier: Instance, in_reply_to: str, message: Message
    ) -> bool:
        """Judge a reply and deliver it to its requester (or hold it); False: route by address."""
        router = self._router
        error = message.command == "ERROR"
        answer = router.tracker.answer(replier.client_id, in_reply_to, error=error)
        if answer is not None:
            return await self.answered(answer.pending, replier, in_reply_to, message)
        if len(router.table.leased()) == router.table.count:
            return False  # no other communicator routes requests: nobody will hand this over
        # Another communicator routed the request: hold the reply until its hand-off comes.
        await self.hold(partition, replier, in_reply_to, message)
        return True

    async def answered(
        self, pending: Pending, replier: Instance, in_reply_to: str, message: Message
    ) -> bool:
        """Deliver a watched request's reply to its requester (False: it is gone)."""
        router = self._router
        router.shadow.primary_reply(pending.requester, in_reply_to, message)
        if message.command == "ERROR":
            await router.control.record(
                replier.service,
                replier.version,
                "error_reply",
                reason=message.parameters.get("reason", ""),
                instance=replier.instance,
                server=replier.server,
                reporter=pending.requester,
            )
        requester = router.directory.sender(pending.requester)
        if requester is None:
            return False
        await router.publish(requester.client_id, message)
        router.stats["routed"] += 1
        return True

    # -- hand-offs between communicators -------------------------------------------------------

    def give(self, partition: int, replier: str, message_id: str, pending: Pending) -> None:
        """Queue the watch of a request for the owner of ``partition`` (sent this loop turn)."""
        if not self._outgoing:
            # Everything routed in this turn of the event loop goes out in one message.
            asyncio.get_running_loop().call_soon(self._send)
        now_wall, now = time.time(), time.monotonic()
        self._outgoing.setdefault(partition, []).append(
            [
                replier,
                message_id,
                pending.requester,
                pending.service,
                pending.version,
                pending.instance,
                pending.server,
                now_wall - (now - pending.sent),
                now_wall + (pending.deadline - now),
            ]
        )
        self.handed += 1

    def _send(self) -> None:
        outgoing, self._outgoing = self._outgoing, {}
        topics = self._router.topics
        stamp = f"{time.time():.6f} ".encode()
        for partition, entries in outgoing.items():
            body = stamp + json.dumps(entries, separators=(",", ":")).encode()
            payload = self._sign(body) + body
            if not self._router.publish_raw(topics.tracking(partition), payload):
                logger.warning("not connected: %d request watches lost", len(entries))

    async def take(self, partition: int, payload: bytes) -> None:
        """Keep the watches handed to ``partition`` if this communicator owns it."""
        router = self._router
        if not router.table.owns(partition):
            return
        body = self._verified(payload)
        if body is None and time.monotonic() - self._secret_read > SECRET_RELOAD_SECONDS:
            await self.load_secret()  # Redis may have lost it, and a peer made another
            body = self._verified(payload)
        if body is None:
            self.refused += 1
            router.log.warning(
                "forged",
                "request hand-off on partition %d not signed by a communicator, "
                "stale or replayed: ignored (is a client publishing on track topics? "
                "see deployctl broker-config)",
                partition,
            )
            return
        try:
            entries = json.loads(body)
        except ValueError:
            entries = None
        if not isinstance(entries, list):
            router.log.warning(
                "watches", "unreadable request watches on partition %d: ignored", partition
            )
            return
        now_wall, now = time.time(), time.monotonic()
        for entry in entries:
            watch = _watch(entry)
            if watch is None:
                router.log.warning("watches", "malformed request watch %r: ignored", entry)
                continue
            replier, message_id, requester, service, version, instance, server, sent, deadline = (
                watch
            )
            pending = Pending(
                requester,
                service,
                version,
                instance,
                server,
                now - (now_wall - sent),
                now + (deadline - now_wall),
            )
            self.taken += 1
            orphan = self._orphans.pop((replier, message_id), None)
            if orphan is None:
                router.tracker.expect(replier, message_id, pending)
            else:
                self.matched_late += 1
                await self._release(orphan, message_id, pending, latency=orphan.arrived - sent)

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
        await self._router.route_by_address(orphan.partition, orphan.replier, orphan.message)

    async def _release(
        self, orphan: _Orphan, message_id: str, pending: Pending, *, latency: float
    ) -> None:
        """Judge a held reply now that its request is known, and deliver it to the requester."""
        tracker = self._router.tracker
        if orphan.message.command != "ERROR":
            key = (pending.service, pending.version)
            tracker.successes[key] += 1
            tracker.latencies.setdefault(key, []).append(max(latency, 0.0))
        if not await self.answered(pending, orphan.replier, message_id, orphan.message):
            await self._by_address(orphan)

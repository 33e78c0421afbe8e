"""Watching the requests this router delivers, and handing watches to the replier's router.

See :mod:`communicator.router._requests` for the whole story: a request
delivered to an instance is watched by whoever routes its replier's partition;
when that is another communicator, the watch is handed to it on
``<prefix>track/<partition>``, signed with the communicators' shared secret.
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
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from communicator.backends._topics import Topics
from communicator.router._directory import Instance
from communicator.router._ports import Partitions, Publisher
from communicator.router._tracking import OutcomeTracker, Pending
from communicator.wire._message import UNJUDGED_COMMANDS, Message
from communicator.wire._services import ServiceDefinition
from communicator.wire._validators import parse_duration

logger = logging.getLogger(__name__)

#: How old a hand-off may be when it arrives (wall clocks, so within NTP's reach).
HANDOFF_SECONDS = 10.0
_SIGNATURE_BYTES = 16


class HandoffSeal:
    """Signs hand-offs with the secret the communicators share, and checks the ones that come."""

    def __init__(self, *, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._secret = b""
        self.read_at = 0.0  # monotonic time the secret was last read
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signatures, by arrival

    async def load(self) -> None:
        """Read (or, the first communicator, create) the secret hand-offs are signed with."""
        await self._redis.set(self._key, secrets.token_hex(32), nx=True)
        value = await self._redis.get(self._key)
        text = value.decode() if isinstance(value, bytes) else str(value)
        self._secret = bytes.fromhex(text)
        self.read_at = time.monotonic()

    def seal(self, body: bytes) -> bytes:
        """``body`` with its signature in front."""
        return self._sign(body) + body

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def verified(self, payload: bytes) -> bytes | None:
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


class Watches:
    """Starts watching each delivered request, here or at the router of its replier."""

    def __init__(
        self,
        *,
        tracker: OutcomeTracker,
        partitions: Partitions,
        publisher: Publisher,
        seal: HandoffSeal,
        topics: Topics,
        service_definitions: Mapping[str, ServiceDefinition],
        request_timeout: float,
        min_timeout: float,
    ) -> None:
        self._tracker = tracker
        self._partitions = partitions
        self._publisher = publisher
        self._seal = seal
        self._topics = topics
        self._definitions = service_definitions
        self._request_timeout = request_timeout
        self._min_timeout = min_timeout
        self._outgoing: dict[int, list[list[Any]]] = {}
        self.handed = 0  # watches handed to another partition's owner

    def watch(self, target: Instance, message: Message, *, requester: str) -> None:
        """Start watching the outcome of ``message``, just delivered to ``target``."""
        message_id = message.parameters.get("message_id")
        judged = message.command not in UNJUDGED_COMMANDS
        if message_id is None:
            if judged:  # one-way: delivered is done
                self._tracker.delivered(target.service, target.version)
            return
        now = time.monotonic()
        pending = Pending(
            requester,
            target.service,
            target.version,
            target.instance,
            target.server,
            now,
            now + self._timeout(target, message),
            judged,
        )
        partition = self._partitions.partition(target.client_id)
        if self._partitions.owns(partition, now):
            self._tracker.expect(target.client_id, message_id, pending)
        else:  # another communicator routes the reply: it watches for it
            self.give(partition, target.client_id, message_id, pending)

    def _timeout(self, target: Instance, message: Message) -> float:
        timeout = self._request_timeout
        if "timeout" in message.parameters:
            with contextlib.suppress(ValueError):
                timeout = parse_duration(message.parameters["timeout"])
        # A timeout below the service's floor is the requester's impatience, not the
        # replier's fault: the communicator judges such a request by its default.
        definition = self._definitions.get(target.service)
        floor = definition.min_timeout if definition else self._min_timeout
        return self._request_timeout if timeout < floor else timeout

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
                int(pending.judged),
            ]
        )
        self.handed += 1

    def _send(self) -> None:
        outgoing, self._outgoing = self._outgoing, {}
        stamp = f"{time.time():.6f} ".encode()
        for partition, entries in outgoing.items():
            body = stamp + json.dumps(entries, separators=(",", ":")).encode()
            if not self._publisher.publish_raw(
                self._topics.tracking(partition), self._seal.seal(body)
            ):
                logger.warning("not connected: %d request watches lost", len(entries))

"""What arrives from the broker, and where each message goes.

An instance's message (on ``<prefix>in/<client id>``) is routed at once when
this communicator owns its sender's partition, else held in that partition's
buffer (:mod:`communicator.router._partitions`); a request watch handed over by
a peer (on ``<prefix>track/<partition>``) goes to the request watches. Retained
messages are ignored and cleared.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from communicator.backends._logs import Throttled
from communicator.backends._topics import Topics
from communicator.router._identity import Probes
from communicator.router._partitions import PartitionTable, Received, fingerprint
from communicator.router._ports import Link, Routing, Stats

#: Messages routed in a row before the other tasks get a turn. Routing a message
#: rarely waits, so a flood would otherwise starve the lease renewals until the
#: partitions lapse.
YIELD_EVERY = 64


class HandoffTaker(Protocol):
    """Takes the request watches a peer handed to one of our partitions."""

    async def take(self, partition: int, payload: bytes) -> None:
        """Keep the watches in ``payload`` if this communicator owns ``partition``."""


class Intake:
    """Reads a broker connection and sends each message on to whom it concerns."""

    def __init__(
        self,
        *,
        topics: Topics,
        table: PartitionTable,
        routing: Routing,
        handoffs: HandoffTaker,
        probes: Probes,
        stats: Stats,
        log: Throttled,
    ) -> None:
        self._table = table
        self._routing = routing
        self._handoffs = handoffs
        self._probes = probes
        self._stats = stats
        self._log = log
        self._in_prefix = topics.inbound("")
        self._track_prefix = topics.tracking(0)[:-1]

    async def read(self, link: Link) -> None:
        """Take what arrives on ``link``, in order, until it is gone."""
        routed = 0
        async for message in link:
            if message.retain:
                self._retained(link, message.topic, message.payload)
                continue
            await self.take(message.topic, message.payload)
            routed += 1
            if routed % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let renewals run during a flood

    def _retained(self, link: Link, topic: str, payload: bytes) -> None:
        """Ignore a retained message, and clear it: it would count again at every restart.

        Messages are events, not state: a retained FAILURE, say, would be
        recorded anew each time a communicator subscribes.
        """
        if not payload:
            return  # our own clearing, or one of a peer
        self._stats["retained"] += 1
        link.publish(topic, b"", retain=True)
        self._log.warning(
            "retained",
            "retained message on %s ignored and cleared (publish with retain off)",
            topic,
        )

    async def take(self, topic: str, payload: bytes) -> None:
        """Route, hold or pass on one message that arrived on ``topic``."""
        if not topic.startswith(self._in_prefix):
            number = topic[len(self._track_prefix) :]
            valid = topic.startswith(self._track_prefix) and number.isascii() and number.isdigit()
            if valid and int(number) < self._table.count:
                await self._handoffs.take(int(number), payload)
            return
        client_id = topic[len(self._in_prefix) :]
        if not client_id:
            self._stats["invalid"] += 1  # nobody to answer: out/ would reach every snooper
            return
        if self._probes.pending:
            self._probes.heard(client_id)
        received = Received(client_id, payload, fingerprint(client_id, payload), time.monotonic())
        partition = self._table.partition(client_id)
        if self._table.owns(partition, received.at):
            await self._routing.route(partition, received)
        else:
            self._table.hold(partition, received)

"""A broker in memory, for running a router (and its clients) with no MQTT server.

Like httpx's ``MockTransport``, :class:`MemoryBroker` stands in for the network:
``Router(..., connect=broker.connect)`` routes through it, and a test talks to
the router through links of its own::

    broker = MemoryBroker()
    router = Router(settings=settings, redis=redis, connect=broker.connect)
    client = await broker.connect("orders-1")
    await client.subscribe([(topics.outbound("orders-1"), 0)])
    client.publish(topics.inbound("orders-1"), encode(register))
    reply = await client.receive(timeout=5)

Each :class:`MemoryLink` offers what the router uses of a
:class:`~communicator.backends._link.BrokerLink`: ``publish`` (QoS 0), ``subscribe``,
``async for`` over what arrives (ending with :class:`LinkError` once the link is
gone), ``connected``, ``abort`` and ``async with``. The broker matches topic
filters as MQTT 3.1.1 does (``+`` one level, ``#`` the rest, no wildcard over
``$`` topics), keeps retained messages (sent with ``retain`` set on a new
subscription only), and lets one connection per client id live: a second one
takes the session over, as a real broker does. A message is in every matching
inbox when ``publish`` returns, so each publisher's order is kept; inboxes are
unbounded (no back-pressure) and there are no wills.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Mapping
from types import MappingProxyType, TracebackType

from communicator.backends._link import LinkError
from communicator.backends._mqtt_packets import Publish

#: The granted QoS that says a subscription was refused (MQTT 3.1.1 §3.9.3).
REFUSED = 0x80


def valid_filter(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is a valid MQTT filter (wildcards as whole levels, ``#`` last)."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (a valid one), as MQTT 3.1.1 §4.7 says."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True  # the parent level too: "a/#" matches "a"
        if index >= len(levels) or (level != "+" and level != levels[index]):
            return False
    return len(wanted) == len(levels)


class MemoryBroker:
    """The hub the memory links of one test (or process) publish through."""

    def __init__(self) -> None:
        self._links: dict[str, MemoryLink] = {}
        self._retained: dict[str, bytes] = {}

    async def connect(self, client_id: str) -> MemoryLink:
        """Open a link as ``client_id`` (a link already open with that id is dropped)."""
        previous = self._links.get(client_id)
        if previous is not None:
            previous.lose(f"client id {client_id} connected again (session taken over)")
        link = MemoryLink(self, client_id)
        self._links[client_id] = link
        await asyncio.sleep(0)  # connecting takes a loop turn, as over a socket
        return link

    def disconnect(self, client_id: str) -> bool:
        """Drop the link of ``client_id`` as a network failure would; False if none was open."""
        link = self._links.get(client_id)
        if link is None:
            return False
        link.lose("the broker dropped the connection")
        return True

    @property
    def clients(self) -> list[str]:
        """The client ids connected now."""
        return sorted(self._links)

    @property
    def retained(self) -> Mapping[str, bytes]:
        """The retained messages, by topic."""
        return MappingProxyType(self._retained)

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)  # an empty retained message clears the topic
        for link in list(self._links.values()):
            if link.wants(topic):
                link.offer(Publish(topic, payload))

    def _retained_for(self, topic_filter: str) -> Iterator[Publish]:
        for topic, payload in self._retained.items():
            if topic_matches(topic_filter, topic):
                yield Publish(topic, payload, retain=True)

    def _gone(self, link: MemoryLink) -> None:
        if self._links.get(link.client_id) is link:
            del self._links[link.client_id]


class MemoryLink:
    """One client's connection to a :class:`MemoryBroker` (open it with ``broker.connect``)."""

    def __init__(self, broker: MemoryBroker, client_id: str) -> None:
        self.client_id = client_id
        self._broker = broker
        self._filters: list[str] = []
        self._inbox: deque[Publish] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._lost: LinkError | None = None

    @property
    def connected(self) -> bool:
        """Whether messages can be sent now."""
        return self._lost is None

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Send ``payload`` on ``topic`` to every subscriber; ``False`` when closed.

        ``retain`` keeps it for later subscribers; with an empty payload it clears
        the message retained there.
        """
        if self._lost is not None:
            return False
        self._broker._publish(topic, payload, retain=retain)
        return True

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """Subscribe to ``(filter, max QoS)`` pairs; the granted QoS of each (128: refused).

        Everything is delivered at QoS 0, so 0 is granted; the retained messages
        matching a new filter arrive at once, with ``retain`` set.
        """
        if self._lost is not None:
            raise self._lost
        granted = []
        for topic_filter, _ in topics:
            if not valid_filter(topic_filter):
                granted.append(REFUSED)
                continue
            granted.append(0)
            if topic_filter not in self._filters:
                self._filters.append(topic_filter)
            for message in self._broker._retained_for(topic_filter):
                self.offer(message)
        await asyncio.sleep(0)  # the SUBACK takes a loop turn
        return granted

    def wants(self, topic: str) -> bool:
        """Whether one of this link's subscriptions matches ``topic``."""
        return self._lost is None and any(topic_matches(f, topic) for f in self._filters)

    def offer(self, message: Publish) -> None:
        """Put a message in the inbox (the broker calls this)."""
        if self._lost is None:
            self._inbox.append(message)
            self._wake()

    async def receive(self, timeout: float | None = None) -> Publish:
        """The next message; :class:`TimeoutError` when none comes within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def lose(self, reason: str) -> None:
        """End the connection: iteration ends with a :class:`LinkError` saying ``reason``."""
        if self._lost is None:
            self._lost = LinkError(reason)
            self._broker._gone(self)
            self._wake()

    def abort(self) -> None:
        """Drop the connection at once."""
        self.lose("the connection was aborted")

    async def close(self) -> None:
        """Disconnect."""
        self.lose("the connection was closed")

    async def __aenter__(self) -> MemoryLink:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> MemoryLink:
        return self

    async def __anext__(self) -> Publish:
        """The next message, in the order they were published."""
        while not self._inbox:
            if self._lost is not None:
                raise self._lost
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        return self._inbox.popleft()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

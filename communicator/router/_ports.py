"""The narrow interfaces the router's collaborators are given, instead of the router.

:class:`~communicator.router._router.Router` builds every collaborator and hands
each one only these ports (and the plain stores and tables it uses), so no
collaborator imports the router, and each constructor says what it depends on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Protocol

from communicator.backends._mqtt_packets import Publish
from communicator.registry._registry import InstanceInfo
from communicator.router._directory import Instance
from communicator.router._partitions import Received
from communicator.wire._message import Message

#: Counters of the router (``routed``, ``invalid``, ``unknown``, ``cached`` ...), shared.
Stats = Counter[str]


class Link(Protocol):
    """What the router uses of a broker connection (:class:`BrokerLink`, ``MemoryLink``)."""

    @property
    def connected(self) -> bool:
        """Whether messages can be sent now."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Send ``payload`` on ``topic`` (QoS 0); ``False`` when not connected."""

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """Subscribe to ``(filter, max QoS)`` pairs; the granted QoS of each."""

    def abort(self) -> None:
        """Drop the connection at once."""

    def __aiter__(self) -> AsyncIterator[Publish]:
        """The messages that arrive, in order; ends with ``LinkError`` when the link is gone."""

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


#: Opens a broker connection for a client id (raises ``LinkError`` or ``OSError``).
Connect = Callable[[str], Awaitable[Link]]


class Publisher(Protocol):
    """Sends messages from the router to the instances (dropped while disconnected)."""

    async def publish(self, client_id: str, message: Message) -> None:
        """Send ``message`` to the instance behind ``client_id``."""

    def publish_raw(self, topic: str, payload: bytes) -> bool:
        """Publish bytes on any topic (QoS 0); ``False`` when not connected."""

    async def reply(self, client_id: str, command: str, /, **parameters: str) -> None:
        """Send a message from the communicator itself to ``client_id``."""


class LinkStatus(Protocol):
    """Where the router's broker connection stands."""

    @property
    def connected(self) -> bool:
        """Whether the router is connected to the broker now."""

    @property
    def connections(self) -> int:
        """Broker connections made so far (a will checks it did not change)."""

    @property
    def listening(self) -> bool:
        """Subscribed: every instance's messages reach the router."""

    @property
    def listening_since(self) -> float:
        """Monotonic time of the last subscription."""


class OutcomeRecorder(Protocol):
    """Records a failure of a version, cutting it off here when it crosses its policy."""

    async def record(
        self,
        service: str,
        version: str,
        kind: str,
        *,
        reason: str = "",
        instance: str = "",
        server: str = "",
        reporter: str = "",
    ) -> None:
        """Record one outcome of ``kind`` (an ``OutcomeKind`` value) against ``version``."""


class Partitions(Protocol):
    """The partition table, as the request watches read it."""

    @property
    def count(self) -> int:
        """How many partitions there are."""

    def partition(self, client_id: str) -> int:
        """The partition of ``client_id``."""

    def owns(self, partition: int, now: float | None = None) -> bool:
        """Whether this communicator routes ``partition`` now."""

    def leased(self) -> list[int]:
        """The partitions this communicator holds the lease of."""


class Senders(Protocol):
    """The directory, as seen by whoever only needs to know who is registered."""

    def sender(self, client_id: str) -> Instance | None:
        """The registered instance publishing as ``client_id``."""


class CachedDelivery(Protocol):
    """Delivers what waits in the message cache, once it can be routed."""

    async def deliver_cached(self, service: str | None = None) -> None:
        """Deliver what waits for ``service`` (or for every service)."""


class AddressRouter(Protocol):
    """Routes a message by its address (broadcast, or one instance, else the cache)."""

    async def route_by_address(self, partition: int, sender: Instance, message: Message) -> None:
        """Route ``message`` of ``sender``, whose partition is ``partition``."""


class Watcher(Protocol):
    """Watches the outcome of a message delivered to an instance."""

    def watch(self, target: Instance, message: Message, *, requester: str) -> None:
        """Start watching ``message``, just delivered to ``target`` for ``requester``."""


class Mirrors(Protocol):
    """Shadow traffic, as routing uses it."""

    async def mirror(self, sender: Instance, message: Message, primary: Instance) -> None:
        """Copy a message just delivered to ``primary`` to the service's mirrors."""

    async def on_reply(self, replier: Instance, in_reply_to: str, message: Message) -> None:
        """Take a reply to a shadow copy (it is never delivered)."""


class ReplyObserver(Protocol):
    """Sees the primary's replies to requests (shadow comparisons)."""

    def primary_reply(self, requester: str, in_reply_to: str, message: Message) -> None:
        """The primary's reply to a request of ``requester``."""


class BusyReports(Protocol):
    """Takes an instance's BUSY messages."""

    async def on_busy(self, sender: Instance, message: Message) -> None:
        """Apply a ``BUSY`` message from a registered instance."""


class Announcer(Protocol):
    """Tells every communicator that a service changed."""

    async def announce(
        self, service: str, *, added: InstanceInfo | None = None, removed: str | None = None
    ) -> None:
        """Announce a change of ``service`` (an instance added, or a client id removed)."""


#: Handles one message addressed to the communicator: ``(client id, message)``.
CommandHandler = Callable[[str, Message], Awaitable[None]]


class Registrar(Protocol):
    """The registration commands: REGISTER, UNREGISTER, DISCONNECTED (wills) and COMMANDS."""

    async def on_register(self, client_id: str, message: Message) -> None:
        """Answer a REGISTER."""

    async def on_unregister(self, client_id: str, message: Message) -> None:
        """Take an UNREGISTER."""

    async def on_disconnected(self, client_id: str, message: Message) -> None:
        """Take a will (DISCONNECTED)."""

    async def on_commands(self, client_id: str, message: Message) -> None:
        """Take a new list of accepted commands."""


class ControlHandler(Protocol):
    """Answers the messages addressed to the communicator itself."""

    async def handle(self, client_id: str, message: Message) -> None:
        """Answer one message addressed to the communicator."""


class Replies(Protocol):
    """Judges the replies to watched requests and delivers them to their requesters."""

    async def on_reply(
        self, partition: int, replier: Instance, in_reply_to: str, message: Message
    ) -> bool:
        """Judge a reply and deliver it (or hold it); ``False``: route it by its address."""


class Routing(Protocol):
    """The routing of the partitions this communicator owns, as partition ownership drives it."""

    @property
    def in_flight(self) -> int | None:
        """The partition of the message being routed now, if any."""

    async def route(self, partition: int, received: Received) -> None:
        """Route one message of a partition we own (or are taking over)."""

"""The router's broker connection as its collaborators see it: what they send, and its state.

The router's MQTT loop attaches each new connection to the :class:`BrokerSession`
and detaches it when it drops; the collaborators only publish through it (the
``Publisher`` port) and read whether it listens (the ``LinkStatus`` port).
"""

from __future__ import annotations

import asyncio
import logging
import time

from communicator.backends._link import BrokerLink
from communicator.backends._logs import Throttled
from communicator.backends._mqtt import broker_address, tls_context
from communicator.backends._settings import Settings
from communicator.backends._topics import Topics
from communicator.router._ports import Connect, Link
from communicator.wire._codec import encode
from communicator.wire._message import Message

logger = logging.getLogger(__name__)


class BrokerSession:
    """The current broker connection of one router (none while it reconnects)."""

    def __init__(self, *, topics: Topics, server_name: str, log: Throttled) -> None:
        self._topics = topics
        self._server_name = server_name
        self._log = log
        self.link: Link | None = None
        self.connections = 0  # broker connections made so far (a will checks it did not change)
        self.listening = False  # subscribed: every instance's messages reach us
        self.listening_since = 0.0  # monotonic time of the last subscription

    def attach(self, link: Link) -> None:
        """Send through ``link`` from now on: a new connection."""
        self.link = link
        self.connections += 1

    def subscribed(self) -> None:
        """The new connection listens to every instance."""
        self.listening, self.listening_since = True, time.monotonic()

    def detach(self) -> None:
        """Stop sending: the connection is gone, or the router stops."""
        self.link = None

    @property
    def connected(self) -> bool:
        """Whether the router is connected to the broker now."""
        return self.link is not None and self.link.connected

    async def publish(self, client_id: str, message: Message) -> None:
        """Send ``message`` to the instance behind ``client_id`` (dropped if disconnected)."""
        link = self.link
        if link is None or not link.publish(self._topics.outbound(client_id), encode(message)):
            self._log.warning(
                "dropped", "not connected; dropped %s for %s", message.command, client_id
            )

    def publish_raw(self, topic: str, payload: bytes) -> bool:
        """Publish bytes on any topic (QoS 0); False when not connected."""
        link = self.link
        return link is not None and link.publish(topic, payload)

    async def reply(self, client_id: str, command: str, /, **parameters: str) -> None:
        """Send a message from the communicator itself to ``client_id``."""
        await self.publish(
            client_id,
            Message.model_construct(
                command=command,
                server="",
                service="",
                sent_from_server=self._server_name,
                sent_from_service="communicator",
                parameters=parameters,
            ),
        )


async def broker_connector(settings: Settings) -> Connect:
    """Open MQTT connections to the broker of ``settings`` (TLS prepared once, here)."""
    address = broker_address(settings)
    tls = await asyncio.to_thread(tls_context, settings) if address.tls else None

    async def connect(client_id: str) -> Link:
        # A clean session: a dead communicator's messages are replayed by its peers
        # (docs/protocol.md §7), not queued by the broker for an id that never returns.
        return await BrokerLink.open(
            address.host,
            address.port,
            client_id=client_id,
            username=address.username,
            password=address.password,
            tls=tls,
            timeout=settings.connect_timeout,
        )

    return connect

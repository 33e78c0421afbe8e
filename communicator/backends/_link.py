"""The router's connection to the broker: MQTT 3.1.1 straight on an asyncio protocol.

Why not aiomqtt, as everywhere else: the router is the one process every
message crosses twice, and paho (under aiomqtt) spends most of the router's
CPU per message and adds loop iterations between a message's arrival and its
forwarding. :class:`BrokerLink` parses what arrives in ``data_received``,
hands the messages over in order, and writes each outgoing QoS 0 PUBLISH to
the socket at once (bench/bench_routing.py measures the difference).

It does only what the router needs: a clean session without a will, QoS 0
out, any QoS in (acknowledged as the specification asks), keep-alive, and
back-pressure: when the router falls behind, or the broker stops taking our
writes, the link stops reading, and the broker holds the rest. A message larger
than ``max_packet_size`` is dropped as its bytes arrive, never held: one
client's huge publish costs the router neither memory nor its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from types import TracebackType
from typing import cast

from communicator._errors import DeployctlError
from communicator.backends import _mqtt_packets as packets
from communicator.backends._logs import Throttled
from communicator.backends._mqtt_packets import PacketReader, ProtocolError, Publish
from communicator.wire._codec import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

#: The largest packet the link reads: a payload of MAX_MESSAGE_BYTES, with room for
#: the topic, its length, a packet id and the fixed header. `deployctl broker-config`
#: gives Mosquitto the same ``max_packet_size``, so whatever the broker forwards fits.
MAX_PACKET_SIZE = MAX_MESSAGE_BYTES + 4096


class LinkError(DeployctlError, ConnectionError):
    """The broker connection failed, was refused, or ended (an ``OSError`` too).

    Attributes:
        code: The CONNACK return code when the broker refused us, else ``None``.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def fix(self) -> str:
        """What to change when the broker refuses who we are (empty otherwise)."""
        if self.code in (4, 5):  # bad user name or password; not authorised
            return (
                "fix DEPLOYCTL_MQTT_USERNAME and DEPLOYCTL_MQTT_PASSWORD (or user:password in "
                "DEPLOYCTL_MQTT_URL) to match the broker's password file"
            )
        if self.code == 2:
            return "the broker's ACL must allow this communicator's client id"
        return ""


class BrokerLink(asyncio.Protocol):
    """One MQTT connection: ``publish`` QoS 0, ``async for`` over what arrives.

    Open it with :meth:`open`; use it as ``async with``. Iteration ends with
    :class:`LinkError` once the connection is gone and every message that
    arrived before has been handed over. Each message is a :class:`Publish`;
    its ``retain`` says the broker kept it from before we subscribed.

    Attributes:
        keepalive: Seconds between our PINGREQs (half of it) and the broker's silence limit.
        inbox_limit: Messages waiting to be taken before the link stops reading.
        max_packet_size: Larger incoming PUBLISH packets are dropped unread (and acknowledged).
        oversized: How many messages were dropped for their size.
    """

    def __init__(
        self,
        *,
        keepalive: int = 30,
        inbox_limit: int = 10_000,
        max_packet_size: int = MAX_PACKET_SIZE,
    ) -> None:
        self.keepalive = keepalive
        self.inbox_limit = inbox_limit
        self.max_packet_size = max_packet_size
        self.oversized = 0
        self._log = Throttled(logger)  # a flood of them must not flood the log
        self._reader = PacketReader(max_packet_size)
        self._transport: asyncio.Transport | None = None
        self._inbox: deque[Publish] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._replies: dict[tuple[int, int], asyncio.Future[bytes]] = {}
        self._lost: LinkError | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._paused: set[str] = set()  # why reading is paused: "inbox", "writes"
        self._releases: set[int] = set()  # QoS 2 messages delivered, awaiting PUBREL
        self._last_heard = time.monotonic()
        self._next_id = 0
        self._pinger: asyncio.Task[None] | None = None

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 30,
        timeout: float = 10.0,
        max_packet_size: int = MAX_PACKET_SIZE,
    ) -> BrokerLink:
        """Connect and wait for the broker's CONNACK.

        Raises:
            LinkError: The broker refused us (``code`` says why) or did not answer.
            OSError: The TCP or TLS connection failed.
        """
        loop = asyncio.get_running_loop()
        link = cls(keepalive=keepalive, max_packet_size=max_packet_size)
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: link, host, port, ssl=tls, server_hostname=host if tls else None
            )
            try:
                link._write(
                    packets.connect(
                        client_id, keepalive=keepalive, username=username, password=password
                    )
                )
                body = await link._reply(packets.CONNACK, 0)
                _, code = packets.parse_connack(body)
            except ProtocolError as exc:
                link.abort()
                raise LinkError(f"the broker's CONNACK is not MQTT 3.1.1: {exc}") from exc
            except BaseException:
                link.abort()
                raise
        if code:
            link.abort()
            reason = packets.CONNACK_REASONS.get(code, f"return code {code}")
            raise LinkError(f"the broker refused the connection: {reason}", code=code)
        link._pinger = loop.create_task(link._keep_alive(), name=f"mqtt-keepalive-{client_id}")
        return link

    async def __aenter__(self) -> BrokerLink:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, timeout: float = 1.0) -> None:
        """Say goodbye (DISCONNECT), let queued writes go out, and wait for the socket to close."""
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(packets.DISCONNECT_PACKET)
            self._transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)

    def abort(self) -> None:
        """Drop the connection at once, without a goodbye."""
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None:
            self._transport.abort()

    @property
    def connected(self) -> bool:
        """Whether messages can be sent now."""
        return self._transport is not None and not self._transport.is_closing()

    # -- what the router calls ----------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Send ``payload`` on ``topic`` at QoS 0 (written at once); ``False`` when closed.

        ``retain`` with an empty payload clears the message the broker retains there.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(packets.publish(topic, payload, retain=retain))
        return True

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """Subscribe to ``(filter, max QoS)`` pairs; the granted QoS of each (128: refused)."""
        self._next_id = self._next_id % 0xFFFF + 1
        packet_id = self._next_id
        self._write(packets.subscribe(packet_id, topics))
        async with asyncio.timeout(timeout):
            body = await self._reply(packets.SUBACK, packet_id)
        return list(body[2:])

    def __aiter__(self) -> BrokerLink:
        return self

    async def __anext__(self) -> Publish:
        """The next message, in the order the broker sent them."""
        inbox = self._inbox
        while not inbox:
            if self._lost is not None:
                raise self._lost
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        message = inbox.popleft()
        if "inbox" in self._paused and len(inbox) <= self.inbox_limit // 2:
            self._resume("inbox")
        return message

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small messages must not wait for the broker's delayed ACKs (Nagle).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._last_heard = time.monotonic()
        try:
            for kind, flags, body, discarded in self._reader.feed(data):
                if kind != packets.PUBLISH:
                    self._control(kind, body)
                elif discarded:
                    self._drop(packets.parse_publish(flags, body), len(body) + discarded)
                else:
                    self._received(packets.parse_publish(flags, body))
        except ProtocolError as exc:
            logger.warning("the broker sent something that is not MQTT 3.1.1 (%s)", exc)
            self._lost = LinkError(f"protocol error: {exc}")
            self.abort()
        if self._inbox:
            self._wake()
            if len(self._inbox) >= self.inbox_limit:
                self._pause("inbox")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            cause = f" ({exc})" if exc else ""
            self._lost = LinkError(f"the broker closed the connection{cause}")
        if self._pinger is not None:
            self._pinger.cancel()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(self._lost)
        self._replies.clear()
        self._wake()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._pause("writes")

    def resume_writing(self) -> None:
        self._resume("writes")

    # -- inside -------------------------------------------------------------------------------

    def _received(self, message: Publish) -> None:
        if message.qos == 1:
            self._send(packets.acknowledge(packets.PUBACK, message.packet_id))
        elif message.qos == 2:
            self._send(packets.acknowledge(packets.PUBREC, message.packet_id))
            if message.packet_id in self._releases:
                return  # a resend of one we already have (§4.3.3)
            self._releases.add(message.packet_id)
        self._inbox.append(message)

    def _drop(self, head: Publish, size: int) -> None:
        """An oversized message (only its topic read): acknowledge it, count it, say so."""
        self.oversized += 1
        self._log.warning(
            "oversized",
            "dropped a message of %d bytes on %.200r: larger than max_packet_size (%d bytes)",
            size,
            head.topic,
            self.max_packet_size,
        )
        # Acknowledged, so that the broker does not keep it in flight for us forever.
        if head.qos == 1:
            self._send(packets.acknowledge(packets.PUBACK, head.packet_id))
        elif head.qos == 2:
            self._send(packets.acknowledge(packets.PUBREC, head.packet_id))

    def _control(self, kind: int, body: bytes) -> None:
        if kind == packets.PUBREL:
            packet_id = packets.packet_id_of(body)
            self._releases.discard(packet_id)
            self._send(packets.acknowledge(packets.PUBCOMP, packet_id))
        elif kind == packets.CONNACK:
            self._answer((kind, 0), body)
        elif kind == packets.SUBACK:
            self._answer((kind, packets.packet_id_of(body)), body)
        elif kind != packets.PINGRESP:
            raise ProtocolError(f"unexpected packet type {kind} from the broker")

    def _send(self, data: bytes) -> None:
        """Write unless closing (an acknowledgement then no longer matters)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise self._lost or LinkError("not connected to the broker")
        self._transport.write(data)

    def _reply(self, kind: int, packet_id: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self._lost is not None:
            future.set_exception(self._lost)
        else:
            self._replies[(kind, packet_id)] = future
        return future

    def _answer(self, key: tuple[int, int], body: bytes) -> None:
        future = self._replies.pop(key, None)
        if future is not None and not future.done():
            future.set_result(body)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _pause(self, reason: str) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    async def _keep_alive(self) -> None:
        """PINGREQ every half keep-alive; drop a connection silent for 1.5 keep-alives."""
        while True:
            await asyncio.sleep(self.keepalive / 2)
            if time.monotonic() - self._last_heard > self.keepalive * 1.5:
                logger.warning("no word from the broker for %.0f s; reconnecting", self.keepalive)
                self._lost = LinkError("the broker stopped answering (keep-alive)")
                self.abort()
                return
            with contextlib.suppress(LinkError):
                self._write(packets.PINGREQ_PACKET)

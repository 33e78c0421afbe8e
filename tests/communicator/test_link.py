"""The router's broker link: against real Mosquitto brokers, and a scripted one for protocol faults.

The scripted broker (a plain asyncio server) plays the broker's side byte for
byte, for what a real broker will not do on demand: QoS 2 resends, garbage,
silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest
from redis.asyncio import Redis

from communicator.backends import _mqtt_packets as packets
from communicator.backends._link import BrokerLink, LinkError
from communicator.backends._mqtt import tls_context
from communicator.backends._settings import Settings, parse_mqtt_url
from communicator.router._router import Router, RouterConfig
from tests.communicator.conftest import needs_mosquitto
from tests.conftest import free_port

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


async def open_link(url: str, client_id: str, **options: object) -> BrokerLink:
    address = parse_mqtt_url(url)
    return await BrokerLink.open(address.host, address.port, client_id=client_id, **options)  # type: ignore[arg-type]


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true, failing after the timeout."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {TIMEOUT}s")
        await asyncio.sleep(0.01)


async def take(link: BrokerLink, count: int) -> list[packets.Publish]:
    """The next ``count`` messages from ``link``, within the timeout."""
    got: list[packets.Publish] = []
    async with asyncio.timeout(TIMEOUT):
        async for message in link:
            got.append(message)
            if len(got) == count:
                break
    return got


async def test_messages_arrive_in_order_and_publishes_go_out(
    mqtt_url: str, topic_prefix: str
) -> None:
    """2,000 QoS 1 messages from an aiomqtt client arrive in order; QoS 0 publishes reach it."""
    address = parse_mqtt_url(mqtt_url)
    async with (
        await open_link(mqtt_url, f"{topic_prefix}link") as link,
        aiomqtt.Client(address.host, address.port, identifier=f"{topic_prefix}peer") as peer,
    ):
        assert await link.subscribe([(f"{topic_prefix}in/#", 1)]) == [1]
        await peer.subscribe(f"{topic_prefix}out/#", qos=0)
        for n in range(2000):
            await peer.publish(f"{topic_prefix}in/a", str(n).encode(), qos=1)
        got = await take(link, 2000)
        assert [int(m.payload) for m in got] == list(range(2000))
        assert {m.topic for m in got} == {f"{topic_prefix}in/a"}
        for n in range(100):
            assert link.publish(f"{topic_prefix}out/b", str(n).encode())
        received = []
        async with asyncio.timeout(TIMEOUT):
            async for message in peer.messages:
                received.append(int(message.payload))  # type: ignore[arg-type]
                if len(received) == 100:
                    break
        assert received == list(range(100))
    assert not link.connected
    assert not link.publish(f"{topic_prefix}out/b", b"late")


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing(
    mqtt_url: str, topic_prefix: str
) -> None:
    """Past ``inbox_limit`` the link stops reading; the broker holds the rest until we catch up."""
    address = parse_mqtt_url(mqtt_url)
    link = await open_link(mqtt_url, f"{topic_prefix}slow")
    link.inbox_limit = 20
    async with (
        link,
        aiomqtt.Client(address.host, address.port, identifier=f"{topic_prefix}pub") as peer,
    ):
        await link.subscribe([(f"{topic_prefix}s", 0)])
        for n in range(500):
            await peer.publish(f"{topic_prefix}s", str(n).encode(), qos=1)
        await eventually(lambda: "inbox" in link._paused, "reading paused")
        got = await take(link, 500)
        assert [int(m.payload) for m in got] == list(range(500))
        assert not link._paused


async def test_retained_messages_say_so(mqtt_url: str, topic_prefix: str) -> None:
    """A message the broker kept from before we subscribed has ``retain``; live ones do not."""
    address = parse_mqtt_url(mqtt_url)
    topic = f"{topic_prefix}in/stale"
    async with aiomqtt.Client(address.host, address.port, identifier=f"{topic_prefix}p") as peer:
        await peer.publish(topic, b"kept", qos=1, retain=True)
        try:
            async with await open_link(mqtt_url, f"{topic_prefix}link") as link:
                await link.subscribe([(f"{topic_prefix}in/+", 1)])
                (kept,) = await take(link, 1)
                await peer.publish(topic, b"live", qos=1)
                (live,) = await take(link, 1)
        finally:
            await peer.publish(topic, b"", qos=1, retain=True)  # clears it from the broker
    assert (kept.payload, kept.retain) == (b"kept", True)
    assert (live.payload, live.retain) == (b"live", False)


@needs_mosquitto
async def test_credentials(password_broker: int) -> None:
    """The right password connects; a wrong one is refused with the broker's code, at once."""
    async with await BrokerLink.open(
        "127.0.0.1", password_broker, client_id="alice-1", username="alice", password="wonderland"
    ) as link:
        assert link.connected
    with pytest.raises(LinkError, match="not authorised") as refused:
        await BrokerLink.open(
            "127.0.0.1", password_broker, client_id="a2", username="alice", password="nope"
        )
    assert refused.value.code == 5


@needs_mosquitto
async def test_tls(tls_broker: Callable[[], int], certificates: Path, topic_prefix: str) -> None:
    """Over TLS, with the CA from the settings, the link works end to end."""
    port = tls_broker()
    context = tls_context(Settings(mqtt_tls_ca=certificates / "ca.pem"))
    async with await BrokerLink.open("127.0.0.1", port, client_id="tls", tls=context) as link:
        await link.subscribe([(f"{topic_prefix}t", 0)])
        link.publish(f"{topic_prefix}t", b"over tls")
        (message,) = await take(link, 1)
        assert message.payload == b"over tls"


async def test_a_router_with_a_wrong_password_says_what_to_fix(
    password_broker: int, settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The router keeps retrying (no crash) and its warning names the settings to fix."""
    wrong = settings.model_copy(
        update={"mqtt_url": f"mqtt://alice:nope@127.0.0.1:{password_broker}"}
    )
    router = Router(settings=wrong, redis=redis, config=RouterConfig())
    task = asyncio.create_task(router.run())
    try:
        await eventually(lambda: "DEPLOYCTL_MQTT_PASSWORD" in caplog.text, "the warning")
        assert not task.done()
        assert "not authorised" in caplog.text
    finally:
        router.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)


# -- a scripted broker --------------------------------------------------------------------------


class ScriptedBroker:
    """One connection at a time; records what the client sent, sends what the test says."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[packets.Packet] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None  # the latest connection's
        self.writers: list[asyncio.StreamWriter] = []
        self.connack = b"\x20\x02\x00\x00"
        self.answer_pings = True

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.writers.append(writer)
        parser = packets.PacketReader()
        try:
            while data := await reader.read(65536):
                for packet in parser.feed(data):
                    await self.received.put(packet)
                    if packet.kind == packets.CONNECT:
                        writer.write(self.connack)
                    elif packet.kind == packets.PINGREQ and self.answer_pings:
                        writer.write(b"\xd0\x00")
        finally:
            writer.close()

    async def expect(self, kind: int) -> packets.Packet:
        """The next packet of ``kind`` the client sends (others are skipped)."""
        async with asyncio.timeout(TIMEOUT):
            while (packet := await self.received.get()).kind != kind:
                pass
        return packet


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedBroker, int]]:
    broker = ScriptedBroker()
    port = free_port()
    server = await asyncio.start_server(broker.serve, "127.0.0.1", port)
    async with server:
        yield broker, port
        for writer in broker.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_connect_carries_the_clean_session_and_keepalive(
    scripted: tuple[ScriptedBroker, int],
) -> None:
    """The CONNECT the broker sees: MQTT level 4, clean session, our id and keep-alive."""
    broker, port = scripted
    async with await BrokerLink.open("127.0.0.1", port, client_id="r-1", keepalive=17):
        packet = await broker.expect(packets.CONNECT)
    assert packet.body[:10] == b"\x00\x04MQTT\x04\x02\x00\x11"
    assert packet.body[10:] == b"\x00\x03r-1"
    await broker.expect(packets.DISCONNECT)


async def test_refused_and_silent_brokers(scripted: tuple[ScriptedBroker, int]) -> None:
    """A refusal gives its code and reason; a bad CONNACK is a LinkError; silence times out."""
    broker, port = scripted
    broker.connack = b"\x20\x02\x00\x02"
    with pytest.raises(LinkError, match="identifier rejected") as refused:
        await BrokerLink.open("127.0.0.1", port, client_id="r")
    assert refused.value.code == 2
    broker.connack = b"\x20\x03\x00\x00\x00"  # a CONNACK of three bytes
    with pytest.raises(LinkError, match="CONNACK"):
        await BrokerLink.open("127.0.0.1", port, client_id="r")
    broker.connack = b""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await BrokerLink.open("127.0.0.1", port, client_id="r", timeout=0.3)
    assert time.monotonic() - started < 2


async def test_incoming_qos_1_and_2_are_acknowledged_once(
    scripted: tuple[ScriptedBroker, int],
) -> None:
    """QoS 1: PUBACK. QoS 2: PUBREC, a resend not delivered twice, PUBCOMP for PUBREL."""
    broker, port = scripted
    async with await BrokerLink.open("127.0.0.1", port, client_id="r") as link:
        assert broker.writer is not None
        broker.writer.write(packets.publish("t", b"one", qos=1, packet_id=9))
        assert (await broker.expect(packets.PUBACK)).body == b"\x00\x09"
        two = packets.publish("t", b"two", qos=2, packet_id=10)
        broker.writer.write(two + bytes((two[0] | 0x08,)) + two[1:])  # and a DUP resend
        assert (await broker.expect(packets.PUBREC)).body == b"\x00\x0a"
        broker.writer.write(packets.acknowledge(packets.PUBREL, 10))
        assert (await broker.expect(packets.PUBCOMP)).body == b"\x00\x0a"
        broker.writer.write(packets.publish("t", b"three"))
        got = await take(link, 3)
    assert [m.payload for m in got] == [b"one", b"two", b"three"]


async def test_garbage_ends_the_link_after_what_came_before(
    scripted: tuple[ScriptedBroker, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that are not MQTT close the link; messages read before them are still handed over."""
    broker, port = scripted
    async with await BrokerLink.open("127.0.0.1", port, client_id="r") as link:
        assert broker.writer is not None
        broker.writer.write(packets.publish("t", b"kept") + b"\xf0\x00")
        assert [m.payload for m in await take(link, 1)] == [b"kept"]
        with pytest.raises(LinkError, match="reserved packet type 15"):
            await take(link, 1)
    assert "not MQTT 3.1.1" in caplog.text


async def test_a_silent_broker_is_dropped_after_the_keepalive(
    scripted: tuple[ScriptedBroker, int], caplog: pytest.LogCaptureFixture
) -> None:
    """PINGREQs go out every half keep-alive; unanswered for 1.5 keep-alives, the link ends."""
    broker, port = scripted
    broker.answer_pings = False
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    async with await BrokerLink.open("127.0.0.1", port, client_id="r", keepalive=1) as link:
        await broker.expect(packets.PINGREQ)
        with pytest.raises(LinkError, match="keep-alive"):
            await take(link, 1)
    assert 1.5 <= time.monotonic() - started < 5


async def test_the_broker_going_away_ends_iteration(scripted: tuple[ScriptedBroker, int]) -> None:
    """A closed socket ends ``async for`` with LinkError, and publish says False."""
    broker, port = scripted
    async with await BrokerLink.open("127.0.0.1", port, client_id="r") as link:
        assert broker.writer is not None
        broker.writer.close()
        with pytest.raises(LinkError, match="closed the connection"):
            await take(link, 1)
        assert not link.publish("t", b"x")
        with pytest.raises(LinkError):
            await link.subscribe([("t", 0)])


async def test_an_oversized_message_is_acknowledged_and_skipped(
    scripted: tuple[ScriptedBroker, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Past ``max_packet_size``: PUBACK, a count and a warning; the next message still comes."""
    broker, port = scripted
    async with await BrokerLink.open("127.0.0.1", port, client_id="r", max_packet_size=100) as link:
        assert broker.writer is not None
        broker.writer.write(packets.publish("t/big", bytes(5000), qos=1, packet_id=4))
        broker.writer.write(packets.publish("t/fits", bytes(90)))
        assert (await broker.expect(packets.PUBACK)).body == b"\x00\x04"
        (message,) = await take(link, 1)
    assert (message.topic, link.oversized) == ("t/fits", 1)
    assert "dropped a message of 5009 bytes on 't/big'" in caplog.text

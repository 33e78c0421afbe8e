"""The router's broker link against a huge message: dropped as it streams by, memory flat.

The 50 MB message goes through the session's Mosquitto (whose default
``max_packet_size`` is unlimited) from a raw socket that streams it in 1 MiB
pieces, so that neither end of the test ever holds it whole and tracemalloc
sees the link's memory alone.
"""

from __future__ import annotations

import asyncio
import logging
import tracemalloc

import pytest

from communicator.backends import _mqtt_packets as packets
from communicator.backends._link import MAX_PACKET_SIZE, BrokerLink
from communicator.backends._settings import parse_mqtt_url
from tests.conftest import mqtt_plan

pytestmark = pytest.mark.integration
TIMEOUT = 30.0
HUGE = 50_000_000
CHUNK = bytes(1024 * 1024)


class MeasuredLink(BrokerLink):
    """A link that remembers how often it read, and the most its reader held after a read."""

    reads = most_buffered = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.reads += 1
        self.most_buffered = max(self.most_buffered, self._reader.buffered)


async def stream_publishes(host: str, port: int, topic: str, client_id: str) -> None:
    """Publish HUGE zero bytes on ``topic`` without holding them, then b"small", then leave."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(packets.connect(client_id, keepalive=60))
        assert (await reader.readexactly(4))[3] == 0, "the broker refused the publisher"
        head = packets._string(topic)
        writer.write(bytes((packets.PUBLISH << 4,)) + packets.encode_length(len(head) + HUGE))
        writer.write(head)
        for _ in range(HUGE // len(CHUNK)):
            writer.write(CHUNK)
            await writer.drain()
        writer.write(CHUNK[: HUGE % len(CHUNK)])
        writer.write(packets.publish(topic, b"small") + packets.DISCONNECT_PACKET)
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_50_mb_message_is_dropped_without_being_held(
    mqtt_url: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The huge message is counted and logged, the next one arrives, and memory stays flat."""
    if mqtt_plan() == "amqtt":
        pytest.skip("needs Mosquitto: the embedded broker would hold the 50 MB itself")
    address = parse_mqtt_url(mqtt_url)
    topic = f"{topic_prefix}in/flooder"
    tracemalloc.start()
    try:
        link = await MeasuredLink.open(address.host, address.port, client_id=f"{topic_prefix}r")
        async with link:
            await link.subscribe([(f"{topic_prefix}in/+", 0)])
            tracemalloc.reset_peak()
            async with asyncio.timeout(TIMEOUT):
                publishing = asyncio.create_task(
                    stream_publishes(address.host, address.port, topic, f"{topic_prefix}p")
                )
                message = await anext(link)
                await publishing
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (message.topic, message.payload) == (topic, b"small")
    assert link.oversized == 1
    assert link.reads > HUGE // (1024 * 1024)  # it came in pieces, not in one read
    assert link.most_buffered <= 2 * MAX_PACKET_SIZE
    # Holding the message would take 50 MB; the publisher's pieces and the link's buffer fit in 8.
    assert peak < 8_000_000, f"peak of {peak} bytes traced"
    assert f"dropped a message of {HUGE + len(topic) + 2} bytes on {topic!r}" in caplog.text
    assert [r.levelno for r in caplog.records if "dropped" in r.message] == [logging.WARNING]

"""The MQTT 3.1.1 packets of the router's broker link: encoding, and reading a stream back."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from communicator.backends import _mqtt_packets as packets
from communicator.backends._mqtt_packets import MAX_LENGTH, PacketReader, ProtocolError, Publish

topics = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00+#"), max_size=40
)
payloads = st.binary(max_size=300)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (clamped, sorted)."""
    points = sorted({min(c, len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(st.integers(0, MAX_LENGTH))
@example(0)
@example(127)
@example(128)
@example(16_383)
@example(16_384)
@example(2_097_151)
@example(2_097_152)
def test_remaining_length_round_trips(length: int) -> None:
    """Every length a packet may have is written in 1-4 bytes and read back as itself."""
    field = packets.encode_length(length)
    assert 1 <= len(field) <= 4
    assert packets._remaining_length(bytearray(b"\x30" + field), 1, 1 + len(field)) == (
        length,
        1 + len(field),
    )


def test_remaining_length_limits() -> None:
    """The specification's examples (§2.2.3), and no length beyond four bytes."""
    assert packets.encode_length(321) == b"\xc1\x02"
    assert packets.encode_length(MAX_LENGTH) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError, match="cannot carry"):
        packets.encode_length(MAX_LENGTH + 1)
    with pytest.raises(ProtocolError, match="four bytes"):
        list(PacketReader().feed(b"\x30\xff\xff\xff\xff\x01"))


@given(
    st.lists(st.tuples(topics, payloads, st.sampled_from([0, 1, 2]), st.integers(1, 0xFFFF))),
    st.lists(st.integers(0, 5000), max_size=30),
)
def test_publishes_survive_any_split(
    messages: list[tuple[str, bytes, int, int]], cuts: list[int]
) -> None:
    """A stream of PUBLISH packets, cut anywhere, reads back as the same messages in order."""
    stream = b"".join(
        packets.publish(topic, payload, qos=qos, packet_id=pid)
        for topic, payload, qos, pid in messages
    )
    reader = PacketReader()
    read = [packet for piece in split(stream, cuts) for packet in reader.feed(piece)]
    assert [p.kind for p in read] == [packets.PUBLISH] * len(messages)
    got = [packets.parse_publish(p.flags, p.body) for p in read]
    assert got == [
        Publish(topic, payload, qos, pid if qos else 0) for topic, payload, qos, pid in messages
    ]


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=10))
def test_random_bytes_raise_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    """Garbage from a broker is a ProtocolError or whole packets, never another exception."""
    reader = PacketReader(max_packet_size=1000)
    try:
        for piece in split(data, cuts):
            for packet in reader.feed(piece):
                if packet.kind == packets.PUBLISH:
                    packets.parse_publish(packet.flags, packet.body)
                elif packet.kind == packets.CONNACK:
                    packets.parse_connack(packet.body)
                else:
                    packets.packet_id_of(packet.body)
    except ProtocolError:
        pass


def test_connect_packet_bytes() -> None:
    """CONNECT for protocol level 4 with a clean session, credentials and a keep-alive (§3.1)."""
    data = packets.connect("r1", keepalive=30, username="u", password="p")
    assert data == (
        b"\x10\x14"  # CONNECT, 20 bytes follow
        b"\x00\x04MQTT\x04"  # protocol name and level
        b"\xc2\x00\x1e"  # user name + password + clean session; keep-alive 30 s
        b"\x00\x02r1\x00\x01u\x00\x01p"
    )
    anonymous = packets.connect("r1", keepalive=60)
    assert anonymous[9] == 0x02
    assert anonymous.endswith(b"\x00\x02r1")


def test_subscribe_and_acknowledgements() -> None:
    """SUBSCRIBE carries flags 0b0010 (§3.8.1), as PUBREL does (§3.6.1); the others carry 0."""
    assert packets.subscribe(7, [("a/#", 0)]) == b"\x82\x08\x00\x07\x00\x03a/#\x00"
    assert packets.acknowledge(packets.PUBACK, 258) == b"\x40\x02\x01\x02"
    assert packets.acknowledge(packets.PUBREL, 1) == b"\x62\x02\x00\x01"
    assert packets.acknowledge(packets.PUBCOMP, 1) == b"\x70\x02\x00\x01"


def test_malformed_packets() -> None:
    """Reserved types, short bodies, QoS 3 and non-UTF-8 topics are ProtocolErrors."""
    with pytest.raises(ProtocolError, match="reserved packet type 0"):
        list(PacketReader().feed(b"\x00\x00"))
    with pytest.raises(ProtocolError, match="limit is 10"):
        list(PacketReader(max_packet_size=10).feed(b"\x90\x09"))  # a SUBACK of 11 bytes
    with pytest.raises(ProtocolError, match="QoS 3"):
        packets.parse_publish(0b0110, b"\x00\x01a")
    with pytest.raises(ProtocolError, match="topic and packet id"):
        packets.parse_publish(0b0010, b"\x00\x05ab")
    with pytest.raises(ProtocolError, match="UTF-8"):
        packets.parse_publish(0, b"\x00\x01\xff")
    with pytest.raises(ProtocolError, match="CONNACK"):
        packets.parse_connack(b"\x00")
    with pytest.raises(ValueError, match="65535"):
        packets.publish("x" * 70_000, b"")


def test_incomplete_packets_wait_for_the_rest() -> None:
    """Half a header or half a body yields nothing until the rest arrives."""
    reader = PacketReader()
    data = packets.publish("t", b"x" * 200)
    assert list(reader.feed(data[:1])) == []
    assert list(reader.feed(data[1:2])) == []  # the first byte of a two-byte length
    assert list(reader.feed(data[2:50])) == []
    (packet,) = list(reader.feed(data[50:] + packets.PINGREQ_PACKET[:1]))
    assert packets.parse_publish(packet.flags, packet.body).payload == b"x" * 200
    assert list(reader.feed(packets.PINGREQ_PACKET[1:])) == [(packets.PINGREQ, 0, b"", 0)]


@given(
    st.lists(st.tuples(topics, st.integers(0, 3000), st.sampled_from([0, 1, 2]))),
    st.lists(st.integers(0, 50_000), max_size=30),
)
def test_oversized_publishes_are_dropped_in_passing(
    messages: list[tuple[str, int, int]], cuts: list[int]
) -> None:
    """Past the limit a PUBLISH keeps only its topic and packet id; the stream reads on."""
    limit = 1000
    packed = [
        packets.publish(topic, b"x" * size, qos=qos, packet_id=7) for topic, size, qos in messages
    ]
    reader = PacketReader(max_packet_size=limit)
    read = []
    for piece in split(b"".join(packed), cuts):
        read += reader.feed(piece)
        assert reader.buffered <= limit + len(piece)
    assert len(read) == len(messages)
    for packet, data, (topic, size, qos) in zip(read, packed, messages, strict=True):
        message = packets.parse_publish(packet.flags, packet.body)
        assert (message.topic, message.qos) == (topic, qos)
        if len(data) > limit:
            assert message.payload == b""
            assert len(packet.body) + packet.discarded == size + len(message.topic.encode()) + (
                4 if qos else 2
            )
        else:
            assert (message.payload, packet.discarded) == (b"x" * size, 0)


def test_an_oversized_publish_is_never_held() -> None:
    """A 10 MB PUBLISH fed in 64 KiB pieces: the buffer stays small; the next packet follows."""
    reader = PacketReader(max_packet_size=100_000)
    stream = packets.publish("big", bytes(10_000_000), qos=1, packet_id=3) + packets.publish(
        "small", b"hello"
    )
    read = []
    for offset in range(0, len(stream), 65536):
        read += reader.feed(stream[offset : offset + 65536])
        assert reader.buffered <= 65536
    big, small = (packets.parse_publish(p.flags, p.body) for p in read)
    assert (big.topic, big.packet_id, big.payload, read[0].discarded) == (
        "big",
        3,
        b"",
        10_000_000,
    )
    assert (small.topic, small.payload) == ("small", b"hello")
    assert reader.buffered == 0

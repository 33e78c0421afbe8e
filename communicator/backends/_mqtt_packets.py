"""The MQTT 3.1.1 packets the router's broker link speaks, as bytes (no I/O here).

Only what :mod:`communicator.backends._link` needs: CONNECT/CONNACK, SUBSCRIBE/SUBACK,
PUBLISH at every QoS (QoS 0 out), the acknowledgements, PINGREQ/PINGRESP and
DISCONNECT. :class:`PacketReader` cuts a byte stream, split anywhere, into
packets, and discards a PUBLISH over its size limit as the bytes arrive;
anything that breaks the specification raises :class:`ProtocolError`.
Section numbers refer to the MQTT 3.1.1 OASIS standard.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from communicator._errors import DeployctlError

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = range(8, 15)

MAX_LENGTH = 268_435_455  # the largest remaining length four bytes can carry (§2.2.3)
MAX_PACKET_SIZE = 1 + 4 + MAX_LENGTH  # with the first byte and the four length bytes
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

#: CONNACK return codes (§3.2.2.3).
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class ProtocolError(DeployctlError, ValueError):
    """Bytes from the broker that are not a valid MQTT 3.1.1 packet."""


class Packet(NamedTuple):
    """One packet: its type, the four flag bits of its first byte, and its body.

    ``discarded`` counts the bytes of a PUBLISH over the reader's limit that were
    dropped unread: its ``body`` then holds only the topic and packet id.
    """

    kind: int
    flags: int
    body: bytes
    discarded: int = 0


class Publish(NamedTuple):
    """A PUBLISH packet's content (§3.3)."""

    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int = 0
    retain: bool = False
    dup: bool = False


def encode_length(length: int) -> bytes:
    """The remaining-length field: 7 bits per byte, least significant first (§2.2.3)."""
    if not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"an MQTT packet cannot carry {length} bytes (at most {MAX_LENGTH})")
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        if length:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if len(data) > 0xFFFF:
        raise ValueError(f"an MQTT string holds at most 65535 bytes, not {len(data)}")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_length(len(body)) + body


def connect(
    client_id: str,
    *,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
    clean_session: bool = True,
) -> bytes:
    """A CONNECT packet for protocol level 4 (MQTT 3.1.1) without a will (§3.1)."""
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    header = _string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
    return _packet(CONNECT << 4, header + payload)


def subscribe(packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE packet asking for each topic filter at its maximum QoS (§3.8)."""
    body = packet_id.to_bytes(2, "big")
    for topic, qos in topics:
        body += _string(topic) + bytes((qos,))
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def publish(
    topic: str | bytes, payload: bytes, *, qos: int = 0, packet_id: int = 0, retain: bool = False
) -> bytes:
    """A PUBLISH packet (§3.3); ``packet_id`` only for QoS 1 and 2."""
    head = _string(topic)
    if qos:
        head += packet_id.to_bytes(2, "big")
    return _packet(PUBLISH << 4 | qos << 1 | int(retain), head + payload)


def acknowledge(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP for ``packet_id`` (§3.4-3.7)."""
    return bytes((kind << 4 | (0x02 if kind == PUBREL else 0), 2)) + packet_id.to_bytes(2, "big")


def parse_publish(flags: int, body: bytes) -> Publish:
    """The content of a PUBLISH packet's body."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    if len(body) < 2:
        raise ProtocolError("PUBLISH shorter than its topic length")
    end = 2 + int.from_bytes(body[:2], "big")
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(body[end : end + 2], "big")
        start = end + 2
    else:
        start = end
    if start > len(body):
        raise ProtocolError("PUBLISH shorter than its topic and packet id")
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"PUBLISH topic is not UTF-8 ({exc.reason})") from None
    return Publish(topic, body[start:], qos, packet_id, bool(flags & 0x01), bool(flags & 0x08))


def parse_connack(body: bytes) -> tuple[bool, int]:
    """``(session present, return code)`` of a CONNACK body (§3.2)."""
    if len(body) != 2:
        raise ProtocolError(f"CONNACK of {len(body)} bytes instead of 2")
    return bool(body[0] & 0x01), body[1]


def packet_id_of(body: bytes) -> int:
    """The packet identifier that opens an acknowledgement's or SUBACK's body."""
    if len(body) < 2:
        raise ProtocolError("acknowledgement without a packet identifier")
    return int.from_bytes(body[:2], "big")


class PacketReader:
    """Cuts a byte stream into packets, whatever the size of the pieces it arrives in.

    A PUBLISH larger than ``max_packet_size`` (the whole packet, as Mosquitto's
    option of that name counts it) is never held: the reader keeps its topic and
    packet id, hands it out with ``discarded`` set, and drops the rest of its
    bytes as they arrive. So the buffer holds at most one packet within the
    limit (or an oversized one's first 64 KiB) plus the latest piece fed.
    """

    __slots__ = ("_buffer", "_skip", "max_packet_size")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized PUBLISH still to come, to drop
        self.max_packet_size = max_packet_size

    @property
    def buffered(self) -> int:
        """How many bytes are held, waiting for the rest of their packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[Packet]:
        """Add ``data``; yield every packet it completes, in order.

        A generator, so that the packets before a fault are still handed out.

        Raises:
            ProtocolError: A reserved packet type, a remaining length longer
                than four bytes, or a packet other than PUBLISH larger than
                ``max_packet_size``. The stream cannot be read further: close
                the connection.
        """
        view = memoryview(data)
        if self._skip:
            dropped = min(self._skip, len(view))
            self._skip -= dropped
            view = view[dropped:]
        buffer = self._buffer
        buffer += view
        start, size = 0, len(buffer)
        try:
            while size - start >= 2:
                header = _remaining_length(buffer, start + 1, size)
                if header is None:
                    break  # the length field itself is still incomplete
                length, position = header
                kind, flags = buffer[start] >> 4, buffer[start] & 0x0F
                if kind == 0 or kind == 15:
                    raise ProtocolError(f"reserved packet type {kind}")
                end = position + length
                if end - start > self.max_packet_size:
                    if kind != PUBLISH:
                        raise ProtocolError(
                            f"packet of {end - start} bytes (the limit is {self.max_packet_size})"
                        )
                    head = _publish_head(buffer, position, size, flags, length)
                    if head is None:
                        break  # its topic is still incomplete
                    packet = Packet(kind, flags, bytes(buffer[position:head]), end - head)
                    if end > size:
                        self._skip, start = end - size, size
                    else:
                        start = end
                    yield packet
                    continue
                if end > size:
                    break
                packet = Packet(kind, flags, bytes(buffer[position:end]))
                start = end
                yield packet
        finally:
            del buffer[:start]


def _remaining_length(buffer: bytearray, position: int, size: int) -> tuple[int, int] | None:
    """``(remaining length, where the body starts)``, or ``None`` until more bytes come."""
    length, shift = 0, 0
    while position < size:
        digit = buffer[position]
        position += 1
        length |= (digit & 0x7F) << shift
        if digit < 0x80:
            return length, position
        shift += 7
        if shift > 21:
            raise ProtocolError("remaining length longer than four bytes")
    return None


def _publish_head(
    buffer: bytearray, position: int, size: int, flags: int, length: int
) -> int | None:
    """Where a PUBLISH body's topic and packet id end, or ``None`` until they have arrived.

    Never past the body's ``length``: :func:`parse_publish` refuses a body cut short.
    """
    if length < 2:
        return position + length
    if size - position < 2:
        return None
    head = 2 + int.from_bytes(buffer[position : position + 2], "big") + (2 if flags & 0x06 else 0)
    end = position + min(head, length)
    return end if end <= size else None

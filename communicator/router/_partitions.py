"""Sharing senders between communicators without reordering them.

Every sender (MQTT client id) falls into one of ``count`` partitions. Each
partition is routed by the one communicator that holds its lease in Redis.
Every communicator receives every message; for a partition it does not own it
keeps a bounded, time-limited buffer. The owner checkpoints its progress (the
fingerprints of the last messages it routed); whoever takes a partition over
replays its buffer from just after that checkpoint. See docs/protocol.md §7
for the guarantees this gives.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

#: Fingerprints kept per checkpoint: enough that a match is not a coincidence.
CHECKPOINT_DEPTH = 8


def partition_of(client_id: str, count: int) -> int:
    """The partition of a sender: CRC-32 of its client id, modulo ``count``."""
    return zlib.crc32(client_id.encode()) % count


def fingerprint(client_id: str, payload: bytes) -> int:
    """A cheap identity for a message, the same in every communicator."""
    return zlib.crc32(payload, zlib.crc32(client_id.encode()))


@dataclass(slots=True)
class Received:
    """A message as it came off the broker, before routing."""

    client_id: str
    payload: bytes
    fingerprint: int
    at: float  # time.monotonic() on arrival


#: When the message being routed now arrived (``Received.at``), for the handlers that need
#: it: a will that arrived before the current broker connection is the broker's restart.
ARRIVED: ContextVar[float | None] = ContextVar("ARRIVED", default=None)


@dataclass(slots=True)
class _Partition:
    leased: bool = False  # we hold its lease in Redis (as far as we know)
    deadline: float = 0.0  # monotonic time until which we route it; 0 when we do not
    buffer: deque[Received] = field(default_factory=deque)
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=CHECKPOINT_DEPTH))
    dirty: bool = False  # progress not yet checkpointed


class PartitionTable:
    """Which partitions this communicator owns, and the buffers of the others."""

    def __init__(self, count: int, *, buffer_seconds: float, buffer_size: int) -> None:
        self.count = count
        self._parts = [_Partition() for _ in range(count)]
        self._buffer_seconds = buffer_seconds
        self._buffer_size = buffer_size
        self.overflowed = 0  # buffered messages pushed out by the size bound

    def partition(self, client_id: str) -> int:
        """The partition of ``client_id``."""
        return partition_of(client_id, self.count)

    def owns(self, partition: int, now: float | None = None) -> bool:
        """Whether we own ``partition`` with a lease still safely valid."""
        deadline = self._parts[partition].deadline
        return deadline > (time.monotonic() if now is None else now)

    def owned(self) -> list[int]:
        """The partitions we own now."""
        now = time.monotonic()
        return [i for i, part in enumerate(self._parts) if part.deadline > now]

    def leased(self) -> list[int]:
        """The partitions whose lease we hold, routed now or not (lapsed, being taken over)."""
        return [i for i, part in enumerate(self._parts) if part.leased]

    def lease(self, partition: int) -> None:
        """Record a claimed lease; its messages are held until :meth:`extend`."""
        self._parts[partition].leased = True

    def extend(self, partition: int, deadline: float) -> None:
        """Route ``partition`` until ``deadline`` (monotonic): its lease is ours till then.

        Only once its buffer is empty (see :meth:`next_held`): a partition we route
        never has a message waiting, so routing keeps every sender's order.
        """
        part = self._parts[partition]
        if part.buffer:  # a bug: routing now would overtake what waits
            raise RuntimeError(f"partition {partition}: replay the held messages first")
        part.leased = True
        part.deadline = deadline

    def drop(self, partition: int) -> None:
        """Forget the ownership of ``partition`` (lost or released lease)."""
        part = self._parts[partition]
        part.leased = False
        part.deadline = 0.0
        part.recent.clear()
        part.dirty = False

    def release(self, partition: int) -> list[int]:
        """Stop routing ``partition`` at once; return its checkpoint (the last fingerprints)."""
        prints = list(self._parts[partition].recent)
        self.drop(partition)
        return prints

    def hold(self, partition: int, message: Received) -> None:
        """Buffer a message of a partition we do not route now, trimming by size (and age).

        The messages of a partition whose lease we still hold are ours to route:
        they are never trimmed by age, only by the size bound (and counted).
        """
        part = self._parts[partition]
        part.buffer.append(message)
        if not part.leased:
            self._trim(part, message.at)
        while len(part.buffer) > self._buffer_size:
            part.buffer.popleft()
            self.overflowed += 1

    def trim(self, now: float | None = None) -> None:
        """Forget held messages older than the buffer time, of partitions others route."""
        now = time.monotonic() if now is None else now
        for part in self._parts:
            if not part.leased:
                self._trim(part, now)

    def _trim(self, part: _Partition, now: float) -> None:
        horizon = now - self._buffer_seconds
        buffer = part.buffer
        while buffer and buffer[0].at < horizon:
            buffer.popleft()

    def routed(self, partition: int, message: Received) -> None:
        """Note that ``message`` was routed, for the next checkpoint."""
        part = self._parts[partition]
        part.recent.append(message.fingerprint)
        part.dirty = True

    def checkpoints(self) -> Iterator[tuple[int, list[int]]]:
        """Yield (partition, last fingerprints) for owned partitions with new progress."""
        for index, part in enumerate(self._parts):
            if part.dirty and part.deadline:
                part.dirty = False
                yield index, list(part.recent)

    def skip_to(self, partition: int, checkpoint: list[int] | None) -> int:
        """Forget what the buffer of ``partition`` holds up to ``checkpoint``; how many.

        Called when taking a partition over, before replaying the rest with
        :meth:`next_held`. The replay starts after the earliest place where the
        buffer holds the checkpoint's fingerprints in a row: an ambiguous match
        costs duplicates, never a loss. With no checkpoint, or no match,
        everything is replayed.
        """
        buffer = self._parts[partition].buffer
        if not checkpoint:
            return 0
        prints = [m.fingerprint for m in buffer]
        depth = len(checkpoint)
        for end in range(depth, len(prints) + 1):
            if prints[end - depth : end] == checkpoint:
                for _ in range(end):
                    buffer.popleft()
                return end
        return 0

    def next_held(self, partition: int) -> Received | None:
        """Take the oldest held message of ``partition`` (to replay it); ``None`` when empty."""
        buffer = self._parts[partition].buffer
        return buffer.popleft() if buffer else None

    def buffered(self, partition: int) -> int:
        """How many messages wait in the buffer of ``partition``."""
        return len(self._parts[partition].buffer)

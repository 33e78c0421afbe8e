"""Messages waiting for an instance that can take them (DESIGN §5, "No instance yet").

Cached messages belong to the partition of their sender, so the communicator
that routes the sender also delivers them, in the order sent. They are kept in
memory and mirrored in Redis, so a communicator that takes a partition over
finds them. Each partition holds a bounded number; past it the oldest goes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from redis.asyncio import Redis

from communicator.backends._keys import Keys
from communicator.wire._codec import format_line, parse_line
from communicator.wire._message import Message


@dataclass(slots=True)
class Cached:
    """One message waiting in the cache."""

    id: str
    sender: str  # client id
    message: Message
    expires: float  # wall-clock time
    report: bool  # the sender asked for transmission_report=failure

    def to_json(self) -> str:
        """The form kept in Redis."""
        return json.dumps(
            {
                "id": self.id,
                "sender": self.sender,
                "line": format_line(self.message),
                "expires": self.expires,
                "report": self.report,
            }
        )

    @classmethod
    def from_json(cls, text: bytes | str) -> Cached:
        """Read the form kept in Redis."""
        data = json.loads(text)
        return cls(
            data["id"], data["sender"], parse_line(data["line"]), data["expires"], data["report"]
        )


class MessageCache:
    """Per-partition queues of messages waiting for a destination."""

    def __init__(self, *, redis: Redis, keys: Keys, size: int) -> None:
        self._redis = redis
        self._keys = keys
        self._size = size
        self._parts: dict[int, list[Cached]] = {}
        self.dropped = 0  # pushed out by the bound

    @staticmethod
    def new(sender: str, message: Message, ttl: float, *, report: bool) -> Cached:
        """Wrap a message for caching, expiring ``ttl`` seconds from now."""
        return Cached(uuid.uuid4().hex, sender, message, time.time() + ttl, report)

    async def load(self, partition: int) -> None:
        """Read the partition's cache from Redis (when taking the partition over)."""
        raw = await self._redis.lrange(self._keys.cache(partition), 0, -1)
        self._parts[partition] = [Cached.from_json(item) for item in raw]

    def forget(self, partition: int) -> None:
        """Drop the in-memory copy of a partition we no longer own (Redis keeps it)."""
        self._parts.pop(partition, None)

    async def add(self, partition: int, item: Cached) -> list[Cached]:
        """Cache ``item``; return the oldest entries pushed out by the bound."""
        queue = self._parts.setdefault(partition, [])
        queue.append(item)
        pushed_out = queue[: max(len(queue) - self._size, 0)]
        del queue[: len(pushed_out)]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self._keys.cache(partition), item.to_json())
            pipe.ltrim(self._keys.cache(partition), -self._size, -1)
            await pipe.execute()
        self.dropped += len(pushed_out)
        return pushed_out

    async def remove(self, partition: int, items: list[Cached]) -> None:
        """Take delivered or expired entries out of the cache."""
        if not items:
            return
        ids = {item.id for item in items}
        queue = self._parts.get(partition, [])
        self._parts[partition] = [item for item in queue if item.id not in ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.lrem(self._keys.cache(partition), 1, item.to_json())
            await pipe.execute()

    def waiting(self, partition: int, sender: str, service: str) -> bool:
        """Whether ``sender`` has messages for ``service`` waiting (newer ones queue behind)."""
        return any(
            item.sender == sender and item.message.service == service
            for item in self._parts.get(partition, ())
        )

    def entries(self, partition: int) -> list[Cached]:
        """The partition's cached messages, oldest first."""
        return list(self._parts.get(partition, ()))

    def partitions(self) -> list[int]:
        """Partitions with anything cached."""
        return [p for p, queue in self._parts.items() if queue]

    def expired(self, now: float | None = None) -> Iterator[tuple[int, Cached]]:
        """Yield the entries whose ttl has passed."""
        now = time.time() if now is None else now
        for partition, queue in self._parts.items():
            for item in queue:
                if item.expires <= now:
                    yield partition, item

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._parts.values())

"""Reading the registry's bounded streams: each service's failures, and the events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from communicator.backends._replies import fields, text
from communicator.registry._events import Event, parse_event
from communicator.registry._outcomes import FailureRecord, OutcomeKind

#: Entries read per round trip when paging back through a failure history.
_PAGE = 100


async def read_failures(
    redis: Redis, key: str, service: str, count: int, version: str | None
) -> list[FailureRecord]:
    """The latest ``count`` failures in stream ``key``, newest first, only ``version``'s if set."""
    found: list[FailureRecord] = []
    upper = "+"
    page_size = max(count, _PAGE)
    # Filtering by version pages back through the history, which is bounded.
    while len(found) < count:
        page: Any = await redis.xrevrange(key, upper, "-", count=page_size) or []
        for entry_id, raw in page:
            entry = fields(raw)
            if version is None or entry.get("version") == version:
                found.append(_failure(service, text(entry_id), entry))
        if version is None or len(page) < page_size:
            break
        upper = f"({text(page[-1][0])}"
    return found[:count]


def _failure(service: str, entry_id: str, entry: Mapping[str, str]) -> FailureRecord:
    return FailureRecord(
        id=entry_id,
        service=service,
        version=entry.get("version", ""),
        kind=OutcomeKind(entry.get("kind", "failure")),
        count=int(entry.get("count", "1")),
        reason=entry.get("reason", ""),
        instance=entry.get("instance", ""),
        server=entry.get("server", ""),
        # The entry id is Redis's clock in milliseconds, when it was recorded.
        time=int(entry_id.split("-", 1)[0]) / 1000,
    )


async def read_events(redis: Redis, key: str, since_id: str, count: int) -> list[Event]:
    """Up to ``count`` events of stream ``key`` after id ``since_id``, oldest first."""
    # "(" makes the range exclusive (Redis 6.2+), so a reader passes its last id back.
    entries: Any = await redis.xrange(key, f"({since_id}", "+", count=count)
    return [parse_event(fields(raw)["event"], text(entry_id)) for entry_id, raw in entries or []]

"""Registry events: what the registry publishes when a version or a password goes wrong.

Each event is one JSON object, published on the events channel
(:meth:`Keys.events`) for those listening now and appended to a bounded stream
(:meth:`Keys.events_stream`) for those who were away. Both are written by the
same Lua step that changed the state, so no change goes unannounced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from communicator._errors import RegistryError


class EventType(StrEnum):
    """The ``type`` of a registry event."""

    VERSION_INVALIDATED = "version_invalidated"
    """A version crossed its invalidation policy, or an operator invalidated it."""
    VERSION_REINSTATED = "version_reinstated"
    """An operator made an invalid version valid again."""
    BAD_PASSWORDS = "bad_passwords"
    """Repeated bad passwords from one source, or for one service: throttling started."""


_KNOWN_TYPES = frozenset(EventType)


@dataclass(frozen=True, slots=True)
class Event:
    """One registry event.

    Attributes:
        type: What happened; an unknown type (from a newer writer) is kept as text.
        service: The service it concerns.
        time: When it happened, in seconds since the epoch, by Redis's clock.
        data: The whole event as published (``version``, ``reason``, ``evidence``...).
        id: The event's stream id, or ``None`` when it came through pub/sub.
    """

    type: EventType | str
    service: str
    time: float
    data: dict[str, Any] = field(repr=False)
    id: str | None = None


def parse_event(payload: bytes | str, stream_id: str | None = None) -> Event:
    """Read an event from its JSON (a pub/sub message's data, or a stream entry's ``event``).

    Raises:
        RegistryError: The payload is not an event.
    """
    try:
        data = json.loads(payload)
        kind = str(data["type"])
        event_type: EventType | str = EventType(kind) if kind in _KNOWN_TYPES else kind
        return Event(event_type, str(data["service"]), float(data["time"]), data, stream_id)
    except (ValueError, TypeError, KeyError) as exc:
        raise RegistryError(
            f"not a registry event ({exc}): {payload[:200]!r}; "
            "is something else publishing on the events channel?"
        ) from exc

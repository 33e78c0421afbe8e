"""Who is busy: instances that said ``BUSY`` get no shadow copies until they are free again."""

from __future__ import annotations

import time

from communicator.router._directory import Instance
from communicator.wire._message import Message
from communicator.wire._validators import parse_duration

#: Seconds a BUSY without ``for=`` lasts.
DEFAULT_BUSY = 30.0
_TRUE = frozenset({"true", "1", "yes", "on"})


class BusyBoard:
    """Instances busy now, each until a monotonic time (a BUSY without an end lapses)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # client id -> monotonic time it is free again

    def set_busy(self, client_id: str, busy: bool, seconds: float | None = None) -> None:
        """An instance says it is busy (for ``seconds``, default 30) or free again."""
        if busy:
            self._until[client_id] = time.monotonic() + (
                DEFAULT_BUSY if seconds is None else seconds
            )
        else:
            self._until.pop(client_id, None)

    async def on_busy(self, sender: Instance, message: Message) -> None:
        """Apply a ``BUSY`` message from a registered instance."""
        p = message.parameters
        seconds = parse_duration(p["for"]) if "for" in p else None
        self.set_busy(sender.client_id, p.get("busy", "true").lower() in _TRUE, seconds)

    def busy(self) -> list[str]:
        """The client ids of the instances busy now."""
        now = time.monotonic()
        return sorted(c for c in list(self._until) if self.is_busy(c, now))

    def is_busy(self, client_id: str, now: float) -> bool:
        """Whether ``client_id`` is busy at ``now`` (monotonic); forgets a lapsed BUSY."""
        until = self._until.get(client_id)
        if until is None:
            return False
        if until <= now:
            del self._until[client_id]
            return False
        return True

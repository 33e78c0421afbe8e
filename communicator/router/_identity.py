"""Who may register as what: client ids, reserved names, and probing a name's current holder.

An instance name belongs to one live client at a time. When a second client
claims a name that is registered, the holder is asked to show it is alive
(an ALIVE, or any message from it, within ``PROBE_SECONDS``); only a holder
that stays silent (its host died before its will came) loses the name.
"""

from __future__ import annotations

import asyncio
import itertools
import re

from communicator.router._ports import Publisher
from communicator.wire._message import COMMUNICATOR

#: Service names no instance may take: the communicator signs its own messages with them.
RESERVED_SERVICES = frozenset({COMMUNICATOR})
#: The client ids docs/protocol.md §1 allows.
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: How long a registered instance has to show it is alive when another claims its name.
PROBE_SECONDS = 1.0


def identity_refusal(client_id: str, service: str) -> dict[str, str] | None:
    """The REFUSE parameters for a client id or service name nobody may register as, else None."""
    if not CLIENT_ID_RE.fullmatch(client_id):
        return {
            "reason": "bad_client_id",
            "message": f"client id {client_id!r} must match {CLIENT_ID_RE.pattern}; "
            "connect again with such an id",
        }
    if service in RESERVED_SERVICES:
        return {
            "reason": "reserved_name",
            "message": f"service name {service!r} is the communicator's own; choose another",
        }
    return None


class Probes:
    """The clients asked to show they are alive, each with the future set when they do."""

    def __init__(self, *, publisher: Publisher) -> None:
        self._publisher = publisher
        self.pending: dict[str, asyncio.Future[None]] = {}
        self._serials = itertools.count(1)

    def heard(self, client_id: str) -> None:
        """Any message from a probed client answers the probe (see :meth:`alive`)."""
        probe = self.pending.get(client_id)
        if probe is not None and not probe.done():
            probe.set_result(None)

    async def alive(self, client_id: str, timeout: float = PROBE_SECONDS) -> bool:
        """Whether ``client_id`` answers an ALIVE (or says anything) within ``timeout``."""
        probe = self.pending.get(client_id)
        if probe is None:
            probe = self.pending[client_id] = asyncio.get_running_loop().create_future()
            await self._publisher.reply(client_id, "ALIVE", serial=f"probe-{next(self._serials)}")
        try:
            await asyncio.wait_for(asyncio.shield(probe), timeout)
        except TimeoutError:
            return False
        finally:
            if self.pending.get(client_id) is probe and probe.done():
                del self.pending[client_id]
        return True

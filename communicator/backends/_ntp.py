"""Whether this machine's clock is synchronised by NTP, as systemd sees it.

``timedatectl show -p NTPSynchronized --value`` prints ``yes`` or ``no`` where
systemd runs (timesyncd, or chrony and ntpd through ``adjtimex``); elsewhere
(containers, other init systems) it fails and the answer is unknown. The
command is asked at most once per ``REFRESH_SECONDS`` and never on the path of
an answer: CLOCK replies carry the last value read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import time

#: How long one reading of timedatectl is trusted.
REFRESH_SECONDS = 300.0
#: How long timedatectl may take before the answer counts as unknown.
COMMAND_SECONDS = 2.0


class NtpStatus:
    """The NTP synchronisation of this machine: ``True``, ``False`` or ``None`` (cannot tell)."""

    def __init__(self, command: tuple[str, ...] | None = None) -> None:
        found = shutil.which("timedatectl")
        default = (found, "show", "-p", "NTPSynchronized", "--value") if found else None
        self._command = command if command is not None else default
        self._value: bool | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Task[None] | None = None

    @property
    def synchronized(self) -> bool | None:
        """The last value read; starts a new reading in the background when it is stale."""
        stale = time.monotonic() - self._read_at >= REFRESH_SECONDS
        if self._command is not None and stale:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no running loop: keep the last value
                return self._value
            reading = self._reading
            if reading is None or reading.done() or reading.get_loop() is not loop:
                self._reading = loop.create_task(self._read())
        return self._value

    async def read(self) -> bool | None:
        """Read it now (and remember it)."""
        await self._read()
        return self._value

    async def _read(self) -> None:
        try:
            self._value = await _ask(self._command) if self._command else None
        finally:
            self._read_at = time.monotonic()


@functools.cache
def machine_ntp() -> NtpStatus:
    """The one status of this machine, shared by every client and router in the process."""
    return NtpStatus()


async def _ask(command: tuple[str, ...]) -> bool | None:
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(COMMAND_SECONDS):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return None
    answer = out.decode(errors="replace").strip().lower()
    if process.returncode != 0 or answer not in ("yes", "no"):
        return None
    return answer == "yes"


def ntp_parameter(synchronized: bool | None) -> dict[str, str]:
    """``ntp_synchronized=yes|no`` for a CLOCK_REPLY, or nothing when unknown."""
    return {} if synchronized is None else {"ntp_synchronized": "yes" if synchronized else "no"}

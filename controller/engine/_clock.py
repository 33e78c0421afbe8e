"""The cluster time check: every server's clock against this one, and its status flags.

One registered instance per server is asked ``CLOCK`` a few times through the
communicators (``server:service/CLOCK``); each answer gives the four times of
an NTP exchange, and the round trip with the smallest delay is kept
(:mod:`controller.analysis._clock`). The asker is a client of its own
(service ``deployctl``), so the check measures what the communicators see:
the clocks of the machines the services run on.

The leading controller runs :class:`ClockWatch` every ``clock_interval``
seconds: a server beyond ``clock_threshold`` gets a status flag, lowered when
a later check finds it back in bounds; so does a server whose client says its
NTP is not synchronised. A server whose estimate is inconclusive (the error
bound wider than the threshold) or that did not answer keeps its flags as
they are: a slow network is no evidence either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from communicator import (
    Client,
    ClientError,
    Message,
    Registry,
    Settings,
    __version__,
    parse_timestamp,
)
from communicator.backends import being_cancelled
from controller.analysis._clock import ClockEstimate, ClockSample, estimate
from controller.engine._alerts import DOCS, SOURCE, slug
from flags import StatusFlag, StatusFlags

logger = logging.getLogger(__name__)

#: The service name of the asking client.
CLOCK_SERVICE = "deployctl"
#: Services never asked: the asker, and the communicators' own name.
NOT_TARGETS = frozenset({CLOCK_SERVICE, "communicator"})
#: Servers asked at once.
CONCURRENCY = 16
#: Seconds to wait for one CLOCK_REPLY.
ANSWER_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class ServerClock:
    """What one check found of one server's clock."""

    server: str
    service: str | None  # the service whose instance answered (None: none did)
    estimate: ClockEstimate | None
    ntp_synchronized: bool | None  # as the answering client says; None: it cannot tell
    problem: str | None = None  # why there is no estimate

    def status(self, threshold: float) -> str:
        """``ok``, ``skewed``, ``inconclusive`` or ``no answer``."""
        if self.estimate is None:
            return "no answer"
        if not self.estimate.conclusive(threshold):
            return "inconclusive"
        return "skewed" if self.estimate.beyond(threshold) else "ok"

    def to_json(self, threshold: float) -> dict[str, Any]:
        """The row of ``deployctl clock check --json`` (seconds)."""
        found = self.estimate
        return {
            "server": self.server,
            "service": self.service,
            "status": self.status(threshold),
            "offset": None if found is None else round(found.offset, 6),
            "error": None if found is None else round(found.error, 6),
            "delay": None if found is None else round(found.delay, 6),
            "samples": 0 if found is None else found.samples,
            "ntp_synchronized": self.ntp_synchronized,
            "problem": self.problem,
        }


async def targets(registry: Registry) -> dict[str, list[str]]:
    """For each server with instances, the services that may answer for it (sorted)."""
    servers: defaultdict[str, set[str]] = defaultdict(set)
    for service in await registry.services():
        if service in NOT_TARGETS:
            continue
        for info in await registry.instances(service):
            servers[info.server].add(service)
    return {server: sorted(services) for server, services in sorted(servers.items())}


async def check_clocks(
    client: Client,
    registry: Registry,
    *,
    samples: int,
    servers: Iterable[str] | None = None,
    timeout: float = ANSWER_TIMEOUT,
) -> list[ServerClock]:
    """Measure the clock of every server with a registered instance (or of ``servers``).

    Returns:
        One row per server, sorted by offset (servers without an answer last).
    """
    found = await targets(registry)
    if servers is not None:
        wanted = set(servers)
        found = {server: services for server, services in found.items() if server in wanted}
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(server: str, services: list[str]) -> ServerClock:
        async with slots:
            return await _measure(client, server, services, samples=samples, timeout=timeout)

    rows = await asyncio.gather(*(one(server, services) for server, services in found.items()))
    return sorted(rows, key=_order)


def _order(row: ServerClock) -> tuple[bool, float, str]:
    return (row.estimate is None, row.estimate.offset if row.estimate else 0.0, row.server)


async def _measure(
    client: Client, server: str, services: list[str], *, samples: int, timeout: float
) -> ServerClock:
    """Ask the first service on ``server`` that answers, ``samples`` times."""
    problem = "no instance answered"
    for service in services:
        taken: list[ClockSample] = []
        ntp: bool | None = None
        for _ in range(samples):
            try:
                sample, ntp = await _ask(client, server, service, timeout)
            except (ClientError, ValueError, KeyError) as exc:
                problem = f"{service}: {exc}"
                break
            taken.append(sample)
        if taken:
            return ServerClock(server, service, estimate(taken), ntp)
    return ServerClock(server, None, None, None, problem)


async def _ask(
    client: Client, server: str, service: str, timeout: float
) -> tuple[ClockSample, bool | None]:
    sent = time.time()
    request = Message(
        command="CLOCK", server=server, service=service, parameters={"sent_at": f"{sent:.6f}"}
    )
    answer = await client.request(request, timeout=timeout)
    answered = time.time()
    if answer.command != "CLOCK_REPLY":
        raise ValueError(f"answered {answer.command}, not CLOCK_REPLY")
    parameters = answer.parameters
    replied = parse_timestamp(parameters.get("replied_at") or parameters["time"])
    received = (
        parse_timestamp(parameters["received_at"]) if "received_at" in parameters else replied
    )
    ntp = {"yes": True, "no": False}.get(parameters.get("ntp_synchronized", ""))
    return ClockSample(sent, received, replied, answered), ntp


# -- status flags --------------------------------------------------------------------------------


def skew_flag_id(server: str) -> str:
    """The id of the flag raised while ``server``'s clock is beyond the threshold."""
    return f"clocks/{slug(server)}/skewed"


def unsynchronized_flag_id(server: str) -> str:
    """The id of the flag raised while ``server`` says its NTP is not synchronised."""
    return f"clocks/{slug(server)}/ntp-unsynchronized"


def skew_flag(row: ServerClock, threshold: float) -> StatusFlag:
    """The flag of a server whose clock is off by more than ``threshold``."""
    assert row.estimate is not None
    offset_ms, error_ms = row.estimate.offset * 1e3, row.estimate.error * 1e3
    way = "ahead of" if offset_ms > 0 else "behind"
    return StatusFlag.from_id(
        skew_flag_id(row.server),
        priority=60,
        message=(
            f"the clock of {row.server} is {abs(offset_ms):.0f} ms ± {error_ms:.1f} ms {way} "
            f"the controller's (allowed: {threshold * 1e3:.0f} ms)"
        ),
        help=(
            f"Request latencies measured across communicators, outcome windows and request "
            f"hand-offs read wall clocks; on {row.server} they are off by the skew. Synchronise "
            "the clock with NTP: chrony (`chronyc tracking` shows the offset and the source, "
            "`chronyc makestep` steps it at once) or systemd-timesyncd "
            "(`timedatectl timesync-status`; set NTP= in /etc/systemd/timesyncd.conf). Point "
            "every server at the same NTP sources, the controller's included. The flag goes "
            "down at the first check that finds the clock in bounds "
            "(`deployctl clock check` runs one now)."
        ),
        help_uri=f"{DOCS}#cluster-time",
        source=SOURCE,
        tags=(f"server:{row.server}", "event:clock_skew"),
    )


def unsynchronized_flag(row: ServerClock) -> StatusFlag:
    """The flag of a server whose client says its NTP is not synchronised."""
    return StatusFlag.from_id(
        unsynchronized_flag_id(row.server),
        priority=40,
        message=f"NTP is not synchronised on {row.server} (timedatectl: NTPSynchronized=no)",
        help=(
            f"{row.server}'s clock runs free: it drifts, and the skew check will flag it "
            "sooner or later. Enable and start an NTP client: `timedatectl set-ntp true` "
            "(systemd-timesyncd) or `systemctl enable --now chronyd`, and check that it reaches "
            "its sources (`chronyc sources`, `timedatectl timesync-status`). The flag goes "
            "down when the server says it is synchronised again."
        ),
        help_uri=f"{DOCS}#cluster-time",
        source=SOURCE,
        tags=(f"server:{row.server}", "event:ntp_unsynchronized"),
    )


async def apply_flags(flags: StatusFlags, rows: Iterable[ServerClock], threshold: float) -> None:
    """Raise or lower each server's clock flags from one check's rows."""
    for row in rows:
        status = row.status(threshold)
        if status == "skewed":
            await flags.raise_flag(skew_flag(row, threshold))
        elif status == "ok":
            await flags.lower(skew_flag_id(row.server))
        if row.ntp_synchronized is False:
            await flags.raise_flag(unsynchronized_flag(row))
        elif row.ntp_synchronized is True:
            await flags.lower(unsynchronized_flag_id(row.server))


class ClockWatch:
    """The leading controller's periodic clock check (a loop of :class:`Controller`)."""

    def __init__(self, *, settings: Settings, registry: Registry, flags: StatusFlags) -> None:
        self.settings = settings
        self.registry = registry
        self.flags = flags
        self.last: list[ServerClock] = []
        self.checked = asyncio.Event()  # set after each check (tests wait on it)

    async def run(self) -> None:
        """Check every ``clock_interval`` seconds until cancelled; nothing here ends the lead.

        The first check comes one interval after the lead starts; the asking client
        connects then and stays connected. A failed check (broker or Redis away) is
        logged and tried again an interval later.
        """
        interval = self.settings.clock_interval
        if interval <= 0:
            await asyncio.Event().wait()  # turned off: idle until cancelled
        while True:
            await asyncio.sleep(interval)
            try:
                async with clock_client(self.settings) as client:
                    while True:
                        await self.check(client)
                        await asyncio.sleep(interval)
            except Exception as exc:
                if being_cancelled():  # a library's disguise of our cancellation
                    raise asyncio.CancelledError from exc
                logger.warning("clock check failed (%s); next try in %g s", exc, interval)

    async def check(self, client: Client) -> list[ServerClock]:
        """One check: measure, then raise and lower the flags."""
        threshold = self.settings.clock_threshold
        rows = await check_clocks(client, self.registry, samples=self.settings.clock_samples)
        await apply_flags(self.flags, rows, threshold)
        skewed = [row.server for row in rows if row.status(threshold) == "skewed"]
        if skewed:
            logger.warning("clocks beyond %.0f ms: %s", threshold * 1e3, ", ".join(skewed))
        self.last = rows
        self.checked.set()
        return rows


def clock_client(settings: Settings) -> Client:
    """The client that asks the clocks: service ``deployctl``, no commands of its own."""
    return Client(CLOCK_SERVICE, __version__, settings=settings, register_timeout=10)

"""Soak: routed traffic at QoS 1 while instances join and leave; every message accounted for.

One ``communicatord`` and one ``deployctl controller run`` in processes of
their own, on the real Redis and Mosquitto. A sender streams numbered one-way
messages to ``soak/DO`` at a steady rate (QoS 1, ``transmission_report=failure``)
while the fleet churns: every ``CHURN`` seconds an instance joins, the oldest
leaves cleanly, and every third round all leave for a moment, so messages are
cached and delivered to the next instance that registers.

At the end every message was delivered exactly once (none failed, none
twice), each instance saw its messages in the order sent, the sender was told
of each message cached, and the memory of the router and of the controller
stayed flat after the warm-up.

``make test`` runs it for ``SOAK_SECONDS`` (8 s); ``make soak`` sets
``DEPLOYCTL_SOAK_SECONDS`` (600) and ``DEPLOYCTL_SOAK_RATE`` for the long run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Settings
from communicator.backends._keys import Keys
from tests.communicator.fleet import ROOT, ServiceProcess, environment, running_router
from tests.conftest import eventually

SOAK_SECONDS = float(os.environ.get("DEPLOYCTL_SOAK_SECONDS", "8"))
RATE = float(os.environ.get("DEPLOYCTL_SOAK_RATE", "200"))
CHURN = 1.0  # seconds between two changes of the fleet
#: RSS growth allowed after the warm-up (the first quarter): flat, give or take the
#: allocator's arenas; the long run also bounds the growth per minute.
MAX_GROWTH_MB = 25.0
MAX_GROWTH_MB_PER_MINUTE = 2.0
PARTITIONS = 32

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SOAK_SECONDS * 3 + 90)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Reading:
    """Reads a service process's events as they come (its stdout pipe must never fill)."""

    def __init__(self, process: ServiceProcess) -> None:
        self.process = process
        self.task = asyncio.create_task(self._read(), name=f"read-{process.name}")

    async def _read(self) -> None:
        with contextlib.suppress(AssertionError, TimeoutError):  # exited, or quiet for long
            while True:
                await self.process.next_event(timeout=3600)

    def sequence(self) -> list[int]:
        return [int(m["parameters"]["seq"]) for m in self.process.received("DO")]


@contextlib.asynccontextmanager
async def daemon(settings: Settings, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        *args, env=environment(settings), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_traffic_through_churn_is_delivered_once_in_order_with_flat_memory(
    settings: Settings, redis: Redis
) -> None:
    keys = Keys(settings.key_prefix)
    deployctl = str(Path(sys.executable).with_name("deployctl"))
    async with (
        daemon(settings, sys.executable, "-m", "communicator") as router,
        daemon(settings, deployctl, "controller", "run") as controller,
    ):

        async def leased() -> bool:
            owners = await redis.mget([keys.router_lease(p) for p in range(PARTITIONS)])
            return all(owners)

        await eventually(leased, "the router holding every partition", timeout=30)
        fleet: list[Reading] = []
        gone: list[Reading] = []

        async def join() -> None:
            process = await ServiceProcess.start(
                settings, "soak", "1.0", "--commands", "DO", "--behaviour", "silent"
            )
            fleet.append(Reading(process))

        async def leave(reading: Reading) -> None:
            fleet.remove(reading)
            await reading.process.close()  # UNREGISTER, drain, disconnect
            await reading.task
            gone.append(reading)

        await join()
        sender_process = await ServiceProcess.start(
            settings, "soak_sender", "1.0", "--commands", "TRANSMISSION_REPORT"
        )
        sender = Reading(sender_process)
        count = int(SOAK_SECONDS * RATE)
        await sender_process.order(
            burst="soak/DO transmission_report=failure", count=count, rate=RATE
        )

        memory: list[tuple[float, float, float]] = []  # (t, router MB, controller MB)
        started = time.monotonic()
        rounds = 0
        while time.monotonic() - started < SOAK_SECONDS:
            rounds += 1
            if rounds % 3 == 0:  # everybody leaves: the next messages are cached
                for reading in fleet.copy():  # leave() removes it from fleet
                    await leave(reading)
                await asyncio.sleep(CHURN / 2)
            await join()
            if len(fleet) > 2:
                await leave(fleet[0])
            memory.append((time.monotonic() - started, rss_mb(router.pid), rss_mb(controller.pid)))
            await asyncio.sleep(CHURN)
        if not fleet:
            await join()

        async def all_sent() -> bool:
            return any(event["event"] == "sent" for event in sender_process.events)

        await eventually(all_sent, "the sender's last message", timeout=SOAK_SECONDS * 2 + 30)

        readings = fleet + gone

        def delivered() -> Counter[int]:
            return Counter(seq for reading in readings for seq in reading.sequence())

        async def all_delivered() -> bool:
            return len(delivered()) == count

        await eventually(all_delivered, f"all {count} messages delivered", timeout=30)
        for reading in fleet.copy():  # leave() removes it from fleet
            await leave(reading)
        await sender_process.close()
        await sender.task

    tally = delivered()
    assert sorted(tally) == list(range(count))
    twice = [seq for seq, n in tally.items() if n > 1]
    assert twice == [], f"{len(twice)} messages delivered twice, e.g. {twice[:5]}"
    for reading in readings:
        sequence = reading.sequence()
        assert sequence == sorted(sequence), f"{reading.process.name}: out of order"
    reports = [m["parameters"] for m in sender_process.received("TRANSMISSION_REPORT")]
    failed = [r for r in reports if r.get("status") == "failed"]
    assert failed == [], failed[:5]
    assert rounds >= 3  # the fleet emptied at least once...
    assert any(r.get("status") == "cached" for r in reports)  # ...and the sender was told
    assert len(readings) >= rounds  # one join per round

    warm = [sample for sample in memory if sample[0] >= SOAK_SECONDS / 4]
    report: dict[str, Any] = {}
    for column, name in ((1, "router"), (2, "controller")):
        values = [sample[column] for sample in warm]
        growth = max(values) - min(values)
        report[name] = (round(min(values), 1), round(max(values), 1))
        assert growth <= MAX_GROWTH_MB, f"{name} RSS grew {growth:.1f} MB: {report}"
        minutes = (warm[-1][0] - warm[0][0]) / 60
        if minutes >= 2:  # the long run: bound the trend, not only the swing
            rate = (warm[-1][column] - warm[0][column]) / minutes
            assert rate <= MAX_GROWTH_MB_PER_MINUTE, f"{name} grows {rate:.2f} MB/min"
    print(f"soak: {count} messages, {len(readings)} instances, RSS MB (min, max): {report}")


async def test_instances_that_leave_under_a_flood_lose_nothing(
    settings: Settings, redis: Redis
) -> None:
    """A clean leave hands over everything routed to it before the router heard the UNREGISTER.

    Messages routed to an instance a moment before its UNREGISTER is processed are
    still on their way; a client that disconnected at once would lose them. Three
    instances leave, one after another, while a flood goes to the service.
    """
    count = 2000
    async with running_router(settings, redis):
        readings = []
        for _ in range(4):
            process = await ServiceProcess.start(
                settings, "flood", "1.0", "--commands", "DO", "--behaviour", "silent"
            )
            readings.append(Reading(process))
        sender = await ServiceProcess.start(settings, "flood_sender", "1.0")
        await sender.order(burst="flood/DO", count=count)

        def delivered() -> Counter[int]:
            return Counter(seq for reading in readings for seq in reading.sequence())

        for leaving in readings[:3]:

            async def flowing(reading: Reading = leaving) -> bool:
                return len(reading.sequence()) >= 20 or len(delivered()) == count

            await eventually(flowing, "traffic to the next leaving instance", timeout=30)
            await leaving.process.close()
            await leaving.task

        async def all_delivered() -> bool:
            return len(delivered()) == count

        await eventually(all_delivered, f"all {count} messages delivered", timeout=60)
        await readings[3].process.close()
        await sender.close()

    tally = delivered()
    assert sorted(tally) == list(range(count))
    assert max(tally.values()) == 1
    for reading in readings:
        sequence = reading.sequence()
        assert sequence == sorted(sequence), f"{reading.process.name}: out of order"

"""Communicators and brokers that go away: failover between routers, broker restarts.

docs/protocol.md §7 promises: a sender's messages keep their order across a
failover, none is lost while another communicator runs, duplicates are at most
a replayed suffix, and routing resumes within about the lease time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from communicator import Registry, Settings
from communicator.backends._keys import Keys
from communicator.router._control import WILL_GRACE
from communicator.router._partitions import partition_of
from tests.communicator.fleet import ROOT, ServiceProcess, environment, running_router
from tests.conftest import Server, free_port, launch_mosquitto

pytestmark = pytest.mark.integration
PARTITIONS = 32


async def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll an async condition until true, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def communicators(
    settings: Settings, redis: Redis
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Two communicatord processes sharing the partitions."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "communicator", env=environment(settings), cwd=ROOT
        )
        for _ in range(2)
    ]
    keys = Keys(settings.key_prefix)

    async def all_leased() -> bool:
        owners = await redis.mget([keys.router_lease(p) for p in range(PARTITIONS)])
        return await redis.zcard(keys.routers()) == 2 and all(owners)

    await wait_until(all_leased, 20, "two communicators holding every partition")
    yield processes
    for process in processes:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def start_service(
    settings: Settings, started: list[ServiceProcess], *args: str
) -> ServiceProcess:
    process = await ServiceProcess.start(settings, *args)
    started.append(process)
    return process


async def test_killed_communicator_keeps_order_and_loses_nothing(
    settings: Settings, redis: Redis, communicators: list[asyncio.subprocess.Process]
) -> None:
    """Kill -9 the communicator routing a sender mid-stream: every message arrives, in order."""
    started: list[ServiceProcess] = []
    try:
        receiver = await start_service(
            settings, started, "sink", "1", "--commands", "WORK", "--behaviour", "silent"
        )
        sender = await start_service(settings, started, "source", "1")
        owner = await redis.get(
            Keys(settings.key_prefix).router_lease(partition_of(sender.client_id, PARTITIONS))
        )
        victim = next(p for p in communicators if f"-{p.pid}-" in owner.decode())
        count = 3000
        await sender.order(burst="sink/WORK", count=count)
        events = [await receiver.expect("received") for _ in range(300)]
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        await victim.wait()
        seqs = [int(e["message"]["parameters"]["seq"]) for e in events]
        while len(set(seqs)) < count:
            events.append(await receiver.expect("received", timeout=15))
            seqs.append(int(events[-1]["message"]["parameters"]["seq"]))
    finally:
        await asyncio.gather(*(p.close() for p in started))
    assert set(seqs) == set(range(count)), "messages were lost"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen), "order broken"
    duplicates = len(seqs) - count
    assert duplicates <= count // 2
    arrivals = [e["at"] for e in events]
    gap = max(later - earlier for earlier, later in itertools.pairwise(arrivals))
    assert gap < 5.0, f"routing paused {gap:.2f}s: it must resume within seconds"
    print(
        f"failover: {duplicates} duplicates, longest pause {gap:.2f}s, "
        f"killed at +{killed_at - arrivals[0]:.2f}s"
    )


async def test_a_joining_communicator_takes_its_share_without_loss(
    settings: Settings, redis: Redis
) -> None:
    """A second communicator started mid-stream gets half the partitions, the sender's among
    them: every message arrives, in order, and routing hardly pauses."""
    env, keys = environment(settings), Keys(settings.key_prefix)
    command = (sys.executable, "-m", "communicator")
    processes = [await asyncio.create_subprocess_exec(*command, env=env, cwd=ROOT)]
    started: list[ServiceProcess] = []
    try:

        async def leased_by_one() -> bool:
            owners = await redis.mget([keys.router_lease(p) for p in range(PARTITIONS)])
            return all(owners) and len(set(owners)) == 1

        await wait_until(leased_by_one, 20, "the first communicator holding every partition")
        receiver = await start_service(
            settings, started, "sink", "1", "--commands", "WORK", "--behaviour", "silent"
        )
        # The highest partitions are the ones handed over: put the sender in one of them.
        sender_id = next(
            cid for n in itertools.count() if partition_of(cid := f"source_{n}", PARTITIONS) >= 24
        )
        sender = await start_service(settings, started, "source", "1", "--client-id", sender_id)
        count = 3000
        await sender.order(burst="sink/WORK", count=count, rate=500)
        events = [await receiver.expect("received") for _ in range(300)]
        processes.append(await asyncio.create_subprocess_exec(*command, env=env, cwd=ROOT))
        while len(events) < count:
            events.append(await receiver.expect("received", timeout=15))
        owners = await redis.mget([keys.router_lease(p) for p in range(PARTITIONS)])
    finally:
        await asyncio.gather(*(p.close() for p in started))
        for process in processes:
            process.terminate()
            await process.wait()
    seqs = [int(e["message"]["parameters"]["seq"]) for e in events]
    assert set(seqs) == set(range(count)), "messages were lost"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen), "order broken"
    assert sorted(Counter(owners).values()) == [16, 16], "the partitions are not shared"
    assert owners[partition_of(sender_id, PARTITIONS)] != owners[0], "the sender did not move"
    arrivals = [e["at"] for e in events]
    gap = max(later - earlier for earlier, later in itertools.pairwise(arrivals))
    assert gap < 2.0, f"routing paused {gap:.2f}s during the hand-over"
    print(f"join: {len(seqs) - count} duplicates, longest pause {gap:.2f}s")


async def test_a_communicator_cut_off_from_the_broker_hands_its_work_over(
    settings: Settings, redis: Redis
) -> None:
    """When one communicator's broker connection drops, its peer (which heard everything)
    routes its partitions at once: nothing is lost while it reconnects, order holds."""
    async with running_router(settings, redis) as first, running_router(settings, redis) as second:
        await wait_until(
            lambda: asyncio.sleep(0, len(first.table.owned()) == len(second.table.owned()) == 16),
            20,
            "16 partitions each",
        )
        started: list[ServiceProcess] = []
        try:
            receiver = await start_service(
                settings, started, "sink", "1", "--commands", "WORK", "--behaviour", "silent"
            )
            sender_id = next(
                cid
                for n in itertools.count()
                if first.table.owns(partition_of(cid := f"source_{n}", PARTITIONS))
            )
            sender = await start_service(settings, started, "source", "1", "--client-id", sender_id)
            count = 2000
            await sender.order(burst="sink/WORK", count=count, rate=500)
            events = [await receiver.expect("received") for _ in range(200)]
            assert first._link is not None
            first._link.abort()  # the network between it and the broker fails
            while len(events) < count:
                events.append(await receiver.expect("received", timeout=15))
        finally:
            await asyncio.gather(*(p.close() for p in started))
    seqs = [int(e["message"]["parameters"]["seq"]) for e in events]
    assert set(seqs) == set(range(count)), "messages were lost"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen), "order broken"
    arrivals = [e["at"] for e in events]
    gap = max(later - earlier for earlier, later in itertools.pairwise(arrivals))
    assert gap < 2.0, f"routing paused {gap:.2f}s"
    print(f"cut off: {len(seqs) - count} duplicates, longest pause {gap:.2f}s")


class RestartableBroker:
    """A Mosquitto of one test, which it can restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._workdir = workdir
        self._runs = 0
        self.server = self._launch()

    def _launch(self) -> Server:
        self._runs += 1
        return launch_mosquitto(
            f"mosquitto{self._runs}", self._workdir, self.port, "allow_anonymous true"
        )

    def restart(self) -> None:
        """Stop the broker, then start a new one on the same port."""
        self.server.stop()
        self.server = self._launch()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RestartableBroker]:
    broker = RestartableBroker(tmp_path)
    yield broker
    broker.server.stop()


async def test_clients_and_router_survive_a_broker_restart(
    settings: Settings, redis: Redis, broker: RestartableBroker
) -> None:
    """After the broker restarts, services re-register on their own and requests flow again."""
    settings = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{broker.port}"})
    started: list[ServiceProcess] = []
    async with running_router(settings, redis):
        try:
            await start_service(settings, started, "orders", "1.0", "--commands", "PLACE")
            front = await start_service(settings, started, "front", "1.0")
            assert (await front.request("orders/PLACE"))["event"] == "reply"
            await asyncio.to_thread(broker.restart)
            outcomes = []
            for _ in range(20):  # each attempt waits for the reconnections, at most 1 s
                answer = await front.request("orders/PLACE", timeout=1)
                outcomes.append(answer.get("error", answer["event"]))
                if answer["event"] == "reply":
                    break
            assert outcomes[-1] == "reply", outcomes[:3]
            # Mosquitto sent every client's will as it stopped: that is no failure of theirs.
            await asyncio.sleep(WILL_GRACE + 0.5)
            assert (
                await Registry(redis=redis, keys=Keys(settings.key_prefix)).failures("orders") == []
            )
        finally:
            await asyncio.gather(*(p.close() for p in started))

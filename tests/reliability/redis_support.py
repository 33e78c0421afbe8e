"""Support for the Redis fault tests: a Redis of the test's own, and message accounting."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from communicator import Settings, connect_redis
from communicator.router._router import Router, RouterConfig
from controller.engine._controller import Controller
from tests.communicator.fleet import ServiceProcess
from tests.conftest import Server, answers, finished, free_port, redis_args


@dataclass
class OwnRedis:
    """A redis-server on one port and folder, with an fsynced append-only log.

    Killed with SIGKILL and started again from the same folder, it comes back
    with every write it acknowledged.
    """

    spawn: Callable[..., Server]
    folder: Path
    port: int = field(default_factory=free_port)
    server: Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = redis_args(
            self.port, "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)
        )
        self.server = self.spawn(
            f"redis-{self.port}", args, ready=lambda: answers("127.0.0.1", self.port)
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        assert self.server is not None
        self.server.process.kill()
        self.server.process.wait(timeout=5)


@contextlib.asynccontextmanager
async def leading_controller(
    settings: Settings,
) -> AsyncIterator[tuple[Controller, asyncio.Task[None]]]:
    """A controller in this process with its own Redis client, leading on entry."""
    redis = await connect_redis(settings)
    controller = Controller(settings=settings, redis=redis, tick=0.1)
    task = asyncio.create_task(controller.run(), name="test-controller")
    try:
        await asyncio.wait_for(controller.leading.wait(), 10)
        yield controller, task
    finally:
        controller.stop()
        try:
            await finished(task, "the controller")
        finally:
            await redis.aclose()


@contextlib.asynccontextmanager
async def router_running(settings: Settings) -> AsyncIterator[tuple[Router, asyncio.Task[None]]]:
    """A router in this process with its own Redis client, ready on entry, and its task."""
    redis = await connect_redis(settings)
    router = Router(settings=settings, redis=redis, config=RouterConfig())
    task = asyncio.create_task(router.run(), name="test-router")
    try:
        ready = asyncio.create_task(router.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        assert ready in done, "router not ready"
        yield router, task
    finally:
        router.stop()
        try:
            await finished(task, "the router")
        finally:
            await redis.aclose()


async def send_numbered(sender: ServiceProcess, line: str, count: int, rate: float) -> None:
    """``count`` one-way messages ``LINE;seq=N;sent=T`` at ``rate`` a second, then returns."""
    await sender.order(burst=line, count=count, rate=rate, stamp=True)
    await sender.expect("sent", timeout=10 + count / rate)


def seqs(receiver: ServiceProcess, phase: str) -> list[int]:
    """The ``seq`` of every message of ``phase`` ``receiver`` got, in the order it got them."""
    return [
        int(m["parameters"]["seq"])
        for m in receiver.received()
        if m["parameters"].get("phase") == phase
    ]


def delays(receiver: ServiceProcess, phase: str) -> list[float]:
    """Seconds from sending to receipt of each message of ``phase`` ``receiver`` got."""
    return [
        e["at"] - float(e["message"]["parameters"]["sent"])
        for e in receiver.events
        if e["event"] == "received" and e["message"]["parameters"].get("phase") == phase
    ]


def duplicates(sent: int, got: dict[str, list[int]]) -> list[int]:
    """The messages delivered twice, after checking loss, order and duplication.

    ``got`` is, per instance of the destination, the ``seq`` of each message
    it received from one sender, in the order received; ``0 .. sent - 1``
    were sent. The promises checked (docs/protocol.md §7): none is lost; each
    instance gets them in the order sent; a message comes at most twice, and
    the ones that come twice are one run of consecutive messages (a replay
    of what was routed after the last checkpoint), which is the only place
    an instance's sequence may step back.

    Raises:
        AssertionError: A promise is broken; the message shows what arrived.
    """
    seen: dict[int, int] = {}
    for numbers in got.values():
        for seq in numbers:
            seen[seq] = seen.get(seq, 0) + 1
    missing = sorted(set(range(sent)) - set(seen))
    assert not missing, f"lost {len(missing)} of {sent}: {missing[:20]}; got {got}"
    assert max(seen.values()) <= 2, f"delivered three times or more: {got}"
    twice = sorted(seq for seq, times in seen.items() if times == 2)
    assert twice == list(range(twice[0], twice[-1] + 1)) if twice else True, (
        f"the duplicates are not one run of consecutive messages: {twice}"
    )
    for instance, numbers in got.items():
        once = [seq for seq in numbers if seq not in twice]
        assert once == sorted(once), f"{instance} got them out of order: {numbers}"
        for before, seq in itertools.pairwise(numbers):
            assert seq > before or seq in twice, f"{instance} stepped back to {seq}: {numbers}"
    return twice


async def key_count(redis: Redis, pattern: str) -> int:
    return len([k async for k in redis.scan_iter(match=pattern, count=1000)])


def kinds(records: list[Any], logger_prefix: str = "") -> dict[str, int]:
    """How many WARNING+ log lines of each message template were written."""
    counts: dict[str, int] = {}
    for record in records:
        if record.levelname in ("WARNING", "ERROR", "CRITICAL") and record.name.startswith(
            logger_prefix
        ):
            counts[record.msg] = counts.get(record.msg, 0) + 1
    return counts

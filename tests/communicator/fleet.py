"""Test support: routers in-process and services as separate processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from communicator import Settings
from communicator.router._router import Router, RouterConfig

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def environment(settings: Settings) -> dict[str, str]:
    """The DEPLOYCTL_* variables that make a child process use ``settings``' backends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYCTL_")}
    env.update(
        DEPLOYCTL_REDIS_URL=settings.redis_url or "",
        DEPLOYCTL_MQTT_URL=settings.mqtt_url or "",
        DEPLOYCTL_KEY_PREFIX=settings.key_prefix,
        DEPLOYCTL_TOPIC_PREFIX=settings.topic_prefix,
        PYTHONPATH=str(ROOT),
    )
    return env


class ServiceProcess:
    """One service instance in a child process (tests/communicator/service_main.py)."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self.client_id = ""

    @classmethod
    async def start(
        cls,
        settings: Settings,
        service: str,
        version: str,
        *args: str,
        ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        """Start the process; ``env`` adds to (or overrides) its environment."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.communicator.service_main",
            service,
            version,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**environment(settings), **(env or {})},
            cwd=ROOT,
        )
        proc = cls(process, f"{service}@{version}")
        if ready:
            event = await proc.expect("ready")
            proc.client_id = event["client_id"]
        return proc

    async def next_event(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise AssertionError(f"{self.name} exited (code {await self.process.wait()})")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def expect(
        self,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = TIMEOUT,
    ) -> dict[str, Any]:
        """The first event of ``kind`` matching ``where`` not taken before, waiting if need be."""
        for index, event in enumerate(self.events):
            if index not in self._taken and event["event"] in kind.split("|") and where(event):
                self._taken.add(index)
                return event
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {kind} event; saw {self.events[-5:]}")
            event = await self.next_event(remaining)
            if event["event"] in kind.split("|") and where(event):
                self._taken.add(len(self.events) - 1)
                return event

    def received(self, command: str | None = None) -> list[dict[str, Any]]:
        """Messages received so far (of ``command``)."""
        return [
            e["message"]
            for e in self.events
            if e["event"] == "received" and (command is None or e["message"]["command"] == command)
        ]

    async def order(self, **order: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(order) + "\n").encode())
        await self.process.stdin.drain()

    async def send(self, line: str) -> None:
        await self.order(send=line)
        await self.expect("sent")

    async def request(self, line: str, timeout: float = 5) -> dict[str, Any]:
        await self.order(request=line, timeout=timeout)
        return await self._answer(timeout)

    async def _answer(self, timeout: float) -> dict[str, Any]:
        return await self.expect("reply|failed", timeout=timeout + TIMEOUT)

    async def burst(self, line: str, count: int) -> None:
        """Send ``count`` messages numbered with ``seq``, as fast as the client can."""
        await self.order(burst=line, count=count)
        await self.expect("sent", timeout=TIMEOUT + count / 100)

    async def crash(self) -> None:
        await self.order(crash=True)
        await asyncio.wait_for(self.process.wait(), TIMEOUT)
        await self._release_pipes()

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionResetError):
                await self.order(quit=True)
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._release_pipes()

    async def _release_pipes(self) -> None:
        """Read stdout to its end, so the pipe's transport closes before the test's loop does.

        Otherwise it is closed by the garbage collector, maybe during a later test,
        which then fails on the ResourceWarning (``filterwarnings = error``).
        """
        assert self.process.stdout is not None
        with contextlib.suppress(TimeoutError, ValueError, RuntimeError):
            await asyncio.wait_for(self.process.stdout.read(), 5)


@contextlib.asynccontextmanager
async def running_router(
    settings: Settings, redis: Any, *, services: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[Router]:
    """A router in this process, ready (holding its partitions) on entry, stopped on exit."""
    router = Router(
        settings=settings, redis=redis, services=services, config=RouterConfig(**config)
    )
    task = asyncio.create_task(router.run(), name="test-router")
    try:
        ready = asyncio.create_task(router.ready.wait())
        done, _ = await asyncio.wait(
            {task, ready}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()
        if ready not in done:
            raise TimeoutError("router not ready")
        yield router
    finally:
        router.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)

"""Processes for the fault tests: daemons to kill, and a client that accounts for every message.

Run as ``python -m tests.reliability.process_support stream|requests ...`` with
the DEPLOYCTL_* environment of ``tests.communicator.fleet.environment``. The
client prints one JSON object per line: ``ready``, then one line per message
(``sent``, ``unsent`` or ``cancelled`` for ``stream``, ``answer`` for ``requests``), so a test
knows what was published, when, and under which registration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from communicator import Client, ClientError, Keys, parse_line
from tests.communicator.fleet import ROOT

PARTITIONS = 32


class Child:
    """A child process whose stdout is JSON lines, gathered in the background into ``events``."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read(), name=f"read-{name}")

    @classmethod
    async def start(cls, name: str, args: Sequence[str], env: dict[str, str]) -> Child:
        """Start ``python ARGS`` with stdout read as JSON lines and stdin a pipe."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        return cls(process, name)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.events.append(json.loads(line))

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events of ``kind`` so far."""
        return [e for e in self.events if e["event"] == kind]

    async def wait_for(
        self, condition: Callable[[], bool], what: str, timeout: float = 20.0
    ) -> None:
        """Poll ``condition`` (on ``events``) until it holds; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self._reader.done():
                raise AssertionError(f"{self.name} exited before {what}: {self.events[-3:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} not within {timeout:g} s")
            await asyncio.sleep(0.05)

    async def order(self, **order: Any) -> None:
        """Write one JSON order on the child's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(order) + "\n").encode())
        await self.process.stdin.drain()

    async def close(self) -> None:
        """Ask it to stop (``quit``), SIGKILL it after 5 s; always reaps it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionResetError):
                await self.order(quit=True)
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._reader, 5)


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` (``VmRSS`` of /proc/PID/status), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


async def leases(redis: Redis, key_prefix: str) -> list[bytes | str | None]:
    """The owner of each partition's lease (None where nobody holds it)."""
    keys = Keys(key_prefix)
    return list(await redis.mget([keys.router_lease(p) for p in range(PARTITIONS)]))


async def communicators_ready(redis: Redis, key_prefix: str, count: int) -> bool:
    """Whether ``count`` communicators are live and every partition is leased."""
    live = await redis.zcard(Keys(key_prefix).routers())
    return bool(live == count and all(await leases(redis, key_prefix)))


# -- the client (``python -m tests.reliability.process_support``) -------------------------


def say(event: str, **data: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def stream(client: Client, line: str, rate: float) -> None:
    """Send ``line seq=N`` at ``rate`` per second, each once: ``sent`` or ``unsent`` per seq.

    The one being sent when the stream stops is ``cancelled``: it may have gone out.
    """
    for seq in range(10**9):
        started = time.time()
        try:
            await client.send(parse_line(f"{line} seq={seq}"), timeout=5)
        except ClientError as exc:  # it may have reached the broker: the test counts it apart
            say("unsent", seq=seq, at=started, error=str(exc))
        except asyncio.CancelledError:  # stopped mid-send: it may have gone out too
            say("cancelled", seq=seq, at=started)
            raise
        else:
            say("sent", seq=seq, at=started, registrations=client.registrations)
        await asyncio.sleep(max(0.0, started + 1 / rate - time.time()))


async def requests(client: Client, line: str, rate: float, timeout: float) -> None:
    """Requests at ``rate`` per second, each in its own task: one ``answer`` line each."""

    async def one(seq: int) -> None:
        started = time.time()
        try:
            reply = await client.request(parse_line(line), timeout=timeout)
        except ClientError as exc:
            say("answer", seq=seq, at=started, latency=time.time() - started, error=str(exc))
        else:
            tag = reply.parameters.get("tag")
            say("answer", seq=seq, at=started, latency=time.time() - started, tag=tag)

    tasks: set[asyncio.Task[None]] = set()
    try:
        for seq in range(10**9):
            task = asyncio.create_task(one(seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / rate)
    finally:
        for task in tasks:
            task.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["stream", "requests"])
    parser.add_argument("line", help="what to send, e.g. sink/WORK")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="of each request")
    parser.add_argument("--client-id")
    args = parser.parse_args()
    client = Client("source", "1", client_id=args.client_id, register_timeout=10)
    await client.__aenter__()
    say("ready", client_id=client.client_id)
    if args.role == "stream":
        work = stream(client, args.line, args.rate)
    else:
        work = requests(client, args.line, args.rate, args.timeout)
    working = asyncio.create_task(work, name="work")
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := await reader.readline():
        if json.loads(line).get("quit"):
            break
    working.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await working
    await client.__aexit__(None, None, None)
    say("bye")


if __name__ == "__main__":
    asyncio.run(main())

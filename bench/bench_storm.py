"""A reconnect storm: 5,000 instances READY again after their broker restarts.

    .venv/bin/python bench/bench_storm.py

The benchmark starts a Mosquitto of its own (``set_tcp_nodelay``, like
``python -m bench``'s) on a free port, so it can stop and start it again on
the same port. 5,000 instances, each its own MQTT connection, run in
``FLEETS`` fleet processes (this file run with ``--fleet``: our own asyncio
MQTT client, ``communicator.backends.BrokerLink``, one connection per
instance, speaking the raw protocol of docs/protocol.md). Each instance
behaves as ``communicator.Client`` does: it reconnects with the backoff of
``communicator.backends._backoff`` (random up to 0.05 s, doubling, capped at
2 s), subscribes to its ``out`` topic and sends REGISTER until READY comes
(again after 0.5 s, 1 s, 2 s, 4 s...: no communicator may be listening yet).
The endpoints set no will.

- **ours**: one ``communicatord`` on that broker; the 5,000 instances register
  through it; the broker is restarted; measured: from the moment the new broker
  accepts connections until the last instance has READY again. Goal <= 5 s.
- **baseline**, in the same run, with no communicator: the same 5,000
  connections, each subscribing to a topic of its own and publishing one
  message to it, ready when the message comes back (one publish/delivery round
  trip through the broker); the broker restarted the same way; measured the same.

The time since the broker was stopped is printed too (the restart itself takes
a few tens of ms). Bound: 300 s (``watch``); every wait has its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import (
    ROOT,
    Communicatord,
    Namespace,
    machine,
    ms,
    result,
    summary,
    verdict,
    watch,
)
from communicator.backends._backoff import MAX_WAIT, backoff_delay
from communicator.backends._link import BrokerLink, LinkError
from communicator.backends._topics import Topics
from communicator.wire._codec import decode

_HERE = Path(__file__).resolve()
BOUND = 300.0
INSTANCES = 5_000
FLEETS = 4
SERVICES = 50
GOAL = 5.0
#: Longest wait for every instance to be READY (first registration, or after the restart).
READY_TIMEOUT = 120.0
STEP_TIMEOUT = 15.0  # a broker start or stop, a fleet process start


# -- the broker ----------------------------------------------------------------------------


class Broker:
    """A Mosquitto of our own on a fixed free port, which can be stopped and started again."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._folder = Path(tempfile.mkdtemp(prefix="bench-storm-broker-"))
        self._config = self._folder / "mosquitto.conf"
        self._config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "max_connections -1\nuser root\n"
        )
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """Its MQTT URL."""
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> float:
        """Start it; return the monotonic time it first accepted a connection."""
        self._process = await asyncio.create_subprocess_exec(
            "mosquitto", "-c", str(self._config), stderr=asyncio.subprocess.DEVNULL
        )
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    accepted = time.monotonic()
                    writer.close()
                    return accepted
                if self._process.returncode is not None:
                    raise RuntimeError(f"mosquitto exited ({self._process.returncode})")
                await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop it (SIGTERM, as a service manager does), then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STEP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def close(self) -> None:
        """Stop it and remove its folder."""
        await self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)


# -- the fleet (child side) ----------------------------------------------------------------


class Fleet:
    """Many instances, each its own MQTT connection, each re-registering after every drop."""

    def __init__(self, *, port: int, topic_prefix: str, ids: list[str], mode: str) -> None:
        self._port = port
        self._topics = Topics(topic_prefix)
        self._prefix = topic_prefix
        self._ids = ids
        self._mode = mode  # "register" (through a communicator) or "echo" (the baseline)
        self.ready: dict[str, float] = {}  # client id -> monotonic time of its latest READY
        self.sent = 0  # requests (REGISTER, or the echo's message) sent so far, repeats included
        self.tries: dict[str, int] = {}  # client id -> requests its latest connection sent
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Bring every instance to life."""
        for number, client_id in enumerate(self._ids):
            task = asyncio.create_task(self._life(client_id, number), name=f"life-{client_id}")
            self._tasks.append(task)

    async def stop(self) -> None:
        """End every instance."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_ready(self, since: float, timeout: float) -> dict[str, Any]:
        """Wait until every instance was READY after ``since``; their times."""
        deadline = time.monotonic() + timeout
        while True:
            late = [c for c in self._ids if self.ready.get(c, -1.0) <= since]
            if not late or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        times = [self.ready[c] for c in self._ids if self.ready.get(c, -1.0) > since]
        return {
            "ready": len(times),
            "late": late[:5],
            "first": min(times, default=0.0),
            "last": max(times, default=0.0),
            "sent": self.sent,
            "times": times,
            "tries": [self.tries[c] for c in self._ids if self.ready.get(c, -1.0) > since],
        }

    def _request(self, client_id: str, number: int) -> tuple[str, str, bytes]:
        """(where to publish, where the answer comes, what to send) for one instance."""
        if self._mode == "echo":
            topic = f"{self._prefix}echo/{client_id}"
            return topic, topic, b"PING"
        line = (
            f"REGISTER service=storm{number % SERVICES};version=1;server=bench;"
            f"instance={client_id};protocol=1;commands=WORK"
        )
        return self._topics.inbound(client_id), self._topics.outbound(client_id), line.encode()

    async def _life(self, client_id: str, number: int) -> None:
        request, answer, line = self._request(client_id, number)
        attempt = 0
        while True:
            try:
                link = await BrokerLink.open("127.0.0.1", self._port, client_id=client_id)
            except (LinkError, OSError, TimeoutError):
                await asyncio.sleep(backoff_delay(attempt))
                attempt += 1
                continue
            attempt = 0
            with contextlib.suppress(LinkError, OSError, TimeoutError):
                async with link:
                    await link.subscribe([(answer, 0)])
                    await self._register(link, client_id, request, line)
                    async for _ in link:  # hold the connection until the broker drops it
                        pass
            await asyncio.sleep(backoff_delay(0))

    async def _register(self, link: BrokerLink, client_id: str, request: str, line: bytes) -> None:
        """Send ``line`` until the answer comes, waiting longer each time (as Client does)."""
        answered = asyncio.ensure_future(self._answer(link))
        try:
            attempt = 0
            self.tries[client_id] = 0
            while not answered.done():
                link.publish(request, line)
                self.sent += 1
                self.tries[client_id] += 1
                with contextlib.suppress(TimeoutError):
                    wait = min(0.5 * 2**attempt, 2 * MAX_WAIT)
                    await asyncio.wait_for(asyncio.shield(answered), wait)
                attempt += 1
            answered.result()
            self.ready[client_id] = time.monotonic()
        finally:
            answered.cancel()

    async def _answer(self, link: BrokerLink) -> None:
        async for message in link:
            if self._mode == "echo" or decode(message.payload).command == "READY":
                return
        raise LinkError("the connection dropped before the answer")


async def serve_fleet(arguments: dict[str, Any]) -> None:
    """Child side: start the fleet, then answer one JSON operation per stdin line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    fleet = Fleet(**arguments)
    fleet.start()
    try:
        while line := await reader.readline():
            order = json.loads(line)
            if order["op"] == "quit":
                break
            answer = await fleet.wait_ready(order["since"], order["timeout"])
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await fleet.stop()


# -- the fleet (parent side) ---------------------------------------------------------------


class FleetProcess:
    """One fleet child process: ask it when its instances were READY."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, ns: Namespace, port: int, ids: list[str], mode: str) -> FleetProcess:
        """Start a fleet of ``ids`` on the broker at ``port``."""
        arguments = {"port": port, "topic_prefix": ns.topic_prefix, "ids": ids, "mode": mode}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(_HERE),
            "--fleet",
            json.dumps(arguments),
            cwd=ROOT,
            env=ns.environment(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def ready_since(self, since: float, timeout: float) -> dict[str, Any]:
        """When each instance was READY after ``since`` (waiting up to ``timeout``)."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        order = {"op": "wait", "since": since, "timeout": timeout}
        self._process.stdin.write((json.dumps(order) + "\n").encode())
        await self._process.stdin.drain()
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout + STEP_TIMEOUT)
        if not line:
            raise RuntimeError(f"fleet process exited ({await self._process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def close(self) -> None:
        """Ask it to quit; kill it if it does not in time."""
        process = self._process
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(b'{"op": "quit"}\n')
                await process.stdin.drain()
        try:
            await asyncio.wait_for(process.wait(), STEP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    """When every instance was ready, and how many requests each connection needed."""

    times: list[float]  # monotonic, one per instance
    tries: list[int]  # requests its last connection sent until the answer, one per instance
    sent: int  # requests the fleets sent since they started, repeats included


async def all_ready(fleets: list[FleetProcess], since: float, what: str) -> Readiness:
    """Wait until every instance of ``fleets`` was READY after ``since``.

    Raises:
        TimeoutError: Some were not, within ``READY_TIMEOUT`` (named, with a few of them).
    """
    answers = await asyncio.gather(*(f.ready_since(since, READY_TIMEOUT) for f in fleets))
    ready = sum(a["ready"] for a in answers)
    if ready < INSTANCES:
        late = [c for a in answers for c in a["late"]]
        raise TimeoutError(
            f"{what}: only {ready} of {INSTANCES} instances ready within {READY_TIMEOUT:g} s "
            f"(late: {', '.join(late)})"
        )
    return Readiness(
        times=[t for a in answers for t in a["times"]],
        tries=[n for a in answers for n in a["tries"]],
        sent=sum(a["sent"] for a in answers),
    )


async def storm(broker: Broker, ns: Namespace, mode: str, label: str) -> dict[str, float]:
    """Bring ``INSTANCES`` up, restart the broker, and time until all are ready again."""
    ids = [f"st{n}" for n in range(INSTANCES)]
    share = -(-INSTANCES // FLEETS)
    fleets = [
        await FleetProcess.start(ns, broker.port, ids[first : first + share], mode)
        for first in range(0, INSTANCES, share)
    ]
    try:
        began = time.monotonic()
        cold = await all_ready(fleets, 0.0, f"{label}: first start")
        print(
            f"{label}: {INSTANCES:,} ready in {max(cold.times) - began:.2f} s from a cold start "
            f"({cold.sent:,} requests sent)"
        )
        await asyncio.sleep(1.0)  # let the first start's stragglers (repeats) drain
        before = (await all_ready(fleets, 0.0, f"{label}: before the restart")).sent
        stopped = time.monotonic()
        await broker.stop()
        up = await broker.start()
        after = await all_ready(fleets, up, f"{label}: after the broker restart")
        since_up = summary([t - up for t in after.times])
        tries = summary([float(n) for n in after.tries])
        print(
            f"{label}: after the restart, ready p50 {since_up['p50']:.2f} s, p90 "
            f"{since_up['p90']:.2f} s, last {since_up['max']:.2f} s; requests per connection "
            f"p50 {tries['p50']:.0f}, p90 {tries['p90']:.0f}, max {tries['max']:.0f}"
        )
        return {
            "from_up": since_up["max"],
            "from_stop": max(after.times) - stopped,
            "restart": up - stopped,
            "sent": after.sent - before,
        }
    finally:
        await asyncio.gather(*(f.close() for f in fleets))


async def main() -> int:
    broker = Broker()
    ns = dataclasses.replace(Namespace.fresh("storm"), mqtt_url=broker.url)
    redis = ns.redis()
    try:
        await broker.start()
        print(
            f"{machine()}; broker: own Mosquitto at {broker.url}; {INSTANCES:,} instances "
            f"over {FLEETS} fleet processes, {SERVICES} services"
        )
        baseline = await storm(broker, ns, "echo", "baseline (plain MQTT)")
        async with Communicatord(ns, redis) as router:
            print(f"communicatord pid {router.pid}")
            ours = await storm(broker, ns, "register", "ours (REGISTER -> READY)")
        print(f"\nat the end: {machine()}")
        for label, figures in [("baseline, plain MQTT", baseline), ("ours, REGISTER", ours)]:
            print(
                f"{label:<21} all ready {figures['from_up']:6.2f} s after the broker was back "
                f"({figures['from_stop']:.2f} s after it was stopped, restart "
                f"{ms(figures['restart'])} ms; {figures['sent']:,.0f} requests sent)"
            )
        ok = verdict(
            "reconnect storm",
            ours["from_up"] <= GOAL,
            f"{INSTANCES:,} READY again {ours['from_up']:.2f} s after the broker restart "
            f"(goal <= {GOAL:g} s; baseline {baseline['from_up']:.2f} s)",
        )
        result(
            "storm: 5,000 instances READY again after a broker restart",
            ours=ours["from_up"],
            baseline=baseline["from_up"],
            unit="s",
            goal=f"<= {GOAL:g} s",
            passed=ok,
            note=f"from the restarted broker's first accepted connection; {ours['sent']:,.0f} "
            "REGISTERs sent (repeats included); baseline: the same connections, each one "
            "publish/delivery round trip, no communicator",
        )
        return 0 if ok else 1
    finally:
        await ns.delete_keys(redis)
        await redis.aclose()
        await broker.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fleet"]:
        asyncio.run(serve_fleet(json.loads(sys.argv[2])))
    else:
        watch(BOUND)
        sys.exit(asyncio.run(main()))

"""Shared code of the end-to-end benchmarks: namespaces, processes and the endpoint worker.

The benchmarks that go through a router (``bench_routing``, ``bench_registration``,
``bench_reaction``) run every party in its own process, on loopback only:

- a ``communicatord`` subprocess (:class:`Communicatord`), ready once it holds
  every partition lease;
- endpoint workers (:class:`Worker`): this file run as a script, one aiomqtt
  connection each, driven by JSON lines on stdin/stdout. An endpoint speaks the
  raw protocol (docs/protocol.md: REGISTER on ``in/<client_id>``, receive on
  ``out/<client_id>``) or plain MQTT publish/subscribe for the baselines, so
  both paths use the same library, the same payloads and the same code to
  send and count.

Each run gets its own Redis key prefix and MQTT topic prefix
(:class:`Namespace`), deleted afterwards along with the router's persistent
broker session. Timestamps in payloads are ``time.monotonic()``: one clock
for every process of the machine.

Every benchmark (end to end or not) reports its figures with :func:`result`
(one ``BENCH-RESULT {json}`` line each, collected by ``python -m bench`` into
bench/REPORT.md) and bounds its run with :func:`watch` (past ``BOUND`` seconds
it dumps its threads and asyncio tasks, saying where it waited, and stops).

Environment: ``DEPLOYCTL_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
and ``DEPLOYCTL_BENCH_MQTT_URL`` (default ``mqtt://127.0.0.1:1883``).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import linecache
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiomqtt
from redis.asyncio import Redis

_HERE = Path(__file__).resolve()
ROOT = _HERE.parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: the packages sit beside bench/
    sys.path.insert(0, str(ROOT))

from communicator.backends import Keys, Topics, parse_mqtt_url  # noqa: E402

REDIS_URL = os.environ.get("DEPLOYCTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MQTT_URL = os.environ.get("DEPLOYCTL_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883")
#: Size of every benchmark message, as published by the sender.
MESSAGE_SIZE = 200
#: Longest wait for a worker's answer or a process to start.
TIMEOUT = 30.0
#: The router's partitions (RouterConfig.partitions): it is ready when it leases them all.
PARTITIONS = 32
#: aiomqtt warns at every publish beyond 10 pending ones, which is the point of a burst.
_MQTT_LOGGER = logging.getLogger("bench.mqtt")
_MQTT_LOGGER.setLevel(logging.ERROR)


# -- statistics and report ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q * len(ordered)) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


#: Percentiles of a sample: count, p50, p90, p99, max.
Stats = dict[str, float]


def summary(values: Sequence[float]) -> Stats:
    """Count, p50, p90, p99 and max of ``values`` (seconds stay seconds); NaNs are left out."""
    values = [v for v in values if not math.isnan(v)]
    return {
        "count": len(values),
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else math.nan,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(seconds: float, *, signed: bool = False) -> str:
    """Seconds as milliseconds, for tables (with its sign when ``signed``)."""
    return f"{seconds * 1000:+.2f}" if signed else f"{seconds * 1000:.2f}"


def row(label: str, *cells: object, label_width: int = 34, width: int = 8) -> str:
    """One table line: the label left-aligned, then each cell right-aligned in ``width``."""
    return f"{label:<{label_width}}" + "".join(f" {cell!s:>{width}}" for cell in cells)


def machine() -> str:
    """CPUs and load averages: how much else competed with the run (other work skews it)."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} (1 min), {five:.2f} (5 min)"


#: Prefix of the lines that carry a benchmark's figures to ``python -m bench``'s report.
RESULT_PREFIX = "BENCH-RESULT "


def result(
    figure: str,
    *,
    ours: float,
    baseline: float | None,
    unit: str,
    goal: str,
    passed: bool | None,
    rounds: int = 1,
    note: str = "",
) -> None:
    """Print one figure for bench/REPORT.md (``python -m bench`` collects these lines).

    Args:
        figure: What is measured, e.g. ``"clock: error bound p99, loaded"``.
        ours: Our path's value, in ``unit``.
        baseline: The baseline's value measured in the same run (``None``: no baseline).
        unit: ``ms``, ``msg/s``, ``MB``, ``x``...
        goal: The goal as people read it, e.g. ``"<= 10 ms"`` (``""``: no goal).
        passed: Whether the goal was met (``None``: no goal).
        rounds: Over how many rounds a noisy figure was judged.
        note: Anything a reader needs to trust the figure.
    """
    ratio = ours / baseline if baseline else None
    record = {
        "figure": figure,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "goal": goal,
        "passed": passed,
        "rounds": rounds,
        "note": note,
    }
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def verdict(name: str, ok: bool, detail: str) -> bool:
    """Print one goal's PASS/FAIL line; return ``ok``."""
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return ok


# -- time bound -----------------------------------------------------------------------------

#: Environment variable naming the file ``watch`` writes its dump to (``python -m bench`` sets it).
DUMP_ENV = "DEPLOYCTL_BENCH_DUMP"
#: First line of a dump: ``python -m bench`` reports the run as timed out when it sees it.
TIMEOUT_HEADER = "BENCH-TIMEOUT"
#: Seconds a timed-out benchmark gets to clean up before faulthandler ends the process.
GRACE = 30.0


class BenchTimeout(SystemExit):
    """A benchmark ran past its bound.

    A SystemExit, so that ``except Exception`` lets it pass and an asyncio task
    it lands in re-raises it out of the event loop (``asyncio.run`` then
    cancels every task, and the benchmark cleans up); uncaught, Python prints
    its message and exits with 1.
    """


def awaiting(coro: Any) -> list[Any]:
    """The frames of ``coro`` and of everything it awaits, outermost first, then what it waits on.

    ``Task.get_stack`` gives only the task's own frame; a hang is told by the
    innermost one (the queue, the socket read, the ``async for``). The last
    item is the awaited object that is not a coroutine (a Future...), if any.
    """
    chain: list[Any] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            chain.append(coro)  # a Future, an async generator's asend...: the wait itself
            break
        chain.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


def tasks_report() -> str:
    """Every asyncio task of the running loop (if any) with its await chain, one frame a line."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "no running event loop\n"
    lines = []
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        lines.append(f"task {task.get_name()} ({task.get_coro()!r}):")
        for item in awaiting(task.get_coro()):
            if hasattr(item, "f_code"):
                code = item.f_code
                source = linecache.getline(code.co_filename, item.f_lineno).strip()
                lines.append(f"  {code.co_filename}:{item.f_lineno} {code.co_name}: {source}")
            else:
                lines.append(f"  waiting on {item!r}")
    return "\n".join(lines) + "\n"


def watch(bound: float) -> None:
    """Stop this benchmark if it runs past ``bound`` seconds, saying where it waited.

    Call it first thing in the script's ``__main__`` block. At ``bound``
    (SIGALRM) it writes every thread's stack and every asyncio task's await
    chain, then raises :class:`BenchTimeout` in the main thread: ``asyncio.run``
    cancels the tasks, so the benchmark's ``finally`` blocks still stop its
    processes and delete its keys. If that cleanup hangs too, faulthandler ends
    the process :data:`GRACE` seconds later (another stack dump, exit code 1).
    The dump goes to the file named by ``DEPLOYCTL_BENCH_DUMP`` (``python -m
    bench`` reads it for the report), else to stderr.
    """
    target = os.environ.get(DUMP_ENV)
    dump = open(target, "a", encoding="utf-8") if target else sys.stderr  # noqa: SIM115  # kept open for faulthandler
    faulthandler.enable(dump)
    faulthandler.dump_traceback_later(bound + GRACE, exit=True, file=dump)

    def expired(signum: int, frame: object) -> None:
        dump.write(f"{TIMEOUT_HEADER} after {bound:g} s; threads:\n")
        dump.flush()
        faulthandler.dump_traceback(dump, all_threads=True)
        dump.write("asyncio tasks:\n" + tasks_report())
        dump.flush()
        raise BenchTimeout(f"benchmark ran past its bound of {bound:g} s")

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, bound)


# -- namespace ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Namespace:
    """One benchmark run's Redis key prefix and MQTT topic prefix, unique per run."""

    run: str
    redis_url: str = REDIS_URL
    mqtt_url: str = MQTT_URL

    @classmethod
    def fresh(cls, name: str) -> Namespace:
        """A new namespace for the benchmark ``name``."""
        return cls(run=f"{name}_{uuid.uuid4().hex[:10]}")

    @property
    def key_prefix(self) -> str:
        """The Redis key prefix of this run."""
        return f"bench:{self.run}:"

    @property
    def topic_prefix(self) -> str:
        """The MQTT topic prefix of this run."""
        return f"bench/{self.run}/"

    @property
    def keys(self) -> Keys:
        """The communicator's key space of this run."""
        return Keys(self.key_prefix)

    @property
    def topics(self) -> Topics:
        """The communicator's topics of this run."""
        return Topics(self.topic_prefix)

    def topic(self, *parts: str) -> str:
        """A topic of our own under the run's prefix (the baselines' topics)."""
        return self.topic_prefix + "/".join(parts)

    def environment(self) -> dict[str, str]:
        """Environment of a child process: our backends and prefixes, no inherited DEPLOYCTL_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYCTL_")}
        env.update(
            DEPLOYCTL_REDIS_URL=self.redis_url,
            DEPLOYCTL_MQTT_URL=self.mqtt_url,
            DEPLOYCTL_KEY_PREFIX=self.key_prefix,
            DEPLOYCTL_TOPIC_PREFIX=self.topic_prefix,
            DEPLOYCTL_SERVER_NAME="bench",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        return env

    def redis(self) -> Redis:
        """A Redis client for the run (RESP2, bytes), as the communicator uses."""
        return Redis.from_url(self.redis_url, protocol=2, decode_responses=False)

    async def delete_keys(self, redis: Redis) -> int:
        """Delete every key of this run; return how many there were."""
        stale = [key async for key in redis.scan_iter(match=f"{self.key_prefix}*", count=1000)]
        if stale:
            await redis.delete(*stale)
        return len(stale)


def mqtt_connection(url: str, identifier: str, **options: Any) -> aiomqtt.Client:
    """An aiomqtt client for ``url`` speaking MQTT 3.1.1, as the communicator's clients do.

    Unlike them it sets TCP_NODELAY (paho does not): otherwise Nagle's algorithm
    meets the peer's delayed ACK and a request/answer exchange can wait 40 ms,
    which would measure the kernel rather than the baseline.
    """
    address = parse_mqtt_url(url)
    options.setdefault("socket_options", [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V311,
        logger=_MQTT_LOGGER,
        **options,
    )


# -- processes ------------------------------------------------------------------------------


class Communicatord:
    """A ``communicatord`` subprocess for one namespace: started, waited for, stopped.

    Use ``async with Communicatord(ns, redis) as router:``; ``router.pid`` is there
    for py-spy. On exit it is stopped with SIGTERM (its graceful hand-over) and
    its persistent MQTT session (it connects with ``clean_session=False``) is
    cleared, so runs leave nothing in the broker.

    With ``owners=n`` (n > 1) it is ready once every partition is leased and
    they are split evenly between ``n`` routers, this one among them: start the
    other ``n - 1`` first (``bench_bluegreen`` runs two).
    """

    def __init__(self, namespace: Namespace, redis: Redis, *, owners: int = 1) -> None:
        self._ns = namespace
        self._redis = redis
        self._owners = owners
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.router_id = ""

    @property
    def pid(self) -> int:
        """The process id of the router."""
        assert self._process is not None
        return self._process.pid

    async def __aenter__(self) -> Communicatord:
        executable = Path(sys.executable).with_name("communicatord")
        command = [str(executable)] if executable.exists() else [sys.executable, "-c", _DAEMON]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  # closed in __aexit__
        self._process = await asyncio.create_subprocess_exec(
            *command,
            env=self._ns.environment(),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _wait_ready(self) -> None:
        """Wait until the router holds every partition lease, or its even share of them."""
        assert self._process is not None
        keys = [self._ns.keys.router_lease(p) for p in range(PARTITIONS)]
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"communicatord exited ({self._process.returncode}):\n{self.log()}"
                )
            leased = await self._redis.mget(keys)
            owners = set(leased)
            if self._owners == 1:
                if len(owners) == 1 and isinstance(owner := owners.pop(), bytes):
                    self.router_id = owner.decode()
                    return
            elif None not in owners and len(owners) == self._owners:
                share = math.ceil(PARTITIONS / self._owners)
                # The router id is made from its host, pid and chance (Router.__init__).
                tag = f"-{self.pid}-".encode()
                mine = [o for o in owners if isinstance(o, bytes) and tag in o]
                if mine and max(leased.count(o) for o in owners) <= share:
                    self.router_id = mine[0].decode()
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(
            f"communicatord did not lease its partitions in {TIMEOUT:g} s:\n{self.log()}"
        )

    async def partitions(self) -> list[int]:
        """The partitions whose lease this router holds now."""
        keys = [self._ns.keys.router_lease(p) for p in range(PARTITIONS)]
        mine = self.router_id.encode()
        return [p for p, owner in enumerate(await self._redis.mget(keys)) if owner == mine]

    def log(self) -> str:
        """The router's output so far (its last lines)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-20:])

    async def __aexit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self.router_id:
            with contextlib.suppress(aiomqtt.MqttError):
                # Connecting with the same id and a clean session drops the stored one.
                async with mqtt_connection(self._ns.mqtt_url, self.router_id, clean_session=True):
                    pass
        if self._log is not None:
            self._log.close()
            self._log = None


_DAEMON = "from communicator.router import run; run()"


class Worker:
    """Parent side of an endpoint worker process: send an operation, read its answer."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self._process = process
        self.name = name

    @classmethod
    async def start(cls, namespace: Namespace, name: str, **options: Any) -> Worker:
        """Start an endpoint process named ``name`` and wait until it is connected."""
        arguments = {
            "name": name,
            "mqtt_url": namespace.mqtt_url,
            "topic_prefix": namespace.topic_prefix,
            **options,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(_HERE),
            json.dumps(arguments),
            env=namespace.environment(),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        worker = cls(process, name)
        try:
            await worker._answer(TIMEOUT)
        except BaseException:
            await worker.close()
            raise
        return worker

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._process.pid

    async def call(self, op: str, *, timeout: float = TIMEOUT, **arguments: Any) -> dict[str, Any]:
        """Run ``op`` in the worker and return its answer.

        Raises:
            RuntimeError: The worker failed or exited.
        """
        assert self._process.stdin is not None
        try:
            async with asyncio.timeout(timeout):  # the write too: a worker that stops reading
                self._process.stdin.write((json.dumps({"op": op, **arguments}) + "\n").encode())
                await self._process.stdin.drain()
                return await self._answer(None)
        except TimeoutError:
            raise TimeoutError(f"worker {self.name}: no answer to {op} in {timeout:g} s") from None

    async def _answer(self, timeout: float | None) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"worker {self.name} exited ({await self._process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.name}: {answer['error']}")
        return answer

    async def close(self) -> None:
        """Ask the worker to quit; kill it if it does not within a few seconds."""
        process = self._process
        if process.returncode is not None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError, TimeoutError):
            await self.call("quit", timeout=5)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def workers(namespace: Namespace, *names: str, **options: Any) -> AsyncIterator[list[Worker]]:
    """Start one endpoint worker per name (in parallel); close them all on exit."""
    started = await asyncio.gather(
        *(Worker.start(namespace, name, **options) for name in names), return_exceptions=True
    )
    ok = [w for w in started if isinstance(w, Worker)]
    try:
        for result in started:
            if isinstance(result, BaseException):
                raise result
        yield ok
    finally:
        await asyncio.gather(*(w.close() for w in ok))


@contextlib.asynccontextmanager
async def py_spy(pid: int, output: str | None, *, label: str) -> AsyncIterator[None]:
    """Record a py-spy profile of ``pid`` for the duration of the block, when ``output`` is set.

    Set ``DEPLOYCTL_BENCH_PYSPY=prefix`` to write ``prefix-<label>.txt`` (collapsed
    stacks; ``py-spy`` must be installed in the venv or on PATH).
    """
    if not output:
        yield
        return
    executable = Path(sys.executable).with_name("py-spy")
    target = f"{output}-{label}.txt"
    process = await asyncio.create_subprocess_exec(
        str(executable) if executable.exists() else "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "250",
        "--nonblocking",  # sampling without stopping the process: it distorts less
        "--output",
        target,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # let it attach
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        print(f"(py-spy profile of pid {pid} written to {target})")


# -- payloads -------------------------------------------------------------------------------


def payload(head: bytes, seq: int, now: float, size: int = MESSAGE_SIZE) -> bytes:
    """``head`` then ``seq=..;ts=..;pad=xxx``, padded to ``size`` bytes."""
    body = b"%sseq=%d;ts=%.6f;pad=" % (head, seq, now)
    return body + b"x" * max(size - len(body), 1)


def _field(data: bytes, name: bytes) -> bytes | None:
    start = data.find(name)
    if start < 0:
        return None
    start += len(name)
    end = data.find(b";", start)
    return data[start:end] if end >= 0 else data[start:]


# -- the endpoint worker (child side) -------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What one topic received: counts, times, and the latencies of measured messages."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    last_ts: float = 0.0
    last_seq: int = -1
    out_of_order: int = 0
    latencies: list[float] = field(default_factory=list)
    #: (received, sent, sender) of the latest messages, when the endpoint keeps a ``history``.
    recent: deque[tuple[float, float, str]] | None = None

    def add(self, now: float, data: bytes, skip: int) -> None:
        """Count one message received at ``now``; keep its latency if its seq is ``>= skip``."""
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        ts, seq = _field(data, b"ts="), _field(data, b"seq=")
        if ts is None or seq is None:
            return
        sent, number = float(ts), int(seq)
        self.last_ts = sent
        if self.recent is not None:  # the sender: the routed form's leading <server:service
            sender = data[: data.find(b" ")].decode() if data.startswith(b"<") else ""
            self.recent.append((now, sent, sender))
        if number < self.last_seq:
            self.out_of_order += 1
        self.last_seq = number
        if number >= skip:
            self.latencies.append(now - sent)

    def report(self) -> dict[str, Any]:
        """The tally as JSON-ready data, latencies summarised."""
        return {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "last_ts": self.last_ts,
            "out_of_order": self.out_of_order,
            "latency": summary(self.latencies),
        }


class Endpoint:
    """One MQTT connection that sends paced or bursty streams and tallies what it receives.

    Driven by :func:`serve_endpoint`; every ``op_*`` method is an operation.
    """

    def __init__(
        self, *, name: str, mqtt_url: str, topic_prefix: str, inflight: int = 100, history: int = 0
    ) -> None:
        self._mqtt = mqtt_connection(
            mqtt_url, f"{name}-{uuid.uuid4().hex[:6]}", max_inflight_messages=inflight
        )
        self._topics = Topics(topic_prefix)
        self._inflight = inflight
        self._tallies: dict[str, Tally] = {}
        self._waiters: dict[str, asyncio.Future[bytes]] = {}
        self._relay: tuple[str, str] | None = None  # (inbound prefix, outbound prefix)
        self._skip = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stream: asyncio.Task[int] | None = None
        self._stream_sent = [0]  # how many the background stream sent so far
        self._marks: dict[str, tuple[float, int]] = {}  # topic -> (t0, count at t0)
        self._history = history  # messages each tally remembers, for ``since``

    def _tally(self) -> Tally:
        return Tally(recent=deque(maxlen=self._history) if self._history else None)

    async def __aenter__(self) -> Endpoint:
        await self._mqtt.__aenter__()
        self._spawn(self._receive(), "receive")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(aiomqtt.MqttError):
            await self._mqtt.__aexit__(None, None, None)

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _receive(self) -> None:
        monotonic, tallies, waiters = time.monotonic, self._tallies, self._waiters
        async for message in self._mqtt.messages:
            now = monotonic()
            topic = message.topic.value
            data = (
                message.payload
                if isinstance(message.payload, bytes)
                else str(message.payload).encode()
            )
            waiter = waiters.pop(topic, None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(data)
                continue
            relay = self._relay
            if relay is not None and topic.startswith(relay[0]):
                # One at a time, awaiting each publish, as Router._mqtt_loop does.
                await self._mqtt.publish(relay[1] + topic[len(relay[0]) :], data, qos=0)
                continue
            tally = tallies.get(topic)
            if tally is None:
                tally = tallies[topic] = self._tally()
            tally.add(now, data, self._skip)

    # -- operations ---------------------------------------------------------------------------

    async def op_subscribe(self, topics: list[str], qos: int = 1) -> dict[str, Any]:
        """Subscribe to ``topics`` (our QoS 1 unless told)."""
        await self._mqtt.subscribe([(topic, qos) for topic in topics])
        return {}

    async def op_register(
        self, client_id: str, service: str, version: str, commands: str = "", subscribe: bool = True
    ) -> dict[str, Any]:
        """Register ``client_id`` with the raw protocol: REGISTER on in/, READY on out/."""
        if subscribe:
            await self._mqtt.subscribe(self._topics.outbound(client_id), qos=1)
        start = time.monotonic()
        answer = await self._request(
            self._topics.inbound(client_id),
            self._topics.outbound(client_id),
            _register_line(client_id, service, version, commands),
        )
        if _command(answer) != "READY":
            raise RuntimeError(f"REGISTER {client_id} answered with {answer[:200]!r}")
        return {"seconds": time.monotonic() - start}

    async def op_unregister(self, client_id: str, service: str) -> dict[str, Any]:
        """Send UNREGISTER for ``client_id``."""
        await self._mqtt.publish(
            self._topics.inbound(client_id), f"UNREGISTER service={service}", qos=1
        )
        return {}

    async def op_failure(self, client_id: str, reason: str = "bench") -> dict[str, Any]:
        """Send FAILURE as ``client_id``; return t0, taken just before the publish, and mark it."""
        out = self._topics.outbound(client_id)
        tally = self._tallies.setdefault(out, self._tally())
        line = f"FAILURE reason={reason};kind=failure".encode()
        t0 = time.monotonic()
        self._marks[out] = (t0, tally.count)
        await self._mqtt.publish(self._topics.inbound(client_id), line, qos=1)
        return {"t0": t0}

    async def op_mark(self, topic: str) -> dict[str, Any]:
        """Since-``t0`` view of what ``topic`` received after the mark set by ``failure``."""
        tally = self._tallies.get(topic, Tally())
        t0, count = self._marks.get(topic, (0.0, 0))
        return {
            "t0": t0,
            "after": tally.count - count,
            "count": tally.count,
            "last": tally.last,
            "last_ts": tally.last_ts,
        }

    async def op_since(self, topic: str, t0: float) -> dict[str, Any]:
        """What ``topic`` received after ``t0``, from its history (start with ``history=n``).

        ``received``: how many arrived after ``t0`` (``first``/``last`` the
        times); ``sent_after``: how many of them were sent after ``t0``, the
        latest at ``latest_sent``. ``complete`` is False when the history no
        longer reaches back to ``t0``. ``senders``: per sender, the send times
        of the first and the last message received after ``t0``.
        """
        tally = self._tallies.get(topic, self._tally())
        recent = tally.recent or ()
        after = [(got, sent, sender) for got, sent, sender in recent if got > t0]
        late = [sent for _, sent, _ in after if sent > t0]
        senders: dict[str, list[float]] = {}
        for _, sent, sender in after:
            senders.setdefault(sender, [sent, sent])[1] = sent
        return {
            "received": len(after),
            "first": after[0][0] if after else 0.0,
            "last": after[-1][0] if after else 0.0,
            "sent_after": len(late),
            "latest_sent": max(late) if late else 0.0,
            "senders": senders,
            "complete": not recent or recent[0][0] <= t0 or len(recent) < (recent.maxlen or 0),
            "count": tally.count,
        }

    async def op_reset(self, skip: int = 0) -> dict[str, Any]:
        """Forget every tally; from now on keep latencies only for seq >= ``skip``."""
        self._tallies.clear()
        self._marks.clear()
        self._skip = skip
        return {}

    async def op_collect(
        self, topic: str, expect: int, idle: float = 1.0, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Wait until ``topic`` got ``expect`` messages (or none came for ``idle`` s); report it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tally = self._tallies.get(topic)
            count = tally.count if tally else 0
            if count >= expect:
                break
            await asyncio.sleep(0.02)
            quiet_since = tally.last if tally and tally.count else None
            if quiet_since is not None and time.monotonic() - quiet_since > idle:
                break
        return self._tallies.get(topic, Tally()).report()

    async def op_count(self, topic: str) -> dict[str, Any]:
        """How many messages ``topic`` received so far."""
        tally = self._tallies.get(topic)
        return {"count": tally.count if tally else 0}

    async def op_burst(
        self, topic: str, count: int, qos: int = 1, head: str = ""
    ) -> dict[str, Any]:
        """Publish ``count`` messages as fast as possible (QoS 1: ``inflight`` unacknowledged)."""
        prefix, publish, monotonic = head.encode(), self._mqtt.publish, time.monotonic
        start = monotonic()
        if qos == 0:
            for seq in range(count):
                await publish(topic, payload(prefix, seq, monotonic()), qos=0)
        else:
            window = asyncio.Semaphore(self._inflight)

            async def one(seq: int) -> None:
                try:
                    await publish(topic, payload(prefix, seq, monotonic()), qos=qos)
                finally:
                    window.release()

            pending = []
            for seq in range(count):
                await window.acquire()
                pending.append(asyncio.create_task(one(seq)))
            await asyncio.gather(*pending)
        return {"start": start, "end": monotonic()}

    async def op_paced(
        self, topic: str, rate: float, seconds: float, qos: int = 1, head: str = ""
    ) -> dict[str, Any]:
        """Publish at ``rate`` messages/s for ``seconds``; each carries its send time."""
        start = time.monotonic()
        sent = await self._paced(topic, rate, start + seconds, qos, head.encode(), [0])
        return {"start": start, "end": time.monotonic(), "sent": sent}

    async def op_stream(
        self, topic: str, rate: float, qos: int = 1, head: str = ""
    ) -> dict[str, Any]:
        """Start publishing at ``rate`` messages/s in the background, until ``stop``."""
        self._stream_sent = [0]
        stream = self._paced(topic, rate, math.inf, qos, head.encode(), self._stream_sent)
        self._stream = self._spawn(stream, "stream")
        return {}

    async def op_stop(self) -> dict[str, Any]:
        """Stop the background stream; return how many it sent."""
        if self._stream is None:
            return {"sent": 0}
        self._stream.cancel()
        sent = self._stream_sent[0]
        with contextlib.suppress(asyncio.CancelledError):
            await self._stream
        self._stream = None
        return {"sent": sent}

    async def _paced(
        self, topic: str, rate: float, until: float, qos: int, head: bytes, sent: list[int]
    ) -> int:
        """Send message ``n`` at ``start + n / rate`` (catching up in bursts when late).

        ``sent[0]`` follows how many were sent, for a stream cancelled from outside.
        """
        publish, monotonic = self._mqtt.publish, time.monotonic
        window = asyncio.Semaphore(self._inflight)
        pending: set[asyncio.Task[None]] = set()

        async def one(data: bytes) -> None:
            try:
                await publish(topic, data, qos=qos)
            finally:
                window.release()

        start, seq = monotonic(), 0
        try:
            while (now := monotonic()) < until:
                due = start + seq / rate
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                await window.acquire()
                task = asyncio.create_task(one(payload(head, seq, monotonic())))
                pending.add(task)
                task.add_done_callback(pending.discard)
                seq += 1
                sent[0] = seq
            await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
        return seq

    async def op_relay(self, inbound: str, outbound: str) -> dict[str, Any]:
        """Forward every message on ``inbound``+``<id>`` to ``outbound``+``<id>``.

        The router's shape without its logic: subscribed at QoS 1, publishing at
        QoS 0, one message at a time. The baseline of the request/answer and
        relay measurements.
        """
        self._relay = (inbound, outbound)
        await self._mqtt.subscribe(inbound + "+", qos=1)
        return {}

    async def op_roundtrips(
        self, to: str, count: int, concurrency: int, ids: str, services: list[str], check: bool
    ) -> dict[str, Any]:
        """``count`` REGISTER round trips, ``concurrency`` at a time, one new client id each.

        Each REGISTER goes to ``to``+``<client id>`` (the router's ``in`` topics,
        or an echo relay's) and waits for the answer on ``out/<client id>``;
        ``check`` requires that answer to be READY.
        """
        numbers = iter(range(count))
        times: list[float] = []
        ends: list[float] = []

        async def loop() -> None:
            for n in numbers:
                client_id = f"{ids}{n}"
                line = _register_line(client_id, services[n % len(services)], "1.0", "WORK")
                began = time.monotonic()
                answer = await self._request(to + client_id, self._topics.outbound(client_id), line)
                if check and _command(answer) != "READY":
                    raise RuntimeError(f"REGISTER {client_id} answered with {answer[:200]!r}")
                ends.append(time.monotonic())
                times.append(ends[-1] - began)

        start = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(loop())
        return {"start": start, "ends": ends, "latency": summary(times)}

    async def _request(self, request: str, answer: str, line: str) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters[answer] = future
        try:
            await self._mqtt.publish(request, line.encode(), qos=1)
            return await asyncio.wait_for(future, 10)
        finally:
            self._waiters.pop(answer, None)


def _command(data: bytes) -> str:
    """The command of a text-form message (after the optional ``<server:service`` sender)."""
    words = data.split(b" ", 2)
    word = words[1] if words[0].startswith(b"<") and len(words) > 1 else words[0]
    return word.decode(errors="replace")


def _register_line(client_id: str, service: str, version: str, commands: str) -> str:
    parameters = f"service={service};version={version};server=bench;instance={client_id};protocol=1"
    return f"REGISTER {parameters};commands={commands}" if commands else f"REGISTER {parameters}"


async def serve_endpoint(arguments: dict[str, Any]) -> None:
    """Child side: connect, say ready, then answer one JSON operation per stdin line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(data: dict[str, Any]) -> None:
        out.write(json.dumps(data) + "\n")
        out.flush()

    async with Endpoint(**arguments) as endpoint:
        answer({"ready": True})
        while line := await reader.readline():
            order = json.loads(line)
            op = order.pop("op")
            if op == "quit":
                answer({})
                break
            handler: Callable[..., Awaitable[dict[str, Any]]] | None = getattr(
                endpoint, f"op_{op}", None
            )
            if handler is None:
                answer({"error": f"unknown operation {op!r}"})
                continue
            try:
                answer(await handler(**order))
            except Exception as exc:  # the parent reports it and stops the run
                answer({"error": f"{op}: {exc!r}"})


if __name__ == "__main__":
    asyncio.run(serve_endpoint(json.loads(sys.argv[1])))

"""Process faults with real processes: every message accounted for (issue 15).

The broker killed and restarted, the leading controller killed, an instance
stopped (SIGSTOP) under traffic, and ``deployctl up`` killed. Each test checks
what docs/protocol.md §7 promises (order always; no loss once routing has
resumed; duplicates only as an in-order replay), the recovery time and the
state left behind. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import InvalidationPolicy, Keys, Measurements, Registry, Settings
from communicator.router._control import WILL_GRACE
from communicator.router._partitions import partition_of
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, RolloutStore, start_rollout
from controller.local._discovery import UP_FILE
from controller.playbook._playbook import parse_playbook
from flags import Flag, FlagClient, Reason
from flags._keys import FlagKeys
from flags._store import FlagStore
from tests.communicator.fleet import ROOT, environment
from tests.conftest import answers, eventually, free_port, launch_mosquitto
from tests.reliability.process_support import (
    PARTITIONS,
    Child,
    communicators_ready,
    leases,
    rss_kib,
)

pytestmark = pytest.mark.integration

SERVICE = ("-m", "tests.communicator.service_main")
CLIENT = ("-m", "tests.reliability.process_support")


class Daemons:
    """communicatord and controller processes of one test, logged to files; all stop after it."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, name: str, *args: str) -> asyncio.subprocess.Process:
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *args, env=self.env, cwd=ROOT, stdout=log, stderr=log
            )
        self.processes.append(process)
        return process

    async def stop(self) -> None:
        """SIGTERM each, SIGKILL what lingers past 10 s."""
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
async def children() -> AsyncIterator[list[Child]]:
    """Clients of one test (``Child``); each is asked to quit after it, then killed."""
    started: list[Child] = []
    yield started
    await asyncio.gather(*(child.close() for child in started))


async def start_child(
    started: list[Child], name: str, env: dict[str, str], *args: str, ready: bool = True
) -> Child:
    child = await Child.start(name, args, env)
    started.append(child)
    if ready:
        await child.wait_for(lambda: bool(child.of("ready")), "ready")
    return child


def received_seqs(sink: Child) -> list[int]:
    """The ``seq`` of every message the sink received, in arrival order (duplicates too)."""
    return [int(e["message"]["parameters"]["seq"]) for e in sink.of("received")]


async def has_key(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))


def text(value: bytes | str | None) -> str:
    assert value is not None
    return value.decode() if isinstance(value, bytes) else value


def kind_of(record: Any) -> str:
    return str(getattr(record.kind, "value", record.kind))


# -- 1. the broker killed and restarted -----------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["kill", "terminate"])
async def test_a_restarted_broker_loses_no_routed_order_and_invalidates_nothing(
    how: str,
    settings: Settings,
    redis: Redis,
    tmp_path: Path,
    children: list[Child],
) -> None:
    """The broker killed (-9, no wills) or stopped (it sends every will) and started again on
    its port: two communicatords, a controller and the services reconnect and register again
    by themselves; a stream keeps its order, loses only what was in flight at the broker,
    and nothing counts as a disconnect of a version, even under a policy one disconnect trips."""
    port = free_port()
    broker = launch_mosquitto("mosquitto1", tmp_path, port, "allow_anonymous true")
    settings = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{port}"})
    env = environment(settings)
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
    daemons = Daemons(env, tmp_path)
    try:
        for service in ("sink", "orders", "front", "source"):
            await registry.set_policy(service, InvalidationPolicy(crash_loop=1))
        routers = [await daemons.start(f"communicatord{n}", "-m", "communicator") for n in (1, 2)]
        controller = await daemons.start("controller", "-m", "controller", "controller", "run")
        await eventually(
            lambda: communicators_ready(redis, settings.key_prefix, 2), "two communicators"
        )
        leader_key = ControllerKeys(settings.key_prefix).leader()
        await eventually(lambda: has_key(redis, leader_key), "a leading controller")
        leader = await redis.get(leader_key)
        sink_args = ("sink", "1", "--commands", "WORK", "--behaviour", "silent")
        sink = await start_child(children, "sink", env, *SERVICE, *sink_args)
        await start_child(children, "orders", env, *SERVICE, "orders", "1", "--commands", "PLACE")
        front = await start_child(children, "front", env, *SERVICE, "front", "1")
        source = await start_child(children, "source", env, *CLIENT, "stream", "sink/WORK")
        await sink.wait_for(lambda: len(sink.of("received")) >= 100, "100 messages before")

        killed_at = time.time()
        if how == "kill":
            broker.process.kill()
        broker.stop()  # terminate: Mosquitto publishes every client's will as it goes
        broker = await asyncio.to_thread(
            launch_mosquitto, "mosquitto2", tmp_path, port, "allow_anonymous true"
        )
        back_at = time.time()

        replied_at = await first_reply_after(front)
        await sink.wait_for(
            lambda: any(e["at"] > back_at for e in sink.of("received")), "traffic again"
        )
        resumed_at = next(e["at"] for e in sink.of("received") if e["at"] > back_at)
        await source.wait_for(
            lambda: len([e for e in source.of("sent") if e["at"] > resumed_at]) >= 100,
            "100 messages after",
        )
        await source.close()
        sent = {e["seq"]: e for e in source.of("sent")}
        unsent = {e["seq"] for e in source.of("unsent") + source.of("cancelled")}
        last = max(sent)
        await sink.wait_for(lambda: last in received_seqs(sink), "the last message", 15)
        # The wills' grace (§2) has to pass before a disconnect would be recorded: wait it out.
        await asyncio.sleep(WILL_GRACE + 1.0)
        failures = {s: await registry.failures(s) for s in ("sink", "orders", "front", "source")}
        valid = {s: await registry.is_valid(s, "1") for s in failures}
        both_back = await communicators_ready(redis, settings.key_prefix, 2)
        controller_alive = controller.returncode is None
        still_leader = await redis.get(leader_key)
        routers_alive = [r.returncode is None for r in routers]
    finally:
        await asyncio.gather(*(child.close() for child in children))
        await daemons.stop()
        broker.stop()

    seqs = received_seqs(sink)
    assert set(seqs) <= set(sent) | unsent, "a message nobody sent"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen), "order broken"
    first_after = next(s for s, e in sorted(sent.items()) if e["at"] > resumed_at)
    lost = sorted(set(sent) - set(seqs))
    assert all(s < first_after for s in lost), f"lost after routing resumed: {lost}"
    in_outage = [s for s in lost if killed_at - 1 <= sent[s]["at"] <= resumed_at]
    assert in_outage == lost, f"lost outside the outage: {sorted(set(lost) - set(in_outage))}"
    duplicates = len(seqs) - len(set(seqs))
    assert duplicates <= 50, f"{duplicates} duplicates: more than a replayed suffix"
    assert max(e["registrations"] for e in sent.values()) >= 2, "the sender never re-registered"
    assert all(routers_alive), "a communicator died"
    assert both_back, "the communicators did not hold every partition again"
    assert controller_alive, "the controller died"
    assert still_leader == leader, "the controller lost its lead"
    assert resumed_at - back_at < 10, f"routing resumed {resumed_at - back_at:.2f} s after"
    print(
        f"broker {how}: back after {back_at - killed_at:.2f} s; routing resumed "
        f"{resumed_at - back_at:.2f} s and request/reply {replied_at - back_at:.2f} s after; "
        f"{len(lost)} lost (in flight), {len(unsent)} unsent, {duplicates} duplicates "
        f"of {len(sent)} sent"
    )
    recorded = [r for records in failures.values() for r in records]
    assert recorded == [], f"the restart counted as failures: {failures}"
    assert all(valid.values()), f"a version was invalidated: {valid}"


A_FLAG = Flag.model_validate(
    {
        "key": "new-checkout",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
        "help": "Shows the new checkout; if errors rise, switch it off.",
        "help_uri": "https://wiki.example.com/flags/new-checkout",
    }
)


@pytest.mark.timeout(60)
async def test_the_controller_publishes_the_flags_again_after_a_broker_restart(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """The broker killed -9 and started again, empty: the leading controller process
    publishes every flag again (retained), so services that connect now get them."""
    port = free_port()
    broker = launch_mosquitto("mosquitto1", tmp_path, port, "allow_anonymous true")
    settings = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{port}"})
    daemons = Daemons(environment(settings), tmp_path)
    try:
        await FlagStore(redis=redis, keys=FlagKeys(settings.key_prefix)).put(A_FLAG, who="test")
        await daemons.start("controller", "-m", "controller", "controller", "run")
        await flag_published(settings, "the flags published by the controller")
        broker.process.kill()
        broker.stop()
        broker = await asyncio.to_thread(
            launch_mosquitto, "mosquitto2", tmp_path, port, "allow_anonymous true"
        )
        await flag_published(settings, "the flags published again by the controller", 8)
    finally:
        await daemons.stop()
        broker.stop()


async def flag_published(settings: Settings, what: str, timeout: float = 20) -> None:
    """Wait until a new flag client gets ``A_FLAG`` from the broker (it is retained)."""
    async with FlagClient(settings=settings) as flags:
        await eventually(
            lambda: _now(flags.resolve(A_FLAG.key, False).reason is Reason.STATIC), what, timeout
        )


async def first_reply_after(front: Child, attempts: int = 30) -> float:
    """Ask ``orders/PLACE`` (1 s timeout) until a reply comes; when it came."""
    for attempt in range(1, attempts + 1):
        await front.order(request="orders/PLACE", timeout=1)

        def answered(count: int = attempt) -> bool:
            return len(front.of("reply") + front.of("failed")) >= count

        await front.wait_for(answered, "an answer")
        if front.of("reply"):
            return time.time()
    raise AssertionError(f"no reply after the restart: {front.of('failed')[-3:]}")


# -- 1b. the communicator routing a sender killed: what test_failover.py does not check ------


@pytest.mark.timeout(60)
async def test_a_killed_communicator_replays_at_most_its_last_moments_in_order(
    settings: Settings, redis: Redis, tmp_path: Path, children: list[Child]
) -> None:
    """Kill -9 the communicator routing a steady 300 messages/s: nothing is lost, and the
    duplicates are one in-order replay of what it routed after its last checkpoint (§7:
    100 ms; 0.5 s allowed on a busy machine), not a bounded mess (test_failover.py checks
    loss and first-seen order, with up to half the messages as duplicates)."""
    env = environment(settings)
    daemons = Daemons(env, tmp_path)
    rate = 300
    try:
        for n in (1, 2):
            await daemons.start(f"communicatord{n}", "-m", "communicator")
        await eventually(lambda: communicators_ready(redis, settings.key_prefix, 2), "routers")
        sink_args = ("sink", "1", "--commands", "WORK", "--behaviour", "silent")
        sink = await start_child(children, "sink", env, *SERVICE, *sink_args)
        source = await start_child(
            children, "source", env, *CLIENT, "stream", "sink/WORK", "--rate", str(rate)
        )
        partition = partition_of(source.of("ready")[0]["client_id"], PARTITIONS)
        owner = text((await leases(redis, settings.key_prefix))[partition])
        victim = next(p for p in daemons.processes if f"-{p.pid}-" in owner)
        await sink.wait_for(lambda: len(sink.of("received")) >= rate, "1 s of messages")
        victim.kill()
        killed_at = time.time()
        await victim.wait()
        await source.wait_for(
            lambda: len([e for e in source.of("sent") if e["at"] > killed_at]) >= 2 * rate,
            "2 s of messages after the kill",
        )
        await source.close()
        sent = {e["seq"] for e in source.of("sent")}
        await sink.wait_for(lambda: sent <= set(received_seqs(sink)), "every message", 15)
    finally:
        await asyncio.gather(*(child.close() for child in children))
        await daemons.stop()
    assert not source.of("unsent"), source.of("unsent")[:3]
    seqs = received_seqs(sink)
    cancelled = {e["seq"] for e in source.of("cancelled")}  # in flight as the stream stopped
    assert set(seqs) - cancelled == sent, "a message lost or invented"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen), "order broken"
    # Strictly increasing runs: the stream, then (after a step back) the replay and the rest.
    steps_back = [i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]]
    assert len(steps_back) <= 1, f"more than one replay: at {steps_back[:5]}"
    duplicates = len(seqs) - len(sent)
    assert duplicates <= rate // 2, f"{duplicates} duplicates: more than 0.5 s replayed"
    arrivals = [e["at"] for e in sink.of("received")]
    gap = max(later - earlier for earlier, later in itertools.pairwise(arrivals))
    assert gap < 5.0, f"routing paused {gap:.2f} s (§7: about 2.5 s)"
    print(f"communicator killed: {duplicates} duplicates in one replay, longest pause {gap:.2f} s")


# -- 2. the leading controller killed mid-rollout -----------------------------------------

STEPS = """name: steps
description: Weights and pauses only, so no traffic is needed.
strategy: canary
steps:
  - set_weight: 20
  - pause: {duration: 2s}
  - set_weight: 50
  - pause: {duration: 1s}
  - set_weight: 100
"""


@pytest.mark.timeout(60)
async def test_the_standby_controller_finishes_the_rollout_and_repeats_no_step(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """Kill -9 the leading controller during a pause: the standby leads within the lease
    (3 s) and finishes; the history shows each step exactly once, in order."""
    daemons = Daemons(environment(settings), tmp_path)
    keys = ControllerKeys(settings.key_prefix)
    store = RolloutStore(redis=redis, keys=keys)
    try:
        for n in (1, 2):
            await daemons.start(f"controller{n}", "-m", "controller", "controller", "run")
        await eventually(lambda: has_key(redis, keys.leader()), "a leading controller")
        await start_rollout(
            store,
            Measurements(redis=redis, keys=Keys(settings.key_prefix)),
            service="shop",
            stable="1.0",
            canary="1.1",
            playbook=parse_playbook(STEPS, "steps.yaml").model_dump(mode="json"),
            reason="test",
        )

        async def at_weight(weight: int) -> bool:
            rollout = await store.get("shop")
            return rollout is not None and rollout.weight == weight

        await eventually(lambda: at_weight(20), "the first step")
        leader = text(await redis.get(keys.leader()))
        victim = next(p for p in daemons.processes if f"-{p.pid}-" in leader)
        victim.kill()
        killed_at = time.monotonic()
        await victim.wait()

        async def new_leader() -> bool:
            current = await redis.get(keys.leader())
            return current is not None and text(current) != leader

        await eventually(new_leader, "the standby leading", timeout=10)
        took_over = time.monotonic() - killed_at

        async def ended() -> bool:
            rollout = await store.get("shop")
            return rollout is not None and not rollout.phase.active

        await eventually(ended, "the end of the rollout", timeout=30)
        rollout = await store.get("shop")
        history = await store.history("shop")
    finally:
        await daemons.stop()
    assert rollout is not None
    assert rollout.phase is Phase.SUCCEEDED, rollout.reason
    reasons = [t.reason for t in history]
    for wanted in ("weight set to 20%", "weight set to 50%", "1.1 promoted"):
        done = [reason for reason in reasons if wanted in reason]
        assert len(done) == 1, f"{wanted!r} done {len(done)} times: {reasons}"
    steps = [t.step for t in history]
    assert steps == sorted(steps), f"a step went back: {steps}"
    assert len({(t.phase, t.step, t.weight, t.reason) for t in history}) == len(history), reasons
    assert took_over < 3.0 + 1.0 + 1.5, f"the standby led {took_over:.2f} s after the kill"
    print(f"controller killed: the standby led after {took_over:.2f} s")


# -- 3. a stalled instance (SIGSTOP) under traffic ------------------------------------------


@pytest.mark.timeout(60)
async def test_a_stopped_instance_costs_timeouts_not_memory_and_recovers(
    settings: Settings, redis: Redis, tmp_path: Path, children: list[Child]
) -> None:
    """One of two instances SIGSTOPped under 40 requests/s through a communicatord: its
    requests fail at their timeout and are recorded as timeouts, the other instance answers
    as fast as before, the router's memory stays bounded, and after SIGCONT it serves again."""
    env = environment(settings)
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
    # Timeouts must not invalidate the version here: the healthy instance would lose its traffic.
    await registry.set_policy("orders", InvalidationPolicy(max_failure_rate=1.0, crash_loop=0))
    daemons = Daemons(env, tmp_path)
    try:
        router = await daemons.start("communicatord", "-m", "communicator")
        await eventually(lambda: communicators_ready(redis, settings.key_prefix, 1), "router")
        await start_child(children, "a", env, *SERVICE, "orders", "1", "--commands", "PLACE",
                          "--tag", "a")  # fmt: skip
        stalled = await start_child(children, "b", env, *SERVICE, "orders", "1", "--commands",
                                    "PLACE", "--tag", "b")  # fmt: skip
        timeout = 1.5
        front = await start_child(
            children, "front", env, *CLIENT, "requests", "orders/PLACE", "--rate", "40",
            "--timeout", str(timeout),
        )  # fmt: skip

        def answered(tag: str) -> int:
            return sum(e.get("tag") == tag for e in front.of("answer"))

        await front.wait_for(lambda: answered("a") >= 20 and answered("b") >= 20, "both serve")
        rss_before = rss_kib(router.pid)
        stopped_at = time.time()
        os.kill(stalled.process.pid, signal.SIGSTOP)
        rss_during = []
        try:
            for _ in range(8):  # 4 s stalled
                await asyncio.sleep(0.5)
                rss_during.append(rss_kib(router.pid))
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        continued_at = time.time()
        await front.wait_for(
            lambda: any(e["at"] > continued_at + 1 and e.get("tag") == "b"
                        for e in front.of("answer")),
            "the stopped instance serving again",
        )  # fmt: skip
        await front.wait_for(
            lambda: len([e for e in front.of("answer") if e["at"] > continued_at + 1]) >= 80,
            "2 s of traffic after",
        )
        rss_after = rss_kib(router.pid)

        async def timeouts_recorded() -> int:
            records = await registry.failures("orders", count=1000)
            return sum(r.count for r in records if kind_of(r) == "timeout")

        await eventually(lambda: _positive(timeouts_recorded()), "timeouts recorded")
        recorded = await timeouts_recorded()
    finally:
        await asyncio.gather(*(child.close() for child in children))
        await daemons.stop()

    answers_ = front.of("answer")
    sent = max(e["seq"] for e in answers_)
    # Not silently held: every request but the last timeout's worth has its answer or error.
    settled = {e["seq"] for e in answers_}
    early = {e["seq"] for e in answers_ if e["at"] < continued_at}
    assert set(range(min(early), max(early) + 1)) <= settled, "a request got no answer at all"
    during = [e for e in answers_ if stopped_at + 0.1 < e["at"] < continued_at - timeout]
    failed = [e for e in during if "error" in e]
    served = [e for e in during if e.get("tag") == "a"]
    assert failed, "no request to the stopped instance failed: were they held?"
    assert all(e["latency"] < timeout + 1.0 for e in failed), "a failure came late"
    assert all(e.get("tag") != "b" for e in during if "error" not in e)
    assert len(served) >= 0.3 * len(during), f"the healthy instance got {len(served)}/{len(during)}"
    baseline = [e["latency"] for e in answers_ if e["at"] < stopped_at and "error" not in e]
    healthy = sorted(e["latency"] for e in served)
    p95 = healthy[int(0.95 * (len(healthy) - 1))]
    assert p95 < max(0.5, 5 * sorted(baseline)[len(baseline) // 2]), f"p95 {p95:.3f} s"
    after = [e for e in answers_ if e["at"] > continued_at + 1 and e["seq"] <= sent]
    assert after, "no request after SIGCONT"
    assert all("error" not in e for e in after), "errors after SIGCONT"
    assert recorded >= len(failed) // 2, f"{recorded} timeouts recorded, {len(failed)} failed"
    growth = max(rss_during) - rss_before
    assert growth < 30 * 1024, f"the router grew by {growth} KiB while an instance was stopped"
    assert rss_after - rss_before < 30 * 1024
    print(
        f"SIGSTOP: {len(failed)}/{len(during)} failed at ~{timeout:g} s, "
        f"healthy p95 {p95 * 1e3:.0f} ms (baseline median "
        f"{sorted(baseline)[len(baseline) // 2] * 1e3:.0f} ms), {recorded} timeouts recorded; "
        f"router RSS {rss_before} -> max {max(rss_during)} -> {rss_after} KiB"
    )


async def _positive(count: Any) -> bool:
    return bool(await count > 0)


# -- 4. `deployctl up` killed with SIGKILL --------------------------------------------------


class Up:
    """A ``deployctl up`` process with its own home and broker port."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYCTL_")}
        self.env.update(
            DEPLOYCTL_HOME=str(home), DEPLOYCTL_EMBEDDED_MQTT_PORT=str(port), PYTHONPATH=str(ROOT)
        )
        self.process: asyncio.subprocess.Process | None = None
        self.record: dict[str, Any] = {}

    async def start(self) -> asyncio.subprocess.Process:
        """Start it and wait until it announces itself in ``up.json``."""
        with (self.home.parent / "up.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller", "up", env=self.env, cwd=ROOT,
                stdout=log, stderr=log,
            )  # fmt: skip
        self.process = process

        async def announced() -> bool:
            assert process.returncode is None, (self.home.parent / "up.log").read_text()
            with contextlib.suppress(OSError, ValueError):
                self.record = json.loads((self.home / UP_FILE).read_text())
            return self.record.get("pid") == process.pid

        await eventually(announced, "deployctl up announced", timeout=30)
        return process

    def redis_pid(self) -> int:
        """The embedded redis-server, a child of the ``up`` process."""
        assert self.process is not None
        pid = self.process.pid
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        servers = [int(c) for c in found if b"redis-server" in _cmdline(int(c))]
        assert len(servers) == 1, found
        return servers[0]

    def settings(self) -> Settings:
        return Settings(
            redis_url=self.record["DEPLOYCTL_REDIS_URL"], mqtt_url=self.record["DEPLOYCTL_MQTT_URL"]
        )

    async def deployctl(self, *args: str) -> Any:
        """``deployctl ARGS --json`` against this stack (found through DEPLOYCTL_HOME)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", *args, "--json", env=self.env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        return json.loads(out)


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped yet, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds the flock on ``path`` (the embedded Redis's data file lock)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    stack = Up(tmp_path / "home", free_port())
    yield stack
    if stack.process is not None and stack.process.returncode is None:
        stack.process.kill()
    # A redis-server left behind (the bug of issue 17) would outlive the test: stop it.
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        if str(stack.home).encode() in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.mark.timeout(90)
async def test_a_killed_deployctl_up_leaves_no_server_behind_and_keeps_its_state(
    up: Up, children: list[Child]
) -> None:
    """SIGKILL ``deployctl up``: its redis-server stops too (issue 17), the broker port and
    the data file's lock are free, and a new ``deployctl up`` finds the service and the flag."""
    process = await up.start()
    redis_pid = up.redis_pid()
    env = environment(up.settings().model_copy(update={"key_prefix": "deployctl:"}))
    env.update({"DEPLOYCTL_KEY_PREFIX": "deployctl:", "DEPLOYCTL_TOPIC_PREFIX": "deployctl/"})
    orders = await start_child(children, "orders", env, *SERVICE, "orders", "1.4", "--commands",
                               "PLACE")  # fmt: skip
    await orders.close()
    await up.deployctl(
        "flag", "create", "fast-checkout", "--help-text", "A faster checkout; turn it off if "
        "orders fail.", "--help-uri", "https://example.com/flags/fast-checkout",
    )  # fmt: skip

    process.kill()
    await process.wait()
    killed_at = time.monotonic()
    await eventually(lambda: _now(not alive(redis_pid)), "the redis-server stopped", timeout=10)
    gone_after = time.monotonic() - killed_at
    assert not answers("127.0.0.1", up.port), "the broker port still listens"
    assert lock_is_free(up.home / "redis.db.lock"), "the data file is still locked"
    socket_path = Path(up.record["DEPLOYCTL_REDIS_URL"].removeprefix("unix://"))
    assert not await asyncio.to_thread(socket_path.exists), "the redis socket is left behind"

    started = time.monotonic()
    again = await up.start()
    restarted_in = time.monotonic() - started
    services = await up.deployctl("services")
    flag = await up.deployctl("flag", "show", "fast-checkout")
    second_redis = up.redis_pid()
    again.terminate()
    assert await asyncio.wait_for(again.wait(), 20) == 0
    assert not alive(second_redis), "a clean stop left its redis-server"
    text = json.dumps(services)
    assert "orders" in text, services
    assert "1.4" in text, services
    assert flag["key"] == "fast-checkout", flag
    print(
        f"up killed: redis-server gone {gone_after:.2f} s after, "
        f"up again in {restarted_in:.2f} s with its state"
    )


async def _now(value: bool) -> bool:
    return value

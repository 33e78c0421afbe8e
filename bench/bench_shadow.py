"""Shadow traffic: what mirroring costs the primary path, to a healthy and to a stalled shadow.

    .venv/bin/python bench/bench_shadow.py

Processes, all on loopback: a ``communicatord``; a requester (service
``front``); the primary (service ``orders`` version 1); two shadow instances,
``orders`` 2 (healthy: answers at once) and ``orders`` 3 (stalled: answers
each copy only after :data:`STALL` seconds). Each is one aiomqtt connection
speaking the raw protocol (docs/protocol.md): REGISTER on ``in/<client_id>``,
receive on ``out/<client_id>``. The endpoints are this file run with
``role <json>``.

The requester sends ``orders/PLACE message_id=r<n>`` paced at :data:`RATE`
msg/s and times each request until its reply (``in_reply_to=r<n>``) comes
back through the router. Three setups, all pinning the primary traffic to
version 1 by the route plan:

- **no mirror**: ``RoutePlan(pools=[1])``;
- **healthy shadow**: 100 % mirrored to version 2 (``max_inflight`` 100);
- **stalled shadow**: 100 % mirrored to version 3 (``max_inflight`` 100): the
  bound fills in a few ms and almost every copy is dropped at it.

They are interleaved over :data:`ROUNDS` rounds of :data:`SECONDS` s each
(the first :data:`SKIP` s of each left out) so machine drift hits them alike;
the latencies of each setup are pooled. The shadow counters come from the
router's report in Redis (``Keys.shadow_report``). Goal: p99 with a stalled
shadow <= 1.2 x p99 without a mirror, judged on the median of the rounds'
ratios (each round's stalled p99 / its no-mirror p99), so one noisy round on a
shared machine does not fail it. The run is bounded by BOUND
(``_harness.watch``); the responders exit when this process's end closes
their stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import (
    ROOT,
    TIMEOUT,
    Communicatord,
    Namespace,
    cpu_seconds,
    machine,
    mqtt_connection,
    ms,
    result,
    row,
    summary,
    verdict,
    watch,
)
from communicator import Mirror, PlanStore, Pool, RoutePlan
from communicator.backends import Topics, text
from strategies import shadow_report

RATE = float(os.environ.get("DEPLOYCTL_BENCH_SHADOW_RATE", "2000"))
SECONDS = 4.0  # per setup and round
SKIP = 0.5  # seconds at the start of each phase left out (plan change, warm-up)
ROUNDS = 3
BOUND = 300.0  # s: the longest a run may take (python -m bench stops it past that)
STALL = 3.0  # seconds the stalled shadow takes per copy
MAX_INFLIGHT = 100
GOAL = 1.2  # stalled p99 / no-mirror p99
SATURATED = 0.1  # a no-mirror p99 beyond this: the machine, not the shadow, sets the figures
SERVICE = "orders"
SETUPS = {
    "no mirror": RoutePlan(pools=[Pool(version="1", weight=1)]),
    "healthy shadow": RoutePlan(
        pools=[Pool(version="1", weight=1)],
        mirrors=[Mirror(version="2", percent=100, max_inflight=MAX_INFLIGHT)],
    ),
    "stalled shadow": RoutePlan(
        pools=[Pool(version="1", weight=1)],
        mirrors=[Mirror(version="3", percent=100, max_inflight=MAX_INFLIGHT)],
    ),
}


# -- endpoint processes (child side) ----------------------------------------------------------


def _register(client_id: str, service: str, version: str, commands: str) -> bytes:
    return (
        f"REGISTER service={service};version={version};server=bench;instance={client_id};"
        f"protocol=1;commands={commands}"
    ).encode()


def _field(data: bytes, name: bytes) -> bytes | None:
    start = data.find(name)
    if start < 0:
        return None
    start += len(name)
    end = data.find(b";", start)
    return data[start:end] if end >= 0 else data[start:]


async def _registered(mqtt: Any, topics: Topics, client_id: str, line: bytes) -> None:
    """Subscribe to our out topic, REGISTER (again until READY comes)."""
    await mqtt.subscribe(topics.outbound(client_id), qos=1)
    for _ in range(int(TIMEOUT)):
        await mqtt.publish(topics.inbound(client_id), line, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                async for message in mqtt.messages:
                    if b"READY" in bytes(message.payload):
                        return
    raise TimeoutError(f"{client_id}: no READY")


async def responder(options: dict[str, Any]) -> None:
    """An ``orders`` instance: answers every request, after ``delay`` s; runs until killed."""
    client_id, delay = options["client_id"], float(options["delay"])
    topics = Topics(options["topic_prefix"])
    inbound = topics.inbound(client_id)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with mqtt_connection(options["mqtt_url"], client_id, max_inflight_messages=200) as mqtt:
        await _registered(
            mqtt, topics, client_id, _register(client_id, SERVICE, options["version"], "PLACE")
        )
        print("ready", flush=True)
        # The parent never writes: end of input means it is gone, so stop rather than linger.
        serving = asyncio.current_task()
        assert serving is not None
        orphaned = asyncio.create_task(stdin.read(), name="responder-stdin")
        orphaned.add_done_callback(lambda _: serving.cancel())

        async def answer(message_id: bytes) -> None:
            if delay:
                await asyncio.sleep(delay)
            await mqtt.publish(inbound, b"front/DONE in_reply_to=" + message_id, qos=1)

        async for message in mqtt.messages:
            message_id = _field(bytes(message.payload), b"message_id=")
            if message_id is not None:
                task = asyncio.create_task(answer(message_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


async def requester(options: dict[str, Any]) -> None:
    """The ``front`` instance: a paced run per stdin line (JSON); prints its latencies."""
    client_id = options["client_id"]
    topics = Topics(options["topic_prefix"])
    inbound = topics.inbound(client_id)
    sent: dict[int, float] = {}
    latencies: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with mqtt_connection(options["mqtt_url"], client_id, max_inflight_messages=200) as mqtt:
        await _registered(mqtt, topics, client_id, _register(client_id, "front", "1", "DONE"))
        print("ready", flush=True)

        async def receive() -> None:
            async for message in mqtt.messages:
                now = time.monotonic()
                ident = _field(bytes(message.payload), b"in_reply_to=r")
                if ident is not None and (began := sent.pop(int(ident), None)) is not None:
                    latencies.append((int(ident), now - began))

        receiving = asyncio.create_task(receive())
        seq = 0
        window = asyncio.Semaphore(100)
        pending: set[asyncio.Task[None]] = set()

        async def one(data: bytes) -> None:
            try:
                await mqtt.publish(inbound, data, qos=1)
            finally:
                window.release()

        while line := await reader.readline():
            order = json.loads(line)
            if order.get("quit"):
                break
            latencies.clear()
            first, start = seq, time.monotonic()
            until = start + order["seconds"]
            n = 0
            while (now := time.monotonic()) < until:
                due = start + n / order["rate"]
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                await window.acquire()
                sent[seq] = time.monotonic()
                task = asyncio.create_task(one(b"orders/PLACE item=book;message_id=r%d" % seq))
                pending.add(task)
                task.add_done_callback(pending.discard)
                seq += 1
                n += 1
            deadline = time.monotonic() + 3
            while any(s >= first for s in sent) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            skip = first + int(order["skip"] * order["rate"])
            kept = [lat for s, lat in latencies if s >= skip]
            lost = sum(1 for s in list(sent) if s >= first)
            for s in [s for s in sent if s >= first]:
                del sent[s]
            print(json.dumps({"sent": n, "lost": lost, "latencies": kept}), flush=True)
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving


# -- parent side ------------------------------------------------------------------------------


class Child:
    """One endpoint process (this file with ``role``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, ns: Namespace, role: str, **options: Any) -> Child:
        options |= {"mqtt_url": ns.mqtt_url, "topic_prefix": ns.topic_prefix}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            role,
            json.dumps(options),
            env=ns.environment(),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**26,
        )
        child = cls(process)
        try:
            first = await child.line()
        except BaseException:
            await child.stop()
            raise
        if first != "ready":
            await child.stop()
            raise RuntimeError(f"{role} {options.get('client_id')} did not start: {first!r}")
        return child

    async def line(self, timeout: float = TIMEOUT) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"child exited ({await self.process.wait()})")
        return raw.decode().strip()

    async def call(self, **order: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(order) + "\n").encode())
        await self.process.stdin.drain()
        answer: dict[str, Any] = json.loads(await self.line())
        return answer

    async def stop(self) -> None:
        process = self.process
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


async def reports(ns: Namespace, redis: Any) -> dict[str, dict[str, Any]]:
    """The router's shadow reports of ``orders``, per shadow version (as ``deployctl shadow``)."""
    raw = await redis.hgetall(ns.keys.shadow_report(SERVICE))
    by_version: dict[str, list[dict[str, Any]]] = {}
    for value in raw.values():
        data = json.loads(text(value))
        by_version.setdefault(data["version"], []).append(data)
    return {version: shadow_report(items) for version, items in sorted(by_version.items())}


async def main() -> int:
    ns = Namespace.fresh("shadow")
    redis = ns.redis()
    plans = PlanStore(redis=redis, keys=ns.keys)
    children: list[Child] = []
    try:
        async with Communicatord(ns, redis) as router, contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(lambda: asyncio.gather(*(c.stop() for c in children)))
            await plans.set(SERVICE, SETUPS["no mirror"])
            for client_id, version, delay in (
                ("orders1", "1", 0.0),
                ("orders2", "2", 0.0),
                ("orders3", "3", STALL),
            ):
                children.append(
                    await Child.start(
                        ns, "responder", client_id=client_id, version=version, delay=delay
                    )
                )
            front = await Child.start(ns, "requester", client_id="front1")
            children.append(front)
            print(
                f"pids: communicatord {router.pid}; {machine()}\n"
                f"requests paced at {RATE:,.0f}/s, {ROUNDS} rounds x {SECONDS:g} s per setup "
                f"(first {SKIP:g} s of each left out); stalled shadow answers after {STALL:g} s"
            )
            await front.call(seconds=1.0, skip=0.0, rate=RATE)  # warm up every path
            pooled: dict[str, list[float]] = {name: [] for name in SETUPS}
            p99s: dict[str, list[float]] = {name: [] for name in SETUPS}
            sent = dict.fromkeys(SETUPS, 0)
            lost = dict.fromkeys(SETUPS, 0)
            cpu = dict.fromkeys(SETUPS, 0.0)
            for _ in range(ROUNDS):
                for name, plan in SETUPS.items():
                    await plans.set(SERVICE, plan)
                    await asyncio.sleep(0.2)  # the router applies it within a round trip
                    before = cpu_seconds(router.pid)
                    answer = await front.call(seconds=SECONDS, skip=SKIP, rate=RATE)
                    cpu[name] += cpu_seconds(router.pid) - before
                    pooled[name] += answer["latencies"]
                    p99s[name].append(summary(answer["latencies"])["p99"])
                    sent[name] += answer["sent"]
                    lost[name] += answer["lost"]
            await plans.set(SERVICE, SETUPS["no mirror"])
            await asyncio.sleep(1.2)  # the router flushes its shadow reports every second
            shadow = await reports(ns, redis)

            stats = {name: summary(values) for name, values in pooled.items()}
            print(f"\nrequest -> reply round trip at the requester, ms (paced {RATE:,.0f}/s)")
            print(row("setup", "p50", "p90", "p99", "max", "replies", "lost", "router", width=9))
            for name, s in stats.items():
                cells = [ms(s["p50"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"])]
                busy = f"{cpu[name] / (ROUNDS * SECONDS):.0%}"  # of one core, incl. the drain
                print(row(name, *cells, int(s["count"]), lost[name], busy, width=9))
            print("\nshadow counters (router report in Redis)")
            print(row("mirror", "candid.", "sent", "busy", "bound", "failed", "replied", width=9))
            for label, version in (("healthy shadow (2)", "2"), ("stalled shadow (3)", "3")):
                r = shadow.get(version)
                c = r["counts"] if r else {}
                o = r["outcomes"] if r else {}
                cells = [c.get(k, 0) for k in ("candidates", "sent", "dropped_busy")]
                cells += [c.get("dropped_bound", 0), c.get("failed", 0), o.get("replied", 0)]
                print(row(label, *cells, width=9))
            base = stats["no mirror"]
            healthy, stalled = stats["healthy shadow"], stats["stalled shadow"]
            print(
                f"\nratios to no mirror: healthy p50 {healthy['p50'] / base['p50']:.2f}, "
                f"p99 {healthy['p99'] / base['p99']:.2f}; stalled p50 "
                f"{stalled['p50'] / base['p50']:.2f}, p99 {stalled['p99'] / base['p99']:.2f}"
            )
            rounds = [s / b for s, b in zip(p99s["stalled shadow"], p99s["no mirror"], strict=True)]
            ratio = statistics.median(rounds)
            print(
                f"stalled p99 / no-mirror p99 per round: {' '.join(f'{r:.2f}' for r in rounds)}; "
                f"median {ratio:.2f}"
            )
            print(f"at the end: {machine()}")
            if base["p99"] > SATURATED:
                print(
                    f"note: the no-mirror p99 ({ms(base['p99'])} ms) is past {ms(SATURATED)} ms: "
                    "the run is saturated (queueing): the ratios are noise, not the shadow's cost"
                )
            ok = verdict(
                "stalled shadow p99",
                ratio <= GOAL and not lost["stalled shadow"],
                f"{ms(stalled['p99'])} ms vs {ms(base['p99'])} ms without a mirror (pooled); "
                f"median of {ROUNDS} rounds' ratios {ratio:.2f}x (goal <= {GOAL}x)",
            )
            saturated = (
                f"; the no-mirror p99 is past {ms(SATURATED)} ms: saturated, the ratio is noise"
                if base["p99"] > SATURATED
                else ""
            )
            result(
                "shadow: round trip p99 with a stalled shadow",
                ours=statistics.median(p99s["stalled shadow"]) * 1e3,
                baseline=statistics.median(p99s["no mirror"]) * 1e3,
                unit="ms",
                goal=f"each round's ratio, median <= {GOAL:g} (no request lost)",
                passed=ok,
                rounds=ROUNDS,
                note=f"median of {ROUNDS} interleaved rounds of {SECONDS:g} s at {RATE:,.0f} "
                f"req/s; median ratio {ratio:.2f}, lost {lost['stalled shadow']}{saturated}",
            )
            result(
                "shadow: round trip p99 with a healthy shadow",
                ours=statistics.median(p99s["healthy shadow"]) * 1e3,
                baseline=statistics.median(p99s["no mirror"]) * 1e3,
                unit="ms",
                goal="",
                passed=None,
                rounds=ROUNDS,
                note=f"median of {ROUNDS} rounds' p99; baseline no mirror",
            )
            return 0 if ok else 1
    finally:
        await ns.delete_keys(redis)
        await redis.aclose()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("responder", "requester"):
        role = responder if sys.argv[1] == "responder" else requester
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # stopped
            asyncio.run(role(json.loads(sys.argv[2])))
    else:
        watch(BOUND)
        sys.exit(asyncio.run(main()))

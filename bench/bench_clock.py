"""Cluster time check: how close the estimate comes to a known offset, idle and under load.

    .venv/bin/python -m bench clock    (its own Mosquitto with set_tcp_nodelay, as production)

Issue 14's figure: the error of ``deployctl clock check``'s estimate under
load (loopback, other traffic flowing), stated in docs/operations.md.

Three service processes run with their wall clocks deliberately off (+250 ms,
-80 ms, 0) under libfaketime (Debian's ``faketime``; without it, the process
shifts Python's ``time.time``): the true offsets are exact. A ``communicatord``
routes. Per round (ROUNDS of them) this process runs the check itself
(``check_clocks``, SAMPLES round trips per server, the fastest kept) and notes,
per server, the error of the estimate (estimate - true offset) and the bound
the check reports (half the kept round trip).

Load: a fourth process sends requests to a fifth at LOAD_RATE per second
through the same communicator while the loaded rounds run, so CLOCK shares
the router, the broker and both CPUs with real traffic.

Baseline, in the same run and under the same load: the same NTP exchange with
the same offset processes over one direct MQTT round trip (an echo topic of
their own, no communicator): what the communicator's two extra hops cost.

Goals: no estimate outside its own bound (the bound is a guarantee, not a
statistic); under load the bound's p99 stays under a fifth of the default
50 ms threshold, so a verdict at 50 ms is never inconclusive on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import (
    ROOT,
    Communicatord,
    Namespace,
    machine,
    mqtt_connection,
    ms,
    result,
    row,
    summary,
    verdict,
    watch,
)
from communicator import Client, Registry, Settings
from controller.engine._clock import check_clocks

ROUNDS = 40
SAMPLES = 4
LOAD_RATE = 1000.0  # requests per second through the communicator, during the loaded rounds
OFFSETS = {"ahead": 0.25, "behind": -0.08, "in_step": 0.0}
GOAL_BOUND_P99 = 0.010
BOUND = 180.0  # s: the longest a run may take (python -m bench stops it past that)
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))

#: A service instance (deployctl's client) that also echoes the baseline's raw CLOCKs.
_PEER = r"""
import asyncio, json, os, sys, time
offset = float(os.environ.get("TEST_CLOCK_OFFSET") or 0)
if offset:
    real = time.time
    time.time = lambda: real() + offset
from communicator import Client, Settings
from bench._harness import mqtt_connection

async def main(server, echo):
    async def work(message):
        return message.reply("DONE")
    settings = Settings()
    async with Client("clocked", "1.0", settings=settings, server=server,
                      handlers={"WORK": work}, concurrency=8):
        async with mqtt_connection(settings.mqtt_url, f"echo-{server}") as mqtt:
            await mqtt.subscribe(echo + "/ask")
            print("ready", flush=True)
            async for message in mqtt.messages:
                received = time.time()
                sent = message.payload.decode()
                await mqtt.publish(echo + "/answer", f"{sent} {received:.6f} {time.time():.6f}")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def clock_environment(offset: float) -> dict[str, str]:
    if not offset:
        return {}
    if LIBFAKETIME:
        return {
            "LD_PRELOAD": LIBFAKETIME[0],
            "FAKETIME": f"{offset:+g}",
            "DONT_FAKE_MONOTONIC": "1",
        }
    return {"TEST_CLOCK_OFFSET": f"{offset:g}"}


@contextlib.asynccontextmanager
async def peers(ns: Namespace) -> AsyncIterator[None]:
    processes = []
    try:
        for server, offset in OFFSETS.items():
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _PEER,
                server,
                ns.topic("echo", server),
                env={**ns.environment(), **clock_environment(offset)},
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            processes.append(process)
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            if line.strip() != b"ready":
                raise RuntimeError(f"peer {server} did not start")
        yield
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await asyncio.wait_for(process.wait(), 10)


@contextlib.asynccontextmanager
async def load(settings: Settings) -> AsyncIterator[dict[str, int]]:
    """Requests to ``clocked/WORK`` at LOAD_RATE per second, in this process; counts answers."""
    counts = {"sent": 0, "answered": 0, "failed": 0}
    async with Client("loader", "1.0", settings=settings) as client:

        async def one() -> None:
            try:
                await client.request(client_message("clocked/WORK"), timeout=5)
                counts["answered"] += 1
            except Exception:
                counts["failed"] += 1

        async def stream() -> None:
            tasks: set[asyncio.Task[None]] = set()
            while True:
                counts["sent"] += 1
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(1 / LOAD_RATE)

        running = asyncio.create_task(stream())
        try:
            yield counts
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def client_message(line: str) -> Any:
    from communicator import parse_line

    return parse_line(line)


async def through_the_communicator(client: Client, registry: Registry) -> dict[str, list[float]]:
    """One check: per server, [estimate error, bound]."""
    rows = await check_clocks(client, registry, samples=SAMPLES, servers=OFFSETS)
    found = {}
    for found_row in rows:
        if found_row.estimate is None:
            raise RuntimeError(f"{found_row.server}: {found_row.problem}")
        estimate = found_row.estimate
        found[found_row.server] = [estimate.offset - OFFSETS[found_row.server], estimate.error]
    return found


async def direct(
    ns: Namespace, mqtt: Any, answers: asyncio.Queue[tuple[str, bytes]]
) -> dict[str, list[float]]:
    """The baseline: the same exchange over one MQTT round trip to each peer, no communicator."""
    found = {}
    for server, offset in OFFSETS.items():
        best: tuple[float, float] | None = None
        for _ in range(SAMPLES):
            sent = time.time()
            await mqtt.publish(ns.topic("echo", server, "ask"), f"{sent:.6f}")
            _, payload = await asyncio.wait_for(answers.get(), 5)
            answered = time.time()
            _, received, replied = (float(part) for part in payload.split())
            delay = (answered - sent) - (replied - received)
            estimate = ((received - sent) + (replied - answered)) / 2
            if best is None or delay < best[1]:
                best = (estimate, delay)
        assert best is not None
        found[server] = [best[0] - offset, best[1] / 2]
    return found


async def rounds(
    ns: Namespace, client: Client, registry: Registry, mqtt: Any, answers: Any
) -> dict[str, Any]:
    ours: list[list[float]] = []
    base: list[list[float]] = []
    for _ in range(ROUNDS):
        ours.extend((await through_the_communicator(client, registry)).values())
        base.extend((await direct(ns, mqtt, answers)).values())
    return {"ours": ours, "base": base}


def report(label: str, found: dict[str, Any]) -> tuple[int, float, float]:
    ours, base = found["ours"], found["base"]
    errors = summary([abs(error) for error, _ in ours])
    bounds = summary([bound for _, bound in ours])
    base_bounds = summary([bound for _, bound in base])
    outside = sum(abs(error) > bound + 2e-6 for error, bound in ours)
    print(
        row(f"{label}: |estimate - true|", ms(errors["p50"]), ms(errors["p99"]), ms(errors["max"]))
    )
    print(
        row(f"{label}: error bound (ours)", ms(bounds["p50"]), ms(bounds["p99"]), ms(bounds["max"]))
    )
    print(
        row(
            f"{label}: error bound (direct MQTT)",
            ms(base_bounds["p50"]),
            ms(base_bounds["p99"]),
            ms(base_bounds["max"]),
        )
    )
    ratio = bounds["p50"] / base_bounds["p50"] if base_bounds["p50"] else float("inf")
    print(row(f"{label}: bound ratio ours/direct (p50)", f"{ratio:.2f}x"))
    print(row(f"{label}: estimates outside their bound", outside, f"of {len(ours)}"))
    return outside, bounds["p99"], base_bounds["p99"]


async def main() -> int:
    ns = Namespace.fresh("clock")
    redis = ns.redis()
    settings = Settings(
        redis_url=ns.redis_url,
        mqtt_url=ns.mqtt_url,
        key_prefix=ns.key_prefix,
        topic_prefix=ns.topic_prefix,
        server_name="bench",
    )
    print(
        f"clock check: {ROUNDS} rounds x {len(OFFSETS)} servers x {SAMPLES} samples; "
        f"offsets via {'libfaketime' if LIBFAKETIME else 'time.time shifted in Python'}"
    )
    print(machine())
    print(row("", "p50 ms", "p99 ms", "max ms"))
    try:
        async with (
            Communicatord(ns, redis),
            peers(ns),
            Client("deployctl", "bench", settings=settings) as client,
            mqtt_connection(ns.mqtt_url, "clock-baseline") as mqtt,
        ):
            registry = Registry(redis=redis, keys=ns.keys)
            answers: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
            for server in OFFSETS:
                await mqtt.subscribe(ns.topic("echo", server, "answer"))

            async def listen() -> None:
                async for message in mqtt.messages:
                    answers.put_nowait((str(message.topic), bytes(message.payload)))

            listener = asyncio.create_task(listen())
            idle = await rounds(ns, client, registry, mqtt, answers)
            async with load(settings) as counts:
                await asyncio.sleep(1)  # the stream is flowing
                loaded = await rounds(ns, client, registry, mqtt, answers)
            listener.cancel()
            idle_outside, _, _ = report("idle", idle)
            loaded_outside, loaded_p99, loaded_base_p99 = report("loaded", loaded)
            print(
                row(
                    "load: requests sent / answered / failed",
                    counts["sent"],
                    counts["answered"],
                    counts["failed"],
                )
            )
    finally:
        await ns.delete_keys(redis)
        await redis.aclose()
    ok = verdict(
        "bound holds",
        idle_outside + loaded_outside == 0,
        f"{idle_outside + loaded_outside} estimates outside their own bound",
    )
    ok &= verdict(
        "bound under load",
        loaded_p99 <= GOAL_BOUND_P99,
        f"p99 {ms(loaded_p99)} ms (goal <= {ms(GOAL_BOUND_P99)} ms)",
    )
    result(
        "clock check: error bound p99 under load",
        ours=loaded_p99 * 1e3,
        baseline=loaded_base_p99 * 1e3,
        unit="ms",
        goal=f"<= {GOAL_BOUND_P99 * 1e3:g} ms, no estimate outside its bound",
        passed=ok,
        rounds=ROUNDS,
        note="baseline: the same NTP exchange over one direct MQTT round trip",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    watch(BOUND)
    sys.exit(asyncio.run(main()))

"""Routing cost with 10 and with 10,000 registered instances: is the pick O(1)?

    .venv/bin/python bench/bench_scale.py

Two ``communicatord`` run side by side, each in its own namespace, each with
its own sender A and receiver B (the same worker processes as
``bench_routing``). The routed traffic is the same in both: A (``front1``)
sends ``sink/WORK`` to the service ``sink``, whose four instances
(``sink1``..``sink4``) B registered through the router with the raw protocol.
The only difference is how many other instances the router holds:

- **10**: sink1..4, front1 and 5 instances of 5 other services;
- **10,000**: sink1..4, front1 and 9,995 instances of 200 other services.

The other instances are written straight into the registry in Redis
(``Registry.register_instance``, the step a REGISTER runs) before their
router starts, which loads every service from the registry at start, as a
router that joins a running fleet does. Nobody is connected behind them; so
that the router's directory is seen to hold them, one instance of each other
service accepts ``PROBE``, and every one of those services is sent a
``PROBE`` that a probe endpoint must receive on that instance's ``out`` topic.

Measured, in rounds alternating between the two routers (so machine load
hits both alike): A sends 5,000 messages of 200 bytes as fast as it can (QoS
1, 100 in flight), B counts them on the four sinks' ``out`` topics; rate =
received / (B's last receipt - A's first send); and the router's CPU time per
message. Goal: best rate with 10,000 / best rate with 10 >= 0.9. Then a paced
stream at 2,000 msg/s for 3 s: one-way latency (p50, and the highest p99 of
the four sinks) with each directory size, reported.

Bound: 180 s (``watch``); each worker call has its own timeout.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import (
    Communicatord,
    Namespace,
    Worker,
    cpu_seconds,
    machine,
    ms,
    result,
    row,
    verdict,
    watch,
    workers,
)
from communicator.registry import InstanceInfo, Registry

BOUND = 180.0
COUNT = 5_000
WARMUP_COUNT = 1_000
ROUNDS = 5
RATE = 2_000.0
PACED_SECONDS = 3.0
WARMUP = 200  # paced messages left out of the latency figures
SINKS = 4
SMALL, LARGE = 10, 10_000
OTHER_SERVICES = 200
GOAL = 0.9
HEAD = "sink/WORK "
WRITE_CHUNK = 16  # register_instance calls in flight while filling the registry


def other_instances(count: int) -> list[InstanceInfo]:
    """``count`` instances of other services; instance 0 of each also accepts PROBE."""
    services = min(count, OTHER_SERVICES)
    infos = []
    for n in range(count):
        service, number = n % services, n // services
        infos.append(
            InstanceInfo(
                service=f"other{service}",
                instance=f"o{service}_{number}",
                server="bench",
                version="1",
                client_id=f"o{service}_{number}",
                commands=["WORK", "PROBE"] if number == 0 else ["WORK"],
            )
        )
    return infos


async def fill_registry(ns: Namespace, count: int) -> int:
    """Write ``count`` other instances into the registry of ``ns``; return their services."""
    redis = ns.redis()
    try:
        registry = Registry(redis=redis, keys=ns.keys)
        infos = other_instances(count)
        for first in range(0, len(infos), WRITE_CHUNK):
            chunk = infos[first : first + WRITE_CHUNK]
            await asyncio.wait_for(
                asyncio.gather(*(registry.register_instance(i, with_commands=True) for i in chunk)),
                30,
            )
        return len({info.service for info in infos})
    finally:
        await redis.aclose()


class Setup:
    """One router's side: its namespace, router, sender A, receiver B and probe."""

    def __init__(self, label: str, ns: Namespace, router: Communicatord, a: Worker, b: Worker):
        self.label = label
        self.ns = ns
        self.router = router
        self.a = a
        self.b = b
        self.sinks = [ns.topics.outbound(f"sink{n}") for n in range(1, SINKS + 1)]

    async def register(self) -> None:
        """B registers the sinks and A the sender, through the router (REGISTER -> READY)."""
        for n in range(1, SINKS + 1):
            await self.b.call(
                "register", client_id=f"sink{n}", service="sink", version="1", commands="WORK"
            )
        await self.a.call(
            "register", client_id="front1", service="front", version="1", commands="PING"
        )

    async def probe(self, services: int) -> None:
        """Every other service gets a PROBE; B must see each on its instance 0's out topic."""
        topics = [self.ns.topics.outbound(f"o{s}_0") for s in range(services)]
        await self.b.call("subscribe", topics=topics, qos=1)
        for s in range(services):
            await self.a.call(
                "burst", topic=self.ns.topics.inbound("front1"), count=1, head=f"other{s}/PROBE "
            )
        missing = list(topics)
        deadline = asyncio.get_running_loop().time() + 20
        while missing and asyncio.get_running_loop().time() < deadline:
            missing = [t for t in missing if not (await self.b.call("count", topic=t))["count"]]
            if missing:
                await asyncio.sleep(0.1)
        if missing:
            raise RuntimeError(
                f"{self.label}: the router did not deliver PROBE to {len(missing)} of "
                f"{services} other services (first: {missing[0]}): its directory lacks them"
            )

    async def throughput(self, count: int = COUNT) -> dict[str, Any]:
        """One burst of ``count`` routed messages: rate delivered to B, router CPU per message."""
        await self.b.call("reset")
        before = cpu_seconds(self.router.pid)
        sent = await self.a.call(
            "burst", topic=self.ns.topics.inbound("front1"), count=count, qos=1, head=HEAD
        )
        share = count // SINKS
        got = [
            await self.b.call("collect", topic=topic, expect=share, idle=0.5)
            for topic in self.sinks
        ]
        used = cpu_seconds(self.router.pid) - before
        received = sum(g["count"] for g in got)
        last = max(g["last"] for g in got)
        return {
            "rate": received / (last - sent["start"]) if received else 0.0,
            "received": received,
            "cpu": used / max(received, 1),
        }

    async def latency(self) -> dict[str, float]:
        """A paced stream of ``sink/WORK``: p50 (median of the sinks) and the highest p99."""
        await self.b.call("reset", skip=WARMUP // SINKS)
        sent = await self.a.call(
            "paced",
            topic=self.ns.topics.inbound("front1"),
            rate=RATE,
            seconds=PACED_SECONDS,
            qos=1,
            head=HEAD,
        )
        got = [
            await self.b.call("collect", topic=topic, expect=sent["sent"] // SINKS, idle=0.5)
            for topic in self.sinks
        ]
        return {
            "p50": statistics.median(g["latency"]["p50"] for g in got),
            "p99": max(g["latency"]["p99"] for g in got),
            "received": sum(g["count"] for g in got),
            "sent": sent["sent"],
        }


async def main() -> int:
    small_ns, large_ns = Namespace.fresh("scale10"), Namespace.fresh("scale10k")
    redis = small_ns.redis()
    others = {SMALL: SMALL - SINKS - 1, LARGE: LARGE - SINKS - 1}
    try:
        # Before the routers start: each loads every service of its registry at start.
        small_services = await fill_registry(small_ns, others[SMALL])
        large_services = await fill_registry(large_ns, others[LARGE])
        async with (
            Communicatord(small_ns, redis) as small_router,
            Communicatord(large_ns, redis) as large_router,
            workers(small_ns, "scale-a10", "scale-b10") as (a10, b10),
            workers(large_ns, "scale-a10k", "scale-b10k") as (a10k, b10k),
        ):
            small = Setup(f"{SMALL:,} instances", small_ns, small_router, a10, b10)
            large = Setup(f"{LARGE:,} instances", large_ns, large_router, a10k, b10k)
            setups = [small, large]
            for setup, services in [(small, small_services), (large, large_services)]:
                await setup.register()
                await setup.probe(services)
            print(
                f"{machine()}; routers: {SMALL} instances pid {small_router.pid}, "
                f"{LARGE:,} instances pid {large_router.pid} ({others[LARGE]:,} written to the "
                f"registry, {large_services} services, loaded at start; each service probed)"
            )
            for setup in setups:  # warm up: connections, the routers' cached route choice
                await setup.throughput(WARMUP_COUNT)
            rounds: dict[str, list[dict[str, Any]]] = {s.label: [] for s in setups}
            for _ in range(ROUNDS):
                for setup in setups:
                    rounds[setup.label].append(await setup.throughput())
            latencies = {setup.label: await setup.latency() for setup in setups}

            print(f"\n{COUNT} routed messages per round, {ROUNDS} rounds, to {SINKS} sinks")
            print(row("registered", "best/s", "median/s", "lost", "CPU µs", "p50 ms", "p99 ms"))
            best, cpu = {}, {}
            for setup in setups:
                measured = rounds[setup.label]
                best[setup.label] = max(r["rate"] for r in measured)
                cpu[setup.label] = statistics.median(r["cpu"] for r in measured)
                lat = latencies[setup.label]
                print(
                    row(
                        setup.label,
                        f"{best[setup.label]:,.0f}",
                        f"{statistics.median(r['rate'] for r in measured):,.0f}",
                        sum(COUNT - r["received"] for r in measured),
                        f"{cpu[setup.label] * 1e6:.1f}",
                        ms(lat["p50"]),
                        ms(lat["p99"]),
                    ),
                    "  rounds/s: " + " ".join(f"{r['rate']:,.0f}" for r in measured),
                )
            ratio = best[large.label] / best[small.label]
            cpu_ratio = cpu[large.label] / cpu[small.label]
            print(f"\nat the end: {machine()}")
            ok = verdict(
                "routing with 10,000 instances",
                ratio >= GOAL,
                f"best rate {LARGE:,} / {SMALL}: {ratio:.2f} (goal >= {GOAL}); router CPU per "
                f"message {LARGE:,} / {SMALL}: {cpu_ratio:.2f}",
            )
            note = (
                f"{others[LARGE]:,} other instances written to the registry and loaded by the "
                f"router at start; best of {ROUNDS} interleaved rounds"
            )
            result(
                "scale: routed rate, 10,000 vs 10 instances",
                ours=best[large.label],
                baseline=best[small.label],
                unit="msg/s",
                goal=f">= {GOAL}x",
                passed=ok,
                rounds=ROUNDS,
                note=note,
            )
            result(
                "scale: router CPU per routed message, 10,000 vs 10 instances",
                ours=cpu[large.label] * 1e6,
                baseline=cpu[small.label] * 1e6,
                unit="µs",
                goal="",
                passed=None,
                rounds=ROUNDS,
                note="median of the rounds; lower is better",
            )
            result(
                "scale: routed p99 latency at 2,000 msg/s, 10,000 vs 10 instances",
                ours=latencies[large.label]["p99"] * 1000,
                baseline=latencies[small.label]["p99"] * 1000,
                unit="ms",
                goal="",
                passed=None,
                note="highest p99 of the four sinks, one paced run each",
            )
            return 0 if ok else 1
    finally:
        for ns in (small_ns, large_ns):
            await ns.delete_keys(redis)
        await redis.aclose()


if __name__ == "__main__":
    watch(BOUND)
    sys.exit(asyncio.run(main()))

"""Registration rate: REGISTER -> READY through a communicator vs MQTT request/answer round trips.

    .venv/bin/python bench/bench_registration.py

One registrar process (one aiomqtt connection, subscribed to every ``out``
topic) registers N new client ids, a few at a time: REGISTER on
``in/<client_id>``, then wait for READY on ``out/<client_id>`` (raw protocol,
docs/protocol.md §2). The baseline is the same number of round trips, with
the same REGISTER text and the same concurrency, answered by a trivial echo
process (an aiomqtt relay: QoS 1 in, QoS 0 out, like the router) through the
same broker. The client ids are spread over a few services, so later
registrations find many instances already there: the rate of the first and
the last third shows whether a registration costs more as a service grows.

Prints registrations/s, round-trip percentiles, the CPU time the answering
process (router or echo) spent per round trip, and the ratio ours / baseline
(higher is better). Goal (issue 15): the median rate of REGISTER -> READY is
at least 0.8x that of the echo round trips. Rounds alternate between the two
paths, so load from other processes hits both alike.

``DEPLOYCTL_BENCH_PYSPY=/tmp/prof`` records the router with py-spy during the
REGISTER rounds (``/tmp/prof-<round>-registration.txt``). Bound: 120 s (``watch``).

Mosquitto's ``set_tcp_nodelay`` is off by default and paho does not set
TCP_NODELAY: on such a broker a request/answer exchange often waits about
40 ms for a delayed ACK (Nagle), in both paths. The p50 column shows it.
"""

from __future__ import annotations

import asyncio
import os
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
    py_spy,
    result,
    row,
    verdict,
    watch,
    workers,
)

BOUND = 120.0
COUNT = 300
CONCURRENCY = 4
SERVICES = 3
ROUNDS = 3
GOAL = 0.8


def rates(result: dict[str, Any]) -> tuple[float, float, float]:
    """Overall rate, and the rates of the first and the last third of the round trips."""
    ends = sorted(result["ends"])
    third = len(ends) // 3
    overall = len(ends) / (ends[-1] - result["start"])
    first = third / (ends[third - 1] - result["start"])
    last = third / (ends[-1] - ends[-third - 1])
    return overall, first, last


async def round_trips(
    registrar: Worker,
    to: str,
    tag: str,
    *,
    check: bool,
    server_pid: int,
    profile: str | None = None,
) -> dict[str, Any]:
    """COUNT round trips to ``to``, with client ids and services unique to ``tag``.

    Also measures the CPU time the answering process (``server_pid``) spent per round trip.
    """
    services = [f"svc_{tag}_{n}" for n in range(SERVICES)]
    before = cpu_seconds(server_pid)
    async with py_spy(server_pid, profile, label="registration"):
        answer = await registrar.call(
            "roundtrips",
            to=to,
            count=COUNT,
            concurrency=CONCURRENCY,
            ids=f"{tag}_",
            services=services,
            check=check,
            timeout=60,
        )
    return {**answer, "cpu": (cpu_seconds(server_pid) - before) / COUNT}


def print_rows(rows: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """The table of both kinds of round trips; returns the median rate of each."""
    print(f"{COUNT} round trips per round, {CONCURRENCY} at a time, {SERVICES} services")
    print(row("", "per s", "1st 1/3", "last 1/3", "p50 ms", "p99 ms", "CPU ms"), "  rounds (per s)")
    medians = {}
    for key, label in [("echo", "echo round trips (baseline)"), ("register", "REGISTER -> READY")]:
        measured = [rates(r) for r in rows[key]]
        medians[key] = statistics.median(m[0] for m in measured)
        cells = [
            f"{medians[key]:,.0f}",
            f"{statistics.median(m[1] for m in measured):,.0f}",
            f"{statistics.median(m[2] for m in measured):,.0f}",
            ms(statistics.median(r["latency"]["p50"] for r in rows[key])),
            ms(statistics.median(r["latency"]["p99"] for r in rows[key])),
            ms(statistics.median(r["cpu"] for r in rows[key])),
        ]
        print(row(label, *cells), "  " + " ".join(f"{m[0]:,.0f}" for m in measured))
    return medians


async def main() -> int:
    ns = Namespace.fresh("registration")
    redis = ns.redis()
    profile = os.environ.get("DEPLOYCTL_BENCH_PYSPY")
    echo, register = ns.topic("echo", ""), ns.topics.inbound("")
    try:
        async with (
            Communicatord(ns, redis) as router,
            workers(ns, "bench-registrar", "bench-echo") as (registrar, echoer),
        ):
            await echoer.call("relay", inbound=echo, outbound=ns.topics.outbound(""))
            await registrar.call("subscribe", topics=[ns.topics.outbound("+")], qos=1)
            for to, tag, check in [(echo, "warm_e", False), (register, "warm_r", True)]:
                # Warm-up: connections, the router's scripts, a first service.
                await registrar.call(
                    "roundtrips",
                    to=to,
                    count=20,
                    concurrency=2,
                    ids=tag,
                    services=["warm"],
                    check=check,
                )
            rows: dict[str, list[dict[str, Any]]] = {"echo": [], "register": []}
            for n in range(ROUNDS):
                rows["echo"].append(
                    await round_trips(registrar, echo, f"e{n}", check=False, server_pid=echoer.pid)
                )
                rows["register"].append(
                    await round_trips(
                        registrar,
                        register,
                        f"r{n}",
                        check=True,
                        server_pid=router.pid,
                        profile=f"{profile}-{n}" if profile else None,
                    )
                )
            print(machine())
            medians = print_rows(rows)
            ratio = medians["register"] / medians["echo"]
            ok = verdict(
                "registration rate",
                ratio >= GOAL,
                f"REGISTER -> READY / echo round trips: {ratio:.2f} (goal >= {GOAL})",
            )
            cpu = {k: statistics.median(r["cpu"] for r in rows[k]) for k in rows}
            result(
                "registration: REGISTER -> READY rate vs echo round trips",
                ours=medians["register"],
                baseline=medians["echo"],
                unit="per s",
                goal=f">= {GOAL}x",
                passed=ok,
                rounds=ROUNDS,
                note=f"median of {ROUNDS} alternating rounds of {COUNT}, {CONCURRENCY} at a time",
            )
            result(
                "registration: CPU of the answering process per round trip",
                ours=cpu["register"] * 1000,
                baseline=cpu["echo"] * 1000,
                unit="ms",
                goal="",
                passed=None,
                rounds=ROUNDS,
                note="communicatord vs the echo relay; less load-dependent than the rates",
            )
            return 0 if ok else 1
    finally:
        await ns.delete_keys(redis)
        await redis.aclose()


if __name__ == "__main__":
    watch(BOUND)
    sys.exit(asyncio.run(main()))

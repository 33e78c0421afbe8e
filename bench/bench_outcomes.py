"""Outcome recording rate: the registry's Lua step and batches vs plain INCRs, in one run.

    .venv/bin/python bench/bench_outcomes.py

Measures, on one connection, each for a few rounds of about a second:

- ``INCR`` round trips (the floor for any per-message round trip);
- ``record_outcome`` of failures (the Lua step: counters, history, policy check);
- pipelined ``INCR`` in batches of 100;
- ``record_successes`` with batches of 100 versions (one pipeline of Lua calls).

Prints each median rate and our rate as a ratio of its baseline. Uses
``DEPLOYCTL_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and a
unique key prefix, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

# Run from a checkout without installing: the packages sit beside bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import result, watch
from communicator.backends import Keys
from communicator.registry import InvalidationPolicy, Registry

ROUND_SECONDS = 1.0
ROUNDS = 3
BATCH = 100
BOUND = 120.0  # s: the longest a run may take (python -m bench stops it past that)
COMMAND_TIMEOUT = 10.0  # s: the longest one Redis command may take


async def rate(operation: Callable[[], Awaitable[int]]) -> float:
    """Median operations per second over a few rounds of ``operation`` (which says how many)."""
    rates = []
    for _ in range(ROUNDS):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < ROUND_SECONDS:
            done += await operation()
        rates.append(done / elapsed)
    return statistics.median(rates)


async def main() -> None:
    url = os.environ.get("DEPLOYCTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis = Redis.from_url(url, protocol=2, decode_responses=False, socket_timeout=COMMAND_TIMEOUT)
    keys = Keys(prefix=f"bench:{uuid.uuid4().hex}:")
    # Never trips, so every failure takes the full path: count, history, policy check.
    lenient = InvalidationPolicy(max_failure_rate=1.0, crash_loop=0)
    registry = Registry(redis=redis, keys=keys, policy_defaults=lenient)
    counter = keys.health("bench-counter")  # any key of ours; the prefix is cleaned below
    batch = {("bench", f"1.{n}"): 1 for n in range(BATCH)}

    async def incr() -> int:
        await redis.incr(counter)
        return 1

    async def record_failure() -> int:
        await registry.record_outcome("bench", "1.0", "failure", reason="bench", instance="i1")
        return 1

    async def incr_pipelined() -> int:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(BATCH):
                pipe.incr(counter)
            await pipe.execute()
        return BATCH

    async def record_batch() -> int:
        await registry.record_successes(batch)
        return BATCH

    try:
        await record_batch()  # load the scripts outside the measurement
        print(f"Redis {(await redis.info('server'))['redis_version']} at {url}")
        print(f"medians of {ROUNDS} rounds of {ROUND_SECONDS:g} s, one connection\n")
        incr_rate = await rate(incr)
        failure_rate = await rate(record_failure)
        pipelined_rate = await rate(incr_pipelined)
        batch_rate = await rate(record_batch)
        rows = [
            ("INCR round trips (baseline)", incr_rate, None),
            ("record_outcome, failure (Lua)", failure_rate, incr_rate),
            (f"pipelined INCR x{BATCH} (baseline)", pipelined_rate, None),
            (f"record_successes x{BATCH} versions", batch_rate, pipelined_rate),
        ]
        for name, value, baseline in rows:
            ratio = f"  {value / baseline:.2f}x baseline" if baseline else ""
            print(f"{name:<38} {value:>10,.0f} /s{ratio}")
            if baseline:
                result(
                    f"outcomes: {name}",
                    ours=value,
                    baseline=baseline,
                    unit="/s",
                    goal="",
                    passed=None,
                    rounds=ROUNDS,
                    note=f"median rate of {ROUNDS} rounds of {ROUND_SECONDS:g} s, one connection",
                )
    finally:
        stale = [key async for key in redis.scan_iter(match=f"{keys.prefix}*", count=1000)]
        if stale:
            await redis.delete(*stale)
        await redis.aclose()


if __name__ == "__main__":
    watch(BOUND)
    asyncio.run(main())

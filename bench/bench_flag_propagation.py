"""Propagation of a flag change, from the store to a service's SDK, against a baseline.

    .venv/bin/python bench/bench_flag_propagation.py

What ``deployctl flag off`` does (a Lua step in Redis) until a FlagClient sees
the new value: Redis pub/sub to the publisher, a retained MQTT message, the
SDK recompiling the flag. Baseline in the same run: one Redis PUBLISH to a
subscriber plus one MQTT publish to a subscriber. Goal: p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from communicator import Settings, mqtt_client
from flags import Flag, FlagClient, FlagKeys, FlagPublisher, FlagState, FlagStore

ROUNDS = 50


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def baseline(settings: Settings, redis: Redis) -> list[float]:
    """Redis PUBLISH -> subscriber, then MQTT publish -> subscriber: the two hops a change takes."""
    times = []
    topic = f"{settings.topic_prefix}baseline"
    async with (
        redis.pubsub() as pubsub,
        mqtt_client(settings, client_id=f"b-{uuid.uuid4().hex[:8]}") as mqtt,
    ):
        await pubsub.subscribe(f"{settings.key_prefix}baseline")
        await pubsub.get_message(timeout=1)
        await mqtt.subscribe(topic, qos=1)
        messages = mqtt.messages.__aiter__()
        for _ in range(ROUNDS):
            start = time.monotonic()
            await redis.publish(f"{settings.key_prefix}baseline", "x")
            while await pubsub.get_message(timeout=1) is None:
                pass
            await mqtt.publish(topic, b"x", qos=1)
            await messages.__anext__()
            times.append(time.monotonic() - start)
    return times


async def propagation(settings: Settings, redis: Redis) -> list[float]:
    store = FlagStore(redis=redis, keys=FlagKeys(settings.key_prefix))
    flag = Flag.model_validate(
        {
            "key": "bench",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
            "help": "Benchmark flag.",
            "help_uri": "https://example.com/bench",
        }
    )
    await store.put(flag, who="bench")
    publisher = FlagPublisher(settings=settings, redis=redis)
    task = asyncio.create_task(publisher.run())
    times = []
    try:
        await asyncio.wait_for(publisher.synced.wait(), 10)
        async with FlagClient(settings=settings) as client:
            await client.wait_synced(10)
            for n in range(ROUNDS):
                state = FlagState.DISABLED if n % 2 == 0 else FlagState.ENABLED
                client.updated.clear()
                start = time.monotonic()
                await store.update(
                    "bench", lambda f, s=state: f.model_copy(update={"state": s}), who="bench"
                )
                await asyncio.wait_for(client.updated.wait(), 5)
                times.append(time.monotonic() - start)
    finally:
        task.cancel()
    return times


async def main() -> None:
    logging.disable(logging.WARNING)
    prefix = uuid.uuid4().hex
    settings = Settings(
        redis_url=os.environ.get("DEPLOYCTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        mqtt_url=os.environ.get("DEPLOYCTL_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883"),
        key_prefix=f"bench:{prefix}:",
        topic_prefix=f"bench/{prefix}/",
    )
    redis = Redis.from_url(settings.redis_url or "", protocol=2)
    try:
        base = await baseline(settings, redis)
        ours = await propagation(settings, redis)
    finally:
        keys = [k async for k in redis.scan_iter(match=f"bench:{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    print(f"flag change -> SDK, {ROUNDS} rounds (ms)")
    print(f"{'path':<44}{'p50':>8}{'p99':>8}")
    for name, values in (
        ("Redis pub/sub + MQTT hop (baseline)", base),
        ("flag off -> FlagClient sees it", ours),
    ):
        print(
            f"{name:<44}{percentile(values, 0.5) * 1e3:>8.2f}{percentile(values, 0.99) * 1e3:>8.2f}"
        )
    print(f"ratio p99: {percentile(ours, 0.99) / percentile(base, 0.99):.1f}x")
    print(f"goal p99 <= 50 ms: {'PASS' if percentile(ours, 0.99) <= 0.050 else 'FAIL'}")


if __name__ == "__main__":
    asyncio.run(main())

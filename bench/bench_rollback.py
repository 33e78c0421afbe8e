"""Rollback reaction and controller overhead, each against a baseline in the same run.

    .venv/bin/python bench/bench_rollback.py

1. From the failure that dooms a canary (recorded as a router records it) to
   the canary being cut off in *every* router (invalid there, so weight 0 in
   effect) and to the controller's rollback plan (weight 0) applied in every
   router. Two routers and the controller run in this process against the real
   Redis and Mosquitto. Baseline: one Redis PUBLISH to a subscriber. Goal: p99
   of "weight 0 in every router" <= 100 ms (Flagger needs interval x threshold,
   60 s by default).
2. Controller overhead per active rollout: one leader pass over N paused
   rollouts, per rollout, against the baseline of one GET + SET round trip.

Uses DEPLOYCTL_BENCH_REDIS_URL / DEPLOYCTL_BENCH_MQTT_URL (defaults: the local
servers) and unique prefixes, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from communicator import InvalidationPolicy, OutcomeKind, Router, RouterConfig, Settings
from controller.engine._controller import Controller
from controller.engine._rollout import Phase, Rollout
from controller.playbook._playbook import parse_playbook

ROUNDS = 20
ROLLOUTS = 50
PLAYBOOK = parse_playbook(
    "name: bench\ndescription: bench\nsteps:\n  - set_weight: 10\n  - pause: {}\n", "bench"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def until(condition: object, timeout: float = 5.0) -> float:
    """Spin until ``condition()`` is true; return the monotonic time it became so."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.0005)
    return time.monotonic()


async def publish_baseline(redis: Redis, channel: str) -> list[float]:
    """Redis PUBLISH -> subscriber, the floor of any cross-process announcement."""
    times = []
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1)
        for _ in range(ROUNDS):
            start = time.monotonic()
            await redis.publish(channel, "x")
            while await pubsub.get_message(timeout=1) is None:
                pass
            times.append(time.monotonic() - start)
    return times


async def reaction(settings: Settings, redis: Redis) -> tuple[list[float], list[float]]:
    routers = [Router(settings=settings, redis=redis, config=RouterConfig()) for _ in range(2)]
    controller = Controller(settings=settings, redis=redis, tick=1.0)  # reacts to events, not ticks
    tasks = [asyncio.create_task(r.run()) for r in routers] + [
        asyncio.create_task(controller.run())
    ]
    await until(lambda: all(r.ready.is_set() for r in routers) and controller.leading.is_set(), 15)
    cut, zero = [], []
    try:
        for n in range(ROUNDS):
            start, cut_at, zero_at = await one_round(controller, routers, f"svc{n}", f"2.{n}")
            cut.append(cut_at - start)
            zero.append(zero_at - start)
    finally:
        controller.stop()
        for router in routers:
            router.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    return cut, zero


async def one_round(
    controller: Controller, routers: list[Router], service: str, canary: str
) -> tuple[float, float, float]:
    """Start a rollout, then fail its canary once; return when it is cut off and at weight 0."""
    rollout = Rollout(
        id=uuid.uuid4().hex[:8],
        service=service,
        stable="1.0",
        canary=canary,
        playbook=PLAYBOOK.model_dump(mode="json"),
    )
    await controller.store.create(rollout)
    await controller.store.wake(service)

    def weight(router: Router) -> int:
        return {p.version: p.weight for p in router.directory.plan(service).pools}.get(canary, -1)

    await until(lambda: all(weight(r) == 10 for r in routers))  # the first step is applied
    await routers[0].registry.set_policy(
        service, InvalidationPolicy(min_failures=1, max_failure_rate=0.0), version=canary
    )

    start = time.monotonic()
    await routers[0].control.record(service, canary, OutcomeKind.FAILURE.value, reason="bench")
    cut_at = await until(lambda: all(r.directory.is_invalid(service, canary) for r in routers))
    zero_at = await until(lambda: all(weight(r) == 0 for r in routers))
    for _ in range(100):  # the rollout is saved right after the plan is written
        current = await controller.store.get(service)
        if current is not None and current.phase is Phase.ABORTED:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"rollout of {service} not aborted")
    return start, cut_at, zero_at


async def overhead(settings: Settings, redis: Redis) -> tuple[float, float]:
    controller = Controller(settings=settings, redis=redis)
    for n in range(ROLLOUTS):
        rollout = Rollout(
            id=f"o{n}",
            service=f"over{n}",
            stable="1.0",
            canary="2.0",
            playbook=PLAYBOOK.model_dump(mode="json"),
            phase=Phase.PAUSED,
            step=1,
        )
        await controller.store.create(rollout)
    passes = []
    for _ in range(5):
        start = time.perf_counter()
        await controller.advance_all()
        passes.append((time.perf_counter() - start) / ROLLOUTS)
    key = f"{settings.key_prefix}baseline"
    base = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(ROLLOUTS):
            await redis.set(key, await redis.get(key) or b"x")
        base.append((time.perf_counter() - start) / ROLLOUTS)
    return statistics.median(passes), statistics.median(base)


async def main() -> None:
    logging.disable(logging.WARNING)  # each round invalidates a version on purpose
    prefix = uuid.uuid4().hex
    settings = Settings(
        redis_url=os.environ.get("DEPLOYCTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        mqtt_url=os.environ.get("DEPLOYCTL_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883"),
        key_prefix=f"bench:{prefix}:",
        topic_prefix=f"bench/{prefix}/",
    )
    redis = Redis.from_url(settings.redis_url or "", protocol=2)
    try:
        base = await publish_baseline(redis, f"{settings.key_prefix}ping")
        cut, zero = await reaction(settings, redis)
        per_rollout, per_round_trip = await overhead(settings, redis)
    finally:
        keys = [k async for k in redis.scan_iter(match=f"bench:{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    ms = 1000
    rows = [
        ("Redis PUBLISH -> subscriber (baseline)", base),
        ("failure -> canary cut off in every router", cut),
        ("failure -> plan weight 0 in every router", zero),
    ]
    print(f"rollback reaction over {ROUNDS} rounds, 2 routers + controller (ms)")
    print(f"{'path':<44}{'p50':>8}{'p99':>8}")
    for name, values in rows:
        print(
            f"{name:<44}{percentile(values, 0.5) * ms:>8.2f}{percentile(values, 0.99) * ms:>8.2f}"
        )
    print(f"ratio p99 weight-0 / baseline: {percentile(zero, 0.99) / percentile(base, 0.99):.1f}x")
    goal = percentile(zero, 0.99) * ms <= 100
    print(f"goal p99 <= 100 ms: {'PASS' if goal else 'FAIL'}")
    print(
        f"\ncontroller pass over {ROLLOUTS} active rollouts: {per_rollout * 1e3:.3f} ms per "
        f"rollout; GET+SET round trip {per_round_trip * 1e3:.3f} ms; "
        f"ratio {per_rollout / per_round_trip:.1f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())

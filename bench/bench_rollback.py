"""Rollback reaction and controller overhead, each against a baseline in the same run.

    .venv/bin/python bench/bench_rollback.py

1. From the failure that dooms a canary (recorded as a router records it) to
   the canary being cut off in *every* router (invalid there, so weight 0 in
   effect) and to the controller's rollback plan (weight 0) applied in every
   router. Two routers and the controller run in this process against the real
   Redis and Mosquitto. Baseline: one Redis PUBLISH to a subscriber. Goal: p99
   of "weight 0 in every router" <= 100 ms (Flagger needs interval x threshold,
   60 s by default), judged on the median of ROUNDS rounds' p99 (TRIALS trials
   each), so one noisy round on a shared machine does not fail it.
2. Controller overhead per active rollout: one leader pass over N paused
   rollouts, per rollout, against the baseline of one GET + SET round trip.

Uses DEPLOYCTL_BENCH_REDIS_URL / DEPLOYCTL_BENCH_MQTT_URL (defaults: the local
servers) and unique prefixes, deleted afterwards. Every wait has a deadline
(the routers and the controller must stop within STOP_TIMEOUT), and the whole
run is bounded by BOUND (``_harness.watch``).
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
from typing import Any

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import result, watch
from communicator import InvalidationPolicy, OutcomeKind, Router, RouterConfig, Settings
from controller.engine._controller import Controller
from controller.engine._rollout import Phase, Rollout
from controller.playbook._playbook import parse_playbook

TRIALS = 20  # canaries failed per round
ROUNDS = 3  # the goal is judged on the median of the rounds' p99
ROLLOUTS = 50
GOAL_P99 = 0.100
BOUND = 240.0  # s: the longest a run may take (python -m bench stops it past that)
STOP_TIMEOUT = 10.0  # s: the longest the routers and the controller may take to stop
MESSAGE_TIMEOUT = 5.0  # s: the longest a PUBLISH may take to reach our subscriber
PLAYBOOK = parse_playbook(
    "name: bench\ndescription: bench\nsteps:\n  - set_weight: 10\n  - pause: {}\n", "bench"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def until(condition: object, what: str, timeout: float = 5.0) -> float:
    """Spin until ``condition()`` is true; return the monotonic time it became so.

    Raises:
        TimeoutError: Not within ``timeout`` s; the message says ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.0005)
    return time.monotonic()


async def next_message(pubsub: Any, timeout: float = MESSAGE_TIMEOUT) -> dict[str, Any]:
    """The next message (not a subscribe confirmation) on ``pubsub``, within ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            item = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if item is not None:
                return dict(item)


async def publish_baseline(redis: Redis, channel: str) -> list[float]:
    """Redis PUBLISH -> subscriber, the floor of any cross-process announcement."""
    times = []
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        for _ in range(TRIALS * ROUNDS):
            start = time.monotonic()
            await redis.publish(channel, "x")
            await next_message(pubsub)
            times.append(time.monotonic() - start)
    return times


async def stop_all(tasks: list[asyncio.Task[Any]], what: str) -> None:
    """Wait STOP_TIMEOUT s for ``tasks`` (already told to stop); cancel and name any left."""
    _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    for task in pending:
        task.cancel()
    await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    if pending:
        names = ", ".join(task.get_name() for task in pending)
        raise TimeoutError(f"{what} did not stop within {STOP_TIMEOUT:g} s: {names}")


async def reaction(settings: Settings, redis: Redis) -> tuple[list[float], list[float]]:
    routers = [Router(settings=settings, redis=redis, config=RouterConfig()) for _ in range(2)]
    controller = Controller(settings=settings, redis=redis, tick=1.0)  # reacts to events, not ticks
    tasks = [asyncio.create_task(r.run(), name=f"router{n}") for n, r in enumerate(routers)]
    tasks.append(asyncio.create_task(controller.run(), name="controller"))
    cut, zero = [], []
    try:
        await until(
            lambda: all(r.ready.is_set() for r in routers) and controller.leading.is_set(),
            "both routers ready and the controller leading",
            15,
        )
        for n in range(TRIALS * ROUNDS):
            start, cut_at, zero_at = await one_round(controller, routers, f"svc{n}", f"2.{n}")
            cut.append(cut_at - start)
            zero.append(zero_at - start)
    finally:
        controller.stop()
        for router in routers:
            router.stop()
        await stop_all(tasks, "routers and controller")
    for task in tasks:  # one that ended early on an error: say so rather than hide it
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"{task.get_name()} failed") from task.exception()
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

    await until(  # the first step is applied
        lambda: all(weight(r) == 10 for r in routers), f"{service}: canary at weight 10"
    )
    await routers[0].registry.set_policy(
        service, InvalidationPolicy(min_failures=1, max_failure_rate=0.0), version=canary
    )

    start = time.monotonic()
    await routers[0].control.record(service, canary, OutcomeKind.FAILURE.value, reason="bench")
    cut_at = await until(
        lambda: all(r.directory.is_invalid(service, canary) for r in routers),
        f"{service}: canary invalid in every router",
    )
    zero_at = await until(
        lambda: all(weight(r) == 0 for r in routers), f"{service}: canary at weight 0"
    )
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


def per_round_p99(values: list[float]) -> list[float]:
    """The p99 of each round of TRIALS consecutive values."""
    return [percentile(values[n : n + TRIALS], 0.99) for n in range(0, len(values), TRIALS)]


async def main() -> int:
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
    print(f"rollback reaction, {ROUNDS} rounds of {TRIALS}, 2 routers + controller (ms)")
    print(f"{'path':<44}{'p50':>8}{'p99':>8}  p99 per round")
    for name, values in rows:
        rounds = " ".join(f"{p * ms:.2f}" for p in per_round_p99(values))
        print(
            f"{name:<44}{percentile(values, 0.5) * ms:>8.2f}"
            f"{percentile(values, 0.99) * ms:>8.2f}  {rounds}"
        )
    zero_p99 = statistics.median(per_round_p99(zero))
    base_p99 = statistics.median(per_round_p99(base))
    print(f"ratio p99 weight-0 / baseline (medians of the rounds): {zero_p99 / base_p99:.1f}x")
    goal = zero_p99 <= GOAL_P99
    print(
        f"goal p99 <= {GOAL_P99 * ms:g} ms (median of {ROUNDS} rounds' p99: "
        f"{zero_p99 * ms:.2f} ms): {'PASS' if goal else 'FAIL'}"
    )
    result(
        "rollback: failure -> weight 0 in every router, p99",
        ours=zero_p99 * ms,
        baseline=base_p99 * ms,
        unit="ms",
        goal=f"<= {GOAL_P99 * ms:g} ms",
        passed=goal,
        rounds=ROUNDS,
        note=f"median of {ROUNDS} rounds' p99 ({TRIALS} canaries each), 2 routers + controller "
        "in one process; baseline Redis PUBLISH -> subscriber",
    )
    result(
        "rollback: failure -> canary cut off in every router, p99",
        ours=statistics.median(per_round_p99(cut)) * ms,
        baseline=base_p99 * ms,
        unit="ms",
        goal="",
        passed=None,
        rounds=ROUNDS,
        note=f"median of {ROUNDS} rounds' p99",
    )
    print(
        f"\ncontroller pass over {ROLLOUTS} active rollouts: {per_rollout * 1e3:.3f} ms per "
        f"rollout; GET+SET round trip {per_round_trip * 1e3:.3f} ms; "
        f"ratio {per_rollout / per_round_trip:.1f}x"
    )
    result(
        "rollback: controller pass per active rollout",
        ours=per_rollout * ms,
        baseline=per_round_trip * ms,
        unit="ms",
        goal="",
        passed=None,
        rounds=5,
        note=f"median of 5 passes over {ROLLOUTS} paused rollouts; baseline one GET + SET",
    )
    return 0 if goal else 1


if __name__ == "__main__":
    watch(BOUND)
    sys.exit(asyncio.run(main()))

"""The leading controller waits out Redis outages: it never dies of one, and nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from communicator import Keys, Measurements, Settings, connect_redis
from controller.engine._controller import Controller
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, start_rollout
from controller.playbook._playbook import parse_playbook
from tests.conftest import Server, answers, eventually, free_port, redis_args

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

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


@pytest.fixture
def own_redis(spawn: Callable[..., Server], tmp_path: Path) -> Callable[[], Server]:
    """Start (and start again) a Redis with an append-only log on one port and folder."""
    port = free_port()
    args = redis_args(
        port, "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)
    )

    def start() -> Server:
        return spawn(f"redis-{port}", args, ready=lambda: answers("127.0.0.1", port))

    start.port = port  # type: ignore[attr-defined]
    return start


@contextlib.asynccontextmanager
async def leading(settings: Settings) -> AsyncIterator[tuple[Controller, asyncio.Task[None]]]:
    redis = await connect_redis(settings)
    controller = Controller(settings=settings, redis=redis, tick=0.1, lease_ttl=2.0)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.leading.wait(), 10)
        yield controller, task
    finally:
        controller.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await redis.aclose()


async def test_a_redis_restart_mid_rollout_is_waited_out_and_the_rollout_ends(
    own_redis: Callable[[], Server], settings: Settings
) -> None:
    """Redis killed during a pause and started again: the same controller finishes the rollout."""
    server = own_redis()
    port = own_redis.port  # type: ignore[attr-defined]
    settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    async with leading(settings) as (controller, task):
        store = controller.store
        playbook = parse_playbook(STEPS, "steps.yaml")
        await start_rollout(
            store,
            Measurements(redis=controller.redis, keys=Keys(settings.key_prefix)),
            service="shop",
            stable="1.0",
            canary="1.1",
            playbook=playbook.model_dump(mode="json"),
            reason="test",
        )

        async def at(weight: int) -> bool:
            rollout = await store.get("shop")
            return rollout is not None and rollout.weight == weight

        await eventually(lambda: at(20), "the first step")
        server.process.kill()
        server.process.wait(timeout=5)
        await asyncio.sleep(1.5)  # an outage of most of a lease: the renewal must ride it out
        assert not task.done(), "the controller died of a Redis outage"
        own_redis()

        async def ended() -> bool:
            rollout = await store.get("shop")
            return rollout is not None and not rollout.phase.active

        await eventually(ended, "the end of the rollout", timeout=30)
        rollout = await store.get("shop")
        assert rollout is not None
        assert rollout.phase is Phase.SUCCEEDED, rollout.reason
        reasons = [t.reason for t in await store.history("shop")]
        for wanted in ("weight set to 20%", "weight set to 50%", "1.1 promoted"):
            assert any(wanted in reason for reason in reasons), (wanted, reasons)
        assert not task.done()
        assert controller.leading.is_set()


async def test_a_dropped_listener_connection_does_not_end_the_lead(
    settings: Settings, redis: Redis
) -> None:
    """The listener's pub/sub connection killed: the controller leads on and still wakes."""
    async with leading(settings) as (controller, task):
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await asyncio.sleep(0.5)
        assert not task.done(), "the controller died when its listener lost its connection"
        assert controller.leading.is_set()
        leader = await redis.get(ControllerKeys(settings.key_prefix).leader())
        assert leader is not None
        assert leader.decode() == controller.id

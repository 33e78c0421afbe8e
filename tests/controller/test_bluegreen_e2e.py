"""Blue-green end to end: two communicatord processes, a controller, services as processes.

What a user relies on, on the real Redis and Mosquitto:

- before the switch, only ``preview=yes`` messages reach the new version;
- after it, no message of a sender reaches the old version once one reached
  the new (the switch is one plan change, applied by every communicator);
- a rollback puts every message back on the old version, which stayed registered;
- a failure of the new version after the switch rolls back by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Keys, Measurements, PlanStore, Registry, RoutePlan, Settings
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, Rollout, RolloutStore, start_rollout
from controller.playbook._playbook import parse_playbook
from tests.communicator.fleet import ROOT, ServiceProcess, environment
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

Fleet = Callable[..., Awaitable[ServiceProcess]]

MANUAL = """name: bg-manual
description: Preview until promoted, switch, watch 1 s, retire the old color after 1 s.
strategy: bluegreen
steps:
  - pause: {}
  - switch: {}
  - pause: {duration: 1s}
scale_down_delay: 1s
"""

WATCHED = """name: bg-watched
description: Switch at once, then watch long enough for the rules to judge.
strategy: bluegreen
steps:
  - switch: {}
  - pause: {duration: 60s}
rollback: {max_failure_rate: 0.2, min_failures: 5, failure_window: 30s}
"""


@pytest.fixture
async def daemons(
    settings: Settings, redis: Redis
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Two communicators sharing the partitions, and a controller."""
    env = environment(settings)
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, *args, env=env, cwd=ROOT)
        for args in (
            ("-m", "communicator"),
            ("-m", "communicator"),
            ("-m", "controller", "controller", "run"),
        )
    ]
    keys, controller_keys = Keys(settings.key_prefix), ControllerKeys(settings.key_prefix)

    async def up() -> bool:
        return await redis.zcard(keys.routers()) == 2 and bool(
            await redis.exists(controller_keys.leader())
        )

    await eventually(up, "two communicators and a controller up", timeout=40)
    yield processes
    for process in processes:
        if process.returncode is None:
            process.terminate()
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def fleet(settings: Settings, daemons: Any) -> AsyncIterator[Fleet]:
    started: list[ServiceProcess] = []

    async def start(*args: str) -> ServiceProcess:
        process = await ServiceProcess.start(settings, *args)
        started.append(process)
        return process

    yield start
    await asyncio.gather(*(p.close() for p in started))


class Shop:
    """Blue (1.0) on web_0, green (1.1) on web_1, and a front that sends orders."""

    def __init__(self, blue: ServiceProcess, green: ServiceProcess, front: ServiceProcess) -> None:
        self.blue, self.green, self.front = blue, green, front
        # Read what the two versions print as it comes, so `received` is up to date.
        self._readers = [asyncio.create_task(_read_forever(p)) for p in (blue, green)]

    async def stop(self) -> None:
        """Stop the processes, then let the readers reach the end of their output."""
        await asyncio.gather(*(p.close() for p in (self.blue, self.green, self.front)))
        await asyncio.wait(self._readers, timeout=10)
        for reader in self._readers:
            reader.cancel()

    def seqs(self, instance: ServiceProcess, *, preview: bool) -> list[int]:
        return [
            int(m["parameters"]["seq"])
            for m in instance.received("ORDER")
            if (m["parameters"].get("preview") == "yes") == preview
        ]

    async def send(self, count: int, *, preview: bool = False) -> None:
        line = "shop/ORDER preview=yes" if preview else "shop/ORDER"
        await self.front.burst(line, count)

    def total(self) -> int:
        """Orders the two versions received so far."""
        return len(self.blue.received("ORDER")) + len(self.green.received("ORDER"))

    async def delivered(self, total: int) -> None:
        async def all_in() -> bool:
            return self.total() >= total

        try:
            await eventually(all_in, f"{total} orders delivered")
        except TimeoutError as exc:
            got = (len(self.blue.received("ORDER")), len(self.green.received("ORDER")))
            raise AssertionError(
                f"{exc}: 1.0 got {got[0]}, 1.1 got {got[1]}; front saw {self.front.events[-3:]}"
            ) from None


async def _read_forever(instance: ServiceProcess) -> None:
    with contextlib.suppress(AssertionError):  # it exited
        while True:
            await instance.next_event(timeout=3600)


@pytest.fixture
async def shops() -> AsyncIterator[list[Shop]]:
    made: list[Shop] = []
    yield made
    for each in made:
        await each.stop()


async def shop(fleet: Fleet, green_fail_rate: float = 0.0) -> Shop:
    blue = await fleet("shop", "1.0", "--commands", "ORDER", "--server", "web_0")
    green = await fleet(
        "shop", "1.1", "--commands", "ORDER", "--server", "web_1",
        "--fail-rate", str(green_fail_rate),
    )  # fmt: skip
    return Shop(blue, green, await fleet("front", "1.0"))


async def begin(settings: Settings, redis: Redis, text: str) -> RolloutStore:
    """Start a blue-green rollout of shop 1.1 over 1.0 and wait for its preview plan."""
    store = RolloutStore(redis=redis, keys=ControllerKeys(settings.key_prefix))
    await start_rollout(
        store,
        Measurements(redis=redis, keys=Keys(settings.key_prefix)),
        service="shop",
        stable="1.0",
        canary="1.1",
        playbook=parse_playbook(text).model_dump(mode="json"),
        reason="test",
    )
    return store


async def plan_of(settings: Settings, redis: Redis) -> RoutePlan | None:
    return await PlanStore(redis=redis, keys=Keys(settings.key_prefix)).get("shop")


async def active_version(settings: Settings, redis: Redis) -> str | None:
    plan = await plan_of(settings, redis)
    if plan is None or plan.active_color is None:
        return None
    return plan.colors[plan.active_color]


async def phase_of(store: RolloutStore) -> Rollout:
    rollout = await store.get("shop")
    assert rollout is not None
    return rollout


async def test_preview_then_switch_then_the_old_color_gets_nothing(
    fleet: Fleet, shops: list[Shop], settings: Settings, redis: Redis
) -> None:
    """Preview traffic alone reaches 1.1; after the switch no order reaches 1.0 again."""
    orders = await shop(fleet)
    shops.append(orders)
    store = await begin(settings, redis, MANUAL)

    async def previewing() -> bool:
        plan = await plan_of(settings, redis)
        return plan is not None and plan.preview_version == "1.1"

    await eventually(previewing, "the preview plan")
    await orders.send(40)
    await orders.send(10, preview=True)
    await orders.delivered(50)
    assert orders.seqs(orders.green, preview=False) == []
    assert sorted(orders.seqs(orders.green, preview=True)) == list(range(10))
    assert sorted(orders.seqs(orders.blue, preview=False)) == list(range(40))
    assert orders.seqs(orders.blue, preview=True) == []

    await store.request("shop", "promote")  # past the pause: the switch
    blue_before = len(orders.blue.received("ORDER"))
    await orders.send(200)  # while the switch happens
    await orders.delivered(250)

    async def switched() -> bool:
        return await active_version(settings, redis) == "1.1"

    await eventually(switched, "the switch")
    # One sender's orders: once one reached 1.1, none of the later ones reached 1.0.
    late_blue = orders.seqs(orders.blue, preview=False)[blue_before:]
    late_green = orders.seqs(orders.green, preview=False)
    assert late_green, "no order reached 1.1 after the switch"
    assert not [seq for seq in late_blue if seq > min(late_green)]

    async def succeeded() -> bool:
        return (await phase_of(store)).phase is Phase.SUCCEEDED

    await eventually(succeeded, "the rollout's end, after the scale-down delay")
    plan = await plan_of(settings, redis)
    assert plan is not None
    assert list(plan.colors.values()) == ["1.1"]  # the old color retired
    blue_after, total = len(orders.blue.received("ORDER")), orders.total()
    await orders.send(30)
    await orders.delivered(total + 30)
    assert len(orders.blue.received("ORDER")) == blue_after


async def test_a_rollback_after_the_switch_puts_every_order_back(
    fleet: Fleet, shops: list[Shop], settings: Settings, redis: Redis
) -> None:
    """Abort after the switch: 1.0, still registered, takes every order again at once."""
    orders = await shop(fleet)
    shops.append(orders)
    store = await begin(settings, redis, MANUAL)
    await store.request("shop", "promote")

    async def switched() -> bool:
        return await active_version(settings, redis) == "1.1"

    await eventually(switched, "the switch")
    await store.request("shop", "abort")

    async def aborted() -> bool:
        return (await phase_of(store)).phase is Phase.ABORTED

    await eventually(aborted, "the rollback")
    assert await active_version(settings, redis) == "1.0"
    green_before, total = len(orders.green.received("ORDER")), orders.total()
    await orders.send(50)
    await orders.delivered(total + 50)
    assert len(orders.green.received("ORDER")) == green_before
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
    assert await registry.is_valid("shop", "1.0")


async def test_a_failing_new_version_is_switched_back_by_itself(
    fleet: Fleet, shops: list[Shop], settings: Settings, redis: Redis
) -> None:
    """After the switch 1.1 fails half its orders: the rules cut it off, 1.0 serves again."""
    orders = await shop(fleet, green_fail_rate=0.5)
    shops.append(orders)
    store = await begin(settings, redis, WATCHED)

    async def switched() -> bool:
        return await active_version(settings, redis) == "1.1"

    await eventually(switched, "the switch")
    await orders.front.order(load="shop/ORDER", rate=50)

    async def rolled_back() -> bool:
        return (await phase_of(store)).phase is Phase.ABORTED

    await eventually(rolled_back, "the automatic rollback", timeout=40)
    rollout = await phase_of(store)
    assert "invalidated 1.1" in rollout.reason
    assert await active_version(settings, redis) == "1.0"
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
    assert not await registry.is_valid("shop", "1.1")
    assert await registry.is_valid("shop", "1.0")  # what serves production stays valid


SWITCH_THEN_WAIT = """name: bg-kill
description: Switch, then wait long enough to kill the leading controller.
strategy: bluegreen
steps:
  - pause: {}
  - switch: {}
  - pause: {duration: 3s}
scale_down_delay: 1s
"""


async def test_a_controller_killed_at_the_switch_is_finished_by_the_standby(
    fleet: Fleet,
    shops: list[Shop],
    daemons: list[asyncio.subprocess.Process],
    settings: Settings,
    redis: Redis,
) -> None:
    """Kill -9 the leader as the switch lands: the standby takes the lead and ends the rollout."""
    env = environment(settings)
    standby = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller", "controller", "run", env=env, cwd=ROOT
    )
    daemons.append(standby)
    orders = await shop(fleet)
    shops.append(orders)
    store = await begin(settings, redis, SWITCH_THEN_WAIT)
    keys = ControllerKeys(settings.key_prefix)
    leader = (await redis.get(keys.leader())).decode()
    victim = next(p for p in daemons if f"-{p.pid}-" in leader)
    await store.request("shop", "promote")

    async def switched() -> bool:
        return await active_version(settings, redis) == "1.1"

    await eventually(switched, "the switch")
    victim.kill()
    await victim.wait()

    async def succeeded() -> bool:
        return (await phase_of(store)).phase is Phase.SUCCEEDED

    await eventually(succeeded, "the standby ending the rollout", timeout=40)
    assert (await redis.get(keys.leader())).decode() != leader
    plan = await plan_of(settings, redis)
    assert plan is not None
    assert list(plan.colors.values()) == ["1.1"]
    total = orders.total()
    blue = len(orders.blue.received("ORDER"))
    await orders.send(20)
    await orders.delivered(total + 20)
    assert len(orders.blue.received("ORDER")) == blue


POST_ANALYSIS = """name: bg-post
description: Serve on the old color a while, switch, judge the new one against it.
strategy: bluegreen
steps:
  - pause: {duration: 3s}
  - switch: {}
  - analysis: {window: 3s, min_sample: 20, max_latency_ratio: 10}
scale_down_delay: 1s
rollback: {on_inconclusive: abort}
"""


async def test_a_post_promotion_analysis_judges_against_the_old_version(
    fleet: Fleet, shops: list[Shop], settings: Settings, redis: Redis
) -> None:
    """After the switch the old version gets nothing: its traffic before the switch is the base."""
    orders = await shop(fleet)
    shops.append(orders)
    await orders.front.order(load="shop/ORDER", rate=40)
    store = await begin(settings, redis, POST_ANALYSIS)

    async def ended() -> bool:
        return not (await phase_of(store)).phase.active

    await eventually(ended, "the rollout's end", timeout=40)
    rollout = await phase_of(store)
    assert rollout.phase is Phase.SUCCEEDED, (rollout.reason, rollout.verdicts)
    (verdict,) = rollout.verdicts
    assert verdict["outcome"] == "pass"
    canary, baseline = verdict["evidence"]["canary"], verdict["evidence"]["baseline"]
    assert (canary["version"], baseline["version"]) == ("1.1", "1.0")
    assert canary["successes"] >= 20
    assert baseline["successes"] >= 20  # the old version's orders before the switch


async def test_a_full_promotion_still_switches_before_retiring_the_old_color(
    fleet: Fleet, shops: list[Shop], settings: Settings, redis: Redis
) -> None:
    """promote --full skips every step but the switch: the rollback window follows it."""
    orders = await shop(fleet)
    shops.append(orders)
    store = await begin(settings, redis, MANUAL)

    async def previewing() -> bool:
        plan = await plan_of(settings, redis)
        return plan is not None and plan.preview_version == "1.1"

    await eventually(previewing, "the preview plan")
    await store.request("shop", "promote_full")

    async def succeeded() -> bool:
        return (await phase_of(store)).phase is Phase.SUCCEEDED

    await eventually(succeeded, "the rollout's end")
    reasons = [t.reason for t in await store.history("shop")]
    switched = next(n for n, r in enumerate(reasons) if r.startswith("switched"))
    holding = next(n for n, r in enumerate(reasons) if r.endswith("then retires"))
    assert switched < holding


async def test_no_rollback_to_an_old_color_that_is_gone(
    fleet: Fleet, shops: list[Shop], settings: Settings, redis: Redis
) -> None:
    """Abort after the switch while 1.0 has no instance: 1.1 serves on, nothing goes nowhere."""
    orders = await shop(fleet)
    shops.append(orders)
    store = await begin(settings, redis, MANUAL)
    await store.request("shop", "promote")

    async def switched() -> bool:
        return await active_version(settings, redis) == "1.1"

    await eventually(switched, "the switch")
    await orders.blue.close()  # the old color's only instance goes away
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))

    async def blue_gone() -> bool:
        return not [i for i in await registry.instances("shop") if i.version == "1.0"]

    await eventually(blue_gone, "1.0 unregistered")
    await store.request("shop", "abort")

    async def aborted() -> bool:
        return (await phase_of(store)).phase is Phase.ABORTED

    await eventually(aborted, "the abort")
    rollout = await phase_of(store)
    assert "every message still goes to 1.1" in rollout.reason
    assert await active_version(settings, redis) == "1.1"
    assert await registry.is_valid("shop", "1.1")
    total = len(orders.green.received("ORDER"))
    await orders.send(20)

    async def served() -> bool:
        return len(orders.green.received("ORDER")) >= total + 20

    await eventually(served, "1.1 serving on")

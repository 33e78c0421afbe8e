"""The flag-run engine, step by step on a fake clock, against the real Redis.

Each test records the service's outcomes straight into the registry (as the
communicators would), then advances one run at chosen times, so the
failure watch, the switch-off and the stops are judged with no waiting.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from communicator import Keys, Measurements, OutcomeKind, Registry
from controller.engine._flag_runs import (
    CHECK_EVERY,
    FlagRun,
    FlagRunEngine,
    FlagRunPhase,
    FlagRunStore,
    FlagStep,
    flag_steps,
)
from controller.engine._keys import ControllerKeys
from controller.playbook._playbook import parse_playbook
from flags import Flag, FlagKeys, FlagStore
from strategies import FlagRollout

pytestmark = pytest.mark.integration

SERVICE, VERSION, KEY, WHO = "checkout", "1.4.0", "new-checkout", "rollout-bot"
STEP = 10.0  # seconds each step is watched


@pytest.fixture
def registry(redis: Redis, key_prefix: str) -> Registry:
    return Registry(redis=redis, keys=Keys(key_prefix))


@pytest.fixture
async def store(redis: Redis, key_prefix: str) -> FlagStore:
    """The boolean flag under test, off for everybody."""
    store = FlagStore(redis=redis, keys=FlagKeys(key_prefix))
    flag = {
        "key": KEY,
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "help": "Serves the new checkout; if orders fail, switch it off.",
        "help_uri": "https://wiki.example.com/flags/new-checkout",
    }
    await store.put(Flag.model_validate(flag), who="test")
    return store


@pytest.fixture
def engine(redis: Redis, key_prefix: str, store: FlagStore, registry: Registry) -> FlagRunEngine:
    measurements = Measurements(redis=redis, keys=Keys(key_prefix))
    strategy = FlagRollout(store=store, registry=registry, measurements=measurements)
    runs = FlagRunStore(redis=redis, keys=ControllerKeys(key_prefix))
    return FlagRunEngine(store=runs, strategy=strategy)


def a_run(*percentages: int) -> FlagRun:
    """A run over ``percentages``, each watched STEP seconds, with no baseline window."""
    steps = [FlagStep(percentage=p, seconds=STEP) for p in percentages]
    return FlagRun(
        key=KEY, service=SERVICE, playbook="test", steps=steps, threshold=0.05,
        baseline_seconds=0, who=WHO,
    )  # fmt: skip


async def record(registry: Registry, *, successes: int, failures: int) -> None:
    await registry.record_successes({(SERVICE, VERSION): successes})
    if failures:
        await registry.record_outcome(SERVICE, VERSION, OutcomeKind.ERROR_REPLY, count=failures)


async def test_a_healthy_run_reaches_100_percent(
    engine: FlagRunEngine, registry: Registry, store: FlagStore
) -> None:
    """With the failure rate at its baseline, every step passes and the flag ends fully on."""
    await record(registry, successes=980, failures=20)  # a 2 % baseline
    run = a_run(10, 50, 100)
    await engine.advance(run, now=0.0)
    assert (run.phase, run.percentage, run.baseline_rate) == (FlagRunPhase.PROGRESSING, 10, 0.02)
    for step, at in enumerate((STEP, 2 * STEP, 3 * STEP)):
        await record(registry, successes=196, failures=4)
        await engine.advance(run, now=at)
        assert run.percentage == (50, 100, 100)[step]
    assert run.phase is FlagRunPhase.SUCCEEDED
    assert run.reason == "every step passed: 10%, 50%, 100%"
    current = await store.get(KEY)
    assert current is not None
    assert (current.flag.targeting, current.flag.default_variant) == (None, "on")
    steps = [change.why for change in await store.history(KEY)][1:]
    assert steps == [f"playbook test: step {n}/3, {p}%" for n, p in ((1, 10), (2, 50), (3, 100))]


async def test_rising_failures_switch_the_flag_off_with_the_reason(
    engine: FlagRunEngine, registry: Registry, store: FlagStore
) -> None:
    """Failures rising during the 50 % step switch the flag off at once; the history says why."""
    await record(registry, successes=990, failures=10)  # a 1 % baseline
    run = a_run(10, 50, 100)
    await engine.advance(run, now=0.0)
    await record(registry, successes=99, failures=1)
    await engine.advance(run, now=STEP)
    assert run.percentage == 50
    await record(registry, successes=60, failures=40)
    await engine.advance(run, now=STEP + CHECK_EVERY)  # mid-step: the watch does not wait
    assert (run.phase, run.percentage) == (FlagRunPhase.SWITCHED_OFF, 0)
    assert "40.0% (40/100)" in run.reason
    assert run.reason.endswith("at 50%")
    current = await store.get(KEY)
    assert current is not None
    assert (current.flag.targeting, current.flag.default_variant) == (None, "off")
    last = (await store.history(KEY))[-1]
    assert last.who == WHO
    assert last.why is not None
    assert last.why.startswith("switched off: failure rate of checkout 40.0%")


async def test_too_few_outcomes_are_inconclusive_and_the_step_goes_on(
    engine: FlagRunEngine, registry: Registry, store: FlagStore
) -> None:
    """A step with fewer outcomes than the minimum is not judged: 4 failures of 5 pass."""
    run = a_run(10, 100)
    await engine.advance(run, now=0.0)
    await record(registry, successes=1, failures=4)
    await engine.advance(run, now=CHECK_EVERY)
    assert (run.phase, run.percentage) == (FlagRunPhase.PROGRESSING, 10)
    current = await store.get(KEY)
    assert current is not None
    assert current.flag.targeting is not None


async def test_someone_elses_change_stops_the_run_and_leaves_their_flag(
    engine: FlagRunEngine, registry: Registry, store: FlagStore
) -> None:
    """A change made by someone else mid-run stops it, without overriding them."""
    await record(registry, successes=100, failures=0)
    run = a_run(10, 50)
    await engine.advance(run, now=0.0)
    await store.update(KEY, lambda f: f.model_copy(update={"targeting": None}), who="bob")
    await engine.advance(run, now=CHECK_EVERY)
    assert run.phase is FlagRunPhase.STOPPED
    assert run.reason == "someone else changed the flag: left as is"
    assert (await store.history(KEY))[-1].who == "bob"
    assert run.percentage == 10  # the last share this run served; bob's flag stands


async def test_an_abort_switches_the_flag_off_and_stops(
    engine: FlagRunEngine, registry: Registry, store: FlagStore
) -> None:
    """``deployctl flag abort`` sets abort_requested; the next tick switches off and stops."""
    run = a_run(10, 50)
    await engine.advance(run, now=0.0)
    run.abort_requested = True
    await engine.advance(run, now=1.0)
    assert (run.phase, run.percentage) == (FlagRunPhase.STOPPED, 0)
    current = await store.get(KEY)
    assert current is not None
    assert (current.flag.targeting, current.flag.default_variant) == (None, "off")


def test_a_flag_playbook_becomes_watched_percentages() -> None:
    """Each set_weight is watched for the pause after it (60 s when none says how long)."""
    playbook = parse_playbook(
        "name: f\ndescription: d\nstrategy: flag\nsteps:\n"
        "  - pause: {duration: 5s}\n  - set_weight: 10\n  - pause: {duration: 30s}\n"
        "  - set_weight: 50\n  - set_weight: 100\n  - pause: {}\n"
    )
    assert [(s.percentage, s.seconds) for s in flag_steps(playbook)] == [
        (10, 30.0),
        (50, 60.0),
        (100, 60.0),
    ]

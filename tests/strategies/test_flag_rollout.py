"""The flag rollout strategy, on the real Redis: percentages, failure watch, switch-off."""

from __future__ import annotations

import functools

import pytest
from redis.asyncio import Redis

from communicator import Keys, Measurements, OutcomeKind, Registry
from flags import Flag, FlagKeys, FlagState, FlagStore, evaluate
from strategies import FlagRollout, FlagRolloutError, FlagRolloutResult

SERVICE = "checkout"
VERSION = "1.4.0"
KEY = "new-checkout"
WHO = "rollout-bot"


def checkout_flag(**changes: object) -> Flag:
    """The boolean flag under test, off for everybody."""
    data: dict[str, object] = {
        "key": KEY,
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "help": "Serves the new checkout; if orders fail, switch it off.",
        "help_uri": "https://wiki.example.com/flags/new-checkout",
        **changes,
    }
    return Flag.model_validate(data)


@pytest.fixture
def registry(redis: Redis, key_prefix: str) -> Registry:
    """The registry, in this test's key space."""
    return Registry(redis=redis, keys=Keys(prefix=key_prefix))


@pytest.fixture
def store(redis: Redis, key_prefix: str) -> FlagStore:
    """The flag store, in this test's key space."""
    return FlagStore(redis=redis, keys=FlagKeys(key_prefix))


@pytest.fixture
async def rollout(
    store: FlagStore, registry: Registry, redis: Redis, key_prefix: str
) -> FlagRollout:
    """A flag rollout over the checkout flag, stored off."""
    await store.put(checkout_flag(), who="test", why="created for the test")
    measurements = Measurements(redis=redis, keys=Keys(prefix=key_prefix))
    return FlagRollout(store=store, registry=registry, measurements=measurements)


async def record(registry: Registry, *, successes: int, failures: int) -> None:
    """Record outcomes of the checkout service's version."""
    await registry.record_successes({(SERVICE, VERSION): successes})
    if failures:
        await registry.record_outcome(SERVICE, VERSION, OutcomeKind.ERROR_REPLY, count=failures)


def share_on(flag: Flag, users: int = 1000) -> float:
    """The share of users the flag serves True to."""
    contexts = ({"targetingKey": f"user-{n}"} for n in range(users))
    return sum(evaluate(flag, KEY, False, c).value is True for c in contexts) / users


async def test_set_percentage_writes_a_fractional_rule(
    rollout: FlagRollout, store: FlagStore
) -> None:
    """A step writes flagd's fractional rule; about that share of users get "on"."""
    stored = await rollout.set_percentage(KEY, 30, who=WHO)
    assert stored.flag.targeting == {"fractional": [["on", 30], ["off", 70]]}
    assert stored.flag.default_variant == "off"
    assert 0.25 < share_on(stored.flag) < 0.35
    current = await store.get(KEY)
    assert current is not None
    assert current.flag == stored.flag


async def test_users_keep_the_feature_as_the_percentage_rises(rollout: FlagRollout) -> None:
    """Stable hashing: everyone "on" at 20 % is still "on" at 50 %."""
    at_20 = (await rollout.set_percentage(KEY, 20, who=WHO)).flag
    at_50 = (await rollout.set_percentage(KEY, 50, who=WHO)).flag
    users = [{"targetingKey": f"user-{n}"} for n in range(500)]
    early = [u for u in users if evaluate(at_20, KEY, False, u).value]
    assert early
    assert all(evaluate(at_50, KEY, False, u).value for u in early)


async def test_full_and_zero_percent_need_no_rule(rollout: FlagRollout) -> None:
    """At 100 % the default is "on" without a rule; at 0 % it is "off"."""
    full = (await rollout.set_percentage(KEY, 100, who=WHO)).flag
    assert (full.targeting, full.default_variant) == (None, "on")
    assert evaluate(full, KEY, False).value is True
    none = (await rollout.set_percentage(KEY, 0, who=WHO)).flag
    assert (none.targeting, none.default_variant) == (None, "off")


async def test_bad_percentage_and_missing_flag_are_refused(rollout: FlagRollout) -> None:
    """Percentages outside 0-100, unknown flags and non-increasing steps raise."""
    with pytest.raises(ValueError, match="percentage"):
        await rollout.set_percentage(KEY, 101, who=WHO)
    with pytest.raises(FlagRolloutError, match="no flag"):
        await rollout.set_percentage("no-such-flag", 10, who=WHO)
    with pytest.raises(ValueError, match="increasing"):
        await rollout.run(KEY, SERVICE, [50, 20], step_seconds=0, threshold=0.05, who=WHO)


async def test_multi_variant_flag_needs_its_on_and_off_named(
    rollout: FlagRollout, store: FlagStore
) -> None:
    """A string flag has no true/false variants: the caller names them."""
    colours = checkout_flag(
        key="colour", variants={"blue": "b", "green": "g"}, defaultVariant="blue"
    )
    await store.put(colours, who="test")
    with pytest.raises(FlagRolloutError, match="on and off"):
        await rollout.set_percentage("colour", 10, who=WHO)
    stored = await rollout.set_percentage("colour", 10, who=WHO, on="green", off="blue")
    assert stored.flag.targeting == {"fractional": [["green", 10], ["blue", 90]]}


async def test_switch_off_serves_off_and_records_why(
    rollout: FlagRollout, store: FlagStore
) -> None:
    """Switching off drops the rule, serves "off", and the history says why."""
    await rollout.set_percentage(KEY, 40, who=WHO)
    stored = await rollout.switch_off(KEY, "orders failing", who="alice")
    assert (stored.flag.targeting, stored.flag.default_variant) == (None, "off")
    assert stored.flag.state is FlagState.ENABLED
    assert share_on(stored.flag) == 0
    last = (await store.history(KEY))[-1]
    assert (last.who, last.why) == ("alice", "switched off: orders failing")


async def test_check_passes_a_healthy_step_and_switches_off_a_failing_one(
    rollout: FlagRollout, registry: Registry, store: FlagStore
) -> None:
    """The step's failure rate, from totals deltas, is judged against baseline + threshold."""
    await record(registry, successes=1000, failures=500)  # history before: not this step's
    await rollout.set_percentage(KEY, 10, who=WHO)
    since = await rollout.reading(SERVICE)
    await record(registry, successes=98, failures=2)
    judge = functools.partial(
        rollout.check, KEY, SERVICE, baseline_rate=0.01, threshold=0.05, who=WHO
    )
    assert await judge(since=since)
    since = await rollout.reading(SERVICE)
    await record(registry, successes=80, failures=20)
    assert not await judge(since=since)
    current = await store.get(KEY)
    assert current is not None
    assert (current.flag.targeting, current.flag.default_variant) == (None, "off")
    why = (await store.history(KEY))[-1].why
    assert "failure rate of checkout 20.0% (20/100)" in why


async def test_too_few_outcomes_are_inconclusive(
    rollout: FlagRollout, registry: Registry, store: FlagStore
) -> None:
    """A step with fewer outcomes than the minimum passes without judging the rate."""
    await rollout.set_percentage(KEY, 10, who=WHO)
    since = await rollout.reading(SERVICE)
    await record(registry, successes=1, failures=4)
    assert await rollout.check(KEY, SERVICE, since=since, baseline_rate=0, threshold=0.05, who=WHO)
    current = await store.get(KEY)
    assert current is not None
    assert current.flag.targeting is not None


async def test_healthy_rollout_reaches_100_percent(
    rollout: FlagRollout, registry: Registry, store: FlagStore
) -> None:
    """With the failure rate at its baseline, every step passes and the flag ends fully on."""
    await record(registry, successes=980, failures=20)  # a 2 % baseline

    async def traffic(percentage: int) -> None:
        await record(registry, successes=196, failures=4)

    result = await rollout.run(
        KEY, SERVICE, [10, 50, 100], step_seconds=0, threshold=0.05, who=WHO, on_step=traffic
    )
    assert result == FlagRolloutResult(KEY, True, 100, "every step passed: [10, 50, 100]")
    current = await store.get(KEY)
    assert current is not None
    assert (current.flag.targeting, current.flag.default_variant) == (None, "on")
    steps = [change.why for change in await store.history(KEY)][1:]
    assert steps == [f"flag rollout: step {p}% of [10, 50, 100]" for p in (10, 50, 100)]


async def test_rising_failures_switch_the_flag_off_with_the_reason(
    rollout: FlagRollout, registry: Registry, store: FlagStore
) -> None:
    """Failures rising during the 50 % step switch the flag off; the history says why."""
    await record(registry, successes=990, failures=10)  # a 1 % baseline
    seen: list[int] = []

    async def traffic(percentage: int) -> None:
        seen.append(percentage)
        failures = 40 if percentage >= 50 else 1
        await record(registry, successes=100 - failures, failures=failures)

    result = await rollout.run(
        KEY, SERVICE, [10, 50, 100], step_seconds=0, threshold=0.05, who=WHO, on_step=traffic
    )
    assert seen == [10, 50]
    assert not result.completed
    assert result.percentage == 0
    assert "40.0% (40/100)" in result.reason
    assert result.reason.endswith("at 50%")
    current = await store.get(KEY)
    assert current is not None
    assert (current.flag.targeting, current.flag.default_variant) == (None, "off")
    last = (await store.history(KEY))[-1]
    assert (last.who, last.why) == (WHO, f"switched off: {result.reason}")


async def test_someone_elses_change_stops_the_rollout(
    rollout: FlagRollout, registry: Registry, store: FlagStore
) -> None:
    """A change made by someone else mid-rollout stops it, leaving their flag alone."""
    await record(registry, successes=100, failures=0)

    async def operator_steps_in(percentage: int) -> None:
        await record(registry, successes=100, failures=0)
        if percentage == 10:
            await store.update(KEY, lambda f: f.model_copy(update={"targeting": None}), who="bob")

    result = await rollout.run(
        KEY, SERVICE, [10, 50], step_seconds=0, threshold=0.05, who=WHO, on_step=operator_steps_in
    )
    assert (result.completed, result.percentage) == (False, 10)
    assert "someone else" in result.reason
    assert (await store.history(KEY))[-1].who == "bob"

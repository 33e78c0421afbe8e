"""The flag rollout strategy, on the real Redis: percentages and switch-off.

The runs themselves (steps, failure watch, stops) are tested on the engine that
drives them: tests/controller/test_flag_run_engine.py.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from communicator import Keys, Measurements, Registry
from flags import Flag, FlagKeys, FlagState, FlagStore, evaluate
from strategies import FlagRollout, FlagRolloutError

SERVICE = "checkout"
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
    """Percentages outside 0-100 and unknown flags raise."""
    with pytest.raises(ValueError, match="percentage"):
        await rollout.set_percentage(KEY, 101, who=WHO)
    with pytest.raises(FlagRolloutError, match="no flag"):
        await rollout.set_percentage("no-such-flag", 10, who=WHO)


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

"""The blue-green strategy's plans: preview, switch, promote, rollback (fakeredis: plans only)."""

from __future__ import annotations

import fakeredis
import pytest

from communicator import Keys, PlanStore, Registry, RoutePlan, routed_weights
from strategies import BlueGreenStrategy, Strategy

LIVE = {"1.0": 3, "1.1": 2}


@pytest.fixture
def plans() -> PlanStore:
    return PlanStore(redis=fakeredis.FakeAsyncRedis(), keys=Keys("t:"))


@pytest.fixture
def strategy(plans: PlanStore) -> BlueGreenStrategy:
    redis = fakeredis.FakeAsyncRedis()
    return BlueGreenStrategy(plans=plans, registry=Registry(redis=redis, keys=Keys("t:")))


def ordinary(plan: RoutePlan | None) -> set[str]:
    assert plan is not None
    return {version for version, _ in routed_weights(plan, LIVE)}


def preview(plan: RoutePlan | None) -> set[str]:
    assert plan is not None
    return {version for version, _ in routed_weights(plan, LIVE, preview=True)}


def test_it_is_a_strategy(strategy: BlueGreenStrategy) -> None:
    assert isinstance(strategy, Strategy)
    assert strategy.kind == "bluegreen"


async def test_preview_then_switch_then_promote(
    strategy: BlueGreenStrategy, plans: PlanStore
) -> None:
    await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=0)
    plan = await plans.get("shop")
    assert (ordinary(plan), preview(plan)) == ({"1.0"}, {"1.1"})
    await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=100)
    plan = await plans.get("shop")
    assert (ordinary(plan), preview(plan)) == ({"1.1"}, {"1.1"})
    assert plan is not None
    assert set(plan.colors.values()) == {"1.0", "1.1"}  # the old color kept, for a rollback
    await strategy.promote("shop", canary="1.1")
    plan = await plans.get("shop")
    assert plan is not None
    assert list(plan.colors.values()) == ["1.1"]  # the old color retired
    assert ordinary(plan) == {"1.1"}


async def test_rollback_after_the_switch_goes_back_at_once(
    strategy: BlueGreenStrategy, plans: PlanStore
) -> None:
    await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=0)
    await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=100)
    await strategy.rollback("shop", stable="1.0", canary="1.1", reason="bad", invalidate=False)
    plan = await plans.get("shop")
    assert (ordinary(plan), preview(plan)) == ({"1.0"}, {"1.0"})
    assert plan is not None
    assert plan.reason == "bad"


async def test_the_stable_keeps_its_color(strategy: BlueGreenStrategy, plans: PlanStore) -> None:
    """Two rollouts in a row alternate colors: the serving version never changes color."""
    await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=100)
    await strategy.promote("shop", canary="1.1")
    first = await plans.get("shop")
    await strategy.set_weight("shop", stable="1.1", canary="1.2", weight=0)
    second = await plans.get("shop")
    assert first is not None
    assert second is not None
    (color_of_1_1,) = first.colors
    assert second.colors[color_of_1_1] == "1.1"
    assert second.preview_color != color_of_1_1


async def test_revisions_grow_with_each_change(
    strategy: BlueGreenStrategy, plans: PlanStore
) -> None:
    await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=0)
    await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=100)
    await strategy.promote("shop", canary="1.1")
    plan = await plans.get("shop")
    assert plan is not None
    assert plan.revision == 3


async def test_a_share_is_refused(strategy: BlueGreenStrategy) -> None:
    with pytest.raises(ValueError, match="all traffic or none"):
        await strategy.set_weight("shop", stable="1.0", canary="1.1", weight=50)

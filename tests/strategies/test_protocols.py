"""The engine's plug-in points are kept: the strategies and metric sources we ship fit them."""

from __future__ import annotations

import fakeredis

from communicator import Keys, Measurements, PlanStore, Registry
from strategies import CanaryStrategy, MetricSource, Strategy


def test_the_canary_strategy_is_a_strategy() -> None:
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys("test:")
    canary = CanaryStrategy(
        plans=PlanStore(redis=redis, keys=keys), registry=Registry(redis=redis, keys=keys)
    )
    assert isinstance(canary, Strategy)
    assert canary.kind == "canary"


def test_the_communicators_measurements_are_a_metric_source() -> None:
    redis = fakeredis.FakeAsyncRedis()
    assert isinstance(Measurements(redis=redis, keys=Keys("test:")), MetricSource)


def test_something_else_is_not_a_strategy() -> None:
    """A class missing one step of the protocol (here: rollback) does not pass for one."""

    class HalfStrategy:
        kind = "half"

        async def set_weight(self) -> None: ...

    assert not isinstance(HalfStrategy(), Strategy)

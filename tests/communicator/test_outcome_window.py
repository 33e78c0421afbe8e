"""The outcome window's time buckets, on fakeredis with a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakeredis import FakeAsyncRedis
from fakeredis.commands_mixins import server_mixin

from communicator.backends._keys import Keys
from communicator.registry._outcomes import InvalidationPolicy, OutcomeKind
from communicator.registry._registry import Registry

pytest.importorskip("lupa", reason="fakeredis needs its lua extra for EVALSHA")

KEYS = Keys(prefix="unit:")


class Clock:
    """Stands in for the ``time`` module where fakeredis answers TIME (and so Lua's clock)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        """The current fake time."""
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Redis's clock, starting at the beginning of a 10 s bucket."""
    fake = Clock(1_800_000_000.0)
    monkeypatch.setattr(server_mixin, "time", fake)
    return fake


@pytest.fixture
async def redis() -> AsyncIterator[FakeAsyncRedis]:
    """A private fake Redis (RESP2, bytes)."""
    client = FakeAsyncRedis(protocol=2)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def registry(redis: FakeAsyncRedis) -> Registry:
    """A registry with the default policy: 60 s window in 10 s buckets, 5 failures."""
    return Registry(redis=redis, keys=KEYS)


async def test_failures_leave_the_window(registry: Registry, clock: Clock) -> None:
    """Failures older than the window plus one bucket no longer count towards the policy."""
    await registry.record_outcome("svc", "1.0", "failure", count=4)
    clock.now += 70
    result = await registry.record_outcome("svc", "1.0", "failure")
    assert result.valid
    [info] = await registry.versions("svc")
    assert info.counts[OutcomeKind.FAILURE] == 1


async def test_an_outcome_counts_for_at_least_the_window(registry: Registry, clock: Clock) -> None:
    """Four failures at the end of a bucket and one 59.9 s later still trip the policy."""
    clock.now += 9.95
    await registry.record_outcome("svc", "1.0", "failure", count=4)
    clock.now += 59.9
    assert (await registry.record_outcome("svc", "1.0", "failure")).invalidated


async def test_successes_leave_the_window_too(registry: Registry, clock: Clock) -> None:
    """Old successes no longer dilute the failure rate."""
    await registry.record_successes({("svc", "1.0"): 100})
    await registry.record_outcome("svc", "1.0", "failure", count=5)
    assert await registry.is_valid("svc", "1.0")
    clock.now += 75
    assert (await registry.record_outcome("svc", "1.0", "failure", count=5)).invalidated


async def test_window_hash_stays_small_and_expires(
    registry: Registry, redis: FakeAsyncRedis, clock: Clock
) -> None:
    """Buckets that left the window are dropped from it and its totals; it expires when idle."""
    for _ in range(50):  # 500 s of steady traffic: 50 buckets
        await registry.record_successes({("svc", "1.0"): 1})
        await registry.record_outcome("svc", "1.0", "timeout")
        clock.now += 10
    key = KEYS.version_window("svc", "1.0")
    fields = {
        name.decode(): int(value)
        for name, value in (await redis.hgetall(key)).items()
        if name != b"b"
    }
    # 7 buckets of two kinds, their two running totals, and the newest-bucket marker.
    assert len(fields) == 7 * 2 + 2
    for kind in ("success", "timeout"):
        in_buckets = sum(
            n for name, n in fields.items() if name.endswith(f":{kind}") and name[0] != "t"
        )
        assert fields[f"t:{kind}"] == in_buckets == 7
    [info] = await registry.versions("svc")
    assert info.counts[OutcomeKind.TIMEOUT] == 6  # the clock moved on a bucket since
    assert 0 < await redis.ttl(key) <= 70


async def test_policy_bucket_size_is_respected(registry: Registry, clock: Clock) -> None:
    """A 2 s window in 1 s buckets keeps failures for 2 to 3 s, then forgets them."""
    await registry.set_policy("svc", InvalidationPolicy(window_seconds=2, bucket_seconds=1))
    await registry.record_outcome("svc", "1.0", "failure", count=4)
    clock.now += 3
    assert (await registry.record_outcome("svc", "1.0", "failure")).valid
    clock.now += 3
    await registry.record_outcome("svc", "1.0", "failure", count=4)
    clock.now += 2.9
    assert (await registry.record_outcome("svc", "1.0", "failure")).invalidated

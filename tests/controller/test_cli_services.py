"""``deployctl services``, ``service``, ``versions`` and ``version`` against a real Redis.

The CLI runs ``asyncio.run`` itself, so the tests call it in a thread while
their own event loop sets the registry up and listens for events.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from typer.testing import CliRunner, Result

from communicator import (
    AuthStatus,
    Event,
    EventType,
    InstanceInfo,
    Keys,
    PasswordStore,
    Registry,
    parse_event,
)
from controller.cli import _services as _cli_services
from controller.cli._app import app
from tests.conftest import free_port

pytestmark = pytest.mark.integration

EVENT_TIMEOUT = 5.0
runner = CliRunner()


async def cli(*args: str, stdin: str | None = None) -> Result:
    """Run ``deployctl ARGS`` in a thread (it calls ``asyncio.run`` itself)."""
    return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin)


def as_json(result: Result) -> Any:
    """The JSON the command printed on stdout."""
    return json.loads(result.stdout)


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    """This test's key space on the session's Redis."""
    return Keys(prefix=key_prefix)


@pytest.fixture
def registry(redis: Redis, keys: Keys, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The registry in this test's key space, which the CLI is pointed at too."""
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", redis_url)
    monkeypatch.setenv("DEPLOYCTL_KEY_PREFIX", keys.prefix)
    return Registry(redis=redis, keys=keys)


def instance(service: str, name: str, version: str, **fields: Any) -> InstanceInfo:
    """An instance record with plausible defaults."""
    defaults: dict[str, Any] = {"server": "web_01", "client_id": f"{name}-c", "zone": "eu_1"}
    return InstanceInfo(service=service, instance=name, version=version, **(defaults | fields))


async def populate(registry: Registry) -> None:
    """orders: 1.0 (two instances, successes) and 1.1 (one instance, timeouts); front: 2.0."""
    await registry.register_instance(instance("orders", "orders1", "1.0", commands=["PLACE"]))
    await registry.register_instance(instance("orders", "orders2", "1.0", server="web_02"))
    await registry.register_instance(instance("orders", "orders3", "1.1"))
    await registry.set_commands("orders", ["PLACE", "CANCEL"])
    await registry.register_instance(instance("front", "front1", "2.0"))
    await registry.record_successes({("orders", "1.0"): 12})
    for attempt in range(4):
        await registry.record_outcome(
            "orders", "1.1", "timeout", reason=f"no reply #{attempt}", instance="orders3"
        )


async def subscribed(redis: Redis, keys: Keys) -> PubSub:
    """A pub/sub connection on the events channel, its subscription confirmed."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events())
    async with asyncio.timeout(EVENT_TIMEOUT):
        while (await pubsub.get_message(timeout=EVENT_TIMEOUT) or {}).get("type") != "subscribe":
            pass
    return pubsub


async def next_event(pubsub: PubSub) -> Event:
    """The next event published, or fail after a timeout."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                return parse_event(message["data"])


# -- services and service show ------------------------------------------------------------------


async def test_services_lists_instances_versions_and_commands(registry: Registry) -> None:
    """``services --json`` gives each service's instance count, versions by state and commands."""
    await populate(registry)
    await registry.invalidate("orders", "1.1", "too slow")
    result = await cli("services", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["service"]: row for row in as_json(result)}
    assert rows["orders"] == {
        "service": "orders",
        "instances": 3,
        "versions": {"valid": ["1.0"], "invalid": ["1.1"]},
        "commands": ["CANCEL", "PLACE"],
        "password": False,
    }
    assert rows["front"]["versions"] == {"valid": ["2.0"], "invalid": []}
    human = await cli("services")
    assert human.exit_code == 0
    assert "orders" in human.stdout
    assert "CANCEL, PLACE" in human.stdout


async def test_services_when_there_are_none(registry: Registry) -> None:
    """An empty registry is an empty list, and a sentence for people."""
    result = await cli("services", "--json")
    assert (result.exit_code, as_json(result)) == (0, [])
    human = await cli("services")
    assert "no services yet" in human.stdout


async def test_service_show_gives_instances_versions_and_commands(registry: Registry) -> None:
    """``service show --json`` lists each instance's placement and each version's state."""
    await populate(registry)
    await registry.invalidate("orders", "1.1", "too slow")
    result = await cli("service", "show", "orders", "--json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert [row["instance"] for row in data["instances"]] == ["orders1", "orders2", "orders3"]
    first = data["instances"][0]
    assert {key: first[key] for key in ("server", "zone", "version", "client_id")} == {
        "server": "web_01",
        "zone": "eu_1",
        "version": "1.0",
        "client_id": "orders1-c",
    }
    assert isinstance(first["registered_at"], float)
    assert data["versions"] == [
        {"version": "1.0", "state": "valid", "reason": ""},
        {"version": "1.1", "state": "invalid", "reason": "too slow"},
    ]
    assert data["commands"] == ["CANCEL", "PLACE"]
    human = await cli("service", "show", "orders")
    assert "orders2" in human.stdout
    assert "too slow" in human.stdout


async def test_unknown_service_exits_1_and_says_how_to_list(registry: Registry) -> None:
    """An unknown service exits 1 and points at ``deployctl services``, in both forms."""
    await populate(registry)
    for command in (("service", "show"), ("versions",)):
        result = await cli(*command, "ordres")
        assert result.exit_code == 1
        assert "`deployctl services` lists the services" in result.stderr
        result = await cli(*command, "ordres", "--json")
        assert result.exit_code == 1
        assert as_json(result)["service"] == "ordres"


# -- versions ----------------------------------------------------------------------------------


async def test_versions_counts_outcomes_and_shows_last_failures(registry: Registry) -> None:
    """Each version: state, counts per outcome kind, seen times, latest failures first."""
    await populate(registry)
    result = await cli("versions", "orders", "--failures", "2", "--json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert data["service"] == "orders"
    old, new = data["versions"]
    assert (old["version"], old["state"], old["instances"]) == ("1.0", "valid", 2)
    assert old["counts"] == {
        "success": 12,
        "disconnect": 0,
        "failure": 0,
        "timeout": 0,
        "error_reply": 0,
        "crash": 0,
    }
    assert old["failures"] == []
    assert new["counts"]["timeout"] == 4
    assert new["window_seconds"] == 60
    assert [f["reason"] for f in new["failures"]] == ["no reply #3", "no reply #2"]
    assert new["failures"][0]["instance"] == "orders3"
    assert new["first_seen"] <= new["last_seen"]
    human = await cli("versions", "orders")
    assert "timeout 4" in human.stdout
    assert "no reply #3" in human.stdout


# -- invalidate and reinstate -----------------------------------------------------------------


async def test_invalidate_bars_the_version_and_announces_it(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    """Invalidating makes ``is_valid`` false and publishes the event the routers act on."""
    await populate(registry)
    pubsub = await subscribed(redis, keys)
    try:
        result = await cli("version", "invalidate", "orders", "1.1", "-r", "p99 doubled", "--json")
        event = await next_event(pubsub)
    finally:
        await pubsub.aclose()
    assert result.exit_code == 0, result.output
    assert event.type == EventType.VERSION_INVALIDATED
    assert (event.service, event.data["version"], event.data["reason"]) == (
        "orders",
        "1.1",
        "p99 doubled",
    )
    assert event.data["evidence"]["rule"] == "operator"
    assert not await registry.is_valid("orders", "1.1")
    data = as_json(result)
    assert (data["changed"], data["state"], data["reason"], data["seen"]) == (
        True,
        "invalid",
        "p99 doubled",
        True,
    )
    # Again: nothing changes, still exit 0, and no second event is recorded.
    again = await cli("version", "invalidate", "orders", "1.1", "-r", "other", "--json")
    assert (again.exit_code, as_json(again)["changed"], as_json(again)["reason"]) == (
        0,
        False,
        "p99 doubled",
    )
    assert [e.type for e in await registry.events()] == [EventType.VERSION_INVALIDATED]


async def test_reinstate_undoes_invalidate(registry: Registry, redis: Redis, keys: Keys) -> None:
    """Reinstating makes the version valid again with fresh counts, and announces it."""
    await populate(registry)
    await registry.invalidate("orders", "1.1", "too slow")
    pubsub = await subscribed(redis, keys)
    try:
        result = await cli("version", "reinstate", "orders", "1.1", "--reason", "fixed", "--json")
        event = await next_event(pubsub)
    finally:
        await pubsub.aclose()
    assert result.exit_code == 0, result.output
    assert (event.type, event.data["reason"]) == (EventType.VERSION_REINSTATED, "fixed")
    assert await registry.is_valid("orders", "1.1")
    assert (as_json(result)["changed"], as_json(result)["state"]) == (True, "valid")
    [_, reinstated] = await registry.versions("orders")
    assert reinstated.counts["timeout"] == 0
    again = await cli("version", "reinstate", "orders", "1.1")
    assert again.exit_code == 0
    assert "was not invalid" in again.stdout


async def test_reasons_are_shown_verbatim(registry: Registry) -> None:
    """A reason that looks like rich markup is printed as typed, not interpreted."""
    await populate(registry)
    reason = "p99 [/] doubled [bold]x2"
    result = await cli("version", "invalidate", "orders", "1.1", "-r", reason)
    assert result.exit_code == 0, result.output
    assert reason in result.stdout
    for command in (("versions", "orders"), ("service", "show", "orders")):
        shown = await cli(*command)
        assert shown.exit_code == 0, shown.output
        assert reason in shown.stdout
    back = await cli("version", "reinstate", "orders", "1.1", "-r", "[red]fixed")
    assert "[red]fixed" in back.stdout


async def test_invalidate_an_unseen_version_needs_force(registry: Registry) -> None:
    """A version never seen is likely a typo: exit 1 naming the known ones, unless --force."""
    await populate(registry)
    result = await cli("version", "invalidate", "orders", "1.2", "-r", "bad build")
    assert result.exit_code == 1
    assert "known versions: 1.0, 1.1" in result.stderr
    assert "--force" in result.stderr
    assert await registry.is_valid("orders", "1.2")
    forced = await cli("version", "invalidate", "orders", "1.2", "-r", "bad build", "--force")
    assert forced.exit_code == 0, forced.output
    assert not await registry.is_valid("orders", "1.2")
    # A barred version is refused at REGISTER, as if it had tripped its policy.
    state = await registry.register_instance(instance("orders", "orders9", "1.2"))
    assert (state.valid, state.reason) == (False, "bad build")


async def test_version_usage_errors(registry: Registry) -> None:
    """No reason, a bad version name: exit 2; reinstating an unknown version: exit 1."""
    await populate(registry)
    assert (await cli("version", "invalidate", "orders", "1.1")).exit_code == 2
    blank = await cli("version", "invalidate", "orders", "1.1", "-r", "  ")
    assert blank.exit_code == 2
    assert "--reason" in blank.stderr
    bad = await cli("version", "invalidate", "orders", "1:1", "-r", "x", "--force")
    assert bad.exit_code == 2
    assert "no ':'" in bad.stderr
    missing = await cli("version", "reinstate", "orders", "9.9")
    assert missing.exit_code == 1
    assert "deployctl versions orders" in missing.stderr


# -- passwords -----------------------------------------------------------------------------------


async def test_password_from_stdin_then_rotated(
    redis: Redis, keys: Keys, registry: Registry
) -> None:
    """Set from stdin (never echoed), then ``--generate`` rotates it: the old one fails."""
    store = PasswordStore(redis=redis, keys=keys)
    first = "correct-horse-battery-staple"
    result = await cli("service", "password", "orders", "--password-stdin", stdin=first + "\n")
    assert result.exit_code == 0, result.output
    assert first not in result.output
    assert "password of orders set" in result.stdout
    assert (await store.check("orders", first, source="a", required=True)).ok

    rotated = await cli("service", "password", "orders", "--generate", "--json")
    assert rotated.exit_code == 0, rotated.output
    data = as_json(rotated)
    assert data["rotated"] is True
    second = data["password"]
    assert len(second) >= 32
    assert (await store.check("orders", second, source="b", required=True)).ok
    old = await store.check("orders", first, source="c", required=True)
    assert old.status is AuthStatus.BAD_PASSWORD


async def test_generated_password_is_alone_on_stdout(
    redis: Redis, keys: Keys, registry: Registry
) -> None:
    """Without --json, stdout is the password alone (the note goes to stderr)."""
    result = await cli("service", "password", "front", "--generate")
    assert result.exit_code == 0, result.output
    password = result.stdout.strip()
    assert "\n" not in password
    assert "shown this once" in result.stderr
    store = PasswordStore(redis=redis, keys=keys)
    assert (await store.check("front", password, source="a", required=True)).ok


async def test_password_prompted_twice_when_interactive(
    redis: Redis, keys: Keys, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the password is asked twice, hidden, and not echoed."""
    monkeypatch.setattr(_cli_services, "_interactive", lambda: True)
    typed = "a-long-typed-password"
    result = await cli("service", "password", "orders", stdin=f"{typed}\n{typed}\n")
    assert result.exit_code == 0, result.output
    assert typed not in result.output
    assert result.stdout.count("New password for orders") == 1
    store = PasswordStore(redis=redis, keys=keys)
    assert (await store.check("orders", typed, source="a", required=True)).ok


async def test_password_refusals_say_what_to_do(registry: Registry) -> None:
    """Too short, both sources, or nobody to prompt: exit 2 with the fix."""
    short = await cli("service", "password", "orders", "--password-stdin", stdin="short\n")
    assert short.exit_code == 2
    assert "16 or more" in short.stderr
    assert "short\n" not in short.output
    both = await cli("service", "password", "orders", "--password-stdin", "--generate")
    assert both.exit_code == 2
    nobody = await cli("service", "password", "orders")
    assert nobody.exit_code == 2
    assert "--password-stdin" in nobody.stderr


# -- backends and the real command -------------------------------------------------------------


async def test_unreachable_redis_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis down: exit 3 and a message naming the setting, as text or JSON."""
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("DEPLOYCTL_CONNECT_TIMEOUT", "0.3")
    result = await cli("services")
    assert result.exit_code == 3
    assert "DEPLOYCTL_REDIS_URL" in result.stderr
    result = await cli("version", "invalidate", "orders", "1.0", "-r", "x", "--json")
    assert result.exit_code == 3
    assert as_json(result)["backend"] == "redis"


async def test_bad_setting_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid setting is a usage error naming the variable."""
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", "http://nope")
    result = await cli("services")
    assert result.exit_code == 2
    assert "DEPLOYCTL_REDIS_URL" in result.stderr


async def test_installed_command_end_to_end(registry: Registry, key_prefix: str) -> None:
    """The installed ``deployctl`` script invalidates a version, as an operator runs it."""
    await populate(registry)
    script = Path(sys.executable).with_name("deployctl")
    process = await asyncio.create_subprocess_exec(
        str(script),
        "version",
        "invalidate",
        "orders",
        "1.0",
        "--reason",
        "smoke",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["state"] == "invalid"
    assert not await registry.is_valid("orders", "1.0")

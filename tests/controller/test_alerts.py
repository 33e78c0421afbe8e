"""Status flags raised by the system (the raiser) and by people (``deployctl alerts``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from typer.testing import CliRunner, Result

from communicator import Keys, Registry
from controller.cli._app import app
from controller.engine._alerts import (
    StatusFlagRaiser,
    passwords_flag_id,
    rollout_flag_id,
    version_flag_id,
)
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, Rollout, RolloutStore
from flags._keys import FlagKeys
from flags._status import StatusFlag, StatusFlags

pytestmark = pytest.mark.integration

EVENT_TIMEOUT = 5.0
runner = CliRunner()


@pytest.fixture
def raiser(redis: Redis, key_prefix: str) -> StatusFlagRaiser:
    """A raiser in this test's key space."""
    return StatusFlagRaiser(redis=redis, key_prefix=key_prefix, bad_password_quiet=600)


@pytest.fixture
def store(redis: Redis, key_prefix: str) -> StatusFlags:
    """The status flags in this test's key space."""
    return StatusFlags(redis=redis, keys=FlagKeys(key_prefix))


@pytest.fixture
async def announcements(redis: Redis, store: StatusFlags) -> AsyncIterator[PubSub]:
    """A confirmed subscription to the status events channel."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.status_events())
    async with asyncio.timeout(EVENT_TIMEOUT):
        while (await pubsub.get_message(timeout=EVENT_TIMEOUT) or {}).get("type") != "subscribe":
            pass
    try:
        yield pubsub
    finally:
        await pubsub.aclose()


async def next_announcement(pubsub: PubSub) -> dict[str, Any]:
    """The next status flag announcement, or fail after a timeout."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                data: dict[str, Any] = json.loads(message["data"])
                return data


@contextlib.asynccontextmanager
async def running(raiser: StatusFlagRaiser) -> AsyncIterator[None]:
    """Run the raiser in a task until the block ends; it is subscribed when the block starts."""
    task = asyncio.create_task(raiser.run(), name="test-raiser")
    try:
        async with asyncio.timeout(EVENT_TIMEOUT):
            await raiser.subscribed.wait()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def registry_event(kind: str, service: str = "orders", **fields: Any) -> str:
    """A registry event as the registry's Lua publishes it."""
    return json.dumps({"type": kind, "service": service, "time": 1.0, **fields})


def rollout_event(phase: Phase, service: str = "orders", **fields: Any) -> str:
    """A rollout transition as RolloutStore.record publishes it."""
    return json.dumps(
        {"service": service, "rollout": "r1", "at": 1.0, "phase": phase.value, "step": 0}
        | {"weight": 0, "reason": "error rate 3x baseline", "evidence": {}}
        | fields
    )


async def raised(store: StatusFlags, flag_id: str) -> StatusFlag:
    """The flag, which must be up."""
    flag = await store.get(flag_id)
    assert flag is not None, f"{flag_id} is not raised"
    return flag


# -- handle: one event at a time ---------------------------------------------------------


async def test_invalidated_version_raises_until_reinstated(
    raiser: StatusFlagRaiser, store: StatusFlags
) -> None:
    """version_invalidated raises a flag saying how to reinstate; version_reinstated lowers it."""
    channel = raiser.registry_channel
    await raiser.handle(
        channel, registry_event("version_invalidated", version="1.1", reason="p99 doubled")
    )
    flag = await raised(store, "versions/orders/invalid-1_1")
    assert "p99 doubled" in flag.message
    assert "deployctl version reinstate orders 1.1" in flag.help
    assert flag.help_uri == "https://deployctl.dev/docs/operations#version-invalidated"
    assert not flag.manual_down
    assert "version:1.1" in flag.tags
    await raiser.handle(channel, registry_event("version_reinstated", version="1.1"))
    assert await store.list() == []


async def test_shadow_dropping_raises_until_it_recovers(
    raiser: StatusFlagRaiser, store: StatusFlags
) -> None:
    """shadow_dropping raises a flag saying what to change; shadow_recovered lowers it."""
    channel = raiser.registry_channel
    await raiser.handle(channel, registry_event("shadow_dropping", version="2.0", drop_share=0.8))
    flag = await raised(store, "shadows/orders/dropping-2_0")
    assert "80%" in flag.message
    assert "--max-inflight" in flag.help
    assert flag.help_uri.endswith("#shadow-dropping")
    await raiser.handle(channel, registry_event("shadow_recovered", version="2.0"))
    assert await store.list() == []


def test_ids_are_made_of_allowed_characters() -> None:
    """Service names and versions with capitals, dots or plus signs make valid ids."""
    assert (
        version_flag_id("Orders_V2", "1.4.2+build.7") == "versions/orders_v2/invalid-1_4_2_build_7"
    )
    assert len(version_flag_id("s", "9" * 64).split("/")[2]) == 64
    assert passwords_flag_id("Front") == "passwords/front/bad-passwords"
    assert rollout_flag_id("orders", Phase.FAILED) == "rollouts/orders/failed"


async def test_bad_passwords_raise_a_flag_that_lowers_itself(
    raiser: StatusFlagRaiser, store: StatusFlags
) -> None:
    """bad_passwords raises a flag that goes down after the quiet time; each episode counts."""
    event = registry_event(
        "bad_passwords", source="10.0.0.9", scope="source", count=20, retry_after=30.0
    )
    await raiser.handle(raiser.registry_channel, event)
    await raiser.handle(raiser.registry_channel, event)
    flag = await raised(store, "passwords/orders/bad-passwords")
    assert flag.count == 2
    assert flag.lower_after == 600
    assert "10.0.0.9" in flag.message
    assert "deployctl service password orders" in flag.help
    assert flag.help_uri.endswith("#bad-passwords")


@pytest.mark.parametrize(("phase", "priority"), [(Phase.ABORTED, 70), (Phase.FAILED, 90)])
async def test_ended_rollout_stays_up_until_acknowledged(
    raiser: StatusFlagRaiser, store: StatusFlags, phase: Phase, priority: int
) -> None:
    """An aborted or failed rollout raises a manual_down flag the system cannot lower."""
    await raiser.handle(raiser.rollout_channel, rollout_event(phase))
    flag_id = rollout_flag_id("orders", phase)
    flag = await raised(store, flag_id)
    assert (flag.manual_down, flag.priority) == (True, priority)
    assert f"deployctl alerts down {flag_id}" in flag.help
    assert flag.help_uri.endswith(f"#rollout-{phase.value.lower()}")
    assert await store.lower(flag_id) is False
    assert await store.get(flag_id) is not None


@pytest.mark.parametrize("then", [Phase.PENDING, Phase.SUCCEEDED])
async def test_new_or_successful_rollout_acknowledges(
    raiser: StatusFlagRaiser, store: StatusFlags, then: Phase
) -> None:
    """A new rollout (Pending) or a success takes the aborted and failed flags down."""
    await raiser.handle(raiser.rollout_channel, rollout_event(Phase.ABORTED))
    await raiser.handle(raiser.rollout_channel, rollout_event(Phase.FAILED))
    await raiser.handle(raiser.rollout_channel, rollout_event(Phase.PROGRESSING, "front"))
    assert len(await store.list()) == 2
    await raiser.handle(raiser.rollout_channel, rollout_event(then, rollout="r2"))
    assert await store.list() == []


async def test_progress_raises_nothing(raiser: StatusFlagRaiser, store: StatusFlags) -> None:
    """A rollout making progress is no problem."""
    for phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING):
        await raiser.handle(raiser.rollout_channel, rollout_event(phase))
    assert await store.list() == []


@pytest.mark.parametrize(
    ("which", "payload"),
    [
        ("registry", b"not json"),
        ("registry", b"[1, 2]"),
        ("registry", json.dumps({"type": "version_invalidated"})),
        ("registry", registry_event("version_invalidated")),  # no version
        ("registry", registry_event("clock_skew", skew=3)),
        ("rollout", rollout_event(Phase.ABORTED).replace("Aborted", "Exploded")),
        ("other", rollout_event(Phase.ABORTED)),
    ],
)
async def test_strange_events_are_ignored(
    raiser: StatusFlagRaiser, store: StatusFlags, which: str, payload: bytes | str
) -> None:
    """Malformed, unknown or foreign events raise nothing and do not stop the raiser."""
    channel = {
        "registry": raiser.registry_channel,
        "rollout": raiser.rollout_channel,
        "other": "elsewhere",
    }[which]
    await raiser.handle(channel, payload)
    assert await store.list() == []


# -- run: the real channels --------------------------------------------------------------


async def test_run_raises_from_the_real_publishers(
    raiser: StatusFlagRaiser, redis: Redis, key_prefix: str, announcements: PubSub
) -> None:
    """Events published by the registry and the rollout store raise and lower flags."""
    registry = Registry(redis=redis, keys=Keys(key_prefix))
    rollouts = RolloutStore(redis=redis, keys=ControllerKeys(key_prefix))
    rollout = Rollout(id="r1", service="orders", stable="1.0", canary="1.1", playbook={})
    async with running(raiser):
        await registry.invalidate("orders", "1.1", "error rate 3x baseline")
        up = await next_announcement(announcements)
        await registry.reinstate("orders", "1.1", "fixed")
        down = await next_announcement(announcements)
        rollout.phase = Phase.ABORTED
        await rollouts.record(rollout, "rolled back: error rate 3x baseline")
        aborted = await next_announcement(announcements)
    assert (up["action"], up["id"]) == ("raised", "versions/orders/invalid-1_1")
    assert (down["action"], down["id"]) == ("lowered", "versions/orders/invalid-1_1")
    assert (aborted["action"], aborted["id"]) == ("raised", "rollouts/orders/aborted")


async def test_run_lowers_quiet_flags(redis: Redis, key_prefix: str, announcements: PubSub) -> None:
    """The raiser's sweep lowers the bad-passwords flag once its quiet time has passed."""
    raiser = StatusFlagRaiser(
        redis=redis, key_prefix=key_prefix, bad_password_quiet=1e-6, sweep_every=0.01
    )
    async with running(raiser):
        await redis.publish(raiser.registry_channel, registry_event("bad_passwords", count=5))
        up = await next_announcement(announcements)
        down = await next_announcement(announcements)
    assert (up["action"], down["action"], down["by"]) == ("raised", "lowered", "quiet")
    assert down["id"] == "passwords/orders/bad-passwords"


# -- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def cli_env(redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI at this test's key space."""
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", redis_url)
    monkeypatch.setenv("DEPLOYCTL_KEY_PREFIX", key_prefix)


async def cli(*args: str) -> Result:
    """Run ``deployctl ARGS`` in a thread (it calls ``asyncio.run`` itself)."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


RAISE = (
    "alerts",
    "raise",
    "disks/web_01/almost-full",
    "--message",
    "/var is 93% full",
    "--help-text",
    "Run logrotate -f, then find what grew with du -xh /var.",
    "--help-uri",
    "https://wiki.example.com/runbooks/disk-full",
)


@pytest.mark.usefixtures("cli_env")
async def test_cli_raise_then_list_with_help_first(store: StatusFlags) -> None:
    """`alerts raise` stores the flag; `alerts` shows it with its help before the details."""
    first = await cli(*RAISE, "--priority", "85", "--tag", "host:web_01", "--json")
    again = await cli(*RAISE, "--source", "diskwatch")
    listed = await cli("alerts")
    as_json = await cli("alerts", "--json")
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert json.loads(first.stdout)["count"] == 1
    flag = await raised(store, "disks/web_01/almost-full")
    assert (flag.count, flag.source, flag.priority) == (2, "diskwatch", 50)
    assert listed.exit_code == 0, listed.output
    text = listed.stdout
    assert text.index("disks/web_01/almost-full") < text.index("logrotate") < text.index("2x")
    assert "https://wiki.example.com/runbooks/disk-full" in text
    (only,) = json.loads(as_json.stdout)["flags"]
    assert list(only)[:5] == ["id", "priority", "message", "help", "help_uri"]
    assert (only["id"], only["count"]) == ("disks/web_01/almost-full", 2)


@pytest.mark.usefixtures("cli_env")
async def test_cli_list_when_nothing_is_raised() -> None:
    """With no flag up, `alerts` says so and `--json` gives an empty list."""
    text, as_json = await cli("alerts"), await cli("alerts", "--json")
    assert (text.exit_code, as_json.exit_code) == (0, 0)
    assert "no status flags raised" in text.stdout
    assert json.loads(as_json.stdout) == {"flags": []}


@pytest.mark.usefixtures("cli_env")
async def test_cli_down_takes_a_manual_flag_down(store: StatusFlags) -> None:
    """`alerts down` lowers even a manual_down flag; a second time it exits 1."""
    assert (await cli(*RAISE, "--manual-down")).exit_code == 0
    down = await cli("alerts", "down", "disks/web_01/almost-full", "--json")
    again = await cli("alerts", "down", "disks/web_01/almost-full", "--json")
    assert down.exit_code == 0, down.output
    assert json.loads(down.stdout) == {"id": "disks/web_01/almost-full", "lowered": True}
    assert await store.get("disks/web_01/almost-full") is None
    assert again.exit_code == 1
    assert "no status flag" in json.loads(again.stdout)["error"]


@pytest.mark.usefixtures("cli_env")
async def test_cli_refuses_a_flag_without_help(store: StatusFlags) -> None:
    """`alerts raise` without --help-text or --help-uri exits 2 and shows an example."""
    result = await cli("alerts", "raise", "a/b/c", "--message", "m", "--help-text", "do this")
    assert result.exit_code == 2
    assert "--help-uri" in result.output
    assert "for example" in result.output
    assert await store.list() == []


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    "args",
    [
        ("alerts", "down", "not-an-id"),
        ("alerts", "raise", "A/b/c", "-m", "m", "--help-text", "h", "--help-uri", "https://x.io"),
        ("alerts", "raise", "a/b/c", "-m", "m", "--help-text", "h", "--help-uri", "docs/x.md"),
        (*RAISE, "--manual-down", "--lower-after", "60"),
    ],
)
async def test_cli_bad_input_exits_2(args: tuple[str, ...]) -> None:
    """A malformed id or an invalid flag exits 2 with the reason."""
    result = await cli(*args, "--json")
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["error"]

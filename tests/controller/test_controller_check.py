"""The controllers' health records and ``deployctl controller --check``, on the real Redis.

Controllers run in this process with a short ``health_interval``; the CLI runs
in a thread (``deployctl_json``) with the same interval in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from communicator import Settings, connect_redis
from controller.cli._app import app
from controller.engine._controller import Controller, read_health
from controller.engine._keys import ControllerKeys
from tests.conftest import deployctl_json, eventually, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

INTERVAL = 0.5  # seconds between records: each lives 1.5 s
TIMEOUT = 10.0


@pytest.fixture
def fast(settings: Settings, cli_env: None, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """This test's settings with a short health interval, for the controllers and the CLI."""
    monkeypatch.setenv("DEPLOYCTL_HEALTH_INTERVAL", str(INTERVAL))
    return settings.model_copy(update={"health_interval": INTERVAL})


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Controller]:
    """A controller running in this process (leading or standing by), stopped on exit."""
    redis = await connect_redis(settings)
    controller = Controller(settings=settings, redis=redis, tick=0.1, lease_ttl=2.0)
    task = asyncio.create_task(controller.run(), name=f"test-{controller.id}")
    try:
        yield controller
    finally:
        controller.stop()
        await asyncio.wait_for(task, TIMEOUT)
        await redis.aclose()


async def reported(redis: Redis, settings: Settings, controller: Controller, **fields: Any) -> None:
    """Wait until ``controller``'s record is readable and has ``fields``."""

    async def found() -> bool:
        for record in await read_health(redis, ControllerKeys(settings.key_prefix)):
            if record["controller_id"] == controller.id:
                return all(record.get(name) == value for name, value in fields.items())
        return False

    await eventually(found, f"a record of {controller.id} with {fields}", TIMEOUT)


async def test_a_leader_passes_the_check_and_a_standby_is_listed(
    fast: Settings, redis: Redis
) -> None:
    """Leader and standby both report; --check exits 0 and lists the leader first."""
    async with running(fast) as leader:
        await asyncio.wait_for(leader.leading.wait(), TIMEOUT)
        await reported(redis, fast, leader, role="leader", rollouts_active=0)
        async with running(fast) as standby:
            await reported(redis, fast, standby, role="standby", leader=leader.id)
            data = await deployctl_json("controller", "--check")
            ids = [record["controller_id"] for record in data["controllers"]]
            assert ids == [leader.id, standby.id]
            first = data["controllers"][0]
            assert first["leading"]
            assert first["last_advance"] is not None
            assert data["controllers"][1]["rollouts_active"] is None
            key = ControllerKeys(fast.key_prefix).health(leader.id)
            assert 0 < await redis.pttl(key) <= 3 * INTERVAL * 1000
            text = await asyncio.to_thread(CliRunner().invoke, app, ["controller", "--check"])
            assert text.exit_code == 0, text.output
            assert f"{leader.id}  leader" in text.stdout
            assert f"standby (leader: {leader.id})" in text.stdout


async def test_no_controller_fails_the_check(fast: Settings) -> None:
    """Nothing reported: exit 1 with what to do, as text and as JSON."""
    data = await deployctl_json("controller", "--check", code=1)
    assert data["controllers"] == []
    assert f"no controller has led in the last {3 * INTERVAL:g} s" in data["error"]
    text = await asyncio.to_thread(CliRunner().invoke, app, ["controller", "--check"])
    assert text.exit_code == 1
    assert "is `deployctl controller run` running? see `deployctl status`" in text.stderr


async def test_a_stopped_controller_withdraws_its_record(fast: Settings, redis: Redis) -> None:
    """A clean stop removes the record at once: the check fails from then on."""
    async with running(fast) as leader:
        await asyncio.wait_for(leader.leading.wait(), TIMEOUT)
        await reported(redis, fast, leader, leading=True)
        await deployctl_json("controller", "--check")
    assert await read_health(redis, ControllerKeys(fast.key_prefix)) == []
    assert await redis.zcard(ControllerKeys(fast.key_prefix).controllers_health()) == 0
    await deployctl_json("controller", "--check", code=1)


async def test_a_dead_leaders_record_expires(fast: Settings, redis: Redis) -> None:
    """A leader that died without cleaning up: its record lapses within the TTL."""
    controller = Controller(settings=fast, redis=redis)
    controller.leading.set()  # as a leader would, just before it was killed
    await controller.write_health()
    await deployctl_json("controller", "--check")
    key = ControllerKeys(fast.key_prefix).health(controller.id)

    async def expired() -> bool:
        return not await redis.exists(key)

    await eventually(expired, "the dead leader's record expiring", 3 * INTERVAL + 5)
    await deployctl_json("controller", "--check", code=1)


async def test_standbys_alone_fail_the_check(fast: Settings, redis: Redis) -> None:
    """A leader lease held by a controller that no longer reports: standbys are not enough."""
    await redis.set(ControllerKeys(fast.key_prefix).leader(), "ghost", px=30_000)
    async with running(fast) as standby:
        await reported(redis, fast, standby, role="standby", leader="ghost")
        data = await deployctl_json("controller", "--check", code=1)
        assert [record["controller_id"] for record in data["controllers"]] == [standby.id]
        assert "(1 standing by)" in data["error"]


async def test_unreachable_redis_exits_3(fast: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis down: exit 3 naming the setting."""
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("DEPLOYCTL_CONNECT_TIMEOUT", "0.3")
    data = await deployctl_json("controller", "--check", code=3)
    assert data["backend"] == "redis"
    assert "DEPLOYCTL_REDIS_URL" in data["error"]


async def test_check_goes_alone(fast: Settings) -> None:
    """``--check`` with a command, or the group's options without --check: exit 2."""
    runner = CliRunner()
    with_run = await asyncio.to_thread(runner.invoke, app, ["controller", "--check", "run"])
    assert with_run.exit_code == 2
    assert "deployctl controller --check" in with_run.stderr
    json_only = await asyncio.to_thread(runner.invoke, app, ["controller", "--json"])
    assert json_only.exit_code == 2

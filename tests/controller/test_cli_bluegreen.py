"""``deployctl bluegreen`` against a real Redis (and a controller in this process), and the demo.

The CLI runs ``asyncio.run`` itself, so the tests call it in a thread while
their own event loop runs the controller and sets the registry up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner, Result

from communicator import InstanceInfo, Keys, Registry, Settings
from controller.cli._app import app
from controller.engine._controller import Controller
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import RolloutStore
from controller.playbook._playbook import shipped_playbooks
from tests.conftest import deployctl_json, eventually, finished

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

# Preview until promoted, the switch, then wait for a person: every move is the test's.
MANUAL = """name: bluegreen-manual
description: Preview until promoted, switch, then wait for a person.
strategy: bluegreen
steps:
  - pause: {}
  - switch: {}
  - pause: {}
scale_down_delay: 1s
"""


async def cli(*args: str) -> Result:
    """``deployctl ARGS`` in a thread (it calls ``asyncio.run`` itself)."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def register(redis: Redis, settings: Settings, *fleet: tuple[str, str]) -> None:
    """Register instances of ``shop``: (instance name, version) each."""
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
    for name, version in fleet:
        await registry.register_instance(
            InstanceInfo(
                service="shop",
                instance=name,
                server=f"{name}_host",
                version=version,
                client_id=f"{name}-c",
                commands=["ORDER"],
            )
        )


@contextlib.asynccontextmanager
async def leading(settings: Settings, redis: Redis) -> AsyncIterator[Controller]:
    """A controller of this test's key space, leading, in this event loop."""
    controller = Controller(settings=settings, redis=redis, tick=0.1)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.leading.wait(), 10)
        yield controller
    finally:
        controller.stop()
        await finished(task, "the controller")


async def status() -> dict[str, Any]:
    """``deployctl bluegreen status shop --json``, whatever its exit code."""
    result = await cli("bluegreen", "status", "shop", "--json")
    assert result.exit_code in (0, 1, 4), result.output
    return dict(json.loads(result.stdout))


def test_bluegreen_start_refuses_a_canary_playbook() -> None:
    """A canary playbook is refused before anything is written, naming the command to use."""
    result = runner.invoke(
        app, ["bluegreen", "start", "shop", "--version", "1.1", "--playbook", "canary-fast"]
    )
    assert result.exit_code == 2, result.output
    assert "strategy canary, not bluegreen" in result.output
    assert "deployctl canary start" in result.output


def test_canary_start_refuses_a_bluegreen_playbook(tmp_path: Path) -> None:
    """``canary start`` refuses a bluegreen playbook, by name or file, with exit 2 and the fix."""
    path = tmp_path / "bg.yaml"
    path.write_text(MANUAL)
    for playbook in ("bluegreen-fast", str(path)):
        result = runner.invoke(
            app, ["canary", "start", "shop", "--version", "1.1", "--playbook", playbook, "--json"]
        )
        assert result.exit_code == 2, result.output
        error = json.loads(result.stdout)["error"]
        assert "strategy bluegreen, not canary" in error
        assert "deployctl bluegreen start" in error


@pytest.mark.usefixtures("cli_env")
async def test_start_records_a_bluegreen_rollout(redis: Redis, settings: Settings) -> None:
    """``start --json`` records a rollout of the default bluegreen playbook; 1.0 is the stable."""
    await register(redis, settings, ("web_1", "1.0"), ("web_2", "1.0"), ("green_1", "1.1"))
    data = await deployctl_json("bluegreen", "start", "shop", "--version", "1.1")
    assert (data["strategy"], data["playbook"], data["phase"]) == (
        "bluegreen",
        "bluegreen-standard",
        "Pending",
    )
    assert (data["stable"], data["canary"]) == ("1.0", "1.1")
    stored = await RolloutStore(redis=redis, keys=ControllerKeys(settings.key_prefix)).get("shop")
    assert stored is not None
    assert stored.playbook["strategy"] == "bluegreen"
    assert stored.playbook["steps"][2] == {"switch": {}}


@pytest.mark.usefixtures("cli_env")
async def test_status_promote_and_rollback_follow_the_colors(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    """Preview, promote (the switch), rollback: status names the active, preview and standby."""
    playbook = tmp_path / "manual.yaml"
    playbook.write_text(MANUAL)
    await register(redis, settings, ("web_1", "1.0"), ("web_2", "1.0"), ("green_1", "1.1"))
    async with leading(settings, redis):
        await deployctl_json(
            "bluegreen", "start", "shop", "--version", "1.1", "--playbook", str(playbook)
        )

        async def at(phase: str, step: int) -> bool:
            data = await status()
            return bool(data["phase"] == phase and data["step"] == step)

        await eventually(lambda: at("Paused", 0), "the preview's pause")
        data = await status()
        assert (data["active"], data["preview"], data["standby"]) == ("1.0", "1.1", None)
        assert data["effective_weights"] == {"1.0": 100.0}  # the preview takes no ordinary one

        promoted = await deployctl_json("bluegreen", "promote", "shop")
        assert "skipped" in promoted["answer"]
        await eventually(lambda: at("Paused", 2), "the pause after the switch")
        data = await status()
        assert (data["active"], data["preview"], data["standby"]) == ("1.1", None, "1.0")
        assert data["colors"] == {data["active_color"]: "1.1", data["standby_color"]: "1.0"}

        rolled_back = await deployctl_json("bluegreen", "rollback", "shop")
        assert rolled_back["requested"] == "abort"
        data = await deployctl_json("bluegreen", "status", "shop", code=1)
        assert data["phase"] == "Aborted"
        assert (data["active"], data["preview"], data["standby"]) == ("1.0", None, None)
        registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
        assert not await registry.is_valid("shop", "1.1")
        again = await deployctl_json("bluegreen", "rollback", "shop", code=1)
        assert "already ended (Aborted)" in again["error"]


@pytest.mark.usefixtures("cli_env")
async def test_rollback_without_a_rollout_says_where_to_look() -> None:
    """No rollout for the service: exit 1, and the command that lists rollouts."""
    data = await deployctl_json("bluegreen", "rollback", "shop", code=1)
    assert "no rollout for shop" in data["error"]
    assert "`deployctl rollouts`" in data["error"]
    result = await cli("bluegreen", "status", "shop")
    assert result.exit_code == 1
    assert "deployctl rollouts" in result.output


def test_shipped_fast_playbook_is_bluegreen() -> None:
    """``bluegreen-fast`` exists beside ``bluegreen-standard``, for the demo and tests."""
    assert {"bluegreen-standard", "bluegreen-fast"} <= set(shipped_playbooks())


@pytest.mark.timeout(150)
def test_demo_bluegreen_switches_every_ordinary_order_at_once() -> None:
    """``deployctl demo bluegreen`` exits 0 and says where the traffic went, either side."""
    done = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "bluegreen"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    before = next(line for line in out.splitlines() if "before the switch: ordinary" in line)
    after = next(line for line in out.splitlines() if "after the switch:  ordinary" in line)
    assert ", 1.1 0; preview=yes 1.0 0, 1.1 " in before
    assert "ordinary 1.0 0, 1.1 " in after
    assert "ok: no ordinary order reached 1.1 before the switch, and none reached 1.0 after" in out
    assert "Succeeded" in out

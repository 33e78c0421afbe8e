"""The CLI finds a running ``deployctl up`` from any folder, and never starts a Redis itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.communicator.fleet import ROOT
from tests.conftest import eventually, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def bare_environment(state: Path) -> dict[str, str]:
    """No DEPLOYCTL_* at all: only the well-known state folder, as on a fresh machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYCTL_")}
    env.update(XDG_STATE_HOME=str(state), PYTHONPATH=str(ROOT))
    return env


async def deployctl(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller", *args,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], Path]]:
    """``deployctl up`` on the embedded defaults, started in one folder."""
    state = tmp_path / "state"
    env = bare_environment(state)
    env["DEPLOYCTL_EMBEDDED_MQTT_PORT"] = str(free_port())
    here = tmp_path / "where-up-ran"
    here.mkdir()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller", "up", env=env, cwd=here,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    record = state / "deployctl" / "up.json"

    async def announced() -> bool:
        assert process.returncode is None, "deployctl up exited"
        return record.exists()

    try:
        await eventually(announced, "deployctl up announcing itself", timeout=40)
        yield env, record
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


async def test_without_redis_or_up_the_cli_refuses_and_starts_nothing(tmp_path: Path) -> None:
    """No DEPLOYCTL_REDIS_URL and no `up`: exit 3 naming both fixes; no Redis file appears."""
    state = tmp_path / "state"
    code, out, _ = await deployctl(bare_environment(state), tmp_path, "status", "--json")
    assert code == 3
    error = json.loads(out)["error"]
    assert "deployctl up" in error
    assert "DEPLOYCTL_REDIS_URL" in error
    assert not list(tmp_path.rglob("redis.db*")), "the CLI started a Redis"  # noqa: ASYNC240
    code, _, err = await deployctl(
        bare_environment(state), tmp_path, "canary", "start", "shop", "--version", "1.1"
    )
    assert code == 3
    assert "deployctl up" in err


async def test_the_cli_finds_up_from_another_folder(
    up: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    """`deployctl up` in one folder, `deployctl status` in another: it is the same system."""
    env, record = up
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, err = await deployctl(env, elsewhere, "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["controller"], status
    url = json.loads(record.read_text())["DEPLOYCTL_REDIS_URL"]
    assert url == f"unix://{record.parent / 'redis.sock'}", "the socket path is not the stable one"
    code, _, err = await deployctl(env, elsewhere, "up")
    assert code == 1
    assert "already runs" in err


async def test_up_reports_its_communicator_and_its_controller_healthy(
    up: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    """The communicator and the controller `deployctl up` runs in-process write health records."""
    env, _ = up

    async def communicator_reported() -> bool:
        code, _, _ = await deployctl(env, tmp_path, "communicator", "run", "--check")
        return code == 0

    async def controller_leads() -> bool:
        code, _, _ = await deployctl(env, tmp_path, "controller", "--check")
        return code == 0

    await eventually(communicator_reported, "communicatord --check passing", timeout=30)
    await eventually(controller_leads, "deployctl controller --check passing", timeout=30)
    code, out, err = await deployctl(env, tmp_path, "communicator", "run", "--check", "--json")
    assert code == 0, err
    assert "router_id" in out

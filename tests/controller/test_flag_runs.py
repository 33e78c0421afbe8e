"""Flag rollouts by playbook steps, run by the leading controller, on the real Redis and Mosquitto.

The service's outcomes are recorded straight into the registry, as the
communicators would record them, so each test decides when the service fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Keys, OutcomeKind, Registry, Settings
from controller.engine._controller import Controller
from flags import Flag, FlagKeys, FlagStore
from tests.conftest import deployctl_json as cli
from tests.conftest import eventually, finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90), pytest.mark.usefixtures("cli_env")]

SERVICE, VERSION, KEY = "checkout", "1.4.0", "new-checkout"


def playbook(tmp_path: Path, pause: str = "1s") -> str:
    path = tmp_path / "flag-test.yaml"
    path.write_text(
        "name: flag-test\ndescription: Two steps.\nstrategy: flag\nsteps:\n"
        f"  - set_weight: 20\n  - pause: {{duration: {pause}}}\n"
        f"  - set_weight: 100\n  - pause: {{duration: {pause}}}\n"
        "rollback: {max_failure_rate: 0.05}\n"
    )
    return str(path)


@pytest.fixture
def registry(redis: Redis, key_prefix: str) -> Registry:
    return Registry(redis=redis, keys=Keys(key_prefix))


@pytest.fixture
async def store(redis: Redis, key_prefix: str, registry: Registry) -> FlagStore:
    """The flag, off for everybody; the service with a clean record of 100 successes."""
    store = FlagStore(redis=redis, keys=FlagKeys(key_prefix))
    flag = {
        "key": KEY,
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "help": "Serves the new checkout; if orders fail, switch it off.",
        "help_uri": "https://wiki.example.com/flags/new-checkout",
    }
    await store.put(Flag.model_validate(flag), who="test")
    await registry.record_successes({(SERVICE, VERSION): 100})
    return store


@contextlib.asynccontextmanager
async def leading(settings: Settings, redis: Redis) -> AsyncIterator[Controller]:
    controller = Controller(settings=settings, redis=redis, tick=0.1)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.leading.wait(), 10)
        yield controller
    finally:
        controller.stop()
        await finished(task, "the controller")


@pytest.fixture
async def controller(settings: Settings, redis: Redis) -> AsyncIterator[Controller]:
    async with leading(settings, redis) as controller:
        yield controller


async def run_state() -> dict[str, Any]:
    (run,) = [r for r in await cli("flag", "runs") if r["key"] == KEY]
    return dict(run)


@pytest.mark.usefixtures("controller")
async def test_a_healthy_rollout_reaches_everybody(store: FlagStore, tmp_path: Path) -> None:
    """--wait follows the controller through both steps; the flag ends on for everybody."""
    args = ("--playbook", playbook(tmp_path), "--service", SERVICE, "--baseline", "0s", "--wait")
    run = await cli("flag", "rollout", KEY, *args)
    assert (run["phase"], run["percentage"]) == ("Succeeded", 100)
    stored = await store.get(KEY)
    assert stored is not None
    assert (stored.flag.default_variant, stored.flag.targeting) == ("on", None)
    whys = [change["why"] for change in await cli("flag", "history", KEY)]
    assert any("step 1/2, 20%" in why for why in whys)
    assert any("step 2/2, 100%" in why for why in whys)


@pytest.mark.usefixtures("controller")
async def test_rising_failures_switch_the_flag_off(
    store: FlagStore, registry: Registry, tmp_path: Path
) -> None:
    """Failures over the baseline during a step: the controller switches the flag off."""
    args = ("--playbook", playbook(tmp_path, "1m"), "--service", SERVICE, "--baseline", "0s")
    started = await cli("flag", "rollout", KEY, *args)
    assert started["phase"] == "Baseline"
    await cli("flag", "rollout", KEY, *args, code=1)  # one run per flag at a time

    async def at_20() -> bool:
        run = await run_state()
        return bool(run["phase"] == "Progressing" and run["percentage"] == 20)

    await eventually(at_20, "the first step")
    await registry.record_successes({(SERVICE, VERSION): 10})
    await registry.record_outcome(SERVICE, VERSION, OutcomeKind.ERROR_REPLY, count=30)

    async def ended() -> bool:
        return not (await run_state())["active"]

    await eventually(ended, "the run's end")
    run = await run_state()
    assert run["phase"] == "SwitchedOff"
    assert "failure rate of checkout 75.0%" in run["reason"]
    assert run["percentage"] == 0
    stored = await store.get(KEY)
    assert stored is not None
    assert (stored.flag.default_variant, stored.flag.targeting) == ("off", None)


@pytest.mark.usefixtures("controller")
async def test_abort_and_someone_elses_change(store: FlagStore, tmp_path: Path) -> None:
    """abort switches the flag off; a change by someone else stops the run, flag left as is."""
    args = ("--playbook", playbook(tmp_path, "1m"), "--service", SERVICE, "--baseline", "0s")

    async def progressing() -> bool:
        return bool((await run_state())["phase"] == "Progressing")

    async def ended() -> bool:
        return not (await run_state())["active"]

    await cli("flag", "rollout", KEY, *args)
    await eventually(progressing, "the first step")
    await cli("flag", "abort", KEY)
    await eventually(ended, "the abort")
    run = await run_state()
    assert (run["phase"], run["reason"]) == ("Stopped", "aborted by an operator: switched off")
    await cli("flag", "abort", KEY, code=1)  # nothing runs now

    await cli("flag", "rollout", KEY, *args)
    await eventually(progressing, "the first step again")
    await cli("flag", "set", KEY, "--default", "on", "--reason", "a person decides")
    await eventually(ended, "the stop")
    run = await run_state()
    assert (run["phase"], run["reason"]) == ("Stopped", "someone else changed the flag: left as is")
    stored = await store.get(KEY)
    assert stored is not None
    assert stored.flag.default_variant == "on"  # the person's change stands


async def test_a_standby_controller_finishes_the_run(
    settings: Settings, redis: Redis, store: FlagStore, tmp_path: Path
) -> None:
    """The run lives in Redis: when its leader stops, the standby takes the lead and ends it."""
    standby = Controller(settings=settings, redis=redis, tick=0.1)
    waiting: asyncio.Task[None] | None = None
    try:
        async with leading(settings, redis) as first:
            waiting = asyncio.create_task(standby.run())
            args = (
                "--playbook",
                playbook(tmp_path, "2s"),
                "--service",
                SERVICE,
                "--baseline",
                "0s",
            )
            await cli("flag", "rollout", KEY, *args)

            async def started() -> bool:
                return bool((await run_state())["percentage"] == 20)

            await eventually(started, "the first step")
            first.stop()
        await asyncio.wait_for(standby.leading.wait(), 10)

        async def ended() -> bool:
            return not (await run_state())["active"]

        await eventually(ended, "the run's end")
        assert (await run_state())["phase"] == "Succeeded"
    finally:
        standby.stop()
        if waiting is not None:
            await finished(waiting, "the standby controller")

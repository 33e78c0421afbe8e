"""Rollouts end to end: communicatord and controllers as processes, services as processes,
the real Redis and Mosquitto, and the deployctl CLI as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Keys, PlanStore, Registry, Settings
from controller.engine._keys import ControllerKeys
from tests.communicator.fleet import ROOT, ServiceProcess, environment
from tests.conftest import eventually as wait_for

# Several processes per test on 2 cores: allow more than the default 60 s.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

Deployctl = Callable[..., Awaitable[tuple[int, Any, str]]]

MANUAL = """name: manual
description: 30 %, then wait for a person.
strategy: canary
steps:
  - set_weight: 30
  - pause: {}
  - set_weight: 100
"""

# canary-fast with a tolerant latency judge: on a busy 2-core CI machine one canary
# instance taking half the traffic of two stable ones can be slower for real.
FAST = """name: fast
description: Two short analyses.
strategy: canary
steps:
  - set_weight: 20
  - analysis: {window: 4s, min_sample: 20, max_latency_ratio: 10}
  - set_weight: 50
  - analysis: {window: 4s, min_sample: 20, max_latency_ratio: 10}
  - set_weight: 100
rollback: {max_failure_rate: 0.2, min_failures: 5}
"""

SLOW = """name: slow
description: Pauses long enough to kill the controller in the middle.
strategy: canary
steps:
  - set_weight: 20
  - pause: {duration: 3s}
  - set_weight: 50
  - pause: {duration: 1s}
  - set_weight: 100
"""


class Daemons:
    """communicatord and controller processes of one test."""

    def __init__(self, settings: Settings) -> None:
        self.env = environment(settings)
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=self.env, cwd=ROOT
        )
        self.processes.append(process)
        return process

    async def stop(self) -> None:
        """SIGTERM (a clean hand-over), then SIGKILL for whatever lingers past 10 s."""
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
async def daemons(settings: Settings, redis: Redis) -> AsyncIterator[Daemons]:
    daemons = Daemons(settings)
    await daemons.start("-m", "communicator")
    await daemons.start("-m", "controller", "controller", "run")
    keys, controller_keys = Keys(settings.key_prefix), ControllerKeys(settings.key_prefix)

    async def up() -> bool:
        return bool(
            await redis.zcard(keys.routers()) and await redis.exists(controller_keys.leader())
        )

    await wait_for(up, "communicator and controller up")
    yield daemons
    await daemons.stop()


@pytest.fixture
async def fleet(
    settings: Settings, daemons: Daemons
) -> AsyncIterator[Callable[..., Awaitable[ServiceProcess]]]:
    started: list[ServiceProcess] = []

    async def start(*args: str) -> ServiceProcess:
        process = await ServiceProcess.start(settings, *args)
        started.append(process)
        return process

    yield start
    await asyncio.gather(*(p.close() for p in started))


@pytest.fixture
def deployctl(settings: Settings) -> Deployctl:
    async def run(*args: str, timeout: float = 60) -> tuple[int, Any, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller",
            *args,
            env=environment(settings),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        text = out.decode()
        data = json.loads(text) if "--json" in args and text.strip() else text
        return process.returncode or 0, data, err.decode()

    return run


async def shop_with_traffic(
    fleet: Callable[..., Awaitable[ServiceProcess]], canary_fail_rate: float
) -> ServiceProcess:
    for n in range(2):
        await fleet("shop", "1.0", "--commands", "ORDER", "--server", f"web_{n}")
    front = await fleet("front", "1.0")
    await front.order(load="shop/ORDER", rate=60)
    return front


async def start_canary(fleet: Callable[..., Awaitable[ServiceProcess]], fail_rate: float) -> None:
    await fleet(
        "shop", "1.1", "--commands", "ORDER", "--server", "canary_1", "--fail-rate", str(fail_rate)
    )


async def canary_start_and_wait(
    deployctl: Deployctl, playbook: str, *extra: str
) -> tuple[int, Any, str]:
    """``deployctl canary start shop --version 1.1 --playbook PLAYBOOK --wait --json``."""
    return await deployctl(
        "canary",
        "start",
        "shop",
        "--version",
        "1.1",
        "--playbook",
        playbook,
        "--wait",
        "--json",
        *extra,
    )


async def canary_start_then_deploy(
    deployctl: Deployctl,
    fleet: Callable[..., Awaitable[ServiceProcess]],
    plans: PlanStore,
    playbook: str,
    fail_rate: float,
    *extra: str,
) -> asyncio.Task[tuple[int, Any, str]]:
    """As a site does: ``canary start --wait-for-instances``, then deploy the canary's instance.

    The CLI pins the serving version first, so the canary gets no traffic
    before its rollout begins; the instance starts once the pin is there.
    """
    starting = asyncio.create_task(
        canary_start_and_wait(deployctl, playbook, "--wait-for-instances", "60s", *extra)
    )

    async def pinned() -> bool:
        return await plans.get("shop") is not None

    await wait_for(pinned, "the stable version pinned by canary start")
    await start_canary(fleet, fail_rate)
    return starting


async def test_healthy_canary_is_promoted_through_every_step(
    fleet: Any, deployctl: Deployctl, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    """canary start --wait with the fast playbook: every step runs, the canary is promoted."""
    playbook = tmp_path / "fast.yaml"
    playbook.write_text(FAST)
    await shop_with_traffic(fleet, 0.0)
    await start_canary(fleet, 0.0)
    code, rollout, err = await canary_start_and_wait(deployctl, str(playbook))
    assert code == 0, (rollout["reason"], rollout["verdicts"], err)
    assert rollout["phase"] == "Succeeded"
    assert rollout["stable"] == "1.0"
    assert [v["outcome"] for v in rollout["verdicts"]] == ["pass", "pass"]
    plan = await PlanStore(redis=redis, keys=Keys(settings.key_prefix)).get("shop")
    assert plan is not None
    assert [(p.version, p.weight) for p in plan.effective_pools()] == [("1.1", 100)]
    code, history, _ = await deployctl("rollout", "history", "shop", "--json")
    weights = [t["weight"] for t in history if t["reason"].startswith("weight set")]
    assert weights == [20, 50, 100]


async def test_failing_canary_is_rolled_back_with_its_reason(
    fleet: Any, deployctl: Deployctl, redis: Redis, settings: Settings
) -> None:
    """A canary failing half its requests is cut off and rolled back; the history says why."""
    await shop_with_traffic(fleet, 0.0)
    plans = PlanStore(redis=redis, keys=Keys(settings.key_prefix))
    starting = await canary_start_then_deploy(deployctl, fleet, plans, "canary-fast", 0.5)
    code, rollout, _ = await starting
    assert code == 1
    assert rollout["phase"] == "Aborted"
    assert rollout["weight"] == 0
    assert "invalidated 1.1" in rollout["reason"] or "analysis failed" in rollout["reason"]
    assert not await Registry(redis=redis, keys=Keys(settings.key_prefix)).is_valid("shop", "1.1")
    code, history, _ = await deployctl("rollout", "history", "shop", "--json")
    assert history[-1]["phase"] == "Aborted"
    assert history[-1]["evidence"]
    code, _, _ = await deployctl("status", "--json")
    assert code == 1  # an aborted rollout: status is not OK

    async def alerts() -> set[str]:
        _, data, _ = await deployctl("alerts", "--json")
        return {flag["id"] for flag in data["flags"]}

    await wait_for(
        lambda: _contains(alerts, {"versions/shop/invalid-1_1", "rollouts/shop/aborted"}),
        "status flags raised for the administrator",
    )
    _, data, _ = await deployctl("alerts", "--json")
    assert all(flag["help"] and flag["help_uri"].startswith("https://") for flag in data["flags"])


async def _contains(found: Callable[[], Awaitable[set[str]]], expected: set[str]) -> bool:
    return expected <= await found()


async def test_pause_promoted_by_hand_and_abort(
    fleet: Any, deployctl: Deployctl, tmp_path: Path, redis: Redis, settings: Settings
) -> None:
    """A pause waits for canary promote; another rollout is aborted by hand: weight back to 0."""
    playbook = tmp_path / "manual.yaml"
    playbook.write_text(MANUAL)
    await shop_with_traffic(fleet, 0.0)
    await start_canary(fleet, 0.0)

    async def phase() -> str:
        _, data, _ = await deployctl("canary", "status", "shop", "--json")
        return str(data["phase"])

    code, _, err = await deployctl(
        "canary", "start", "shop", "--version", "1.1", "--playbook", str(playbook)
    )
    assert code == 0, err
    await wait_for(lambda: _is(phase, "Paused"), "paused")
    code, _, _ = await deployctl("canary", "promote", "shop")
    assert code == 0
    await wait_for(lambda: _is(phase, "Succeeded"), "promoted")

    await start_canary(fleet, 0.0)  # the next version
    await fleet("shop", "1.2", "--commands", "ORDER", "--server", "canary_2")
    code, _, err = await deployctl(
        "canary", "start", "shop", "--version", "1.2", "--playbook", str(playbook)
    )
    assert code == 0, err
    await wait_for(lambda: _is(phase, "Paused"), "paused again")
    code, _, _ = await deployctl("canary", "abort", "shop")
    assert code == 0
    await wait_for(lambda: _is(phase, "Aborted"), "aborted")
    _, data, _ = await deployctl("canary", "status", "shop", "--json")
    assert data["reason"] == "rolled back: aborted by an operator"
    plan = await PlanStore(redis=redis, keys=Keys(settings.key_prefix)).get("shop")
    assert plan is not None
    assert {p.version: p.weight for p in plan.pools}["1.2"] == 0


async def _is(phase: Callable[[], Awaitable[str]], expected: str) -> bool:
    return await phase() == expected


async def test_standby_controller_finishes_a_rollout_when_the_leader_dies(
    fleet: Any,
    deployctl: Deployctl,
    daemons: Daemons,
    tmp_path: Path,
    redis: Redis,
    settings: Settings,
) -> None:
    """Kill -9 the leading controller mid-rollout: the standby takes over and finishes it."""
    await daemons.start("-m", "controller", "controller", "run")  # the standby
    playbook = tmp_path / "slow.yaml"
    playbook.write_text(SLOW)
    await shop_with_traffic(fleet, 0.0)
    await start_canary(fleet, 0.0)
    code, _, err = await deployctl(
        "canary", "start", "shop", "--version", "1.1", "--playbook", str(playbook)
    )
    assert code == 0, err
    keys = ControllerKeys(settings.key_prefix)

    async def weight_set() -> bool:
        _, data, _ = await deployctl("canary", "status", "shop", "--json")
        return bool(data["weight"] == 20)

    await wait_for(weight_set, "first step")
    leader = (await redis.get(keys.leader())).decode()
    victim = next(p for p in daemons.processes if f"-{p.pid}-" in leader)
    os.kill(victim.pid, signal.SIGKILL)
    await victim.wait()
    code, rollout, _ = await deployctl("canary", "status", "shop", "--watch", "--json", timeout=60)
    assert rollout["phase"] == "Succeeded"
    assert code == 0
    new_leader = (await redis.get(keys.leader())).decode()
    assert new_leader != leader


SLOW_CANARY = """name: latency-guard
description: Half the traffic, then a long pause that only the latency limit can cut short.
strategy: canary
steps:
  - set_weight: 50
  - pause: {duration: 5m}
  - set_weight: 100
rollback: {max_latency_p99: 100ms, failure_window: 30s}
"""


async def test_a_slow_canary_is_rolled_back_by_its_p99_limit(
    fleet: Any, deployctl: Deployctl, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    """A canary answering in 300 ms, under a 100 ms p99 limit, is rolled back with the evidence."""
    playbook = tmp_path / "latency.yaml"
    playbook.write_text(SLOW_CANARY)
    await shop_with_traffic(fleet, 0.0)
    await fleet("shop", "1.1", "--commands", "ORDER", "--server", "canary_1", "--delay", "0.3")
    started = time.monotonic()
    code, rollout, err = await canary_start_and_wait(deployctl, str(playbook))
    assert code == 1, err
    assert rollout["phase"] == "Aborted"
    assert "p99 reply time" in rollout["reason"]
    assert "above the limit of 100 ms" in rollout["reason"]
    assert time.monotonic() - started < 60  # not the 5 minute pause
    _, history, _ = await deployctl("rollout", "history", "shop", "--json")
    evidence = history[-1]["evidence"]["latency"]
    assert evidence["latency_p99"] > 0.1
    assert evidence["samples"] >= 50
    assert not await Registry(redis=redis, keys=Keys(settings.key_prefix)).is_valid("shop", "1.1")


async def test_invalid_playbook_is_refused_with_line_and_fix(
    deployctl: Deployctl, tmp_path: Path
) -> None:
    """A playbook with an Argo-style step name is refused: file, line and the fix."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: x\nstrategy: canary\nsteps:\n  - setWeight: 20\n")
    code, _, err = await deployctl("playbook", "validate", str(bad))
    assert code == 2
    assert f"{bad}:5" in err
    assert "set_weight" in err
    code, _, err = await deployctl(
        "canary", "start", "shop", "--version", "2", "--playbook", str(bad)
    )
    assert code == 2
    assert "set_weight" in err


SHADOW_FIRST = """name: shadow-first
description: Shadow the canary, then canary it.
strategy: canary
steps:
  - mirror: {percent: 100, duration: 2s}
  - set_weight: 100
rollback: {max_failure_rate: 0.2, min_failures: 5}
"""


async def test_a_failing_canary_is_caught_while_only_shadowed(
    fleet: Any, deployctl: Deployctl, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    """A mirror step shadows the canary; failing copies roll it back before it serves anyone."""
    playbook = tmp_path / "shadow.yaml"
    playbook.write_text(SHADOW_FIRST)
    front = await shop_with_traffic(fleet, 0.0)
    plans = PlanStore(redis=redis, keys=Keys(settings.key_prefix))
    starting = await canary_start_then_deploy(
        deployctl, fleet, plans, str(playbook), 0.6, "--stable", "1.0"
    )
    code, rollout, err = await starting
    assert code == 1, err
    assert rollout["phase"] == "Aborted"
    assert rollout["step"] == 0  # still in the mirror step: it never got real traffic
    await front.order(stop_load=True)
    tally = await front.expect("load_stopped")
    assert tally["failed"] == 0, tally["errors"]

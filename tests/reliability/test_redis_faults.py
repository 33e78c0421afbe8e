"""Redis faults under a running fleet: a restart from its append-only log, and refused writes.

Each test runs a router and a leading controller in this process, service
instances and a sender as processes, a canary rollout started with the CLI,
all on a Redis of the test's own (the session's broker), and accounts for
every numbered message the sender sent: none lost, each instance's in the
order sent, duplicates only as docs/protocol.md §7 allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import OutOfMemoryError

from communicator import Keys, Measurements, Registry, Settings, connect_redis
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, RolloutStore
from flags import FlagKeys, FlagStore
from tests.communicator.fleet import ServiceProcess
from tests.conftest import Server, deployctl_json, eventually
from tests.reliability.redis_support import (
    OwnRedis,
    delays,
    duplicates,
    kinds,
    leading_controller,
    router_running,
    send_numbered,
    seqs,
)

pytestmark = pytest.mark.integration

#: Redis back -> the router delivers again / the controller takes the next step.
RECOVERY_BOUND = 5.0

PLAYBOOK = """name: steps
description: Weights and short pauses, so no analysis traffic is needed.
strategy: canary
steps:
  - set_weight: 20
  - pause: {duration: 1s}
  - set_weight: 50
  - pause: {duration: 1s}
  - set_weight: 100
"""


@pytest.fixture
def own_redis(spawn: Callable[..., Server], tmp_path: Path) -> OwnRedis:
    redis = OwnRedis(spawn, tmp_path)
    redis.start()
    return redis


@pytest.fixture
def own_settings(
    settings: Settings, own_redis: OwnRedis, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The test's settings on its own Redis; the in-process CLI uses them too."""
    ours = settings.model_copy(update={"redis_url": own_redis.url})
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", own_redis.url)
    monkeypatch.setenv("DEPLOYCTL_KEY_PREFIX", ours.key_prefix)
    monkeypatch.setenv("DEPLOYCTL_MQTT_URL", ours.mqtt_url or "")
    monkeypatch.setenv("DEPLOYCTL_TOPIC_PREFIX", ours.topic_prefix)
    return ours


class Fleet:
    """The router, the controller, two shop versions, a ledger and a sender, on one Redis."""

    def __init__(
        self, settings: Settings, redis: Any, daemons: dict[str, asyncio.Task[None]]
    ) -> None:
        self.settings = settings
        self.daemons = daemons
        self.redis = redis
        self.registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
        self.rollouts = RolloutStore(redis=redis, keys=ControllerKeys(settings.key_prefix))
        self.flags = FlagStore(redis=redis, keys=FlagKeys(settings.key_prefix))
        self.processes: dict[str, ServiceProcess] = {}

    async def start(self, name: str, *args: str) -> ServiceProcess:
        process = await ServiceProcess.start(self.settings, *args)
        self.processes[name] = process
        return process

    async def drain(self) -> None:
        """Read what every process printed so far (their events)."""
        for process in self.processes.values():
            with contextlib.suppress(TimeoutError):
                while True:
                    await process.next_event(timeout=0.01)

    async def snapshot(self) -> dict[str, Any]:
        """Every kind of durable state the fleet wrote: rollout, registry, failures, flag."""
        rollout = await self.rollouts.get("shop")
        flag = await self.flags.get("new-checkout")
        instances = []
        for service in ("shop", "ledger", "front"):
            instances += [
                (i.service, i.instance, i.version) for i in await self.registry.instances(service)
            ]
        return {
            "rollout": (rollout.id, rollout.stable, rollout.canary) if rollout else None,
            "history": [(t.at, t.reason) for t in await self.rollouts.history("shop")],
            "instances": sorted(instances),
            "versions": sorted(v.version for v in await self.registry.versions("shop")),
            "failures": sorted((f.version, f.reason) for f in await self.registry.failures("shop")),
            "flag": flag.flag.model_dump() if flag else None,
        }


@contextlib.asynccontextmanager
async def fleet_on(settings: Settings) -> AsyncIterator[Fleet]:
    test_redis = await connect_redis(settings)
    try:
        async with (
            router_running(settings) as (_, router),
            leading_controller(settings) as (
                _,
                controller,
            ),
        ):
            fleet = Fleet(settings, test_redis, {"router": router, "controller": controller})
            try:
                await fleet.start(
                    "stable",
                    "shop",
                    "1.0",
                    "--commands",
                    "ORDER",
                    "--server",
                    "web_1",
                    "--behaviour",
                    "silent",
                )
                await fleet.start(
                    "canary",
                    "shop",
                    "1.1",
                    "--commands",
                    "ORDER",
                    "--server",
                    "canary_1",
                    "--behaviour",
                    "silent",
                )
                await fleet.start("ledger", "ledger", "1.0", "--commands", "ENTRY")
                await fleet.start("front", "front", "1.0")
                await fleet.start("teller", "front", "1.0")
                yield fleet
            finally:
                await asyncio.gather(*(p.close() for p in fleet.processes.values()))
    finally:
        await test_redis.aclose()


async def all_received(
    fleet: Fleet, phase: str, count: int, services: tuple[str, ...] = ("ledger", "shop")
) -> bool:
    """Whether the ``count`` messages of ``phase`` reached each of ``services``."""
    await fleet.drain()
    instances = {"ledger": ("ledger",), "shop": ("stable", "canary")}
    return all(
        len({seq for name in instances[service] for seq in seqs(fleet.processes[name], phase)})
        >= count
        for service in services
    )


async def refuse_writes(redis: Any) -> None:
    """Make Redis full (noeviction): one big value past a limit just above the rest of the data.

    The margin (1 MiB) is wider than what client buffers make ``used_memory``
    wander by, so every write is refused until the limit is lifted.
    """
    await redis.config_set("maxmemory-policy", "noeviction")
    used = int((await redis.info("memory"))["used_memory"])
    await redis.set("filler", b"x" * 2 * 1024 * 1024)
    await redis.config_set("maxmemory", str(used + 1024 * 1024))
    with pytest.raises(OutOfMemoryError):
        await redis.set("probe", b"1")


async def started_rollout(fleet: Fleet, tmp_path: Path) -> None:
    """``deployctl canary start shop --version 1.1``, and wait for its first step (20 %)."""
    playbook = tmp_path / "steps.yaml"
    playbook.write_text(PLAYBOOK)
    await deployctl_json("canary", "start", "shop", "--version", "1.1", "--playbook", str(playbook))

    async def at_first_step() -> bool:
        rollout = await fleet.rollouts.get("shop")
        return rollout is not None and rollout.weight == 20

    await eventually(at_first_step, "the first step")


async def rollout_ended(fleet: Fleet) -> None:
    async def ended() -> bool:
        rollout = await fleet.rollouts.get("shop")
        return rollout is not None and not rollout.phase.active

    await eventually(ended, "the end of the rollout", timeout=20)
    rollout = await fleet.rollouts.get("shop")
    assert rollout is not None
    assert rollout.phase is Phase.SUCCEEDED, rollout.reason


@pytest.mark.timeout(60)
async def test_a_redis_killed_mid_rollout_comes_back_from_its_log_and_nothing_is_lost(
    own_redis: OwnRedis, own_settings: Settings, tmp_path: Path
) -> None:
    """Redis SIGKILLed at 20 %, down 3 s under traffic, started again from its AOF.

    Nothing written before the kill is lost (rollout and its history, instances,
    versions, failures, the flag); the router and the controller reconnect by
    themselves; every message sent before, during and after the outage is
    delivered, in order, duplicates only a replayed run; the rollout ends.
    """
    async with fleet_on(own_settings) as fleet:
        front, teller = fleet.processes["front"], fleet.processes["teller"]
        for reason in ("disk full", "timeout upstream"):
            await fleet.processes["stable"].order(fail=reason)

        async def failures_recorded() -> bool:
            return len(await fleet.registry.failures("shop")) == 2

        await eventually(failures_recorded, "the two failures recorded")
        await deployctl_json(
            "flag",
            "create",
            "new-checkout",
            "--help-text",
            "New checkout; off if orders fail.",
            "--help-uri",
            "https://wiki.example.com/flags/new-checkout",
        )
        await started_rollout(fleet, tmp_path)
        await asyncio.gather(
            send_numbered(front, "shop/ORDER phase=before", 40, rate=200),
            send_numbered(teller, "ledger/ENTRY phase=before", 40, rate=200),
        )
        await eventually(lambda: all_received(fleet, "before", 40), "the messages before")
        before = await fleet.snapshot()
        assert len(before["instances"]) == 5, before
        assert before["versions"] == ["1.0", "1.1"], before
        assert len(before["failures"]) == 2, before
        assert before["flag"] is not None, before
        assert before["history"], before

        own_redis.kill()
        # Traffic all through the outage (3 s: longer than the 2 s leases).
        outage = asyncio.gather(
            send_numbered(front, "shop/ORDER phase=during", 60, rate=20),
            send_numbered(teller, "ledger/ENTRY phase=during", 60, rate=20),
        )
        await outage
        for name, task in fleet.daemons.items():
            assert not task.done(), f"the {name} died of the outage"
        own_redis.start()
        back = time.time()
        after = asyncio.gather(
            send_numbered(front, "shop/ORDER phase=after", 50, rate=50),
            send_numbered(teller, "ledger/ENTRY phase=after", 50, rate=50),
        )
        restored = await fleet.snapshot()
        await after
        for phase, count in (("before", 40), ("during", 60), ("after", 50)):
            await eventually(
                functools.partial(all_received, fleet, phase, count), f"the messages {phase}"
            )

        await rollout_ended(fleet)
        assert not any(task.done() for task in fleet.daemons.values()), "a daemon stopped"
        routers = await fleet.redis.zrange(Keys(own_settings.key_prefix).routers(), 0, -1)
        assert len(routers) == 1, "the router's heartbeat is not back in the restarted Redis"

        for key in ("rollout", "instances", "versions", "failures", "flag"):
            assert restored[key] == before[key], (key, before[key], restored[key])
        assert restored["history"][: len(before["history"])] == before["history"]

        report = {}
        for phase, count in (("before", 40), ("during", 60), ("after", 50)):
            shop = {n: seqs(fleet.processes[n], phase) for n in ("stable", "canary")}
            ledger = {"ledger": seqs(fleet.processes["ledger"], phase)}
            report[phase] = (len(duplicates(count, shop)), len(duplicates(count, ledger)))
        held = max(delays(fleet.processes["ledger"], "during"))
        delivered_again = min(
            e["at"]
            for e in fleet.processes["ledger"].events
            if e["event"] == "received" and e["at"] > back
        )
        stepped = min(t.at for t in await fleet.rollouts.history("shop") if t.at > back)
        print(
            f"REDIS-RESTART duplicates={report} "
            f"routing={delivered_again - back:.2f}s step={stepped - back:.2f}s "
            f"longest-held={held:.2f}s"
        )
        assert delivered_again - back < RECOVERY_BOUND
        assert stepped - back < RECOVERY_BOUND


@pytest.mark.timeout(60)
async def test_after_redis_refused_writes_everything_resumes_and_no_success_is_lost(
    own_settings: Settings, tmp_path: Path
) -> None:
    """Redis full (noeviction) for 3 s mid-rollout, under traffic, then given room again.

    Nothing crashes; once writes are accepted again, with nobody restarted, every
    message sent meanwhile is delivered in order, the successes the router counted
    meanwhile are written (none lost), and the rollout takes its next step and ends.
    """
    async with fleet_on(own_settings) as fleet:
        front, teller = fleet.processes["front"], fleet.processes["teller"]
        await started_rollout(fleet, tmp_path)
        measurements = Measurements(redis=fleet.redis, keys=Keys(own_settings.key_prefix))
        before = await measurements.totals("ledger", "1.0")
        await front.order(load="ledger/ENTRY", rate=20)
        await refuse_writes(fleet.redis)
        await send_numbered(teller, "ledger/ENTRY phase=during", 40, rate=20)
        await asyncio.sleep(1)  # the refusal lasts 3 s in all
        for name, task in fleet.daemons.items():
            assert not task.done(), f"the {name} died of the refused writes"
        rollout = await fleet.rollouts.get("shop")
        assert rollout is not None
        assert rollout.weight == 20, "a step was taken that Redis could not record"

        await fleet.redis.config_set("maxmemory", "0")
        resumed = time.time()
        await front.order(stop_load=True)
        tally = await front.expect("load_stopped", timeout=10)
        await eventually(
            functools.partial(all_received, fleet, "during", 40, ("ledger",)),
            "the messages sent while Redis refused writes",
        )
        twice = duplicates(40, {"ledger": seqs(fleet.processes["ledger"], "during")})

        async def successes_written() -> bool:
            since = (await measurements.totals("ledger", "1.0")).since(before)
            return since.get("success", 0) >= tally["ok"]

        await eventually(successes_written, "the successes counted meanwhile written")
        assert tally["ok"] > 0, tally
        await rollout_ended(fleet)
        stepped = min(t.at for t in await fleet.rollouts.history("shop") if t.at > resumed)
        print(
            f"REDIS-FULL requests={tally['ok']}ok/{tally['failed']}failed duplicates={len(twice)} "
            f"step={stepped - resumed:.2f}s"
        )
        assert stepped - resumed < RECOVERY_BOUND


@pytest.mark.timeout(60)
async def test_while_redis_refuses_writes_routing_goes_on_and_a_register_is_answered(
    own_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis full: routing goes on from memory, REGISTER gets an answer, the log stays readable.

    A newcomer's REGISTER cannot be recorded, so it must be told so (REFUSE with a
    reason and a retry_after), not left to time out; messages between registered
    instances need no write and are delivered; each kind of Redis error is logged
    a few times, not once per round.
    """
    caplog.set_level(logging.WARNING)
    async with fleet_on(own_settings) as fleet:
        await refuse_writes(fleet.redis)
        caplog.clear()
        sending = asyncio.create_task(
            send_numbered(fleet.processes["teller"], "ledger/ENTRY phase=during", 60, rate=20)
        )
        late = await ServiceProcess.start(
            own_settings, "shop", "1.1", "--commands", "ORDER", "--server", "late", ready=False
        )
        try:
            answer = await late.next_event(timeout=15)
        except AssertionError as exc:  # it gave up waiting for an answer to its REGISTER
            answer = {"event": "none", "error": str(exc)}
        finally:
            await late.close()
        await sending
        await fleet.drain()
        routed = delays(fleet.processes["ledger"], "during")
        seen = {
            "register answer": answer,
            "routed meanwhile": len(routed),
            "slowest delivery": round(max(routed, default=float("inf")), 2),
            "log lines per kind": kinds(caplog.records),
            "daemons down": [name for name, task in fleet.daemons.items() if task.done()],
        }
        print("REDIS-FULL-MEANWHILE", seen)
        assert seen["register answer"]["event"] == "refused", seen
        assert seen["register answer"]["retry_after"], seen
        assert seen["routed meanwhile"] == 60, seen
        assert seen["slowest delivery"] < 1.0, seen
        assert max(seen["log lines per kind"].values()) <= 5, seen
        assert not seen["daemons down"], seen

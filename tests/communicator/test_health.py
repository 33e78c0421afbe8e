"""``communicatord``'s health record and ``communicatord --check``, on the real Redis and broker.

The daemons run as child processes (``python -m communicator``) with a short
``DEPLOYCTL_HEALTH_INTERVAL``, so that records lapse within a second or two;
every wait is on an event (a key appearing, a process ending) with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Keys, Settings
from communicator.router._health import health_record, read_health, report_health
from tests.communicator.fleet import ROOT, environment, running_router
from tests.conftest import eventually, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

INTERVAL = 0.5  # seconds between records: each lives 1.5 s
TIMEOUT = 20.0


@dataclass
class Checked:
    """What one ``communicatord --check`` run printed, and its exit code."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The environment of the daemons and of the checks: this test's backends and interval."""
    return {**environment(settings), "DEPLOYCTL_HEALTH_INTERVAL": str(INTERVAL)}


async def run_check(env: dict[str, str], *args: str) -> Checked:
    """Run ``communicatord --check ARGS`` as a separate process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "communicator",
        "--check",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return Checked(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def start_daemon(
    env: dict[str, str],
) -> AsyncIterator[Callable[[], Awaitable[asyncio.subprocess.Process]]]:
    """Start communicatord processes; those still running are stopped after the test."""
    started: list[asyncio.subprocess.Process] = []

    async def start() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "communicator", env=env, cwd=ROOT
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), TIMEOUT)


async def records(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """The fresh records, read as ``--check`` reads them."""
    return await read_health(redis, Keys(settings.key_prefix))


async def routing_record(redis: Redis, settings: Settings, pid: int) -> dict[str, Any]:
    """Wait until the daemon of ``pid`` reports that it routes; return its record."""
    found: list[dict[str, Any]] = []

    async def reported() -> bool:
        found[:] = [r for r in await records(redis, settings) if r["pid"] == pid and r["routing"]]
        return bool(found)

    await eventually(reported, f"a routing health record of communicatord {pid}", TIMEOUT)
    return found[0]


async def test_a_running_daemon_reports_and_check_shows_it(
    settings: Settings, redis: Redis, env: dict[str, str], start_daemon: Any
) -> None:
    """The record appears with its TTL; --check exits 0 and shows it, as text and as JSON."""
    daemon = await start_daemon()
    record = await routing_record(redis, settings, daemon.pid)
    keys = Keys(settings.key_prefix)
    router_id = record["router_id"]
    ttl_ms = await redis.pttl(keys.health(f"communicator:{router_id}"))
    assert 0 < ttl_ms <= 3 * INTERVAL * 1000
    assert record["partitions"] == list(range(32))
    assert record["partitions_total"] == 32
    assert record["listening"]
    assert record["uptime"] >= 0
    assert record["interval"] == INTERVAL
    assert set(record["stats"]) >= {"routed", "invalid", "unknown", "cached", "cache_dropped"}
    assert record["dropped"] == {"oversized": 0, "held_overflowed": 0, "handoffs_refused": 0}

    text = await run_check(env)
    assert text.code == 0, text.stderr
    assert router_id in text.stdout
    assert "routing" in text.stdout
    assert "32/32" in text.stdout
    as_json = await run_check(env, "--json")
    assert as_json.code == 0, as_json.stderr
    assert [r["router_id"] for r in as_json.json()["communicators"]] == [router_id]
    elsewhere = await run_check(env, "--server", "nowhere")
    assert elsewhere.code == 1
    assert "no communicator on server nowhere has reported" in elsewhere.stderr
    one = await run_check(env, "--router-id", router_id, "--server", record["server"], "--json")
    assert one.code == 0
    assert one.json()["communicators"][0]["pid"] == daemon.pid


async def test_a_stopped_daemon_withdraws_its_record_and_check_exits_1(
    settings: Settings, redis: Redis, env: dict[str, str], start_daemon: Any
) -> None:
    """SIGTERM: the daemon removes its record as it stops; --check then says what to do."""
    daemon = await start_daemon()
    await routing_record(redis, settings, daemon.pid)
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), TIMEOUT) == 0
    assert await records(redis, settings) == []
    assert await redis.zcard(Keys(settings.key_prefix).communicators_health()) == 0

    checked = await run_check(env)
    assert checked.code == 1
    assert f"no communicator has reported in the last {3 * INTERVAL:g} s" in checked.stderr
    assert "is communicatord running? see `deployctl status`" in checked.stderr
    as_json = await run_check(env, "--json")
    assert as_json.code == 1
    assert as_json.json()["communicators"] == []
    assert "no communicator has reported" in as_json.json()["error"]


async def test_a_killed_daemons_record_expires(
    settings: Settings, redis: Redis, env: dict[str, str], start_daemon: Any
) -> None:
    """SIGKILL: nothing is cleaned up, yet the record lapses within its TTL and --check fails."""
    daemon = await start_daemon()
    router_id = (await routing_record(redis, settings, daemon.pid))["router_id"]
    assert (await run_check(env, "--router-id", router_id)).code == 0
    os.kill(daemon.pid, signal.SIGKILL)
    await asyncio.wait_for(daemon.wait(), TIMEOUT)
    key = Keys(settings.key_prefix).health(f"communicator:{router_id}")

    async def expired() -> bool:
        return not await redis.exists(key)

    await eventually(expired, "the killed daemon's record expiring", 3 * INTERVAL + 5)
    checked = await run_check(env, "--router-id", router_id)
    assert checked.code == 1
    assert f"communicator {router_id} has not reported" in checked.stderr
    assert (await run_check(env)).code == 1


async def test_two_daemons_each_report(
    settings: Settings, redis: Redis, env: dict[str, str], start_daemon: Any
) -> None:
    """Every communicator has its own record; --check lists them all, one line each."""
    first, second = await start_daemon(), await start_daemon()
    for daemon in (first, second):
        await routing_record(redis, settings, daemon.pid)

    async def both_listed() -> bool:
        return {r["pid"] for r in await records(redis, settings)} == {first.pid, second.pid}

    await eventually(both_listed, "two records", TIMEOUT)
    checked = await run_check(env)
    assert checked.code == 0, checked.stderr
    assert len(checked.stdout.strip().splitlines()) == 2


async def test_unreachable_redis_exits_3(env: dict[str, str]) -> None:
    """Redis down: exit 3 and a message naming the setting, as text or JSON."""
    down = {
        **env,
        "DEPLOYCTL_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DEPLOYCTL_CONNECT_TIMEOUT": "1",
    }
    checked = await run_check(down)
    assert checked.code == 3
    assert "refused the connection" in checked.stderr
    assert "DEPLOYCTL_REDIS_URL" in checked.stderr
    as_json = await run_check(down, "--json")
    assert as_json.code == 3
    assert as_json.json()["backend"] == "redis"


async def test_check_options_without_check_are_refused(env: dict[str, str]) -> None:
    """``--json`` alone would start a daemon that prints no JSON: exit 2 instead."""
    command = (sys.executable, "-m", "communicator", "--json")
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 2
    assert b"go with --check" in err


async def test_the_record_carries_the_routers_counters(settings: Settings, redis: Redis) -> None:
    """The record is the router's own view: its counters and partitions, written in time."""
    fast = settings.model_copy(update={"health_interval": 0.1})
    async with running_router(fast, redis) as router:
        router.stats["routed"] = 7  # as if it had routed seven messages
        reporting = asyncio.create_task(report_health(router))
        try:

            async def counted() -> bool:
                found = await records(redis, fast)
                return bool(found) and found[0]["stats"]["routed"] == 7

            await eventually(counted, "the record with the router's counters", TIMEOUT)
        finally:
            reporting.cancel()
            await asyncio.wait({reporting})
        record = health_record(router, started=0.0, uptime=1.5)
        assert record["router_id"] == router.router_id
        assert record["routing"]
        assert record["partitions"] == router.table.owned()
        assert record["uptime"] == 1.5

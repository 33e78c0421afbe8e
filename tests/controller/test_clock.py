"""The cluster time check against service processes whose clocks are deliberately off.

Each service runs in its own process under libfaketime (Debian's ``faketime``
package: the C library's clock itself is shifted, as a badly synchronised
machine's would be); where that library is missing, the process shifts
Python's ``time.time`` instead (``TEST_CLOCK_OFFSET``, tests/communicator/
service_main.py). Either way the offset is exact and known, and the check
must find it within the error bound it reports. The router, Redis and the
broker are the real ones.
"""

from __future__ import annotations

import asyncio
import glob
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Client, Keys, Measurements, Message, Settings, parse_line
from communicator.router._router import Router
from controller.engine._clock import skew_flag_id, unsynchronized_flag_id
from controller.engine._controller import Controller
from flags import FlagKeys, StatusFlags
from tests.communicator.fleet import ServiceProcess, running_router
from tests.conftest import deployctl_json as cli
from tests.conftest import eventually, finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90), pytest.mark.usefixtures("cli_env")]

#: Rounding of the six-decimal timestamps on the wire, and of floats.
RESOLUTION = 2e-6
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))

Launch = Callable[..., Awaitable[ServiceProcess]]


def clock_offset(seconds: float) -> dict[str, str]:
    """The environment of a process whose wall clock runs ``seconds`` ahead (negative: behind)."""
    if not seconds:
        return {}
    if LIBFAKETIME:
        return {
            "LD_PRELOAD": LIBFAKETIME[0],
            "FAKETIME": f"{seconds:+g}",
            "DONT_FAKE_MONOTONIC": "1",  # asyncio's timers keep the real monotonic clock
        }
    return {"TEST_CLOCK_OFFSET": f"{seconds:g}"}


@pytest.fixture
async def router(settings: Settings, redis: Redis) -> AsyncIterator[Router]:
    async with running_router(settings, redis) as router:
        yield router


@pytest.fixture
async def launch(settings: Settings, router: Router) -> AsyncIterator[Launch]:
    started: list[ServiceProcess] = []

    async def start(server: str, offset: float, **env: str) -> ServiceProcess:
        process = await ServiceProcess.start(
            settings,
            "clocked",
            "1.0",
            "--server",
            server,
            "--commands",
            "WORK",
            env={**clock_offset(offset), **env},
        )
        started.append(process)
        return process

    yield start
    for process in started:
        await process.close()


def row_of(report: dict[str, Any], server: str) -> dict[str, Any]:
    (row,) = [row for row in report["servers"] if row["server"] == server]
    return dict(row)


def found_within_bound(row: dict[str, Any], offset: float) -> bool:
    return bool(abs(row["offset"] - offset) <= row["error"] + RESOLUTION)


async def test_each_offset_is_found_within_its_error_bound(
    launch: Launch, router: Router, redis: Redis, key_prefix: str
) -> None:
    """+250 ms and -80 ms are found within the bound; exit 1 names both; CLOCK is not judged."""
    await launch("ahead", 0.25)
    await launch("behind", -0.08)
    await launch("in_step", 0.0)
    report = await cli("clock", "check", "--threshold", "50ms", "--samples", "5", code=1)
    assert [row["server"] for row in report["servers"]] == ["behind", "in_step", "ahead"]
    for server, offset in [("ahead", 0.25), ("behind", -0.08), ("in_step", 0.0)]:
        row = row_of(report, server)
        assert row["samples"] == 5, row
        assert found_within_bound(row, offset), row
        assert row["error"] < 0.05, row  # loopback: a few ms at most, so the verdicts hold
    assert report["skewed"] == ["behind", "ahead"]
    assert row_of(report, "in_step")["status"] == "ok"

    # Fifteen CLOCK round trips, none counted for or against version 1.0.
    await router.housekeeping.flush()
    totals = await Measurements(redis=redis, keys=Keys(key_prefix)).totals("clocked", "1.0")
    assert totals.counts == {}

    calm = await cli("clock", "check", "--threshold", "300ms", "--server", "ahead")
    assert [row["server"] for row in calm["servers"]] == ["ahead"]
    assert calm["skewed"] == []
    assert calm["servers"][0]["status"] == "ok"


async def test_a_check_with_nobody_to_ask_passes_and_says_so(router: Router) -> None:
    """No instance registered: nothing to judge, exit 0, an empty table."""
    report = await cli("clock", "check")
    assert report == {"threshold": 0.05, "servers": [], "skewed": []}


async def test_bad_thresholds_are_refused_with_the_fix(router: Router) -> None:
    for bad in ("fast", "-5ms", "0"):
        answer = await cli("clock", "check", "--threshold", bad, code=2)
        assert "50ms" in answer["error"] or "more than zero" in answer["error"]


@pytest.fixture
def timedatectl_says_no(tmp_path: Path) -> dict[str, str]:
    """A PATH whose ``timedatectl`` answers NTPSynchronized=no, as on a machine without NTP."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "timedatectl"
    script.write_text("#!/bin/sh\necho no\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


async def test_the_controller_raises_and_lowers_a_flag_per_server(
    launch: Launch,
    settings: Settings,
    redis: Redis,
    key_prefix: str,
    timedatectl_says_no: dict[str, str],
) -> None:
    """Skewed servers get a flag with help, lowered once the server's clock is back in step."""
    ahead = await launch("ahead", 0.25)
    await launch("behind", -0.08, **timedatectl_says_no)
    await launch("in_step", 0.0)
    clocked = settings.model_copy(update={"clock_interval": 0.3, "clock_threshold": 0.05})
    controller = Controller(settings=clocked, redis=redis, tick=0.1)
    flags = StatusFlags(redis=redis, keys=FlagKeys(key_prefix))
    task = asyncio.create_task(controller.run())
    try:

        async def raised() -> bool:
            ids = {flag.id for flag in await flags.list()}
            return {skew_flag_id("ahead"), skew_flag_id("behind")} <= ids

        await eventually(raised, "the skew flags", timeout=20)
        stored = await flags.get(skew_flag_id("ahead"))
        assert stored is not None
        assert "ahead of the controller's (allowed: 50 ms)" in stored.message
        last = {row.server: row.to_json(0.05) for row in controller.clock.last}
        assert found_within_bound(last["ahead"], 0.25), last["ahead"]
        assert found_within_bound(last["behind"], -0.08), last["behind"]
        assert "chrony" in stored.help
        assert "timesyncd" in stored.help
        assert stored.help_uri.endswith("#cluster-time")
        assert await flags.get(skew_flag_id("in_step")) is None
        assert await flags.get(unsynchronized_flag_id("behind")) is not None
        assert await flags.get(unsynchronized_flag_id("ahead")) is None  # it cannot tell

        await ahead.close()  # the operator fixes the clock and restarts the service
        await launch("ahead", 0.0)

        async def lowered() -> bool:
            return await flags.get(skew_flag_id("ahead")) is None

        await eventually(lowered, "the flag of the fixed server going down", timeout=20)
        assert await flags.get(skew_flag_id("behind")) is not None
    finally:
        controller.stop()
        await finished(task, "the controller")


async def test_a_busy_instance_answers_clock_at_once(settings: Settings, router: Router) -> None:
    """CLOCK jumps the queue of an instance busy with slow work, so its clock reads true."""
    release = asyncio.Event()

    async def slow(message: Message) -> Message:
        await release.wait()
        return message.reply("DONE")

    async with (
        Client("busy", "1.0", settings=settings, server="busy_host", handlers={"WORK": slow}),
        Client("asker", "1.0", settings=settings) as asker,
    ):
        work = asyncio.create_task(asker.request(parse_line("busy/WORK"), timeout=10))
        queued = asyncio.create_task(asker.request(parse_line("busy/WORK"), timeout=10))
        started = time.time()
        answer = await asker.request(
            parse_line(f"busy_host:busy/CLOCK sent_at={started:.6f}"), timeout=5
        )
        answered = time.time()
        assert answer.command == "CLOCK_REPLY"
        assert not work.done()
        assert not queued.done()
        received, replied = (float(answer.parameters[k]) for k in ("received_at", "replied_at"))
        assert started - RESOLUTION <= received <= replied <= answered + RESOLUTION
        release.set()
        assert (await work).command == (await queued).command == "DONE"


async def test_the_table_names_each_server_and_the_fix(launch: Launch) -> None:
    """Without --json: a row per server with its status, and the fix under the table."""
    from typer.testing import CliRunner

    from controller.cli._app import app

    await launch("ahead", 0.25)
    await launch("in_step", 0.0)
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["clock", "check", "--threshold", "50ms", "--samples", "2"]
    )
    assert result.exit_code == 1, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert any(line.startswith("ahead") and "skewed" in line for line in lines), lines
    assert any(line.startswith("in_step") and "ok" in line for line in lines), lines
    assert "synchronise them with NTP" in result.stdout

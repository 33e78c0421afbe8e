"""A hostile client against a live communicator: nothing forged, lost or sabotaged.

Each test is one attack an independent test found to work, by a client that
speaks raw MQTT in its own process (tests/communicator/hostile_main.py), on a
broker without ACLs (the worst case: topics are the only identity). After
each, the communicator is alive and answers others at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Message, Registry, Settings
from communicator.backends._keys import Keys
from communicator.router._partitions import partition_of
from communicator.wire._codec import decode
from tests.communicator.fleet import ROOT, ServiceProcess, environment

pytestmark = pytest.mark.integration
PARTITIONS = 32
TIMEOUT = 10.0


class Communicatord:
    """A communicatord process whose log lines the test can wait for."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._new.set()

    async def logged(self, pattern: str, timeout: float = TIMEOUT, *, times: int = 1) -> str:
        """The ``times``-th log line matching ``pattern``, waiting for it if need be."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = [line for line in self.lines if re.search(pattern, line)]
                    if len(found) >= times:
                        return found[times - 1]
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            tail = "\n".join(self.lines[-10:])
            raise AssertionError(
                f"no {pattern!r} (x{times}) in the log; it ends:\n{tail}"
            ) from None

    def rss(self, field: str = "VmRSS") -> int:
        """Resident memory of the process (``VmHWM``: its peak), in kB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def reset_peak(self) -> None:
        """Start measuring the peak (``VmHWM``) afresh (proc(5): clear_refs)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def peak(self) -> int:
        """Peak resident memory since :meth:`reset_peak`, in kB."""
        return self.rss("VmHWM")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), TIMEOUT)
        await self._reader


class Hostile:
    """The hostile client process: publishes what it is told, returns the replies."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def send(self, **order: Any) -> list[str]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write((json.dumps(order) + "\n").encode())
        await self.process.stdin.drain()
        wait = order.get("timeout", 5) + TIMEOUT
        line = await asyncio.wait_for(self.process.stdout.readline(), wait)
        assert line, f"the hostile client died (code {await self.process.wait()})"
        replies: list[str] = json.loads(line)["replies"]
        return replies

    async def ask(self, who: str, payload: str, timeout: float = 5) -> Message:
        """Publish as ``who`` and return the first answer it gets."""
        replies = await self.send(**{"as": who}, payload=payload, expect=1, timeout=timeout)
        assert replies, f"no answer to {payload!r} sent as {who}"
        return decode(replies[0].encode())


async def start_communicatord(settings: Settings) -> Communicatord:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "communicator",
        "-v",
        env=environment(settings),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    daemon = Communicatord(process)
    await daemon.logged("routing on", timeout=20)
    return daemon


@pytest.fixture
async def daemon(settings: Settings, redis: Redis) -> AsyncIterator[Communicatord]:
    started = await start_communicatord(settings)
    yield started
    await started.stop()


@pytest.fixture
async def hostile(settings: Settings, daemon: Communicatord) -> AsyncIterator[Hostile]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.communicator.hostile_main",
        env=environment(settings),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert json.loads(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))["ready"]
    yield Hostile(process)
    assert process.stdin is not None
    process.stdin.close()
    await asyncio.wait_for(process.wait(), TIMEOUT)


@pytest.fixture
async def services(settings: Settings, daemon: Communicatord) -> AsyncIterator[list[Any]]:
    """Service processes of the test, closed after it; the first two answer the probe."""
    started = [
        await ServiceProcess.start(settings, "echo", "1.0", "--commands", "PING"),
        await ServiceProcess.start(settings, "prober", "1.0"),
    ]
    yield started
    await asyncio.gather(*(s.close() for s in started))


async def start(services: list[Any], settings: Settings, *args: str) -> ServiceProcess:
    process = await ServiceProcess.start(settings, *args)
    services.append(process)
    return process


async def probe(services: list[Any]) -> None:
    """Others are unaffected: a request is answered within a second."""
    answer = await services[1].request("echo/PING", timeout=1)
    assert answer["event"] == "reply", f"the probe got {answer}"


async def registered(hostile: Hostile, who: str, service: str, version: str = "1.0") -> None:
    answer = await hostile.ask(who, f"REGISTER service={service};version={version}")
    assert answer.command == "READY", answer


async def outcome_counts(redis: Redis, settings: Settings, service: str) -> dict[str, Any]:
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
    return {v.version: (v.state.valid, dict(v.counts)) for v in await registry.versions(service)}


# -- outcomes cannot be forged or gamed --------------------------------------------------------


async def test_requests_with_a_millisecond_timeout_do_not_count_against_the_replier(
    settings: Settings, redis: Redis, hostile: Hostile, services: list[Any]
) -> None:
    await start(services, settings, "victim", "1.0", "--commands", "Q", "--delay", "0.5")
    await registered(hostile, "attacker1", "attacker")
    for n in range(6):
        answer = await hostile.ask("attacker1", f"victim/Q message_id=m{n};timeout=1ms")
        assert answer.command == "DONE", answer
    counts = await outcome_counts(redis, settings, "victim")
    valid, kinds = counts["1.0"]
    assert valid, counts
    assert kinds["timeout"] == 0, counts
    await probe(services)


async def test_a_failure_report_counts_only_against_the_reporters_own_version(
    settings: Settings, redis: Redis, hostile: Hostile, services: list[Any]
) -> None:
    await start(services, settings, "web", "1.1", "--commands", "GET")
    await registered(hostile, "cli1", "cli")
    answer = await hostile.ask("cli1", "FAILURE version=1.1;reason=forged")
    assert answer.command == "INVALID", answer
    assert "own version" in answer.parameters["reason"]
    await registered(hostile, "web_old", "web", "1.0")
    answer = await hostile.ask("web_old", "FAILURE version=1.1;reason=forged;kind=crash")
    assert answer.command == "INVALID", answer
    assert "1.1" not in await outcome_counts(redis, settings, "cli"), "a phantom version"
    assert (await outcome_counts(redis, settings, "web"))["1.1"][1]["crash"] == 0
    # Its own failure still counts.
    await hostile.send(**{"as": "web_old"}, payload="FAILURE reason=disk full")
    await probe(services)
    assert (await outcome_counts(redis, settings, "web"))["1.0"][1]["failure"] == 1


async def test_a_forged_request_hand_off_is_refused(
    settings: Settings, redis: Redis, daemon: Communicatord, hostile: Hostile, services: list[Any]
) -> None:
    victim = await start(services, settings, "victim", "1.0", "--commands", "Q")
    partition = partition_of(victim.client_id, PARTITIONS)
    entries = [
        [victim.client_id, f"x{n}", "nobody", "victim", "1.0", "v", "s", 0, 0] for n in range(6)
    ]
    await hostile.send(topic=f"track/{partition}", payload=json.dumps(entries))
    await daemon.logged("not signed by a communicator")
    await probe(services)
    valid, kinds = (await outcome_counts(redis, settings, "victim"))["1.0"]
    assert valid
    assert kinds["timeout"] == 0


# -- identities cannot be taken -----------------------------------------------------------------


async def test_the_communicators_own_name_cannot_be_registered(
    hostile: Hostile, services: list[Any]
) -> None:
    answer = await hostile.ask("spoof1", "REGISTER service=communicator;version=1.0")
    assert (answer.command, answer.parameters["reason"]) == ("REFUSE", "reserved_name"), answer
    answer = await hostile.ask("spoof1", "*:echo/PING")
    assert answer.command == "INVALID"
    assert "not registered" in answer.parameters["reason"]
    await probe(services)


async def test_a_live_instance_name_cannot_be_claimed_by_another_client(
    settings: Settings, hostile: Hostile, services: list[Any]
) -> None:
    web = await start(services, settings, "web", "1.0", "--commands", "GET", "--instance", "web1")
    answer = await hostile.ask("thief", "REGISTER service=web;version=1.0;instance=web1")
    assert (answer.command, answer.parameters["reason"]) == ("REFUSE", "instance_taken"), answer
    answer = await services[1].request("web/GET", timeout=2)
    assert answer["event"] == "reply"
    assert (await web.expect("received"))["message"]["command"] == "GET"
    await probe(services)


@pytest.mark.parametrize("client_id", ["x" * 65, "bad!id", "$weird"])
async def test_client_ids_outside_the_documented_syntax_are_refused(
    hostile: Hostile, services: list[Any], client_id: str
) -> None:
    answer = await hostile.ask(client_id, "REGISTER service=odd;version=1.0")
    assert (answer.command, answer.parameters["reason"]) == ("REFUSE", "bad_client_id"), answer
    await probe(services)


async def test_a_session_taken_over_is_not_a_failure(
    settings: Settings, redis: Redis, daemon: Communicatord, hostile: Hostile, services: list[Any]
) -> None:
    victim = await start(services, settings, "victim", "1.0", "--commands", "Q")
    for n in range(5):
        await hostile.send(connect_as=victim.client_id)
        await daemon.logged("will of victim .* ignored: it registered again", 15, times=n + 1)
    await probe(services)
    valid, kinds = (await outcome_counts(redis, settings, "victim"))["1.0"]
    assert valid
    assert kinds["disconnect"] == 0, kinds


# -- bad input does not pass, and does not flood the log ---------------------------------------


@pytest.mark.parametrize(
    "parameters",
    ["ttl=bogus", "ttl=-5", "cache=maybe", "timeout=-1", "message_id=~shadow.x"],
)
async def test_invalid_global_parameters_are_refused_without_strict_mode(
    hostile: Hostile, services: list[Any], parameters: str
) -> None:
    await registered(hostile, "sloppy1", "sloppy")
    answer = await hostile.ask("sloppy1", f"echo/PING {parameters}")
    assert answer.command == "INVALID", answer
    await probe(services)


async def test_garbage_floods_neither_the_log_nor_the_memory(
    daemon: Communicatord, hostile: Hostile, services: list[Any]
) -> None:
    await probe(services)
    before = daemon.rss()
    daemon.reset_peak()
    lines_before = len(daemon.lines)
    for payload in ("\x00\x01 not a message", "INVALID reason=noise", "HELP=="):
        await hostile.send(**{"as": "junk1"}, payload=payload, times=3000)
    await hostile.send(**{"as": "junk1"}, size=50 * 1024 * 1024)
    await probe(services)
    logged = len(daemon.lines) - lines_before
    after, peak = daemon.rss(), daemon.peak()
    print(f"RSS {before} kB -> {after} kB, peak {peak} kB; {logged} log lines for 9,001")
    assert logged < 30, f"{logged} log lines for 9,000 bad messages"
    assert after <= before * 1.10, f"RSS grew from {before} to {after} kB"
    assert peak <= before * 1.25, f"RSS peaked at {peak} kB from {before} kB"


async def test_a_retained_message_is_ignored_and_cleared_at_restart(
    settings: Settings, redis: Redis, daemon: Communicatord, hostile: Hostile, services: list[Any]
) -> None:
    await registered(hostile, "crashy1", "crashy")
    await hostile.send(**{"as": "crashy1"}, payload="FAILURE kind=crash;reason=once", retain=True)
    await probe(services)  # routed after the FAILURE: the live one counted once, as any
    assert (await outcome_counts(redis, settings, "crashy"))["1.0"][1]["crash"] == 1
    await daemon.stop()
    restarted = await start_communicatord(settings)  # the broker hands it the retained one
    try:
        await restarted.logged("retained message on .*crashy1 ignored and cleared")
        await probe(services)
        assert (await outcome_counts(redis, settings, "crashy"))["1.0"][1]["crash"] == 1
    finally:
        await restarted.stop()
    again = await start_communicatord(settings)
    try:
        await probe(services)
        assert not [line for line in again.lines if "retained message" in line], "not cleared"
    finally:
        await again.stop()

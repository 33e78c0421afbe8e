"""Flags pushed to services: two SDK processes see a change; an SDK keeps serving offline."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Settings
from flags import Flag, FlagClient, FlagState, Reason, flagd_document
from flags._keys import FlagKeys
from flags._publisher import FlagPublisher
from flags._store import FlagStore
from tests.communicator.fleet import ROOT, environment
from tests.conftest import free_port
from tests.flags.conftest import OwnFlagBroker

pytestmark = pytest.mark.integration


def a_flag(**changes: Any) -> Flag:
    return Flag.model_validate(
        {
            "key": "new-checkout",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
            "help": "Shows the new checkout; if errors rise, switch it off.",
            "help_uri": "https://wiki.example.com/flags/new-checkout",
            **changes,
        }
    )


async def next_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 10)
    assert line, "the SDK process exited"
    return dict(json.loads(line))


async def test_a_change_reaches_two_sdk_processes(
    settings: Settings, redis: Redis, key_prefix: str, publisher: FlagPublisher
) -> None:
    """`flag off` in the store reaches two services' SDKs within milliseconds, with its reason."""
    store = FlagStore(redis=redis, keys=FlagKeys(key_prefix))
    await store.put(a_flag(), who="test")
    sdks = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.flags.sdk_main",
            "new-checkout",
            env=environment(settings),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for sdk in sdks:
            assert (await next_line(sdk))["event"] == "synced"
            first = await next_line(sdk)
            assert (first["value"], first["reason"]) == (True, "STATIC")
        switched = time.time()
        await store.update(
            "new-checkout",
            lambda f: f.model_copy(update={"state": FlagState.DISABLED}),
            who="test",
            why="errors up",
        )
        for sdk in sdks:
            seen = await next_line(sdk)
            assert (seen["value"], seen["reason"]) == (None, "DISABLED")
            assert seen["at"] - switched < 1.0
    finally:
        for sdk in sdks:
            sdk.kill()
            await sdk.wait()


async def test_sdk_serves_last_known_values_while_the_broker_is_away(
    own_flag_broker: OwnFlagBroker,
) -> None:
    """With the broker out of reach evaluation goes on: the same value, reason STALE."""
    await own_flag_broker.store.put(a_flag(), who="test")
    async with FlagClient(settings=own_flag_broker.settings) as client:
        assert await client.wait_synced(10)
        assert client.resolve("new-checkout", False).reason is Reason.STATIC
        await asyncio.to_thread(own_flag_broker.server.stop)
        deadline = time.monotonic() + 10
        while client.connected:
            assert time.monotonic() < deadline, "the client never noticed the broker left"
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        resolution = client.resolve("new-checkout", False)
        assert time.perf_counter() - started < 0.01  # never waits on the network
        assert (resolution.value, resolution.reason) == (True, Reason.STALE)


async def test_bootstrap_file_serves_before_any_broker(settings: Settings, tmp_path: Path) -> None:
    """A bootstrap file gives values at once, even with no broker at all (reason STALE)."""
    bootstrap = tmp_path / "flags.json"
    bootstrap.write_text(flagd_document([a_flag()]))
    nowhere = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{free_port()}"})
    async with FlagClient(settings=nowhere, bootstrap=bootstrap) as client:
        resolution = client.resolve("new-checkout", False)
        assert (resolution.value, resolution.variant, resolution.reason) == (
            True,
            "on",
            Reason.STALE,
        )
        assert resolution.metadata["help_uri"] == "https://wiki.example.com/flags/new-checkout"
        assert client.resolve("missing", False).error_code is not None

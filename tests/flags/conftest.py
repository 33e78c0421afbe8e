"""Fixtures of the flag tests: a running FlagPublisher, a broker of one's own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from communicator import Settings
from flags._keys import FlagKeys
from flags._publisher import FlagPublisher
from flags._store import FlagStore
from tests.conftest import Server, free_port, launch_mosquitto


@pytest.fixture
async def publisher(settings: Settings, redis: Redis) -> AsyncIterator[FlagPublisher]:
    publisher = FlagPublisher(settings=settings, redis=redis)
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(publisher.synced.wait(), 10)
    yield publisher
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[int, Server]]:
    port = free_port()
    server = launch_mosquitto("flags-broker", tmp_path, port, "allow_anonymous true")
    yield port, server
    server.stop()


@dataclass(frozen=True, slots=True)
class OwnFlagBroker:
    """A Mosquitto of the test's own (it may stop it) with a FlagPublisher relaying to it."""

    settings: Settings  # pointed at this broker
    store: FlagStore
    port: int
    server: Server


@pytest.fixture
async def own_flag_broker(
    settings: Settings, redis: Redis, key_prefix: str, own_broker: tuple[int, Server]
) -> AsyncIterator[OwnFlagBroker]:
    port, server = own_broker
    settings = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{port}"})
    publisher = FlagPublisher(settings=settings, redis=redis)
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.synced.wait(), 10)
        yield OwnFlagBroker(
            settings, FlagStore(redis=redis, keys=FlagKeys(key_prefix)), port, server
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

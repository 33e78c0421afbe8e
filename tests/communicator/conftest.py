"""Fixtures for the communicator's integration tests: settings, a router, service processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import ServiceDefinition, Settings
from communicator._router import Router
from tests.communicator.fleet import ServiceProcess, running_router

Start = Callable[..., Awaitable[ServiceProcess]]
CACHE_SIZE = 50


@pytest.fixture
def service_definitions() -> dict[str, ServiceDefinition]:
    """Service definitions the router loads (override in a test module)."""
    return {}


@pytest.fixture
async def router(
    settings: Settings, redis: Redis, service_definitions: dict[str, Any]
) -> AsyncIterator[Router]:
    async with running_router(
        settings, redis, services=service_definitions, cache_size=CACHE_SIZE, request_timeout=1.0
    ) as router:
        yield router


@pytest.fixture
async def start(settings: Settings, router: Router) -> AsyncIterator[Start]:
    started: list[ServiceProcess] = []

    async def launch(service: str, version: str, *args: str, ready: bool = True) -> ServiceProcess:
        process = await ServiceProcess.start(settings, service, version, *args, ready=ready)
        started.append(process)
        return process

    yield launch
    await asyncio.gather(*(p.close() for p in started))

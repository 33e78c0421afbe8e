"""The router with the real Redis and Mosquitto, services as separate processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from communicator import Settings
from communicator._registry import Registry
from communicator._keys import Keys
from communicator._plans import PlanStore, Pool, RoutePlan
from communicator._router import Router
from tests.communicator.fleet import ServiceProcess, running_router

pytestmark = pytest.mark.integration

Start = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
def settings(redis_url: str, mqtt_url: str, key_prefix: str, topic_prefix: str) -> Settings:
    return Settings(
        redis_url=redis_url, mqtt_url=mqtt_url, key_prefix=key_prefix, topic_prefix=topic_prefix,
        server_name="router_host",
    )  # fmt: skip


@pytest.fixture
async def router(settings: Settings, redis: Redis) -> AsyncIterator[Router]:
    async with running_router(settings, redis, cache_size=3, request_timeout=1.0) as router:
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


async def test_request_reaches_a_service_and_the_reply_comes_back(start: Start) -> None:
    """service/CMD goes to an instance; its reply returns to the requester with the sender filled in."""
    orders = await start("orders", "1.0", "--commands", "PLACE")
    front = await start("front", "2.0", "--server", "web_1")
    answer = await front.request("orders/PLACE item=book")
    assert answer["event"] == "reply"
    assert answer["message"]["command"] == "DONE"
    assert answer["message"]["parameters"]["by"] == "1.0"
    received = (await orders.expect("received"))["message"]
    assert received["sent_from_server"] == "web_1"
    assert received["sent_from_service"] == "front"
    assert received["parameters"]["item"] == "book"


async def test_named_server_and_service_broadcast(start: Start) -> None:
    """server:service reaches that server's instance; *:service reaches every instance."""
    a = await start("orders", "1.0", "--commands", "PLACE,RELOAD", "--server", "s1")
    b = await start("orders", "1.0", "--commands", "PLACE,RELOAD", "--server", "s2")
    front = await start("front", "1.0")
    for _ in range(3):
        answer = await front.request("s2:orders/PLACE")
        assert answer["event"] == "reply"
    await front.send("*:orders/RELOAD")
    await a.expect("received", lambda e: e["message"]["command"] == "RELOAD")
    await b.expect("received", lambda e: e["message"]["command"] == "RELOAD")
    assert len(b.received("PLACE")) == 3
    assert a.received("PLACE") == []


async def test_broadcasts_reach_only_accepting_instances(start: Start) -> None:
    """*, ? and . broadcasts reach accepting instances only, by zone or server, never the sender."""
    near = await start("cache", "1", "--commands", "FLUSH", "--server", "s1", "--zone", "z1")
    far = await start("search", "1", "--commands", "FLUSH", "--server", "s2", "--zone", "z2")
    deaf = await start("billing", "1", "--commands", "PAY", "--server", "s1", "--zone", "z1")
    sender = await start("admin", "1", "--commands", "FLUSH", "--server", "s1", "--zone", "z1")
    await sender.send("*/FLUSH scope=all")
    await near.expect("received", lambda e: e["message"]["parameters"] == {"scope": "all"})
    await far.expect("received", lambda e: e["message"]["parameters"] == {"scope": "all"})
    await sender.send("?/FLUSH scope=zone")
    await near.expect("received", lambda e: e["message"]["parameters"] == {"scope": "zone"})
    await sender.send("./FLUSH scope=server")
    await near.expect("received", lambda e: e["message"]["parameters"] == {"scope": "server"})
    # a last message to far proves the earlier ones were not merely late
    await sender.send("*:search/FLUSH scope=last")
    await far.expect("received", lambda e: e["message"]["parameters"] == {"scope": "last"})
    assert [m["parameters"]["scope"] for m in far.received()] == ["all", "last"]
    assert deaf.received() == []
    assert sender.received() == []


async def test_unknown_command_is_answered_by_the_router(start: Start) -> None:
    """A command the service does not accept gets UNKNOWN, and is not delivered."""
    orders = await start("orders", "1.0", "--commands", "PLACE")
    front = await start("front", "1.0")
    answer = await front.request("orders/REFUND")
    assert answer["event"] == "failed"
    assert "UNKNOWN" in answer["error"]
    assert orders.received() == []

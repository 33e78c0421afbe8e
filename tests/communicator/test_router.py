"""The router with the real Redis and Mosquitto, services as separate processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from unittest.mock import ANY

import pytest
from redis.asyncio import Redis

from communicator import (
    MessageDefinitions,
    PlanStore,
    Pool,
    RoutePlan,
    Router,
    RouterConfig,
    Settings,
)
from communicator.router._control import WILL_GRACE
from tests.communicator.conftest import CACHE_SIZE, Start
from tests.communicator.fleet import ServiceProcess, running_router

pytestmark = pytest.mark.integration


async def test_request_reaches_a_service_and_the_reply_comes_back(start: Start) -> None:
    """service/CMD goes to an instance; its reply returns to the requester, sender filled in."""
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


REPORTS = ("--commands", "TRANSMISSION_REPORT,SERVICE_UNAVAILABLE,STATUS")


def report(status: str) -> Callable[[dict[str, object]], bool]:
    return lambda e: (
        e["message"]["command"] == "TRANSMISSION_REPORT"
        and e["message"]["parameters"]["status"] == status
    )  # type: ignore[index]


async def test_cached_until_the_service_registers(start: Start) -> None:
    """A message for a service with no instance is cached, reported, delivered on registration."""
    front = await start("front", "1.0", *REPORTS)
    await front.send("later/WORK job=1;transmission_report=failure")
    await front.expect("received", report("cached"))
    later = await start("later", "1.0", "--commands", "WORK")
    message = (await later.expect("received"))["message"]
    assert message["parameters"]["job"] == "1"
    assert message["sent_from_service"] == "front"


async def test_cache_no_reports_a_failure(start: Start) -> None:
    """cache=no drops the message at once and says so."""
    front = await start("front", "1.0", *REPORTS)
    await front.send("nobody/WORK cache=no;transmission_report=failure")
    event = await front.expect("received", report("failed"))
    assert "cache=no" in event["message"]["parameters"]["reason"]
    await front.send("nobody/WORK cache=no")
    await front.expect("received", lambda e: e["message"]["command"] == "SERVICE_UNAVAILABLE")


async def test_cache_bound_drops_the_oldest_and_keeps_order(start: Start, router: Router) -> None:
    """Past the bound the oldest cached messages are dropped and reported; the rest keep order."""
    front = await start("front", "1.0", *REPORTS)
    await front.burst("later/WORK transmission_report=failure", CACHE_SIZE + 2)
    dropped = [await front.expect("received", report("failed")) for _ in range(2)]
    assert all("full cache" in e["message"]["parameters"]["reason"] for e in dropped)
    later = await start("later", "1.0", "--commands", "WORK")
    seqs = [
        int((await later.expect("received"))["message"]["parameters"]["seq"])
        for _ in range(CACHE_SIZE)
    ]
    assert seqs == list(range(2, CACHE_SIZE + 2))
    assert router.stats["cache_dropped"] == 2


async def test_newer_messages_queue_behind_cached_ones(start: Start) -> None:
    """While a sender has messages cached for a service, its newer ones queue behind them."""
    front = await start("front", "1.0")
    await front.send("later/WORK seq=0")
    later = await start("later", "1.0", "--commands", "WORK", ready=False)
    for seq in range(1, 20):
        await front.send(f"later/WORK seq={seq}")
    await later.expect("ready")
    seqs = [
        int((await later.expect("received"))["message"]["parameters"]["seq"]) for _ in range(20)
    ]
    assert seqs == list(range(20))


async def test_killed_service_is_recorded_as_a_failure(start: Start, router: Router) -> None:
    """A service process that dies is reported by its will: a disconnect failure and STATUS down."""
    watcher = await start("watch", "1.0", *REPORTS)
    victim = await start("victim", "3.1", "--commands", "WORK")
    await watcher.expect(
        "received", lambda e: e["message"]["parameters"].get("service") == "victim"
    )
    await victim.crash()
    down = await watcher.expect(
        "received",
        lambda e: (
            e["message"]["command"] == "STATUS" and e["message"]["parameters"]["status"] == "down"
        ),
    )
    assert down["message"]["parameters"]["version"] == "3.1"
    assert await router.registry.instances("victim") == []
    deadline = time.monotonic() + WILL_GRACE + 5
    while not await router.registry.failures("victim"):  # counted after the will's grace
        assert time.monotonic() < deadline, "the disconnect was never recorded"
        await asyncio.sleep(0.1)
    [failure] = await router.registry.failures("victim")
    assert failure.kind == "disconnect"
    assert failure.version == "3.1"
    assert await router.registry.instances("victim") == []


async def test_strict_mode_refuses_invalid_messages(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """Strict mode: a message breaking its definition gets INVALID, every problem, no delivery."""
    (tmp_path / "PLACE.yaml").write_text(
        "command: PLACE\ndescription: Place an order.\nparameters:\n"
        "  qty:\n    description: how many\n    required: true\n"
        "    value: {type: integer, min: 1}\n"
    )
    (tmp_path / "DONE.yaml").write_text(  # strict: the reply needs a definition too
        "command: DONE\ndescription: Done.\nparameters:\n  by:\n    description: the version\n"
    )
    router = Router(
        settings=settings,
        redis=redis,
        definitions=MessageDefinitions.load(tmp_path),
        config=RouterConfig(strict=True),
    )
    task = asyncio.create_task(router.run())
    started: list[ServiceProcess] = []
    try:
        await asyncio.wait_for(router.ready.wait(), 10)
        orders = await ServiceProcess.start(settings, "orders", "1", "--commands", "PLACE")
        front = await ServiceProcess.start(settings, "front", "1")
        started += [orders, front]
        answer = await front.request("orders/PLACE qty=zero;colour=red")
        assert "INVALID" in answer["error"]
        assert "qty: 'zero' is not an integer" in answer["error"]
        assert "colour: not a parameter of PLACE" in answer["error"]
        assert (await front.request("orders/PLACE qty=2"))["event"] == "reply"
        delivered = (await orders.expect("received"))["message"]["parameters"]
        assert delivered == {"qty": "2", "message_id": ANY, "timeout": ANY}
        assert len(orders.received("PLACE")) == 1
    finally:
        await asyncio.gather(*(p.close() for p in started))
        router.stop()
        await task


async def test_plan_change_reaches_every_router(settings: Settings, redis: Redis) -> None:
    """A route plan written by a strategy is applied by every communicator within a round trip."""
    plan = RoutePlan(
        pools=[Pool(version="1", weight=90), Pool(version="2", weight=10)], reason="canary 10%"
    )
    async with running_router(settings, redis) as first, running_router(settings, redis) as second:
        routers = (first, second)
        written = time.monotonic()
        await PlanStore(redis=redis, keys=first.keys).set("orders", plan)
        while not all(r.directory.plan("orders") == plan for r in routers):
            assert time.monotonic() - written < 2, "plan not applied"
            await asyncio.sleep(0.001)
        applied = time.monotonic() - written
    assert applied < 0.5


async def test_outcomes_and_latencies_are_measured(start: Start, router: Router) -> None:
    """Replies add to the replier version's running totals and latency samples, read by analysis."""
    before = await router.measurements.totals("orders", "1.0")
    await start("orders", "1.0", "--commands", "PLACE")
    front = await start("front", "1.0")
    for _ in range(5):
        assert (await front.request("orders/PLACE"))["event"] == "reply"
    deadline = time.monotonic() + 5
    while True:  # successes and latencies are flushed every 0.2 s
        after = await router.measurements.totals("orders", "1.0")
        latencies = await router.measurements.latencies("orders", "1.0", since=before.at)
        if after.since(before).get("success") == 5 and len(latencies) == 5:
            break
        assert time.monotonic() < deadline, (after, latencies)
        await asyncio.sleep(0.05)
    assert all(0 < latency < 5 for latency in latencies)

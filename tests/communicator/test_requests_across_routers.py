"""Requests and replies routed by two different communicators are still judged.

Two routers in this process share the partitions; the requester's partition
belongs to one, the replier's to the other. Services are processes, on the
real Redis and Mosquitto.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiomqtt
import pytest
from redis.asyncio import Redis

from communicator import Settings
from communicator.backends._settings import parse_mqtt_url
from communicator.router._partitions import partition_of
from communicator.router._router import Router
from tests.communicator.fleet import ServiceProcess, running_router
from tests.conftest import eventually

pytestmark = pytest.mark.integration
Launch = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
async def routers(settings: Settings, redis: Redis) -> AsyncIterator[tuple[Router, Router]]:
    """Two routers that split the partitions (the first hands half over to the second)."""
    async with (
        running_router(settings, redis, request_timeout=1.0) as first,
        running_router(settings, redis, request_timeout=1.0) as second,
    ):

        async def shared() -> bool:
            return len(first.table.owned()) == len(second.table.owned()) == 16

        await eventually(shared, "16 partitions each")
        yield first, second


@pytest.fixture
async def launch(settings: Settings) -> AsyncIterator[Launch]:
    started: list[ServiceProcess] = []

    async def start(owner: Router, service: str, version: str, *args: str) -> ServiceProcess:
        """Start an instance whose client id falls in a partition ``owner`` holds."""
        client_id = next(
            cid
            for n in itertools.count()
            if owner.table.owns(partition_of(cid := f"{service}_{n}_{time.time_ns()}", 32))
        )
        process = await ServiceProcess.start(
            settings, service, version, "--client-id", client_id, *args
        )
        started.append(process)
        return process

    yield start
    await asyncio.gather(*(p.close() for p in started))


async def test_replies_seen_by_the_other_router_count_as_successes_with_latencies(
    routers: tuple[Router, Router], launch: Launch
) -> None:
    """The requester's router hands the watch over; the replier's counts successes and latency."""
    first, second = routers
    before = await first.measurements.totals("orders", "1.0")
    await launch(second, "orders", "1.0", "--commands", "PLACE")
    front = await launch(first, "front", "1.0")
    for _ in range(10):
        assert (await front.request("orders/PLACE"))["event"] == "reply"

    async def measured() -> bool:
        after = await first.measurements.totals("orders", "1.0")
        latencies = await first.measurements.latencies("orders", "1.0", since=before.at)
        return after.since(before).get("success") == 10 and len(latencies) == 10

    await eventually(measured, "10 successes and 10 latencies")
    latencies = await first.measurements.latencies("orders", "1.0", since=before.at)
    assert all(0 < latency < 5 for latency in latencies)
    assert first.requests.handed == 10
    assert second.requests.taken == 10
    assert len(first.tracker) == len(second.tracker) == 0  # nothing left waiting


async def test_error_replies_and_timeouts_across_routers(
    routers: tuple[Router, Router], launch: Launch
) -> None:
    """An ERROR reply and a request never answered are recorded by the replier's router."""
    first, second = routers
    await launch(second, "grumpy", "0.9", "--commands", "ASK", "--behaviour", "error")
    await launch(second, "mute", "0.1", "--commands", "ASK", "--behaviour", "silent")
    front = await launch(first, "front", "1.0")
    assert "ERROR" in (await front.request("grumpy/ASK"))["error"]
    assert "no reply" in (await front.request("mute/ASK", timeout=0.5))["error"]

    async def recorded() -> bool:
        kinds = {
            (f.service, f.version, f.kind)
            for service in ("grumpy", "mute")
            for f in await first.registry.failures(service)
        }
        return kinds == {("grumpy", "0.9", "error_reply"), ("mute", "0.1", "timeout")}

    await eventually(recorded, "error_reply and timeout recorded")
    assert second.requests.taken == 2


async def test_a_reply_that_overtakes_its_hand_off_waits_for_it(
    routers: tuple[Router, Router], launch: Launch
) -> None:
    """A reply that comes before its hand-off is held, then judged and delivered when it comes."""
    first, second = routers
    await launch(second, "orders", "1.0", "--commands", "PLACE")
    front = await launch(first, "front", "1.0")
    before = await first.measurements.totals("orders", "1.0")
    held: list[tuple[int, bytes]] = []
    take = second.requests.take

    async def late(partition: int, payload: bytes) -> None:
        held.append((partition, payload))  # the hand-off is slow: keep it for now

    second.requests.take = late  # type: ignore[method-assign]
    await front.order(request="orders/PLACE", timeout=5)

    async def reply_held() -> bool:
        return len(held) == 1 and len(second.requests._orphans) == 1

    await eventually(reply_held, "the reply held back")
    second.requests.take = take  # type: ignore[method-assign]
    await second.requests.take(*held[0])
    assert second.requests.matched_late == 1
    answer = await front._answer(5)
    assert answer["event"] == "reply", answer
    assert answer["message"]["parameters"]["by"] == "1.0"

    async def measured() -> bool:
        after = await first.measurements.totals("orders", "1.0")
        return after.since(before).get("success") == 1

    await eventually(measured, "1 success")


async def test_a_held_reply_without_a_hand_off_is_routed_by_address(
    routers: tuple[Router, Router], launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply whose hand-off never comes is not lost: after a while it goes by its address."""
    first, second = routers
    monkeypatch.setattr("communicator.router._requests.ORPHAN_SECONDS", 0.3)
    listener = await launch(first, "listener", "1.0", "--commands", "NOTE")
    talker = await launch(second, "talker", "1.0")
    # A reply to a request this router never saw (nor will hear of): in_reply_to, no hand-off.
    await talker.send("listener/NOTE in_reply_to=nobody_asked")
    event = await listener.expect("received", timeout=5)
    assert event["message"]["command"] == "NOTE"


async def test_malformed_hand_offs_are_ignored(
    routers: tuple[Router, Router], launch: Launch, settings: Settings
) -> None:
    """Garbage on the track topics (a partition out of range, not JSON, wrong shapes) is
    logged and dropped; both routers keep routing requests."""
    first, second = routers
    address = parse_mqtt_url(settings.mqtt_url or "")
    track = f"{settings.topic_prefix}track/"
    async with aiomqtt.Client(address.host, address.port, identifier="forger") as forger:
        for partition in range(32):
            await forger.publish(f"{track}{partition}", b"not json", qos=1)
            await forger.publish(f"{track}{partition}", b'{"a": 1}', qos=1)
            await forger.publish(f"{track}{partition}", b'[7, "abcdefghij", [1, 2], {}]', qos=1)
        await forger.publish(f"{track}99", b"[]", qos=1)
        await forger.publish(f"{track}\u00b2", b"[]", qos=1)
    await launch(second, "orders", "1.0", "--commands", "PLACE")
    front = await launch(first, "front", "1.0")
    assert (await front.request("orders/PLACE"))["event"] == "reply"
    assert second.requests.taken == 1  # the real hand-off only


async def test_probes_are_delivered_but_never_judged(
    routers: tuple[Router, Router], launch: Launch
) -> None:
    """CLOCK, ALIVE and HELP say nothing of a version's work: answered or not, nothing counts.

    The clock check sends CLOCK to every server; were it judged, it would add fast
    successes to the latencies analysis compares, and a silent instance's CLOCK
    would count as a timeout against its version.
    """
    first, second = routers
    before = await first.measurements.totals("orders", "1.0")
    await launch(second, "orders", "1.0", "--commands", "PLACE")
    await launch(second, "mute", "0.1", "--commands", "CLOCK,ASK", "--behaviour", "silent")
    front = await launch(first, "front", "1.0")
    for line in ("orders/CLOCK sent_at=1", "orders/ALIVE", "orders/HELP"):
        answer = await front.request(line)
        assert answer["event"] == "reply", answer  # delivered at once, not held
    assert "no reply" in (await front.request("mute/CLOCK sent_at=1", timeout=0.5))["error"]
    assert "no reply" in (await front.request("mute/ASK", timeout=0.5))["error"]  # judged
    assert (await front.request("orders/PLACE"))["event"] == "reply"  # judged

    async def judged() -> bool:
        counted = (await first.measurements.totals("orders", "1.0")).since(before)
        return counted.get("success") == 1 and bool(await first.registry.failures("mute"))

    await eventually(judged, "the judged request's success and the judged timeout")
    (timeout,) = await first.registry.failures("mute")  # the ASK's; the CLOCK's is not there
    assert timeout.kind == "timeout"
    assert (await first.measurements.totals("orders", "1.0")).since(before) == {"success": 1}
    assert second.requests.taken == 6  # every watch crossed: the probes' too, marked unjudged


def test_hand_offs_of_older_peers_are_judged() -> None:
    """An entry without the judged field (a communicator before it) is judged, as it was."""
    from communicator.router._requests import _watch

    entry = ["orders_1", "m1", "front_1", "orders", "1.0", "orders_1", "web_01", 1.0, 2.0]
    assert _watch(entry) == (*entry, True)
    assert _watch([*entry, 0]) == (*entry, False)
    assert _watch([*entry, 1]) == (*entry, True)

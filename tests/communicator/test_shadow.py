"""Shadow traffic with the real Redis and Mosquitto, services as separate processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Mirror, PlanStore, Pool, RoutePlan, Router
from strategies import shadow_report
from tests.communicator.conftest import Start

pytestmark = pytest.mark.integration


def mirror_report(router: Router, service: str, version: str) -> dict[str, Any]:
    """One router's report of a mirror, as the shadow strategy judges it."""
    return shadow_report([router.shadow.data((service, version))])


WAIT = 10.0


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something true, or fail saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.02)
    return result


async def use_plan(router: Router, service: str, plan: RoutePlan) -> None:
    """Write a route plan, and wait until the router applies it."""
    await PlanStore(redis=router.redis, keys=router.keys).set(service, plan)
    await until(lambda: router.directory.plan(service) == plan, "the plan change")


def mirrored(*mirrors: Mirror) -> RoutePlan:
    """Primary traffic to version 1 of the service, mirrored as given."""
    return RoutePlan(pools=[Pool(version="1", weight=1)], mirrors=list(mirrors))


def adds_up(counts: dict[str, int]) -> bool:
    """Every candidate copy is accounted for exactly once."""
    return counts["candidates"] == (
        counts["sent"] + counts["dropped_busy"] + counts["dropped_bound"] + counts["failed"]
    )


async def test_copies_reach_the_shadow_and_its_replies_reach_nobody(
    start: Start, router: Router
) -> None:
    """Each message goes to the primary and a copy to the shadow; only the primary answers."""
    primary = await start("orders", "1", "--commands", "PLACE")
    shadow = await start("orders", "2", "--commands", "PLACE")
    front = await start("front", "1", "--commands", "DONE,ERROR")  # would show a leaked reply
    await use_plan(router, "orders", mirrored(Mirror(version="2")))
    for n in range(5):
        answer = await front.request(f"orders/PLACE n={n}")
        assert answer["message"]["parameters"]["by"] == "1"
        copy = (await shadow.expect("received"))["message"]
        assert copy["parameters"]["n"] == str(n)
        assert copy["parameters"]["message_id"].startswith("~shadow.")
        assert copy["sent_from_service"] == "front"
    await front.send("orders/PLACE oneway=yes")  # one-way: copied, nothing in flight
    await shadow.expect("received", lambda e: "oneway" in e["message"]["parameters"])
    report = await until(
        lambda: (r := mirror_report(router, "orders", "2"))["outcomes"]["replied"] == 5 and r,
        "five shadow replies",
    )
    assert report["counts"] == {
        "candidates": 6,
        "sent": 6,
        "dropped_busy": 0,
        "dropped_bound": 0,
        "failed": 0,
    }
    assert report["outcomes"]["one_way"] == 1
    assert report["inflight"] == 0
    for _ in range(6):
        await primary.expect("received")
    assert front.received() == []  # the shadow's five replies never came to the requester


async def test_a_stalled_shadow_drops_copies_and_never_slows_the_primary(
    start: Start, router: Router
) -> None:
    """A shadow that sleeps fills its bound; further copies drop while every reply is prompt."""
    await start("orders", "1", "--commands", "PLACE")
    await start("orders", "2", "--commands", "PLACE", "--delay", "8")
    front = await start("front", "1")
    await use_plan(router, "orders", mirrored(Mirror(version="2", max_inflight=2)))
    for _ in range(10):
        started = time.monotonic()
        assert (await front.request("orders/PLACE", timeout=3))["event"] == "reply"
        assert time.monotonic() - started < 1.0
    counts = mirror_report(router, "orders", "2")["counts"]
    assert counts == {
        "candidates": 10,
        "sent": 2,
        "dropped_busy": 0,
        "dropped_bound": 8,
        "failed": 0,
    }
    assert router.shadow.inflight("orders", "2") == 2


async def test_busy_shadow_gets_no_copies_until_free_again(start: Start, router: Router) -> None:
    """BUSY from the shadow drops its copies (counted), BUSY busy=false resumes them."""
    await start("orders", "1", "--commands", "PLACE")
    shadow = await start("orders", "2", "--commands", "PLACE")
    front = await start("front", "1")
    await use_plan(router, "orders", mirrored(Mirror(version="2")))
    await shadow.order(busy=True, **{"for": "60s"})
    await shadow.expect("sent")
    await until(lambda: router.busy.busy() == [shadow.client_id], "the BUSY")
    for _ in range(3):
        assert (await front.request("orders/PLACE"))["event"] == "reply"
    await shadow.order(busy=False)
    await shadow.expect("sent")
    await until(lambda: not router.busy.busy(), "the end of BUSY")
    assert (await front.request("orders/PLACE last=1"))["event"] == "reply"
    await shadow.expect("received", lambda e: "last" in e["message"]["parameters"])
    assert shadow.received("PLACE") == [shadow.received("PLACE")[-1]]
    counts = mirror_report(router, "orders", "2")["counts"]
    assert counts["dropped_busy"] == 3
    assert counts["sent"] == 1
    assert adds_up(counts)


async def test_accounting_adds_up_exactly_under_overload(
    start: Start, router: Router, redis: Redis
) -> None:
    """Under a load well past the bound, copies drop, in flight stays bounded, counts add up."""
    events = redis.pubsub()
    await events.subscribe(router.keys.events())
    await start("orders", "1", "--commands", "PLACE")
    await start("orders", "2", "--commands", "PLACE", "--delay", "0.3")
    front = await start("front", "1")
    await use_plan(router, "orders", mirrored(Mirror(version="2", max_inflight=4)))
    await front.order(load="orders/PLACE", rate=150)
    await until(
        lambda: mirror_report(router, "orders", "2")["counts"]["candidates"] >= 200,
        "200 candidate copies",
    )
    await front.order(stop_load=True)
    tally = await front.expect("load_stopped")
    counts = mirror_report(router, "orders", "2")["counts"]
    assert adds_up(counts), counts
    assert counts["dropped_bound"] > counts["sent"] > 0
    assert counts["failed"] == counts["dropped_busy"] == 0
    assert tally["failed"] == 0
    assert router.shadow.data(("orders", "2"))["peak_inflight"] == 4
    # Dropping most copies is announced once (the controller raises a status flag for it).
    async with asyncio.timeout(5):
        while True:
            item = await events.get_message(ignore_subscribe_messages=True, timeout=1)
            if item and json.loads(item["data"])["type"] == "shadow_dropping":
                break
    await events.aclose()


async def test_comparison_reports_real_differences_above_the_noise(
    start: Start, router: Router
) -> None:
    """A field the shadow changes is reported, with examples; one noisy between primaries is not."""
    for _ in range(2):
        await start("orders", "1", "--commands", "PLACE", "--noisy")
    await start("orders", "2", "--commands", "PLACE", "--noisy", "--by", "1", "--tag", "new")
    front = await start("front", "1")
    await use_plan(router, "orders", mirrored(Mirror(version="2", compare=True)))
    # Twelve, not six: one comparison in a CI run once saw the two primaries agree on
    # the noisy field (under investigation); the margin absorbs one such outlier in twelve.
    for n in range(12):
        assert (await front.request(f"orders/PLACE n={n}"))["event"] == "reply"
    report = await until(
        lambda: (r := mirror_report(router, "orders", "2"))["compared"] == 12 and r,
        "twelve comparisons",
    )
    assert set(report["differences"]) == {"parameters.tag"}
    assert report["differences"]["parameters.tag"]["shadow_rate"] == 1.0
    assert "parameters.at" in report["noise"]
    assert "parameters.by" not in report["differences"]
    example = report["examples"][0]
    assert "tag" not in example["primary"]["parameters"]
    assert example["shadow"]["parameters"]["tag"] == "new"
    assert report["incomplete"] == 0


async def test_shadow_failures_count_against_the_shadow_version_only(
    start: Start, router: Router
) -> None:
    """ERROR replies and timeouts of shadows are failures of their versions, never the primary's."""
    await start("orders", "1", "--commands", "PLACE")
    await start("orders", "2", "--commands", "PLACE", "--behaviour", "error")
    await start("orders", "3", "--commands", "PLACE", "--behaviour", "silent")
    front = await start("front", "1")
    before = await router.measurements.totals("orders", "1")
    await use_plan(router, "orders", mirrored(Mirror(version="2"), Mirror(version="3")))
    for _ in range(2):
        answer = await front.request("orders/PLACE", timeout=1)
        assert answer["message"]["command"] == "DONE"

    async def kinds() -> set[tuple[str, str]]:
        return {(f.version, f.kind) for f in await router.registry.failures("orders")}

    deadline = time.monotonic() + WAIT
    while await kinds() != {("2", "error_reply"), ("3", "timeout")}:
        assert time.monotonic() < deadline, await kinds()
        await asyncio.sleep(0.05)
    assert mirror_report(router, "orders", "2")["outcomes"]["error_reply"] == 2
    await until(
        lambda: mirror_report(router, "orders", "3")["outcomes"]["timeout"] == 2, "two timeouts"
    )
    deadline = time.monotonic() + WAIT
    while (await router.measurements.totals("orders", "1")).since(before).get("success") != 2:
        assert time.monotonic() < deadline, "primary successes not flushed"
        await asyncio.sleep(0.05)
    primary = (await router.measurements.totals("orders", "1")).since(before)
    assert {k: n for k, n in primary.items() if n and k != "success"} == {}

"""``deployctl shadow`` against a running router, the real Redis and Mosquitto."""

from __future__ import annotations

import time

import pytest

from communicator import Pool, RoutePlan, Router
from tests.communicator.conftest import Start
from tests.communicator.test_shadow import until
from tests.conftest import deployctl_json as cli

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cli_env")]


async def test_start_status_report_stop(start: Start, router: Router) -> None:
    """start mirrors (pinning the primary to the running version), status and report count, stop."""
    await start("orders", "1", "--commands", "PLACE")
    shadow = await start("orders", "2", "--commands", "PLACE", "--tag", "new", "--by", "1")
    front = await start("front", "1")
    started = await cli("shadow", "start", "orders", "--version", "2", "--compare")
    (mirror,) = started["plan"]["mirrors"]
    assert time.time() - mirror.pop("started_at") < 10
    assert mirror == {"version": "2", "percent": 100.0, "max_inflight": 100, "compare": True}
    await until(lambda: router.directory.plan("orders").mirrors, "the mirror in the plan")
    assert router.directory.plan("orders").pools == []  # the mirror's version is left out anyway
    for _ in range(4):
        answer = await front.request("orders/PLACE")
        assert "tag" not in answer["message"]["parameters"]  # never the shadow's reply
    for _ in range(4):
        await shadow.expect("received")
    deadline = time.monotonic() + 10
    while True:  # each router writes its counts to Redis every 0.2 s
        status = await cli("shadow", "status", "orders")
        counted = status["counts"].get("2", {"outcomes": {}})["outcomes"].get("replied")
        report = (await cli("shadow", "report", "orders"))["reports"]["2"] if counted else {}
        if counted == 4 and report["compared"] == 4:
            break
        assert time.monotonic() < deadline, (status, report)
    assert status["mirrors"][0]["version"] == "2"
    assert status["counts"]["2"]["counts"]["sent"] == 4
    assert status["counts"]["2"]["drop_rates"]["dropped_bound"] == 0
    assert set(report["differences"]) == {"parameters.tag"}
    assert report["examples"][0]["shadow"]["parameters"]["tag"] == "new"
    stopped = await cli("shadow", "stop", "orders")
    assert stopped["stopped"] == ["2"]
    await until(lambda: not router.directory.plan("orders").mirrors, "the mirror's removal")
    await cli("shadow", "stop", "orders", code=1)
    assert (await cli("shadow", "report", "orders"))["reports"]["2"]["compared"] == 4  # kept

    # Mirroring again starts a new report: the first one's counts are not mixed in.
    await cli("shadow", "start", "orders", "--version", "2")
    await until(lambda: router.directory.plan("orders").mirrors, "the mirror in the plan")
    assert (await front.request("orders/PLACE"))["event"] == "reply"
    await shadow.expect("received")
    deadline = time.monotonic() + 10
    while True:
        again = (await cli("shadow", "report", "orders"))["reports"]["2"]
        if again["since"] > report["since"] and again["counts"]["sent"] == 1:
            break
        assert time.monotonic() < deadline, again
    assert again["compared"] == 0


async def test_start_refuses_a_version_taking_primary_traffic(router: Router) -> None:
    """A version in the plan's pools cannot be a shadow; with nothing running, nothing to mirror."""
    await cli("shadow", "start", "orders", "--version", "2", code=1)  # nothing runs
    assert await router.plans.get("orders") is None
    canary = RoutePlan(pools=[Pool(version="1", weight=90), Pool(version="2", weight=10)])
    await router.plans.set("orders", canary)
    refused = await cli("shadow", "start", "orders", "--version", "2", code=1)
    assert "primary traffic" in refused["error"]
    assert await router.plans.get("orders") == canary

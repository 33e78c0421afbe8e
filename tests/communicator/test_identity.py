"""Who may speak for whom: trusted reporters, and instance names whose holder died."""

from __future__ import annotations

import os
import signal

import pytest
from redis.asyncio import Redis

from communicator import Message, Registry, ServiceDefinition, Settings
from communicator.backends._keys import Keys
from communicator.router._router import Router
from tests.communicator.conftest import Start

pytestmark = pytest.mark.integration


@pytest.fixture
def service_definitions() -> dict[str, ServiceDefinition]:
    return {
        "monitor": ServiceDefinition(
            name="monitor", description="health checker", trusted_reporter=True
        )
    }


async def failures(redis: Redis, settings: Settings, service: str) -> dict[str, int]:
    registry = Registry(redis=redis, keys=Keys(settings.key_prefix))
    return {v.version: v.counts["failure"] for v in await registry.versions(service)}


async def test_a_trusted_reporter_reports_another_services_known_version(
    start: Start, router: Router, redis: Redis, settings: Settings
) -> None:
    await start("web", "1.0", "--commands", "GET")
    monitor = await start("monitor", "1.0")
    prober = await start("prober", "1.0")
    await monitor.send("FAILURE service=web;version=1.0;reason=health check failed")
    await monitor.send("FAILURE service=web;version=9.9;reason=no such version")
    # Routed after both FAILUREs (one sender, one partition, in order).
    assert (await prober.request("web/GET", timeout=2))["event"] == "reply"
    assert await failures(redis, settings, "web") == {"1.0": 1}


async def test_a_dead_holders_instance_name_goes_to_the_new_claimant(
    start: Start, router: Router
) -> None:
    stalled = await start("web", "1.0", "--commands", "GET", "--instance", "web1")
    os.kill(stalled.process.pid, signal.SIGSTOP)  # alive for the broker, deaf to ALIVE
    try:
        fresh = await start("web", "1.1", "--commands", "GET", "--instance", "web1")
        names = {(i.instance, i.client_id) for i in router.directory.instances("web")}
        assert names == {("web1", fresh.client_id)}
        prober = await start("prober", "1.0")
        for _ in range(5):
            assert (await prober.request("web/GET", timeout=2))["event"] == "reply"
            got = await fresh.expect("received", timeout=2)  # the stalled one gets none
            assert got["message"]["command"] == "GET"
    finally:
        os.kill(stalled.process.pid, signal.SIGCONT)


def test_a_reply_to_the_communicator_goes_to_no_address() -> None:
    """Addressed to ``<server>:communicator`` it would wait in the cache: nobody registers so."""
    probe = Message(command="ALIVE", sent_from_server="vm", sent_from_service="communicator")
    answer = probe.reply("ABSOLUTELY")
    assert (answer.server, answer.service) == ("", "")
    request = Message(command="GET", sent_from_server="vm", sent_from_service="front")
    assert (request.reply("DONE").server, request.reply("DONE").service) == ("vm", "front")

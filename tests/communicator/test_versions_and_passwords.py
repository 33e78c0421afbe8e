"""Versions cut off by their failures, reinstated; passwords required, refused, throttled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from communicator import InvalidationPolicy, Router, ServiceDefinition
from tests.communicator.conftest import Start

pytestmark = pytest.mark.integration


@pytest.fixture
def service_definitions() -> dict[str, ServiceDefinition]:
    return {
        "vault": ServiceDefinition(
            name="vault", description="Keeps secrets.", commands=["GET"], password_required=True
        )
    }


@pytest.fixture
async def events(redis: Redis, router: Router) -> AsyncIterator[asyncio.Queue[dict[str, object]]]:
    """Registry events as they are published."""
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    pubsub = redis.pubsub()
    await pubsub.subscribe(router.keys.events())

    async def pump() -> None:
        async for item in pubsub.listen():
            if item["type"] == "message":
                await queue.put(json.loads(item["data"]))

    task = asyncio.create_task(pump())
    yield queue
    task.cancel()
    await pubsub.aclose()


async def next_event(events: asyncio.Queue[dict[str, object]], kind: str) -> dict[str, object]:
    while True:
        event = await asyncio.wait_for(events.get(), 10)
        if event["type"] == kind:
            return event


async def test_failing_version_is_cut_off_then_reinstated(
    start: Start, router: Router, events: asyncio.Queue[dict[str, object]]
) -> None:
    """A version crossing its policy gets no traffic and is refused at REGISTER until reinstated."""
    policy = InvalidationPolicy(min_failures=3, max_failure_rate=0.0, crash_loop=0)
    await router.registry.set_policy("orders", policy, version="2.0")
    await start("orders", "1.0", "--commands", "PLACE")
    canary = await start("orders", "2.0", "--commands", "PLACE")
    front = await start("front", "1.0")
    for n in range(3):
        await canary.order(fail=f"database unreachable #{n}")
    event = await next_event(events, "version_invalidated")
    assert (event["service"], event["version"]) == ("orders", "2.0")
    assert event["evidence"]
    for _ in range(20):
        answer = await front.request("orders/PLACE")
        assert answer["message"]["parameters"]["by"] == "1.0"
    restarted = await start("orders", "2.0", "--commands", "PLACE", ready=False)
    refused = await restarted.expect("refused")
    assert refused["reason"] == "version_invalid"

    assert await router.registry.reinstate("orders", "2.0", "fixed the database")
    await next_event(events, "version_reinstated")
    await start("orders", "2.0", "--commands", "PLACE")
    answered = {
        (await front.request("orders/PLACE"))["message"]["parameters"]["by"] for _ in range(40)
    }
    assert answered == {"1.0", "2.0"}


async def test_error_replies_and_timeouts_are_recorded(start: Start, router: Router) -> None:
    """An ERROR reply counts as error_reply, a request left unanswered as timeout."""
    await start("grumpy", "0.9", "--commands", "ASK", "--behaviour", "error")
    await start("mute", "0.1", "--commands", "ASK", "--behaviour", "silent")
    front = await start("front", "1.0")
    answer = await front.request("grumpy/ASK")
    assert "ERROR" in answer["error"]
    answer = await front.request("mute/ASK", timeout=0.3)
    assert "no reply" in answer["error"]
    for _ in range(100):  # the router's sweep runs every 0.2 s
        kinds = {
            (f.service, f.version, f.kind)
            for s in ("grumpy", "mute")
            for f in await router.registry.failures(s)
        }
        if len(kinds) == 2:
            break
        await asyncio.sleep(0.05)
    assert kinds == {("grumpy", "0.9", "error_reply"), ("mute", "0.1", "timeout")}


async def test_password_required_wrong_and_right(start: Start, router: Router) -> None:
    """A service defined as needing a password: none set, missing, wrong, then right."""
    first = await start("vault", "1", "--commands", "GET", ready=False)
    assert (await first.expect("refused"))["reason"] == "no_password_set"
    await router.passwords.set_password("vault", "s3cret")
    missing = await start("vault", "1", "--commands", "GET", ready=False)
    assert (await missing.expect("refused"))["reason"] == "password_required"
    wrong = await start("vault", "1", "--commands", "GET", "--password", "guess", ready=False)
    assert (await wrong.expect("refused"))["reason"] == "bad_password"
    await start("vault", "1", "--commands", "GET", "--password", "s3cret")


async def test_repeated_bad_passwords_are_throttled(
    start: Start, router: Router, events: asyncio.Queue[dict[str, object]]
) -> None:
    """The 5th bad password from a client starts a block (even the right one fails) and an event."""
    await router.passwords.set_password("vault", "s3cret")
    reasons = []
    for n in range(5):
        attempt = await start(
            "vault", "1", "--password", f"guess{n}", "--client-id", "intruder", ready=False
        )
        reasons.append((await attempt.expect("refused"))["reason"])
    assert reasons == ["bad_password"] * 4 + ["throttled"]
    event = await next_event(events, "bad_passwords")
    assert event["service"] == "vault"
    blocked = await start(
        "vault", "1", "--password", "s3cret", "--client-id", "intruder", ready=False
    )
    refused = await blocked.expect("refused")
    assert refused["reason"] == "throttled"
    assert refused["retry_after"] > 0
    await start("vault", "1", "--password", "s3cret", "--client-id", "honest")

"""Status flags: the model's refusals, and raising and lowering them in a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from flags._keys import FlagKeys
from flags._status import StatusFlag, StatusFlagError, StatusFlags, parse_flag_id

pytestmark = pytest.mark.integration

EVENT_TIMEOUT = 5.0
HELP = "Version 1.1 of orders gets no traffic; fix it, then run `deployctl version reinstate`."
HELP_URI = "https://deployctl.dev/docs/operations#version-invalidated"


def flag(flag_id: str = "versions/orders/invalid-1_1", **fields: Any) -> StatusFlag:
    """A valid flag with plausible defaults."""
    defaults: dict[str, Any] = {"message": "1.1 failed 5 times", "help": HELP, "help_uri": HELP_URI}
    return StatusFlag.from_id(flag_id, **(defaults | fields))


@pytest.fixture
def store(redis: Redis, key_prefix: str) -> StatusFlags:
    """The status flags in this test's key space."""
    return StatusFlags(redis=redis, keys=FlagKeys(key_prefix))


@pytest.fixture
async def announcements(redis: Redis, store: StatusFlags) -> AsyncIterator[PubSub]:
    """A subscription to the status events channel, confirmed before the test goes on."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.status_events())
    async with asyncio.timeout(EVENT_TIMEOUT):
        while (await pubsub.get_message(timeout=EVENT_TIMEOUT) or {}).get("type") != "subscribe":
            pass
    try:
        yield pubsub
    finally:
        await pubsub.aclose()


async def next_announcement(pubsub: PubSub) -> dict[str, Any]:
    """The next announcement, or fail after a timeout."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                data: dict[str, Any] = json.loads(message["data"])
                return data


# -- the model ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["help", "help_uri"])
def test_help_and_help_uri_are_required_with_an_example(missing: str) -> None:
    """A flag without help or help_uri is refused, and the error shows how to write them."""
    fields: dict[str, Any] = {"message": "m", "help": HELP, "help_uri": HELP_URI}
    del fields[missing]
    with pytest.raises(ValidationError) as caught:
        StatusFlag(unit="a", section="b", name="c", **fields)
    text = str(caught.value)
    assert f"needs {missing}" in text
    assert 'help_uri="https://deployctl.dev/docs/' in text


def test_blank_help_is_refused() -> None:
    """Help made of spaces says nothing, so it is refused."""
    with pytest.raises(ValidationError, match="help must say what to do"):
        flag(help="   ")


@pytest.mark.parametrize("uri", ["docs/operations.md", "ftp://example.com/x", "https:///x"])
def test_help_uri_must_be_an_absolute_http_url(uri: str) -> None:
    """A relative, non-http or host-less help_uri is refused."""
    with pytest.raises(ValidationError, match="absolute http"):
        flag(help_uri=uri)


@pytest.mark.parametrize("bad", ["Orders", "a:b", "", "x" * 65, "a.b"])
def test_id_parts_are_lowercase_words(bad: str) -> None:
    """unit, section and name only hold a-z, 0-9, _ and -."""
    with pytest.raises(ValidationError):
        StatusFlag(unit="a", section=bad, name="c", message="m", help=HELP, help_uri=HELP_URI)


@pytest.mark.parametrize("text", ["a/b", "a/b/c/d", "a/B/c", "a//c"])
def test_malformed_ids_are_refused_with_an_example(text: str) -> None:
    """An id is three parts; the error says how to write one."""
    with pytest.raises(StatusFlagError, match="UNIT/SECTION/NAME") as caught:
        parse_flag_id(text)
    assert caught.value.flag_id == text


@pytest.mark.parametrize("priority", [-1, 101])
def test_priority_is_0_to_100(priority: int) -> None:
    """A priority out of 0-100 is refused."""
    with pytest.raises(ValidationError):
        flag(priority=priority)


def test_manual_down_cannot_also_lower_itself() -> None:
    """A flag an administrator must take down cannot expire by itself."""
    with pytest.raises(ValidationError, match="manual_down"):
        flag(manual_down=True, lower_after=60)


def test_id_joins_the_parts() -> None:
    """The id is unit/section/name, and from_id splits it back."""
    made = flag("rollouts/orders/aborted")
    assert (made.unit, made.section, made.name, made.id) == (
        "rollouts",
        "orders",
        "aborted",
        "rollouts/orders/aborted",
    )


# -- the store ---------------------------------------------------------------------------


async def test_raise_then_get(store: StatusFlags) -> None:
    """A raised flag is stored with every field, a count of one and its times."""
    raised = await store.raise_flag(
        flag(priority=70, source="controller", tags=("service:orders",), lower_after=30)
    )
    assert raised.count == 1
    assert raised.first_raised is not None
    assert raised.first_raised == raised.last_raised
    assert await store.get(raised.id) == raised
    assert (raised.priority, raised.source, raised.tags, raised.lower_after) == (
        70,
        "controller",
        ("service:orders",),
        30.0,
    )
    assert (raised.help, raised.help_uri) == (HELP, HELP_URI)


async def test_raising_again_counts_and_updates(store: StatusFlags) -> None:
    """Raising the same id again updates what it says, counts, and keeps first_raised."""
    first = await store.raise_flag(flag(message="once", priority=40, lower_after=30))
    again = await store.raise_flag(flag(message="twice", priority=60))
    assert (again.count, again.message, again.priority) == (2, "twice", 60)
    assert again.first_raised == first.first_raised
    assert again.last_raised is not None
    assert first.last_raised is not None
    assert again.last_raised >= first.last_raised
    assert again.lower_after is None, "a field left out of the new raise is cleared"


async def test_concurrent_raises_are_all_counted(store: StatusFlags) -> None:
    """Raising one flag from many tasks at once counts every raise."""
    raises = 50
    async with asyncio.timeout(EVENT_TIMEOUT):
        results = await asyncio.gather(
            *(store.raise_flag(flag(message=f"raise {i}")) for i in range(raises))
        )
    assert sorted(r.count for r in results) == list(range(1, raises + 1))
    stored = await store.get(flag().id)
    assert stored is not None
    assert stored.count == raises
    assert len({r.first_raised for r in results}) == 1


async def test_lower(store: StatusFlags) -> None:
    """Lowering takes a flag away; lowering what is not up answers False."""
    await store.raise_flag(flag())
    assert await store.lower(flag().id) is True
    assert await store.get(flag().id) is None
    assert await store.list() == []
    assert await store.lower(flag().id) is False


async def test_manual_down_is_only_lowered_by_hand(store: StatusFlags) -> None:
    """A manual_down flag stays up when lowered by the system, and goes by hand."""
    await store.raise_flag(flag("rollouts/orders/aborted", manual_down=True))
    assert await store.lower("rollouts/orders/aborted") is False
    assert await store.get("rollouts/orders/aborted") is not None
    assert await store.lower("rollouts/orders/aborted", by_hand=True) is True
    assert await store.get("rollouts/orders/aborted") is None


async def test_list_sorts_by_priority_then_latest(store: StatusFlags) -> None:
    """The list puts the highest priority first, and the latest raised first among equals."""
    await store.raise_flag(flag("a/b/low", priority=10))
    await store.raise_flag(flag("a/b/older", priority=50))
    await store.raise_flag(flag("a/b/high", priority=90))
    await store.raise_flag(flag("a/b/newer", priority=50))
    assert [f.name for f in await store.list()] == ["high", "newer", "older", "low"]


async def test_ids_are_checked_on_get_and_lower(store: StatusFlags) -> None:
    """get and lower refuse a malformed id rather than look it up."""
    with pytest.raises(StatusFlagError):
        await store.get("not-an-id")
    with pytest.raises(StatusFlagError):
        await store.lower("a/b")


async def test_changes_are_announced(store: StatusFlags, announcements: PubSub) -> None:
    """Each raise and lowering is announced on the status events channel."""
    await store.raise_flag(flag(priority=80))
    raised = await next_announcement(announcements)
    await store.raise_flag(flag(message="again"))
    again = await next_announcement(announcements)
    await store.lower(flag().id, by_hand=True)
    lowered = await next_announcement(announcements)
    assert (raised["action"], raised["id"], raised["count"], raised["priority"]) == (
        "raised",
        flag().id,
        1,
        80,
    )
    assert (again["count"], again["message"]) == (2, "again")
    assert (lowered["action"], lowered["id"], lowered["by_hand"]) == ("lowered", flag().id, True)


async def test_refused_lowering_is_not_announced(store: StatusFlags, announcements: PubSub) -> None:
    """A manual_down flag that stays up announces nothing."""
    await store.raise_flag(flag(manual_down=True))
    await next_announcement(announcements)
    assert await store.lower(flag().id) is False
    await store.raise_flag(flag("a/b/marker"))
    assert (await next_announcement(announcements))["id"] == "a/b/marker"


async def test_quiet_flags_lower_themselves(store: StatusFlags) -> None:
    """lower_quiet lowers flags past their quiet time, and only those."""
    await store.raise_flag(flag("a/b/quick", lower_after=1e-6))
    await store.raise_flag(flag("a/b/slow", lower_after=3600))
    await store.raise_flag(flag("a/b/forever"))
    assert await store.lower_quiet() == ["a/b/quick"]
    assert [f.name for f in await store.list()] == ["forever", "slow"]


async def test_a_flag_raised_again_meanwhile_is_not_lowered_as_quiet(store: StatusFlags) -> None:
    """The quiet lowering compares last_raised, so a raise that slips in keeps the flag up."""
    await store.raise_flag(flag(lower_after=1e-6))
    assert await store._lower_if(flag().id, by_hand=False, last_raised="1.000000") == -2
    assert await store.get(flag().id) is not None

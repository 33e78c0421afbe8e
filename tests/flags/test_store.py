"""The flag store in the real Redis: revisions, conflicts, concurrent edits, history."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from flags import Flag, FlagState
from flags._keys import FlagKeys
from flags._store import FlagConflict, FlagStore, FlagStoreError

pytestmark = pytest.mark.integration


def a_flag(key: str = "new-checkout", **changes: object) -> Flag:
    return Flag.model_validate(
        {
            "key": key,
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "help": "Shows the new checkout; if errors rise, switch it off.",
            "help_uri": "https://wiki.example.com/flags/new-checkout",
            **changes,
        }
    )


@pytest.fixture
def store(redis: Redis, key_prefix: str) -> FlagStore:
    return FlagStore(redis=redis, keys=FlagKeys(key_prefix))


async def test_put_get_and_revisions(store: FlagStore) -> None:
    """Each write bumps the revision; a write naming an old revision is a conflict."""
    assert await store.put(a_flag(), who="ann", why="new") == 1
    stored = await store.get("new-checkout")
    assert stored is not None
    assert stored.flag == a_flag()
    assert stored.revision == 1
    assert await store.put(a_flag(state="DISABLED"), who="bob", revision=1) == 2
    with pytest.raises(FlagConflict, match="revision 2, not 1"):
        await store.put(a_flag(), who="cy", revision=1)
    with pytest.raises(FlagConflict):
        await store.put(a_flag(), who="dee", revision=0)  # 0: create only


async def test_concurrent_edits_never_lose_one_another(store: FlagStore) -> None:
    """Twenty writers each adding a tag at once: every tag is there, twenty-one revisions."""
    await store.put(a_flag(), who="ann")

    async def tag(n: int) -> None:
        await store.update(
            "new-checkout",
            lambda f: f.model_copy(update={"tags": (*f.tags, f"t{n}")}),
            who=f"writer{n}",
        )

    await asyncio.gather(*(tag(n) for n in range(20)))
    stored = await store.get("new-checkout")
    assert stored is not None
    assert sorted(stored.flag.tags) == sorted(f"t{n}" for n in range(20))
    assert stored.revision == 21


async def test_history_says_who_what_and_why(store: FlagStore) -> None:
    """The history keeps every change with its author, the fields changed and the reason."""
    await store.put(a_flag(), who="ann", why="launch prep")
    await store.update(
        "new-checkout",
        lambda f: f.model_copy(update={"state": FlagState.DISABLED}),
        who="bob",
        why="errors up",
    )
    await store.delete("new-checkout", who="cy", why="feature shipped")
    history = await store.history("new-checkout")
    assert [(c.action, c.who, c.why) for c in history] == [
        ("create", "ann", "launch prep"),
        ("update", "bob", "errors up"),
        ("delete", "cy", "feature shipped"),
    ]
    assert history[1].changes == ['state: "ENABLED" -> "DISABLED"']
    assert await store.get("new-checkout") is None


async def test_bad_keys_and_missing_flags(store: FlagStore) -> None:
    """Keys that cannot be an MQTT topic level are refused; updating a missing flag says so."""
    with pytest.raises(FlagStoreError, match="must match"):
        await store.put(a_flag("bad/key"), who="ann")
    with pytest.raises(FlagStoreError, match="no flag"):
        await store.update("nope", lambda f: f, who="ann")

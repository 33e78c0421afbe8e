"""Feature flags in Redis: the source of truth, with a change history.

Every change is one Lua step that checks the revision the writer read, writes
the flag, appends to the history and announces it, so concurrent edits never
lose one another: the second writer gets a conflict and re-reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from communicator import DeployctlError
from flags._keys import FlagKeys
from flags._model import Flag

HISTORY_LENGTH = 10_000
KEY_PATTERN = r"[A-Za-z0-9_.-]{1,128}"
_KEY_RE = re.compile(KEY_PATTERN)

# KEYS: flag, flags set, history; ARGV: key, expected revision ('' = any,
# '0' = must not exist), new JSON ('' = delete), who, why, action, changes JSON,
# history length, changes channel. Returns the new revision, or -current on conflict.
_WRITE = """
local raw = redis.call('GET', KEYS[1])
local current = 0
if raw then current = cjson.decode(raw).revision end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then return -current - 1 end
local revision = current + 1
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
else
  local record = cjson.decode(ARGV[3])
  record.revision = revision
  redis.call('SET', KEYS[1], cjson.encode(record))
  redis.call('SADD', KEYS[2], ARGV[1])
end
local t = redis.call('TIME')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'key', ARGV[1], 'action', ARGV[6],
  'revision', revision, 'who', ARGV[4], 'why', ARGV[5], 'changes', ARGV[7])
redis.call('PUBLISH', ARGV[9], cjson.encode({key = ARGV[1], revision = revision, action = ARGV[6]}))
return revision
"""


class FlagStoreError(DeployctlError):
    """A flag cannot be read or written as asked; the message says what to do."""


class FlagConflict(FlagStoreError):
    """Somebody changed the flag since it was read; read it again and redo the change."""


@dataclass(frozen=True, slots=True)
class StoredFlag:
    """A flag as stored, with the revision a writer must name to change it."""

    flag: Flag
    revision: int


@dataclass(frozen=True, slots=True)
class FlagChange:
    """One entry of the change history."""

    id: str
    key: str
    action: str
    revision: int
    who: str
    why: str
    changes: list[str]

    @property
    def at(self) -> float:
        """When it happened (seconds since the epoch, by Redis's clock)."""
        return int(self.id.split("-")[0]) / 1000


def check_key(key: str) -> str:
    """A flag key usable in Redis keys and MQTT topics, or :class:`FlagStoreError`."""
    if not _KEY_RE.fullmatch(key):
        raise FlagStoreError(f"flag key {key!r} must match {KEY_PATTERN} (letters, digits, _ . -)")
    return key


def describe_changes(before: Flag | None, after: Flag | None) -> list[str]:
    """What changed between two versions of a flag, field by field, in words."""
    if before is None:
        return ["created"]
    if after is None:
        return ["deleted"]
    old, new = before.to_flagd(), after.to_flagd()
    return [
        f"{field}: {_short(old.get(field))} -> {_short(new.get(field))}"
        for field in sorted(set(old) | set(new))
        if old.get(field) != new.get(field)
    ]


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


class FlagStore:
    """Read, write and watch the feature flags of an installation."""

    def __init__(self, *, redis: Redis, keys: FlagKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._write = redis.register_script(_WRITE)

    async def get(self, key: str) -> StoredFlag | None:
        """The flag named ``key``, or ``None``."""
        raw = await self._redis.get(self._keys.feature_flag(check_key(key)))
        return None if raw is None else _decode(raw)

    async def all(self) -> dict[str, StoredFlag]:
        """Every flag, by key."""
        members = await self._redis.smembers(self._keys.feature_flags())
        keys = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if not keys:
            return {}
        values = await self._redis.mget([self._keys.feature_flag(k) for k in keys])
        return {k: _decode(v) for k, v in zip(keys, values, strict=True) if v is not None}

    async def put(self, flag: Flag, *, who: str, why: str = "", revision: int | None = None) -> int:
        """Create or replace a flag; with ``revision``, only if it is still at that revision.

        Raises:
            FlagConflict: The flag changed since ``revision`` (0: it exists already).
        """
        key = check_key(flag.key)
        before = await self.get(key)
        record = json.dumps({"key": key, "flag": flag.to_flagd()})
        action = "create" if before is None else "update"
        changes = describe_changes(before.flag if before else None, flag)
        return await self._run(key, revision, record, who, why, action, changes)

    async def delete(self, key: str, *, who: str, why: str = "") -> bool:
        """Delete a flag; ``False`` if there was none."""
        before = await self.get(key)
        if before is None:
            return False
        await self._run(key, before.revision, "", who, why, "delete", ["deleted"])
        return True

    async def update(
        self, key: str, change: Callable[[Flag], Flag], *, who: str, why: str = ""
    ) -> StoredFlag:
        """Apply ``change`` to the current flag, retrying on conflicts (read-modify-write).

        Raises:
            FlagStoreError: There is no such flag.
        """
        for _ in range(20):
            current = await self.get(key)
            if current is None:
                raise FlagStoreError(f"no flag {key!r}; `deployctl flag list` shows the flags")
            new = change(current.flag)
            try:
                revision = await self.put(new, who=who, why=why, revision=current.revision)
            except FlagConflict:
                continue
            return StoredFlag(new, revision)
        raise FlagConflict(f"flag {key!r} keeps changing under us; try again")

    async def _run(
        self,
        key: str,
        revision: int | None,
        record: str,
        who: str,
        why: str,
        action: str,
        changes: list[str],
    ) -> int:
        k = self._keys
        result = int(
            await self._write(
                keys=[k.feature_flag(key), k.feature_flags(), k.flag_history()],
                args=[
                    key,
                    "" if revision is None else str(revision),
                    record,
                    who,
                    why,
                    action,
                    json.dumps(changes),
                    HISTORY_LENGTH,
                    k.flag_changes(),
                ],
            )
        )
        if result < 0:
            raise FlagConflict(
                f"flag {key!r} is at revision {-result - 1}, not {revision}: someone changed it; "
                "read it again"
            )
        return result

    async def history(self, key: str | None = None, count: int = 200) -> list[FlagChange]:
        """The latest changes (of one flag, or all), oldest first."""
        entries = await self._redis.xrevrange(
            self._keys.flag_history(), count=count * 10 if key else count
        )
        found = []
        for entry_id, fields in entries or []:
            data = {_text(a): _text(b) for a, b in (fields or {}).items()}
            if key is not None and data.get("key") != key:
                continue
            found.append(
                FlagChange(
                    _text(entry_id),
                    data["key"],
                    data["action"],
                    int(data["revision"]),
                    data.get("who", ""),
                    data.get("why", ""),
                    json.loads(data.get("changes", "[]")),
                )
            )
            if len(found) >= count:
                break
        return list(reversed(found))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: bytes | str) -> StoredFlag:
    data = json.loads(raw)
    return StoredFlag(Flag.from_flagd(data["key"], data["flag"]), int(data["revision"]))

"""Status flags: problems raised by the system or by services, for an administrator to see.

These are Snap!'s "flags" (DESIGN.md §8): a version invalidated, a rollout
aborted, too many bad passwords. Each one is ``unit/section/name``, has a
priority, says what happened (``message``), what it means and what to do
(``help``) and where the whole story is (``help_uri``). Raising a flag that is
already up counts the raise and refreshes it; lowering takes it away. A flag
that an administrator must acknowledge (``manual_down``) is only lowered by
hand; a flag with ``lower_after`` lowers itself after that long without a raise
(once :meth:`StatusFlags.lower_quiet` runs).

Redis holds one hash per raised flag and the set of their ids
(:class:`~flags._keys.FlagKeys`); every raise and lowering is one Lua step that
also announces it on :meth:`~flags._keys.FlagKeys.status_events`.
"""

from __future__ import annotations

import builtins
import json
import re
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.asyncio import Redis

from communicator import DeployctlError
from flags._keys import FlagKeys

#: What ``unit``, ``section`` and ``name`` may hold (so an id never holds ``:``).
FLAG_PART_PATTERN = r"^[a-z0-9_-]{1,64}$"
DEFAULT_PRIORITY = 50

_PART_RE = re.compile(FLAG_PART_PATTERN)
_HELP_EXAMPLE = (
    'for example help="Version 1.1 of orders failed too often and gets no traffic; look at '
    "`deployctl versions orders`, fix it or roll back, then run "
    '`deployctl version reinstate orders 1.1`", '
    'help_uri="https://deployctl.dev/docs/operations#version-invalidated"'
)

_RAISE = """
-- KEYS: 1 the flag's hash, 2 the set of raised flags
-- ARGV: 1 flag id, 2 events channel, 3... field, value pairs (all but count and times)
local t = redis.call('TIME')
local now = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
-- HSETNX: a flag raised again keeps the time it first went up.
redis.call('HSETNX', KEYS[1], 'first_raised', now)
redis.call('HSET', KEYS[1], 'last_raised', now)
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({
  action = 'raised', id = ARGV[1], count = count, time = tonumber(now),
  priority = tonumber(redis.call('HGET', KEYS[1], 'priority')),
  message = redis.call('HGET', KEYS[1], 'message'),
}))
return redis.call('HGETALL', KEYS[1])
"""

_LOWER = """
-- KEYS: 1 the flag's hash, 2 the set of raised flags
-- ARGV: 1 flag id, 2 events channel, 3 '1' when by hand, 4 last_raised expected ('' for any),
--       5 who lowers it
-- Returns 1 lowered, 0 not raised, -1 must be lowered by hand, -2 raised again meanwhile.
local fields = redis.call('HMGET', KEYS[1], 'manual_down', 'last_raised')
if not fields[1] then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
if fields[1] == '1' and ARGV[3] ~= '1' then return -1 end
if ARGV[4] ~= '' and fields[2] ~= ARGV[4] then return -2 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
local t = redis.call('TIME')
redis.call('PUBLISH', ARGV[2], cjson.encode({
  action = 'lowered', id = ARGV[1], by_hand = ARGV[3] == '1', by = ARGV[5],
  time = tonumber(t[1]) + tonumber(t[2]) / 1000000,
}))
return 1
"""


class StatusFlagError(DeployctlError, ValueError):
    """A status flag id is malformed, or a flag is refused.

    Attributes:
        flag_id: The id (or text) concerned.
    """

    def __init__(self, message: str, *, flag_id: str) -> None:
        self.flag_id = flag_id
        super().__init__(message)


def parse_flag_id(flag_id: str) -> tuple[str, str, str]:
    """Split ``unit/section/name`` into its parts.

    Raises:
        StatusFlagError: The id is not three ``[a-z0-9_-]`` parts joined by ``/``.
    """
    parts = flag_id.split("/")
    if len(parts) != 3 or not all(_PART_RE.match(part) for part in parts):
        raise StatusFlagError(
            f"{flag_id!r} is not a status flag id: write UNIT/SECTION/NAME, each of "
            "a-z, 0-9, '_' and '-' (up to 64), e.g. versions/orders/invalid-1_1",
            flag_id=flag_id,
        )
    return parts[0], parts[1], parts[2]


class StatusFlag(BaseModel):
    """One problem an administrator should see, with what it means and what to do.

    Attributes:
        unit: Who it belongs to (a subsystem: ``versions``, ``rollouts``, a daemon).
        section: The part of the unit (often the service).
        name: The problem itself.
        priority: 0 (informative) to 100 (urgent); higher is listed first.
        message: What happened, this time.
        help: What it means and what to do about it (required).
        help_uri: An absolute http(s) URL of the page with the whole story (required).
        source: Who raised it.
        manual_down: Only an administrator takes it down (``lower(..., by_hand=True)``).
        lower_after: Seconds without a raise after which it lowers itself (``None``: never).
        tags: Free words to filter on (``service:orders``).
        count: How many times it was raised since it went up (set by the store).
        first_raised: When it went up, seconds since the epoch (set by the store).
        last_raised: When it was last raised (set by the store).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: str = Field(pattern=FLAG_PART_PATTERN)
    section: str = Field(pattern=FLAG_PART_PATTERN)
    name: str = Field(pattern=FLAG_PART_PATTERN)
    message: str = Field(min_length=1)
    help: str
    help_uri: str
    priority: int = Field(default=DEFAULT_PRIORITY, ge=0, le=100)
    source: str = ""
    manual_down: bool = False
    lower_after: float | None = Field(default=None, gt=0)
    tags: tuple[str, ...] = ()
    count: int = Field(default=0, ge=0)
    first_raised: float | None = None
    last_raised: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _require_help(cls, data: Any) -> Any:
        if isinstance(data, dict):
            missing = [key for key in ("help", "help_uri") if not data.get(key)]
            if missing:
                raise ValueError(
                    f"a status flag needs {' and '.join(missing)}: `help` says what the "
                    "problem means and what to do, `help_uri` links to the page with the "
                    f"whole story; {_HELP_EXAMPLE}"
                )
        return data

    @field_validator("help")
    @classmethod
    def _help_says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"help must say what to do; {_HELP_EXAMPLE}")
        return value

    @field_validator("help_uri")
    @classmethod
    def _help_uri_is_absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"help_uri must be an absolute http(s) URL, not {value!r}; {_HELP_EXAMPLE}"
            )
        return value

    @model_validator(mode="after")
    def _down_by_hand_or_by_itself(self) -> Self:
        if self.manual_down and self.lower_after is not None:
            raise ValueError(
                "a flag taken down by hand (manual_down) cannot also lower itself "
                "(lower_after): keep one of the two"
            )
        return self

    @property
    def id(self) -> str:
        """``unit/section/name``."""
        return f"{self.unit}/{self.section}/{self.name}"

    @classmethod
    def from_id(cls, flag_id: str, **fields: Any) -> StatusFlag:
        """A flag named by its id: ``StatusFlag.from_id("a/b/c", message=..., help=..., ...)``.

        Raises:
            StatusFlagError: The id is malformed.
            pydantic.ValidationError: A field is missing or invalid.
        """
        unit, section, name = parse_flag_id(flag_id)
        return cls(unit=unit, section=section, name=name, **fields)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _to_fields(flag: StatusFlag) -> list[str]:
    """The flag's hash fields (all but count and the times, which the script keeps)."""
    fields = {
        "unit": flag.unit,
        "section": flag.section,
        "name": flag.name,
        "message": flag.message,
        "help": flag.help,
        "help_uri": flag.help_uri,
        "priority": str(flag.priority),
        "source": flag.source,
        "manual_down": "1" if flag.manual_down else "0",
        # Always written, so that raising again without it clears an older value.
        "lower_after": "" if flag.lower_after is None else repr(flag.lower_after),
        "tags": json.dumps(list(flag.tags)),
    }
    return [item for pair in fields.items() for item in pair]


def _from_fields(raw: dict[str, str]) -> StatusFlag:
    return StatusFlag(
        unit=raw["unit"],
        section=raw["section"],
        name=raw["name"],
        message=raw["message"],
        help=raw["help"],
        help_uri=raw["help_uri"],
        priority=int(raw["priority"]),
        source=raw.get("source", ""),
        manual_down=raw.get("manual_down") == "1",
        lower_after=float(raw["lower_after"]) if raw.get("lower_after") else None,
        tags=tuple(json.loads(raw.get("tags") or "[]")),
        count=int(raw.get("count", "0")),
        first_raised=float(raw["first_raised"]) if raw.get("first_raised") else None,
        last_raised=float(raw["last_raised"]) if raw.get("last_raised") else None,
    )


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


class StatusFlags:
    """The raised status flags, in Redis; every change is announced on the events channel."""

    def __init__(self, *, redis: Redis, keys: FlagKeys) -> None:
        self._redis = redis
        self.keys = keys
        self._raise = redis.register_script(_RAISE)
        self._lower = redis.register_script(_LOWER)

    async def raise_flag(self, flag: StatusFlag) -> StatusFlag:
        """Raise ``flag``, or raise it again: returns it as stored.

        Raising again replaces what the flag says (message, priority, help...),
        adds one to ``count`` and sets ``last_raised``; ``first_raised`` stays.
        The ``count`` and times of ``flag`` itself are ignored.
        """
        flat = await self._raise(
            keys=[self.keys.status_flag(flag.id), self.keys.status_flags()],
            args=[flag.id, self.keys.status_events(), *_to_fields(flag)],
        )
        return _from_fields(_pairs(flat))

    async def lower(self, flag_id: str, *, by_hand: bool = False, by: str = "") -> bool:
        """Take a flag down; whether it was.

        A ``manual_down`` flag stays up unless ``by_hand`` (an administrator's
        act): then this returns ``False``, as it does for a flag that is not up.
        ``by`` (who lowers it) goes into the announcement.

        Raises:
            StatusFlagError: The id is malformed.
        """
        parse_flag_id(flag_id)
        return await self._lower_if(flag_id, by_hand=by_hand, last_raised="", by=by) == 1

    async def get(self, flag_id: str) -> StatusFlag | None:
        """The flag if it is up.

        Raises:
            StatusFlagError: The id is malformed.
        """
        parse_flag_id(flag_id)
        raw = await self._redis.hgetall(self.keys.status_flag(flag_id))
        if not raw:
            return None
        return _from_fields({_text(k): _text(v) for k, v in raw.items()})

    async def list(self) -> builtins.list[StatusFlag]:
        """Every flag that is up: highest priority first, then the most recently raised."""
        flags = [_from_fields(raw) for raw in await self._stored()]
        flags.sort(key=lambda f: (-f.priority, -(f.last_raised or 0.0), f.id))
        return flags

    async def lower_quiet(self) -> builtins.list[str]:
        """Lower every flag whose ``lower_after`` has passed since its last raise; their ids.

        A flag raised again meanwhile stays up. Times are Redis's clock, as for raises.
        """
        seconds, micros = await self._redis.time()
        now = seconds + micros / 1_000_000
        lowered = []
        for raw in await self._stored():
            if not raw.get("lower_after") or not raw.get("last_raised"):
                continue
            if now - float(raw["last_raised"]) < float(raw["lower_after"]):
                continue
            flag_id = f"{raw['unit']}/{raw['section']}/{raw['name']}"
            # The stored text of last_raised: the script compares it as text.
            stamp = raw["last_raised"]
            if await self._lower_if(flag_id, by_hand=False, last_raised=stamp, by="quiet") == 1:
                lowered.append(flag_id)
        return lowered

    async def _stored(self) -> builtins.list[dict[str, str]]:
        """The hash of every flag that is up, as text."""
        ids = sorted(_text(i) for i in await self._redis.smembers(self.keys.status_flags()))
        async with self._redis.pipeline(transaction=False) as pipe:
            for flag_id in ids:
                pipe.hgetall(self.keys.status_flag(flag_id))
            found = await pipe.execute()
        return [{_text(k): _text(v) for k, v in raw.items()} for raw in found if raw]

    async def _lower_if(
        self, flag_id: str, *, by_hand: bool, last_raised: str, by: str = ""
    ) -> int:
        result = await self._lower(
            keys=[self.keys.status_flag(flag_id), self.keys.status_flags()],
            args=[flag_id, self.keys.status_events(), "1" if by_hand else "0", last_raised, by],
        )
        return int(result)

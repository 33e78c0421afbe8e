"""Health records of communicators: written while a router runs, read by ``--check``.

Every ``health_interval`` seconds a router's record (``Keys.health(
"communicator:<router id>")``, with a TTL of ``health_ttl``) is written and
listed in ``Keys.communicators_health()``; a clean stop withdraws it, so
``communicatord --check`` fails at once (docs/operations.md, "Health checks").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator._errors import BackendError, DeployctlError
from communicator._version import __version__
from communicator.backends._backoff import being_cancelled
from communicator.backends._embedded_redis import socket_folder
from communicator.backends._keys import Keys
from communicator.backends._link import LinkError
from communicator.backends._redis import connect_redis
from communicator.backends._replies import text
from communicator.backends._settings import Settings, masked
from communicator.backends._tasks import cancel_and_wait
from communicator.router._router import Router

logger = logging.getLogger(__name__)

#: Index members older than this are dropped by the writers (their records expired long ago).
HEALTH_INDEX_KEEP = 3600.0


def health_record(router: Router, *, started: float, uptime: float) -> dict[str, Any]:
    """What a communicator says of itself in its health record (docs/operations.md).

    Args:
        router: The communicator's router (only its public attributes are read).
        started: When the daemon started (epoch seconds).
        uptime: Seconds since then (from the monotonic clock).
    """
    owned = router.table.owned()
    return {
        "router_id": router.router_id,
        "pid": os.getpid(),
        "server": router.settings.server_name,
        "version": __version__,
        "time": time.time(),
        "started": started,
        "uptime": round(uptime, 3),
        "routing": router.listening and bool(owned),
        "listening": router.listening,
        "partitions": owned,
        "partitions_total": router.config.partitions,
        "stats": dict(router.stats),
        "dropped": {
            # Messages refused for their size, on the current broker connection.
            "oversized": getattr(router.session.link, "oversized", 0),
            # Messages pushed out of a held partition's bounded buffer.
            "held_overflowed": router.table.overflowed,
            # Request hand-offs refused: unsigned, forged, stale or replayed.
            "handoffs_refused": router.requests.refused,
        },
        "interval": router.settings.health_interval,
    }


async def write_health(redis: Redis, keys: Keys, record: dict[str, Any], ttl: float) -> None:
    """Store ``record`` for ``ttl`` seconds and list its communicator in the index."""
    router_id, now = record["router_id"], record["time"]
    index = keys.communicators_health()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.health(f"communicator:{router_id}"), json.dumps(record), px=int(ttl * 1000))
        pipe.zadd(index, {router_id: now})
        pipe.zremrangebyscore(index, "-inf", now - max(ttl, HEALTH_INDEX_KEEP))
        await pipe.execute()


async def report_health(router: Router) -> None:
    """Write the router's health record every ``health_interval`` seconds, until cancelled.

    Redis being away is waited out (the record then lapses, which is the point).
    """
    settings, keys = router.settings, Keys(router.settings.key_prefix)
    started, clock = time.time(), time.monotonic()
    failing = False
    while True:
        record = health_record(router, started=started, uptime=time.monotonic() - clock)
        try:
            await write_health(router.redis, keys, record, settings.health_ttl)
        except (RedisError, OSError) as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            if not failing:
                logger.warning("cannot write the health record (%s); will retry", exc)
            failing = True
        else:
            failing = False
        await asyncio.sleep(settings.health_interval)


@contextlib.asynccontextmanager
async def reporting_health(router: Router) -> AsyncIterator[None]:
    """Write the router's health record while the block runs; withdraw it afterwards."""
    task = asyncio.create_task(report_health(router), name="communicator-health")
    try:
        yield
    finally:
        await cancel_and_wait([task])
        await withdraw_health(router)


async def withdraw_health(router: Router) -> None:
    """Remove the router's record at a clean stop, so ``--check`` fails at once."""
    keys = Keys(router.settings.key_prefix)
    with contextlib.suppress(RedisError, OSError):
        async with router.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.health(f"communicator:{router.router_id}"))
            pipe.zrem(keys.communicators_health(), router.router_id)
            await pipe.execute()


async def read_health(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """The records of every communicator that reported within its TTL, by router id."""
    found: list[Any] = await redis.zrange(keys.communicators_health(), 0, -1)
    members = [text(m) for m in found]
    if not members:
        return []
    raws = await redis.mget([keys.health(f"communicator:{m}") for m in members])
    records = []
    for raw in raws:
        if raw is None:
            continue  # expired since the index was read
        with contextlib.suppress(ValueError, TypeError):
            record = json.loads(raw)
            if isinstance(record, dict) and "router_id" in record:
                records.append(record)
    return sorted(records, key=lambda r: str(r["router_id"]))


def _check_url(settings: Settings) -> str:
    """Where the daemon's Redis is: the configured one, or its embedded one's socket."""
    if settings.redis_url is not None:
        return settings.redis_url
    return f"unix://{socket_folder(settings.redis_embedded_path.absolute()) / 'redis.sock'}"


async def fresh_records(settings: Settings) -> list[dict[str, Any]]:
    """Read the communicators' health records from the daemon's Redis (one try).

    Raises:
        BackendError: Redis cannot be reached, or failed while read.
    """
    url = _check_url(settings)
    try:
        redis = await connect_redis(settings, url=url, retry=False)
    except BackendError as exc:
        if settings.redis_url is not None:
            raise
        raise BackendError(
            f"{exc}; with no DEPLOYCTL_REDIS_URL, --check reads the embedded Redis of a "
            "communicatord started the same way: give --check the daemon's DEPLOYCTL_REDIS_URL",
            backend="redis",
            url=exc.url,
        ) from exc
    try:
        return await read_health(redis, Keys(settings.key_prefix))
    except (RedisError, OSError) as exc:
        raise BackendError(
            f"Redis at {masked(url)} failed during the check ({exc}); check that it runs, "
            "then run `communicatord --check` again",
            backend="redis",
            url=masked(url),
        ) from exc
    finally:
        await redis.aclose()


def _duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m`` or ``3d04h``: a span for people."""
    whole = max(int(seconds), 0)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // sub_size:02d}{sub}"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def health_line(record: dict[str, Any], now: float) -> str:
    """One communicator's record as one line for people."""
    stats = " ".join(f"{name}={value}" for name, value in record.get("stats", {}).items())
    state = "routing" if record.get("routing") else "not routing"
    partitions = f"{len(record.get('partitions', []))}/{record.get('partitions_total', '?')}"
    age = max(now - float(record.get("time", now)), 0.0)
    return (
        f"{record['router_id']}  {state}  partitions {partitions}  "
        f"up {_duration(float(record.get('uptime', 0)))}  reported {age:.1f} s ago  {stats}"
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _check_failed(message: str, *, as_json: bool, **extra: Any) -> None:
    if as_json:
        _print_json({"error": message, **extra})
    else:
        print(f"communicatord --check: {message}", file=sys.stderr)


def _not_reported(ttl: float, *, router_id: str | None, server: str | None) -> str:
    """What to say when no record matches, and what to do about it."""
    if router_id is not None:
        return (
            f"communicator {router_id} has not reported in the last {ttl:g} s: is it running? "
            "`communicatord --check` lists those that do"
        )
    on = f" on server {server}" if server is not None else ""
    return (
        f"no communicator{on} has reported in the last {ttl:g} s: is communicatord running? "
        "see `deployctl status`"
    )


def check(*, router_id: str | None = None, server: str | None = None, as_json: bool = False) -> int:
    """``communicatord --check``: print the fresh health records; return the exit code.

    Args:
        router_id: Only this communicator's record counts.
        server: Only the records of communicators on this server (``server_name``) count.
        as_json: Print ``{"communicators": [...]}`` (or ``{"error": ...}``) on stdout.

    Returns:
        0 when a communicator (of those selected) reported within the record
        TTL; 1 when none did; 2 for a bad setting; 3 when Redis cannot be read.
    """
    try:
        settings = Settings()
        records = asyncio.run(fresh_records(settings))
    except DeployctlError as exc:
        backend = isinstance(exc, BackendError | LinkError)
        _check_failed(str(exc), as_json=as_json, **({"backend": "redis"} if backend else {}))
        return 3 if backend else 2
    records = [
        r
        for r in records
        if router_id in (None, r["router_id"]) and server in (None, r.get("server"))
    ]
    if not records:
        message = _not_reported(settings.health_ttl, router_id=router_id, server=server)
        _check_failed(message, as_json=as_json, communicators=[])
        return 1
    if as_json:
        _print_json({"communicators": records})
    else:
        now = time.time()
        print("\n".join(health_line(record, now) for record in records))
    return 0

"""Partition leases and checkpoints in Redis, for several communicators sharing the work."""

from __future__ import annotations

import json
import math

from redis.asyncio import Redis

from communicator.backends._keys import Keys

# Take the lease if it is free or already ours; (re)arm its expiry.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Extend the lease only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Give the lease up, only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

CHECKPOINT_TTL_MS = 24 * 3600 * 1000


class Leases:
    """One communicator's view of the partition leases, checkpoints and live peers."""

    def __init__(self, *, redis: Redis, keys: Keys, router_id: str, ttl: float) -> None:
        self._redis = redis
        self._keys = keys
        self.router_id = router_id
        self._ttl_ms = str(int(ttl * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, partition: int) -> bool:
        """Take ``partition`` if nobody holds it (or we already do)."""
        key = self._keys.router_lease(partition)
        return bool(await self._claim(keys=[key], args=[self.router_id, self._ttl_ms]))

    async def renew(self, partitions: list[int]) -> list[bool]:
        """Extend our leases in one round trip; ``False`` where a lease is no longer ours."""
        if not partitions:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                await self._renew(
                    keys=[self._keys.router_lease(partition)],
                    args=[self.router_id, self._ttl_ms],
                    client=pipe,
                )
            return [bool(ok) for ok in await pipe.execute()]

    async def release(self, partitions: list[int]) -> None:
        """Give up our leases (graceful shutdown) so a peer takes over at once."""
        for partition in partitions:
            await self._release(keys=[self._keys.router_lease(partition)], args=[self.router_id])

    async def owners(self, partitions: int) -> dict[int, str]:
        """Partition -> owning router id, for the partitions that have an owner."""
        values = await self._redis.mget([self._keys.router_lease(p) for p in range(partitions)])
        return {p: v.decode() if isinstance(v, bytes) else v for p, v in enumerate(values) if v}

    async def save_checkpoints(self, items: list[tuple[int, list[int]]]) -> None:
        """Record our progress in each partition (the fingerprints of the last messages)."""
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, prints in items:
                value = json.dumps({"router": self.router_id, "prints": prints})
                pipe.set(self._keys.router_checkpoint(partition), value, px=CHECKPOINT_TTL_MS)
            await pipe.execute()

    async def checkpoint(self, partition: int) -> tuple[str, list[int]] | None:
        """The last checkpoint of ``partition``: (router id, fingerprints), or ``None``."""
        raw = await self._redis.get(self._keys.router_checkpoint(partition))
        if raw is None:
            return None
        data = json.loads(raw)
        return str(data["router"]), [int(p) for p in data["prints"]]

    async def heartbeat(self, now: float, *, stale_after: float) -> int:
        """Say we are alive; return how many communicators are (us included)."""
        key = self._keys.routers()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.router_id: now})
            pipe.zremrangebyscore(key, "-inf", now - stale_after)
            pipe.zcard(key)
            *_, live = await pipe.execute()
        return max(int(live), 1)

    async def leave(self) -> None:
        """Take ourselves off the list of live communicators."""
        await self._redis.zrem(self._keys.routers(), self.router_id)

    @staticmethod
    def share(partitions: int, live: int) -> int:
        """How many partitions each of ``live`` communicators should own."""
        return math.ceil(partitions / max(live, 1))

"""What analysis reads: running outcome totals and reply latencies per version.

The registry keeps, in each version's state hash, running totals of every
outcome kind since the version was first seen (``total:<kind>``); an analysis
takes the difference of two readings. Reply latencies are sampled into a
bounded stream per version, whose entry ids give the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from communicator.backends._keys import Keys
from communicator.backends._replies import text

#: Latencies kept per version (approximately: the stream is trimmed lazily).
LATENCY_HISTORY = 20_000
#: Latencies written per version and flush, at most: a sample is enough for the judge.
LATENCIES_PER_FLUSH = 500


@dataclass(frozen=True, slots=True)
class Totals:
    """Running outcome totals of a version, read at one moment."""

    at: float  # seconds since the epoch, by Redis's clock
    counts: Mapping[str, int]

    def since(self, earlier: Totals) -> dict[str, int]:
        """Outcomes counted between ``earlier`` and this reading, per kind."""
        return {kind: n - earlier.counts.get(kind, 0) for kind, n in self.counts.items()}


class Measurements:
    """Reads (and, for the router, writes) the measurements analysis judges versions by."""

    def __init__(self, *, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def totals(self, service: str, version: str) -> Totals:
        """The running outcome totals of a version, with Redis's time of the reading."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.hgetall(self._keys.version(service, version))
            (seconds, micros), raw = await pipe.execute()
        counts = {
            text(name)[6:]: int(value)
            for name, value in raw.items()
            if text(name).startswith("total:")
        }
        return Totals(int(seconds) + int(micros) / 1e6, counts)

    async def record_latencies(self, batch: Mapping[tuple[str, str], Sequence[float]]) -> None:
        """Append reply latencies (seconds) per (service, version), in one round trip."""
        if not batch:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for (service, version), latencies in batch.items():
                key = self._keys.version_latencies(service, version)
                for latency in latencies[-LATENCIES_PER_FLUSH:]:
                    pipe.xadd(
                        key, {"l": f"{latency:.6f}"}, maxlen=LATENCY_HISTORY, approximate=True
                    )
            await pipe.execute()

    async def latencies(
        self, service: str, version: str, *, since: float, until: float | None = None
    ) -> list[float]:
        """Latencies (seconds) of a version recorded between two times (seconds since the epoch)."""
        end = "+" if until is None else str(int(until * 1000))
        entries = await self._redis.xrange(
            self._keys.version_latencies(service, version), min=str(int(since * 1000)), max=end
        )
        samples = []
        for _, entry in entries or ():
            value = (entry or {}).get(b"l") or (entry or {}).get("l")
            if value is not None:
                samples.append(float(text(value)))
        return samples

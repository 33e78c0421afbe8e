"""Outcomes of routed messages: successes in batches, replies matched to requests, timeouts.

Successes are counted in memory and flushed in one round trip now and then;
failures go to the registry one by one (they may invalidate a version).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Pending:
    """A request routed to an instance, waiting for its reply."""

    requester: str  # client id
    service: str
    version: str
    instance: str
    server: str
    sent: float  # monotonic
    deadline: float  # monotonic
    judged: bool = True  # False for probes (ALIVE, CLOCK, HELP): delivered, never counted


@dataclass(slots=True)
class Answer:
    """What a reply says about the version that sent it."""

    pending: Pending
    latency: float


@dataclass(slots=True)
class OutcomeTracker:
    """Requests in flight, and the successes and latencies not yet written to Redis."""

    max_pending: int = 100_000
    successes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _pending: dict[tuple[str, str], Pending] = field(default_factory=dict)
    _deadlines: list[tuple[float, str, str]] = field(default_factory=list)
    overflowed: int = 0

    def delivered(self, service: str, version: str) -> None:
        """A one-way message reached an instance of ``version``: a success."""
        self.successes[service, version] += 1

    def expect(self, replier: str, message_id: str, pending: Pending) -> None:
        """Remember a request routed to ``replier`` (client id) until its reply or deadline."""
        if len(self._pending) >= self.max_pending:
            self.overflowed += 1  # tracking is best effort past the bound; routing is not
            return
        self._pending[replier, message_id] = pending
        heapq.heappush(self._deadlines, (pending.deadline, replier, message_id))

    def answer(self, replier: str, in_reply_to: str, *, error: bool) -> Answer | None:
        """Match a reply to its request; count it as a success unless ``error``."""
        pending = self._pending.pop((replier, in_reply_to), None)
        if pending is None:
            return None
        latency = time.monotonic() - pending.sent
        if not error and pending.judged:
            self.successes[pending.service, pending.version] += 1
            self.latencies.setdefault((pending.service, pending.version), []).append(latency)
        return Answer(pending, latency)

    def timed_out(self, now: float | None = None) -> list[Pending]:
        """Remove the requests whose deadline has passed without a reply; return the judged ones."""
        now = time.monotonic() if now is None else now
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, replier, message_id = heapq.heappop(self._deadlines)
            pending = self._pending.pop((replier, message_id), None)
            if pending is not None and pending.judged:
                expired.append(pending)
        return expired

    def take_successes(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], list[float]]]:
        """Hand over the counted successes and latencies, and start counting afresh."""
        successes, latencies = dict(self.successes), self.latencies
        self.successes = Counter()
        self.latencies = {}
        return successes, latencies

    def restore(self, successes: dict[tuple[str, str], int]) -> None:
        """Put back successes that could not be written (Redis away), so none is lost."""
        self.successes.update(successes)

    def __len__(self) -> int:
        return len(self._pending)

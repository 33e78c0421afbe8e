"""A server's clock offset from CLOCK round trips, computed as NTP computes it (RFC 5905 §8).

One sample is four wall-clock times: t1 the asker sends, t2 the answerer
receives, t3 the answerer replies, t4 the asker receives. Then

    offset = ((t2 - t1) + (t3 - t4)) / 2    (how far the answerer's clock is ahead)
    delay  = (t4 - t1) - (t3 - t2)          (the round trip, less the answerer's own time)

Whatever the split of the delay between the two directions, the true offset
lies within ``offset ± delay / 2``; the sample with the smallest delay gives
the tightest bound, so it is the one kept (NTP's clock filter does the same).
Pure arithmetic: no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One CLOCK round trip (seconds since the epoch, each on its own machine's clock)."""

    sent: float  # t1, the asker's clock
    received: float  # t2, the answerer's clock
    replied: float  # t3, the answerer's clock
    answered: float  # t4, the asker's clock

    @property
    def offset(self) -> float:
        """How far the answerer's clock is ahead of the asker's (negative: behind)."""
        return ((self.received - self.sent) + (self.replied - self.answered)) / 2

    @property
    def delay(self) -> float:
        """The round trip on the network and the routers, not counting the answerer's own time."""
        return max((self.answered - self.sent) - (self.replied - self.received), 0.0)


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """The best of a server's samples: its offset, known within ``error``."""

    offset: float
    delay: float
    samples: int

    @property
    def error(self) -> float:
        """The bound on the offset's error: half the round trip of the sample kept."""
        return self.delay / 2

    def beyond(self, threshold: float) -> bool:
        """Whether the estimated offset is past ``threshold`` either way."""
        return abs(self.offset) > threshold

    def conclusive(self, threshold: float) -> bool:
        """Whether the estimate can tell this clock's side of ``threshold``.

        An error bound wider than the threshold says nothing either way: the
        round trips were too slow (a loaded router or network) to judge.
        """
        return self.error <= threshold


def estimate(samples: Iterable[ClockSample]) -> ClockEstimate | None:
    """The estimate from the sample with the smallest delay; ``None`` without samples."""
    taken = list(samples)
    if not taken:
        return None
    best = min(taken, key=lambda sample: sample.delay)
    return ClockEstimate(offset=best.offset, delay=best.delay, samples=len(taken))

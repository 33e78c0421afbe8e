"""The NTP arithmetic of the clock check: whatever the network does, the bound holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.analysis._clock import ClockSample, estimate

seconds = st.floats(min_value=0, max_value=5, allow_nan=False)
offsets = st.floats(min_value=-3600, max_value=3600, allow_nan=False)


def exchange(offset: float, start: float, out: float, held: float, back: float) -> ClockSample:
    """One round trip: ``out`` on the way there, ``held`` at the answerer, ``back`` on the way."""
    received = start + out
    replied = received + held
    return ClockSample(start, received + offset, replied + offset, replied + back)


@given(offset=offsets, out=seconds, held=seconds, back=seconds)
def test_the_true_offset_is_within_half_the_delay(
    offset: float, out: float, held: float, back: float
) -> None:
    sample = exchange(offset, 1.7e9, out, held, back)
    assert abs(sample.delay - (out + back)) < 1e-5  # the answerer's own time is not delay
    assert abs(sample.offset - offset) <= sample.delay / 2 + 1e-5


@given(offset=offsets, trips=st.lists(st.tuples(seconds, seconds, seconds), min_size=1))
def test_the_fastest_round_trip_is_kept(
    offset: float, trips: list[tuple[float, float, float]]
) -> None:
    samples = [exchange(offset, 1.7e9 + i, *trip) for i, trip in enumerate(trips)]
    found = estimate(samples)
    assert found is not None
    assert found.samples == len(samples)
    assert found.delay == min(sample.delay for sample in samples)
    assert abs(found.offset - offset) <= found.error + 1e-5


def test_symmetric_paths_give_the_exact_offset() -> None:
    found = estimate([exchange(0.25, 1.7e9, 0.002, 0.010, 0.002)])
    assert found is not None
    assert abs(found.offset - 0.25) < 1e-6
    assert abs(found.error - 0.002) < 1e-6
    assert found.beyond(0.05)
    assert found.conclusive(0.05)
    assert not found.conclusive(0.001)


def test_no_samples_no_estimate() -> None:
    assert estimate([]) is None

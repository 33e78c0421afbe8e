"""The partition table's promises: replays lose nothing and keep order; held messages wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from communicator.router._partitions import CHECKPOINT_DEPTH, PartitionTable, Received

SECONDS, SIZE = 10.0, 1000


def table() -> PartitionTable:
    return PartitionTable(4, buffer_seconds=SECONDS, buffer_size=SIZE)


def message(n: int, fingerprint: int, at: float = 0.0) -> Received:
    return Received("sender", str(n).encode(), fingerprint, at)


def drain(t: PartitionTable, partition: int) -> list[Received]:
    out = []
    while (item := t.next_held(partition)) is not None:
        out.append(item)
    return out


@given(
    prints=st.lists(st.integers(0, 3), min_size=CHECKPOINT_DEPTH, max_size=60),
    data=st.data(),
)
def test_a_take_over_replays_everything_after_the_checkpoint_in_order(
    prints: list[int], data: st.DataObject
) -> None:
    """Few distinct fingerprints make ambiguous matches: they may cost duplicates, never a loss."""
    end = data.draw(st.integers(CHECKPOINT_DEPTH, len(prints)))  # the old owner routed [:end]
    checkpoint = prints[end - CHECKPOINT_DEPTH : end]
    t = table()
    for n, fingerprint in enumerate(prints):
        t.hold(0, message(n, fingerprint))
    t.lease(0)
    t.skip_to(0, checkpoint)
    replayed = [int(m.payload) for m in drain(t, 0)]
    assert replayed == sorted(replayed), "replayed out of order"
    assert replayed == list(range(len(prints) - len(replayed), len(prints))), "not a suffix"
    assert set(range(end, len(prints))) <= set(replayed), "lost a message after the checkpoint"


@given(st.lists(st.floats(0, 100), min_size=1, max_size=50).map(sorted))
def test_a_leased_partitions_held_messages_are_never_trimmed_by_age(times: list[float]) -> None:
    t = table()
    t.lease(1)  # ours, lapsed: what it holds is ours to route
    for n, at in enumerate(times):
        t.hold(1, message(n, n, at))
    t.trim(now=times[-1] + 10 * SECONDS)
    assert [int(m.payload) for m in drain(t, 1)] == list(range(len(times)))


def test_others_held_messages_are_trimmed_to_the_buffer_time() -> None:
    t = table()
    t.hold(2, message(0, 0, at=0.0))
    t.hold(2, message(1, 1, at=SECONDS + 1))
    assert t.buffered(2) == 1  # trimmed on arrival
    t.trim(now=3 * SECONDS)
    assert t.buffered(2) == 0  # and by age, with nothing arriving


def test_a_partition_is_routed_live_only_once_nothing_waits() -> None:
    t = table()
    t.lease(3)
    t.hold(3, message(0, 0))
    with pytest.raises(RuntimeError, match="replay the held messages"):
        t.extend(3, deadline=1e12)
    drain(t, 3)
    t.extend(3, deadline=1e12)
    assert t.owns(3)
    assert t.leased() == [3]
    t.drop(3)
    assert not t.owns(3)
    assert t.leased() == []

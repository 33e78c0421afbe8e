"""keep_trying, the one reconnect loop: after a healthy spell, the shortest wait again."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from communicator.backends._backoff import FIRST_WAIT, MAX_WAIT, keep_trying


def record_caps(monkeypatch: pytest.MonkeyPatch, wait: float = 0.0) -> list[float]:
    """Make every jittered wait ``wait`` seconds; the list gets the cap of each."""
    caps: list[float] = []

    def uniform(low: float, high: float) -> float:
        caps.append(high)
        return wait

    monkeypatch.setattr(random, "uniform", uniform)
    return caps


async def test_a_healthy_spell_resets_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = record_caps(monkeypatch)  # the cap of each wait says which retry it was for
    runs = 0

    async def connect_then_serve() -> str:
        nonlocal runs
        runs += 1
        if runs == 4:
            await asyncio.sleep(0.05)  # connected, served a while, then lost it again
        if runs < 6:
            raise ConnectionError(f"down ({runs})")
        return "done"

    result = await keep_trying(
        connect_then_serve, what="test", transient=lambda e: True, healthy_after=0.02
    )
    assert result == "done"
    assert caps == pytest.approx([FIRST_WAIT * 2**n for n in (0, 1, 2, 0, 1)])


async def test_the_wait_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = record_caps(monkeypatch)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 40:
            raise ConnectionError("down")

    await keep_trying(flaky, what="test", transient=lambda e: True)
    assert len(caps) == 40
    assert caps[-1] == MAX_WAIT
    assert max(caps) == MAX_WAIT


async def test_a_permanent_error_ends_the_loop_at_once() -> None:
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        await keep_trying(broken, what="test", transient=lambda e: isinstance(e, OSError))
    assert runs == 1


async def test_each_failure_is_a_warning_naming_the_loop_the_error_and_the_wait(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    record_caps(monkeypatch, wait=0.01)
    runs = 0

    async def twice_down() -> int:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ConnectionError(f"refused ({runs})")
        return runs

    with caplog.at_level(logging.WARNING, logger="communicator.backends._backoff"):
        assert await keep_trying(twice_down, what="flags: broker", transient=lambda e: True) == 3
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "flags: broker: ConnectionError: refused (1); retrying in 0.01s"),
        (logging.WARNING, "flags: broker: ConnectionError: refused (2); retrying in 0.01s"),
    ]


async def test_a_group_is_retried_only_when_every_error_in_it_is_transient(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    record_caps(monkeypatch)
    groups = [
        ExceptionGroup("lost", [ConnectionError("a"), OSError("b")]),
        ExceptionGroup("mixed", [ConnectionError("c"), KeyError("bug")]),
    ]
    runs = 0

    async def in_a_task_group() -> None:
        nonlocal runs
        runs += 1
        raise groups[runs - 1]

    with pytest.raises(ExceptionGroup, match="mixed"):
        await keep_trying(in_a_task_group, what="test", transient=lambda e: isinstance(e, OSError))
    assert runs == 2
    assert "ConnectionError: a; OSError: b; retrying" in caplog.text


async def test_a_cancellation_raised_by_the_operation_is_never_retried() -> None:
    runs = 0

    async def cancelled() -> None:
        nonlocal runs
        runs += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await keep_trying(cancelled, what="test", transient=lambda e: True)
    assert runs == 1


async def test_a_cancellation_during_the_wait_ends_the_loop_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record_caps(monkeypatch, wait=60.0)
    failed = asyncio.Event()

    async def down() -> None:
        failed.set()
        raise ConnectionError("down")

    task = asyncio.create_task(keep_trying(down, what="test", transient=lambda e: True))
    await failed.wait()
    await asyncio.sleep(0.01)  # keep_trying is waiting its 60 s now
    task.cancel()
    async with asyncio.timeout(1):
        await asyncio.wait({task})
    assert task.cancelled()


async def test_a_cancellation_disguised_as_a_transient_error_cancels() -> None:
    """aiomqtt raises MqttError when a cancellation lands while it disconnects."""
    started = asyncio.Event()
    runs = 0

    async def disconnecting() -> None:
        nonlocal runs
        runs += 1
        try:
            started.set()
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ConnectionError("disconnected during the cancellation") from None

    task = asyncio.create_task(keep_trying(disconnecting, what="test", transient=lambda e: True))
    await started.wait()
    task.cancel()
    async with asyncio.timeout(1):
        await asyncio.wait({task})
    assert task.cancelled()
    assert runs == 1

"""cancel_and_wait: a task that swallows a cancellation is cancelled again until it ends."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from communicator.backends import cancel_and_wait


async def test_wait_for_forgets_a_cancellation_that_lands_as_its_future_completes() -> None:
    """The hazard itself (CPython gh-86296): on 3.11 one cancel() is lost, the loop runs on.

    redis-py sends every command through ``wait_for``; the controller's advance
    loop was cancelled so and kept ticking. cancel_and_wait ends it anyway.
    """
    loop = asyncio.get_running_loop()
    futures: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    rounds = 0

    async def writes_forever() -> None:
        nonlocal rounds
        while True:
            future: asyncio.Future[None] = loop.create_future()
            await futures.put(future)
            await asyncio.wait_for(future, 5)  # as redis-py's send_packed_command
            rounds += 1

    task = asyncio.create_task(writes_forever())
    future = await futures.get()
    future.set_result(None)  # the reply arrives...
    task.cancel()  # ...and the stop lands before the task resumes
    await asyncio.sleep(0.01)
    swallowed = not task.done()
    assert swallowed == (sys.version_info < (3, 12))
    if swallowed:
        assert rounds == 1  # it went on to its next write
        (await futures.get()).set_result(None)
    assert await cancel_and_wait([task]) == []
    assert task.cancelled()


async def test_a_task_that_swallows_some_cancellations_is_ended() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed >= 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], every=0.01) == []
    assert swallowed == 3
    assert task.cancelled()


async def test_a_task_that_never_ends_is_named_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past its patience, cancel_and_wait returns the task and says which it is."""
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf(), name="deaf-loop")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        left = await cancel_and_wait([task], every=0.01, patience=0.1)
    assert left == [task]
    assert "deaf-loop" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.done()


async def test_finished_and_empty_lists_return_at_once() -> None:
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    assert await cancel_and_wait([]) == []
    assert await cancel_and_wait([done]) == []

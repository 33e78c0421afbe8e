"""wait_event never swallows a cancellation, even one that lands as its timeout fires.

asyncio.wait_for can on Python 3.11 (CPython gh-86296): a controller whose
loop waited that way once never stopped. Two hundred loops are cancelled at
moments spread over the timeout; each must end.
"""

from __future__ import annotations

import asyncio

from controller.engine._controller import wait_event


async def test_a_loop_of_short_waits_always_ends_when_cancelled() -> None:
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            await wait_event(event, 0.001)

    for n in range(200):
        task = asyncio.create_task(loop())
        await asyncio.sleep(0.001 * (n % 7) / 3)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, f"loop {n} swallowed its cancellation"
        assert task.cancelled()


async def test_it_returns_when_the_event_is_set() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    await asyncio.wait_for(wait_event(event, 10), 1)
    assert event.is_set()

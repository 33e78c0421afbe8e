"""Stopping tasks for sure: cancellation repeated until they end.

One ``Task.cancel()`` is not enough on Python 3.11. ``asyncio.wait_for``
returns the result of its inner future when a cancellation lands just as
that future completes, and forgets the cancellation (CPython gh-86296, fixed
in 3.12); redis-py wraps every command it sends in ``wait_for`` (its socket
timeout). A daemon loop cancelled at that instant carries on as if nothing
happened, and whoever waits for it waits forever: CI saw a controller that
would not stop, its advance loop back in its tick after the cancellation was
swallowed in a Redis write. So cancellation here is level-triggered, as in
trio and anyio: cancel again until the task has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds between two cancellations of a task that has not ended.
EVERY = 0.1
#: Seconds of cancelling before giving up on a task (it is named in a warning).
PATIENCE = 10.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, every: float = EVERY, patience: float = PATIENCE
) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` until every one has ended, or ``patience`` seconds have passed.

    Returns:
        The tasks still running after ``patience`` (each named in a warning): a
        task that swallows every cancellation is a bug to report, not to wait on.
    """
    left = [task for task in tasks if not task.done()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while left:
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=every)
        left = [task for task in left if not task.done()]
        if left and loop.time() >= deadline:
            names = ", ".join(task.get_name() for task in left)
            logger.warning(
                "tasks still running %.0f s after their cancellation: %s", patience, names
            )
            break
    return left

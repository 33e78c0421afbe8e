"""The one retry policy for reaching Redis and the MQTT broker.

Capped exponential backoff with full jitter (each wait is random between zero
and the current cap), so that many processes restarted together do not knock
on a recovering server in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

logger = logging.getLogger(__name__)

FIRST_WAIT = 0.05
"""Seconds: the cap of the first wait; it doubles after each failure."""
MAX_WAIT = 2.0
"""Seconds: the cap never grows past this."""


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first), for hand-made loops.

    The same policy as :func:`backoff`: random between zero and
    ``FIRST_WAIT * 2**attempt``, capped at ``MAX_WAIT``.
    """
    return random.uniform(0, min(MAX_WAIT, FIRST_WAIT * 2 ** min(attempt, 32)))


def backoff(
    *,
    deadline: float,
    transient: Callable[[BaseException], bool],
    retry: bool = True,
) -> AsyncRetrying:
    """Build the retry loop used to connect to a backend.

    Args:
        deadline: Seconds after which no new attempt starts.
        transient: Says whether an error is worth another attempt; any other
            error is raised at once.
        retry: ``False`` makes a single attempt.

    Returns:
        An ``AsyncRetrying`` to drive with ``async for attempt in ...``; when it
        gives up it re-raises the last exception.
    """
    return AsyncRetrying(
        stop=stop_before_delay(deadline) if retry else stop_after_attempt(1),
        wait=wait_random_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT),
        retry=retry_if_exception(transient),
        before_sleep=before_sleep_log(logger, logging.DEBUG),
        reraise=True,
    )


def being_cancelled() -> bool:
    """Whether the running task is being cancelled.

    aiomqtt turns a cancellation that lands while it disconnects into an
    ``MqttError``; a reconnect loop that caught it would then never end.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

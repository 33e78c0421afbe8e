"""The one retry policy for reaching Redis and the MQTT broker.

Capped exponential backoff with full jitter (each wait is random between zero
and the current cap), so that many processes restarted together do not knock
on a recovering server in lockstep.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
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
HEALTHY_AFTER = 30.0
"""Seconds an operation must have run before its failure counts as a new outage."""

T = TypeVar("T")


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first), for hand-made loops.

    The same policy as :func:`backoff` and :func:`keep_trying`: random between
    zero and ``FIRST_WAIT * 2**attempt``, capped at ``MAX_WAIT``. Prefer
    :func:`keep_trying` to a loop of one's own.
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


def every_leaf(exc: BaseException, transient: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` is transient, or an exception group made only of transient errors.

    A TaskGroup wraps what its tasks raise in an ``ExceptionGroup``; a plain
    ``except RedisError`` does not catch that, so reconnect loops ask this.
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(every_leaf(inner, transient) for inner in exc.exceptions)
    return transient(exc)


async def keep_trying(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    healthy_after: float = HEALTHY_AFTER,
) -> T:
    """Run ``operation`` until it returns, retrying it after transient failures.

    The one reconnect loop of deployctl's daemons, on tenacity: waits follow the
    policy of :func:`backoff` (capped, jittered), each failure is logged as a
    warning naming ``what``, and an operation that ran ``healthy_after`` seconds
    before failing starts again from the shortest wait (a new outage, not the
    same one). Exception groups count as transient when every error in them is.
    Cancellation is never retried nor delayed: a transient error raised while
    the task is being cancelled (aiomqtt's disguise) becomes ``CancelledError``.

    Args:
        operation: Makes one attempt (connect, then serve until the connection drops).
        what: Names the loop in the log, e.g. ``"controller 7f: Redis listener"``.
        transient: Says whether an error is worth another attempt; any other
            error ends the loop at once.
        healthy_after: See above.

    Returns:
        What ``operation`` returned.
    """
    wait = _WaitPerOutage(healthy_after)
    retrying = AsyncRetrying(
        wait=wait,
        # Tenacity catches BaseException: CancelledError, KeyboardInterrupt... are no Exception.
        retry=retry_if_exception(
            lambda exc: isinstance(exc, Exception) and every_leaf(exc, transient)
        ),
        before=wait.attempt_starts,
        before_sleep=_warning(what),
        reraise=True,
    )
    result: T = await retrying(_undisguised(operation, transient))
    return result


class _WaitPerOutage(wait_random_exponential):
    """``wait_random_exponential`` counted from the first failure of the current outage.

    A failure of an attempt that had run ``healthy_after`` seconds opens a new
    outage: its wait is the shortest again. One instance serves one loop.
    """

    def __init__(self, healthy_after: float) -> None:
        super().__init__(multiplier=FIRST_WAIT, max=MAX_WAIT)
        self.healthy_after = healthy_after
        self._attempt_started = time.monotonic()
        self._outage_began = 1  # the attempt number of the current outage's first failure

    def attempt_starts(self, retry_state: RetryCallState) -> None:
        """Note the time an attempt starts (tenacity's ``before`` hook)."""
        self._attempt_started = time.monotonic()

    def __call__(self, retry_state: RetryCallState) -> float:
        failed_at = retry_state.outcome_timestamp or time.monotonic()
        if failed_at - self._attempt_started >= self.healthy_after:
            self._outage_began = retry_state.attempt_number
        in_this_outage = copy.copy(retry_state)
        in_this_outage.attempt_number -= self._outage_began - 1
        return super().__call__(in_this_outage)


def _undisguised(
    operation: Callable[[], Awaitable[T]], transient: Callable[[BaseException], bool]
) -> Callable[[], Awaitable[T]]:
    """``operation`` as a coroutine function that turns a disguised cancellation back into one."""

    async def attempt() -> T:
        try:
            return await operation()
        except Exception as exc:
            if being_cancelled() and every_leaf(exc, transient):
                raise asyncio.CancelledError from exc
            raise

    return attempt


def _warning(what: str) -> Callable[[RetryCallState], None]:
    """Tenacity's ``before_sleep`` hook: a warning naming the loop, the error and the wait."""

    def warn(retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        delay = retry_state.upcoming_sleep
        logger.warning("%s: %s; retrying in %.2fs", what, _describe(error), delay)

    return warn


def _describe(error: BaseException | None) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}" if error is not None else "failed"

"""Log lines a flood cannot multiply: at most a few per kind and interval, then a count.

A hostile or broken client can send ten thousand bad messages a second; one
warning each would bury the log (and cost more than routing). A
:class:`Throttled` logger writes the first ``burst`` lines of each kind per
``interval``, counts the rest, and says how many it left out when the next
line of that kind is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    started: float
    written: int = 0
    left_out: int = 0


class Throttled:
    """A logger that writes at most ``burst`` lines per kind and ``interval`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self.left_out = 0  # lines not written, over the whole life of the logger

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Write one line of ``kind`` unless its window is full; whether it was written."""
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window.started >= self._interval:
            left_out = window.left_out if window else 0
            window = self._windows[kind] = _Window(now)
            if left_out:
                message += " (and %d more like it left out of the log)"
                args = (*args, left_out)
        if window.written >= self._burst:
            window.left_out += 1
            self.left_out += 1
            return False
        window.written += 1
        self._logger.log(level, message, *args)
        return True

    def flush(self) -> None:
        """Say how many lines were left out in windows that have ended (call now and then)."""
        now = self._clock()
        for kind, window in list(self._windows.items()):
            if now - window.started >= self._interval:
                del self._windows[kind]
                if window.left_out:
                    self._logger.warning(
                        "%d more log lines like the last %r left out", window.left_out, kind
                    )

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: str, message: str, *args: object) -> bool:
        """:meth:`log` at INFO."""
        return self.log(logging.INFO, kind, message, *args)

"""keep_trying, the one reconnect loop: after a healthy spell, the shortest wait again."""

from __future__ import annotations

import asyncio

import pytest

from communicator.backends import _backoff
from communicator.backends._backoff import keep_trying


async def test_a_healthy_spell_resets_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []  # the retry number each wait was computed for

    def no_wait(attempt: int) -> float:
        asked.append(attempt)
        return 0.0

    monkeypatch.setattr(_backoff, "backoff_delay", no_wait)
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
    assert asked == [0, 1, 2, 0, 1]


async def test_a_permanent_error_ends_the_loop_at_once() -> None:
    async def broken() -> None:
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        await keep_trying(broken, what="test", transient=lambda e: isinstance(e, OSError))

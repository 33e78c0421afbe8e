"""Reading redis-py replies, whether the client decodes them (text) or not (bytes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def text(value: bytes | str) -> str:
    """A reply item as text (UTF-8)."""
    return value.decode() if isinstance(value, bytes) else value


def flat_fields(flat: Sequence[bytes | str]) -> dict[str, str]:
    """A hash from a flat ``[field, value, ...]`` list, as HGETALL returns inside Lua."""
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}


def fields(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash (or a stream entry) as text."""
    return {text(name): text(value) for name, value in raw.items()}

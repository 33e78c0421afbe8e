"""The values playbooks are made of: durations, percentages and exec templates.

Each is an annotated type whose errors say what to write instead (pydantic's
own messages name a type, not a fix).
"""

from __future__ import annotations

import math
import re
import string
from contextvars import ContextVar
from typing import Annotated

from pydantic import (
    AfterValidator,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from communicator import parse_duration

#: Placeholders every ``exec`` step may use, beside the playbook's own ``variables``.
PLACEHOLDERS = frozenset({"service", "version", "stable", "weight", "rollout"})
#: Names of parameters, variables and environment variables.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Serialization context key: write durations as ``30s`` rather than seconds (for YAML).
DURATIONS_AS_TEXT = "durations_as_text"

# Names an exec step's placeholders may use while a playbook is being validated
# (set by Playbook, which knows its variables); None outside a playbook.
known_placeholders: ContextVar[frozenset[str] | None] = ContextVar(
    "known_placeholders", default=None
)


def problem(reason: str) -> PydanticCustomError:
    """A validation error whose message is ``reason`` as is (no "Value error, " prefix)."""
    return PydanticCustomError("playbook", "{reason}", {"reason": reason})


# -- durations and percentages -------------------------------------------------------------


def _duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value.strip())
        except ValueError as exc:
            raise problem(str(exc)) from None
    else:
        raise problem(f"{value!r} is not a duration (write 30s, 250ms, 5m, 1h30m or seconds)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise problem(f"duration {value!r} must be more than zero")
    return seconds


def format_duration(seconds: float) -> str | float:
    """Write seconds as ``250ms``, ``30s`` or ``1h30m``, or as the number if no text reads back."""
    if seconds < 1:
        text = f"{round(seconds * 1000, 6):g}ms"
    elif seconds == int(seconds):
        hours, rest = divmod(int(seconds), 3600)
        minutes, secs = divmod(rest, 60)
        parts = ((hours, "h"), (minutes, "m"), (secs, "s"))
        text = "".join(f"{n}{unit}" for n, unit in parts if n)
    else:
        text = f"{seconds!r}s"
    try:
        return text if parse_duration(text) == seconds else seconds
    except ValueError:
        return seconds


def _dump_duration(seconds: float, info: SerializationInfo) -> str | float:
    if info.context and info.context.get(DURATIONS_AS_TEXT):
        return format_duration(seconds)
    return seconds


Duration = Annotated[
    float,
    PlainValidator(_duration),
    PlainSerializer(_dump_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$|^\d+(\.\d+)?$"},
            ]
        }
    ),
]
"""Seconds, written as ``30s``, ``250ms``, ``5m``, ``1h30m`` or a number of seconds."""


def _percent(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)  # lax, as pydantic reads the other integers
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise problem(f"{value!r} is not a whole percentage: write a number from 0 to 100")
    if not math.isfinite(value) or value != int(value):
        raise problem(f"{value!r} is not a whole percentage: write a number from 0 to 100")
    if not 0 <= value <= 100:
        side = "above 100" if value > 100 else "below 0"
        raise problem(f"{value:g} is {side}: write a percentage of traffic, from 0 to 100")
    return int(value)


Percent = Annotated[
    int,
    PlainValidator(_percent),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 100}),
]
"""A whole percentage of traffic, 0 to 100."""


# -- placeholders --------------------------------------------------------------------------


def placeholders_in(template: str) -> list[str]:
    """The ``{name}`` placeholders of an exec template (``{{`` and ``}}`` are literal braces).

    Raises:
        ValueError: A brace is unbalanced, or a placeholder is not a plain name.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        raise ValueError(
            f"{template!r} has an unbalanced brace: write {{{{ or }}}} for a literal brace"
        ) from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not NAME_RE.fullmatch(name) or spec or conversion:
            raise ValueError(
                f"{template!r}: write a placeholder as a plain {{name}}, not {{{name}"
                f"{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            )
        names.append(name)
    return names


def unknown_placeholder(name: str, variables: frozenset[str]) -> str:
    """The error for a placeholder that is neither built in nor a playbook variable."""
    known = ", ".join(f"{{{n}}}" for n in sorted(PLACEHOLDERS | variables))
    return f"unknown placeholder {{{name}}}: known ones are {known} (add others under variables)"


def _template(value: str) -> str:
    try:
        names = placeholders_in(value)
    except ValueError as exc:
        raise problem(str(exc)) from None
    known = known_placeholders.get()
    for name in names:
        if known is not None and name not in known:
            raise problem(unknown_placeholder(name, known - PLACEHOLDERS))
    return value


def env_name(value: str) -> str:
    """Check the name of an environment variable an exec step sets."""
    if not NAME_RE.fullmatch(value):
        raise problem(f"environment variable {value!r} must match {NAME_RE.pattern}")
    return value


Template = Annotated[str, AfterValidator(_template)]
"""Text with ``{placeholder}`` names, checked against the known ones."""

"""Value validators for message parameters.

Each validator is a small pydantic model, chosen by its ``type`` in a
definition file, with one method: :meth:`problem` says what is wrong with a
value, or returns ``None``. Values on the wire are always strings.

:func:`global_parameter_problems` checks the global parameters the communicator
acts on (``cache``, ``ttl``, ``timeout``, ``transmission_report``,
``message_id``, ``in_reply_to``) whether or not it validates messages strictly.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from communicator.wire._message import Message

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d+)?")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def parse_duration(text: str) -> float:
    """Read a duration in seconds: ``30``, ``1.5s``, ``250ms``, ``5m``, ``1h30m``, ``2d``.

    Raises:
        ValueError: The text is not a duration.
    """
    if _NUMBER_RE.fullmatch(text) and not text.startswith(("+", "-")):
        return float(text)
    total, pos = 0.0, 0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration (try 30s, 250ms, 5m, 1h30m)")
    return total


def parse_timestamp(text: str) -> float:
    """Read a timestamp as Unix seconds: a number, or ISO 8601 / RFC 3339 with a time zone.

    Raises:
        ValueError: The text is not a timestamp.
    """
    if _NUMBER_RE.fullmatch(text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a timestamp (Unix seconds, or RFC 3339 like 2026-11-28T16:21:38Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone (add Z or +00:00)")
    return moment.timestamp()


class _Validator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def problem(self, value: str) -> str | None:  # pragma: no cover - every subclass overrides
        """Say what is wrong with ``value``, or return ``None`` when it is valid."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line describing the accepted values, for docs and help."""
        details = self.model_dump(exclude={"type"}, exclude_none=True, exclude_defaults=True)
        extra = ", ".join(f"{k}={v}" for k, v in details.items())
        return f"{self.type}({extra})" if extra else str(self.type)  # type: ignore[attr-defined]


class StringValidator(_Validator):
    """Any text, optionally limited in length and matched in full by a regular expression."""

    type: Literal["string"] = "string"
    regex: str | None = None
    min_length: int = Field(default=0, ge=0)
    max_length: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> StringValidator:
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError("max_length is below min_length")
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.regex) if self.regex is not None else None

    def problem(self, value: str) -> str | None:
        """Check length, then the regular expression."""
        if len(value) < self.min_length:
            return f"is {len(value)} characters long, shorter than {self.min_length}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"is {len(value)} characters long, longer than {self.max_length}"
        if self._pattern is not None and not self._pattern.fullmatch(value):
            return f"{_show(value)} does not match {self.regex}"
        return None


def _range_problem(
    number: float, low: float | None, high: float | None, unit: str = ""
) -> str | None:
    if low is not None and number < low:
        return f"{number:g}{unit} is below the minimum {low:g}{unit}"
    if high is not None and number > high:
        return f"{number:g}{unit} is above the maximum {high:g}{unit}"
    return None


class _Ranged(_Validator):
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        """The type and its range, like ``integer from 0 to 100``."""
        unit = "s" if self.type == "duration" else ""  # type: ignore[attr-defined]
        low = f"{self.min:g}{unit}" if self.min is not None else None
        high = f"{self.max:g}{unit}" if self.max is not None else None
        if low and high:
            return f"{self.type} from {low} to {high}"  # type: ignore[attr-defined]
        if low or high:
            return f"{self.type} {'>= ' + low if low else '<= ' + str(high)}"  # type: ignore[attr-defined]
        return str(self.type)  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _check_range(self) -> Any:
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max {self.max} is below min {self.min}")
        return self


class IntegerValidator(_Ranged):
    """A whole number in decimal, optionally within ``min`` and ``max``."""

    type: Literal["integer"] = "integer"
    min: int | None = None
    max: int | None = None

    def problem(self, value: str) -> str | None:
        """Check the syntax, then the range."""
        if not re.fullmatch(r"[+-]?\d{1,30}", value):
            return f"{_show(value)} is not an integer"
        return _range_problem(int(value), self.min, self.max)


class FloatValidator(_Ranged):
    """A finite decimal number (``1``, ``-2.5``, ``1e-3``), optionally within a range."""

    type: Literal["float"] = "float"

    def problem(self, value: str) -> str | None:
        """Check the syntax (no NaN nor infinity), then the range."""
        if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?", value):
            return f"{_show(value)} is not a number"
        number = float(value)
        if not math.isfinite(number):
            return f"{_show(value)} is not a finite number"
        return _range_problem(number, self.min, self.max)


class BoolValidator(_Validator):
    """``true``/``false`` (also ``yes``/``no``, ``on``/``off``, ``1``/``0``)."""

    type: Literal["bool"] = "bool"

    def problem(self, value: str) -> str | None:
        """Accept only the listed spellings, in lower case."""
        if value in _TRUE or value in _FALSE:
            return None
        return f"{_show(value)} is not a boolean (use true or false)"


class EnumValidator(_Validator):
    """One of a fixed list of values."""

    type: Literal["enum"] = "enum"
    values: list[str] = Field(min_length=1)

    def describe(self) -> str:
        """``one of a, b, c``."""
        return "one of " + ", ".join(self.values)

    def problem(self, value: str) -> str | None:
        """Accept only a listed value, exactly."""
        if value in self.values:
            return None
        return f"{_show(value)} is not one of {', '.join(self.values)}"


class DurationValidator(_Ranged):
    """A duration: ``30`` (seconds), ``250ms``, ``5m``, ``1h30m``, ``2d``; range in seconds."""

    type: Literal["duration"] = "duration"

    def problem(self, value: str) -> str | None:
        """Check the syntax, then the range."""
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            return str(exc)
        return _range_problem(seconds, self.min, self.max, "s")


class TimestampValidator(_Validator):
    """A point in time: Unix seconds, or RFC 3339 with a time zone."""

    type: Literal["timestamp"] = "timestamp"

    def problem(self, value: str) -> str | None:
        """Check the syntax."""
        try:
            parse_timestamp(value)
        except ValueError as exc:
            return str(exc)
        return None


class IpAddressValidator(_Validator):
    """An IPv4 or IPv6 address (``version`` limits it to one)."""

    type: Literal["address(ip)"] = "address(ip)"
    version: Literal[4, 6] | None = None

    def problem(self, value: str) -> str | None:
        """Check the address and its version."""
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return f"{_show(value)} is not an IP address"
        if self.version is not None and address.version != self.version:
            return f"{value} is not an IPv{self.version} address"
        return None


class IpPortValidator(_Validator):
    """An address and port: ``192.0.2.1:4040`` or ``[2001:db8::1]:4040``."""

    type: Literal["address(ip:port)"] = "address(ip:port)"

    def problem(self, value: str) -> str | None:
        """Check the address, the brackets around IPv6 and the port range."""
        host, sep, port = value.rpartition(":")
        if not sep:
            return f"{_show(value)} has no port (write ip:port)"
        if host.startswith("[") and host.endswith("]"):
            host, bracketed = host[1:-1], True
        else:
            bracketed = False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return f"{_show(host)} is not an IP address"
        if address.version == 6 and not bracketed:
            return f"IPv6 address {host} must be in brackets: [{host}]:{port}"
        if address.version == 4 and bracketed:
            return f"IPv4 address {host} must not be in brackets"
        if not re.fullmatch(r"\d{1,5}", port) or not 1 <= int(port) <= 65535:
            return f"port {_show(port)} is not a number from 1 to 65535"
        return None


class ListValidator(_Validator):
    """Items separated by ``separator`` (``,`` by default), each checked by ``item``."""

    type: Literal["list"] = "list"
    item: Validator = Field(default_factory=StringValidator)
    separator: str = Field(default=",", min_length=1)
    min_items: int = Field(default=0, ge=0)
    max_items: int | None = Field(default=None, ge=0)

    def problem(self, value: str) -> str | None:
        """Check the number of items, then each item."""
        items = value.split(self.separator) if value else []
        if len(items) < self.min_items:
            return f"has {len(items)} items, fewer than {self.min_items}"
        if self.max_items is not None and len(items) > self.max_items:
            return f"has {len(items)} items, more than {self.max_items}"
        for index, item in enumerate(items):
            problem = self.item.problem(item)
            if problem:
                return f"item {index + 1}: {problem}"
        return None

    def describe(self) -> str:
        """Describe the list and its item."""
        limits = []
        if self.min_items:
            limits.append(f"min_items={self.min_items}")
        if self.max_items is not None:
            limits.append(f"max_items={self.max_items}")
        more = (", " + ", ".join(limits)) if limits else ""
        return f"list of {self.item.describe()} separated by {self.separator!r}{more}"


def _shorthand(value: Any) -> Any:
    """Let a definition say ``value: integer`` for ``value: {type: integer}``."""
    return {"type": value} if isinstance(value, str) else value


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


Validator = Annotated[
    Annotated[
        StringValidator
        | IntegerValidator
        | FloatValidator
        | BoolValidator
        | EnumValidator
        | DurationValidator
        | TimestampValidator
        | IpAddressValidator
        | IpPortValidator
        | ListValidator,
        Field(discriminator="type"),
    ],
    BeforeValidator(_shorthand),
]

ListValidator.model_rebuild()


#: Start of the communicator's own ``message_id`` values (``~shadow.<n>``); no client may use it.
RESERVED_ID_PREFIX = "~"
#: Longest ``message_id`` or ``in_reply_to``, in characters.
MAX_ID_LENGTH = 128

#: The global parameters the communicator acts on, each with its rule and what to send instead.
#: The rules are those of ``definitions/_globals.yaml`` (a test keeps them equal), except that
#: ``in_reply_to`` is only bounded: it carries back whatever id the request had, ours included.
_GLOBAL_RULES: dict[str, tuple[_Validator, str]] = {
    "cache": (EnumValidator(values=["yes", "no"]), "send cache=yes or cache=no"),
    "preview": (
        EnumValidator(values=["yes", "no"]),
        "send preview=yes to reach the preview color, or leave preview out",
    ),
    "ttl": (
        DurationValidator(min=0, max=86400),
        "send a duration from 0s to 1d, like ttl=60s, or leave ttl out for the default",
    ),
    "timeout": (
        DurationValidator(min=0.001, max=3600),
        "send a duration from 1ms to 1h, like timeout=30s, or leave timeout out for the default",
    ),
    "transmission_report": (
        EnumValidator(values=["failure"]),
        "send transmission_report=failure, or leave it out",
    ),
    "message_id": (
        StringValidator(min_length=1, max_length=MAX_ID_LENGTH, regex=r"[A-Za-z0-9_.:-]+"),
        f"send 1 to {MAX_ID_LENGTH} of A-Z a-z 0-9 _ . : - (like web_01.42)",
    ),
    "in_reply_to": (
        StringValidator(min_length=1, max_length=MAX_ID_LENGTH),
        "send back the message_id of the request unchanged",
    ),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a message, as found by ``MessageDefinitions.validate``."""

    reason: str
    parameter: str | None = None

    def __str__(self) -> str:
        return f"{self.parameter}: {self.reason}" if self.parameter else self.reason


def global_parameter_problems(message: Message) -> list[Problem]:
    """Check the global parameters the communicator acts on, strict mode or not.

    Returns:
        One problem per bad parameter, naming it and saying what to send instead; empty when
        all are fine or absent. Other parameters are not looked at.
    """
    problems: list[Problem] = []
    for name, (rule, instead) in _GLOBAL_RULES.items():
        value = message.parameters.get(name)
        if value is None:
            continue
        if name == "message_id" and value.startswith(RESERVED_ID_PREFIX):
            problem: str | None = (
                f"{_show(value)} starts with {RESERVED_ID_PREFIX!r}, which is reserved for"
                " the communicator's own ids"
            )
        else:
            problem = rule.problem(value)
        if problem:
            problems.append(Problem(f"{problem}; {instead}", name))
    return problems

"""Evaluate flags in-process, with the results flagd's in-process resolver gives.

A :class:`CompiledFlag` is built once per flag change: its targeting compiled,
and every result that does not depend on the caller's default value prepared,
so an evaluation is the rule's closure and a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from flags._model import Flag, FlagState, MetadataValue
from flags._targeting import Targeting, UnknownOperator, compile_targeting, flagd_data


class Reason(StrEnum):
    """Why a flag resolved to its value, as OpenFeature names it."""

    STATIC = "STATIC"
    """No targeting: the default variant."""
    DEFAULT = "DEFAULT"
    """Targeting returned null, or there is no default variant: the default."""
    TARGETING_MATCH = "TARGETING_MATCH"
    """Targeting chose the variant (fractional splits too, as flagd reports them)."""
    SPLIT = "SPLIT"
    """OpenFeature's reason for a pseudorandom split; flagd (and so we) never report it."""
    DISABLED = "DISABLED"
    """The flag is disabled: the caller's default value."""
    CACHED = "CACHED"
    """OpenFeature's reason for a value served from a cache (not reported by evaluation)."""
    UNKNOWN = "UNKNOWN"
    """OpenFeature's reason when none other applies (not reported by evaluation)."""
    ERROR = "ERROR"
    """Evaluation failed: the caller's default value, and an error code."""
    STALE = "STALE"
    """The value comes from the last known flags: the source is out of reach (FlagClient)."""


class ErrorCode(StrEnum):
    """What went wrong in an evaluation, as OpenFeature names it."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    PARSE_ERROR = "PARSE_ERROR"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    GENERAL = "GENERAL"


class FlagType(StrEnum):
    """The type of value a caller asks a flag for."""

    BOOLEAN = "boolean"
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    OBJECT = "object"


_NO_METADATA: Mapping[str, MetadataValue] = MappingProxyType({})


class Resolution(NamedTuple):
    """The result of evaluating a flag.

    Attributes:
        value: The flag's value, or the caller's default.
        variant: The variant's name, or ``None`` when the caller's default was served.
        reason: Why the flag resolved so.
        error_code: What went wrong, when ``reason`` is ``ERROR``.
        error_message: The error in words, when ``reason`` is ``ERROR``.
        metadata: The flag's flagd metadata: help, help_uri, owner, tags, expires …
    """

    value: Any
    variant: str | None
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None
    metadata: Mapping[str, MetadataValue] = _NO_METADATA


def type_problem(value: Any, expected: FlagType | None) -> str | None:
    """Say why a value is not of the expected type, as flagd checks it (``None`` if it is)."""
    if expected is None:
        return None
    if expected is FlagType.BOOLEAN:
        fits = isinstance(value, bool)
    elif expected is FlagType.STRING:
        fits = isinstance(value, str)
    elif expected is FlagType.INTEGER:
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif expected is FlagType.FLOAT:
        fits = isinstance(value, int | float)  # flagd lets booleans through, as 1.0 and 0.0
    else:
        fits = isinstance(value, dict | list)
    return None if fits else f"Expected type {expected.value} but got {type(value).__name__}"


class _Prepared(NamedTuple):
    matches: dict[str, Resolution]
    default: Resolution | None
    static: Resolution | None


class CompiledFlag:
    """A flag ready to evaluate: targeting compiled, results prepared.

    Attributes:
        flag: The flag definition.
        targeting: The compiled targeting, or ``None`` when the flag has none.
        metadata: The flag's flagd metadata, reported with every resolution.
    """

    __slots__ = ("_prepared", "flag", "metadata", "targeting")

    def __init__(self, flag: Flag) -> None:
        self.flag = flag
        self.metadata: Mapping[str, MetadataValue] = MappingProxyType(flag.flagd_metadata())
        self.targeting: Targeting | None = (
            compile_targeting(flag.targeting, flag.key) if flag.targeting else None
        )
        # For each expected type: each variant's resolution (or type error) when
        # targeting picks it, and the default variant's as DEFAULT and as STATIC.
        self._prepared: dict[FlagType | None, _Prepared] = {
            expected: self._prepare(expected) for expected in (None, *FlagType)
        }

    def _prepare(self, expected: FlagType | None) -> _Prepared:
        matches = {
            name: self._resolution(value, name, Reason.TARGETING_MATCH, expected)
            for name, value in self.flag.variants.items()
        }
        name = self.flag.default_variant
        if name is None:
            return _Prepared(matches, None, None)
        value = self.flag.variants[name]
        return _Prepared(
            matches,
            self._resolution(value, name, Reason.DEFAULT, expected),
            self._resolution(value, name, Reason.STATIC, expected),
        )

    def _resolution(
        self, value: Any, variant: str, reason: Reason, expected: FlagType | None
    ) -> Resolution:
        problem = type_problem(value, expected)
        if problem is not None:
            return Resolution(None, None, Reason.ERROR, ErrorCode.TYPE_MISMATCH, problem)
        if expected is FlagType.FLOAT and isinstance(value, int):
            value = float(value)
        return Resolution(value, variant, reason, metadata=self.metadata)

    def evaluate(
        self,
        default_value: Any,
        context: Mapping[str, Any] | None = None,
        expected_type: FlagType | None = None,
    ) -> Resolution:
        """Evaluate the flag for a context (its ``targetingKey`` included).

        Args:
            default_value: What to serve when the flag is disabled, has no
                default variant, or fails to evaluate.
            context: The evaluation context: attributes, and ``targetingKey``.
            expected_type: The type the caller wants; another type is a
                ``TYPE_MISMATCH`` error. ``None`` accepts any.

        Returns:
            The resolution, errors included (this never raises).
        """
        if self.flag.state is FlagState.DISABLED:
            return self._caller_default(default_value, Reason.DISABLED, expected_type)
        prepared = self._prepared[expected_type]
        if self.targeting is None:
            return self._served(prepared.static, default_value, expected_type)
        data: Any = context if type(context) is dict else dict(context or {})
        if self.targeting.needs_flagd_data:
            data = flagd_data(data, self.flag.key)
        try:
            chosen = self.targeting.rule(data)
        except UnknownOperator as error:
            return _error(default_value, ErrorCode.PARSE_ERROR, f"Invalid targeting: {error}")
        except Exception as error:
            return _error(default_value, ErrorCode.GENERAL, f"{type(error).__name__}: {error}")
        if chosen is None:
            return self._served(prepared.default, default_value, expected_type)
        if type(chosen) is not str:
            chosen = str(chosen).lower() if isinstance(chosen, bool) else str(chosen)
        resolution = prepared.matches.get(chosen)
        if resolution is None:
            message = f"Resolved variant {chosen} not in variants config."
            return _error(default_value, ErrorCode.GENERAL, message)
        return _served(resolution, default_value)

    def _served(
        self, prepared: Resolution | None, default_value: Any, expected_type: FlagType | None
    ) -> Resolution:
        if prepared is None:  # no default variant: the caller's default
            return self._caller_default(default_value, Reason.DEFAULT, expected_type)
        return _served(prepared, default_value)

    def _caller_default(
        self, default_value: Any, reason: Reason, expected_type: FlagType | None
    ) -> Resolution:
        if expected_type is FlagType.FLOAT and isinstance(default_value, int):
            default_value = float(default_value)
        return Resolution(default_value, None, reason, metadata=self.metadata)


def _served(prepared: Resolution, default_value: Any) -> Resolution:
    if prepared.reason is Reason.ERROR:
        return prepared._replace(value=default_value)
    return prepared


def _error(default_value: Any, code: ErrorCode, message: str) -> Resolution:
    return Resolution(default_value, None, Reason.ERROR, code, message)


def evaluate(
    flag: CompiledFlag | Flag | None,
    key: str,
    default_value: Any,
    context: Mapping[str, Any] | None = None,
    expected_type: FlagType | None = None,
) -> Resolution:
    """Evaluate a flag (``None`` when no flag has that key) as flagd's in-process resolver does.

    Pass a :class:`CompiledFlag` kept across evaluations: a bare :class:`Flag` is
    compiled on each call.

    Args:
        flag: The flag, or ``None`` when none is named ``key``.
        key: The key the caller asked for.
        default_value: What to serve when the flag is missing, disabled, or fails.
        context: The evaluation context: attributes, and ``targetingKey``.
        expected_type: The type the caller wants, ``None`` for any.

    Returns:
        The resolution, errors included (this never raises).
    """
    if flag is None:
        message = f"Flag with key {key} not present in flag store."
        return _error(default_value, ErrorCode.FLAG_NOT_FOUND, message)
    compiled = flag if isinstance(flag, CompiledFlag) else CompiledFlag(flag)
    return compiled.evaluate(default_value, context, expected_type)

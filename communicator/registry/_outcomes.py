"""Outcomes of versions, the invalidation policy, and what the registry says about a version.

The policy is data: strategies write it into Redis (:meth:`Registry.set_policy`)
and the registry's Lua step applies it at each failure. The communicator
applies policies; it does not choose them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from communicator._errors import RegistryError
from communicator.wire._message import NAME_PATTERN, NAME_RE

#: Most buckets a window may span: the Lua step reads them all at each failure.
MAX_WINDOW_BUCKETS = 360
#: A version, as REGISTER defines it. Checked again here because a version ends
#: up in key names, and one holding ``:`` could land on another version's keys.
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")


def check_names(service: str, version: str | None = None) -> None:
    """Refuse a service or version name that could reach another key than its own.

    Raises:
        RegistryError: The name does not match its pattern.
    """
    if not NAME_RE.fullmatch(service):
        raise RegistryError(f"service name {service!r} must match {NAME_PATTERN}", service=service)
    if version is not None and not VERSION_RE.fullmatch(version):
        raise RegistryError(
            f"version {version!r} must match {VERSION_RE.pattern} (no ':' or spaces)",
            service=service,
            version=version,
        )


class OutcomeKind(StrEnum):
    """What happened to one message or one instance of a version."""

    SUCCESS = "success"
    """A request was handled (recorded in batches by the router)."""
    DISCONNECT = "disconnect"
    """The instance vanished without saying goodbye (its MQTT will message)."""
    FAILURE = "failure"
    """The service reported a failure (a FAILURE message)."""
    TIMEOUT = "timeout"
    """A request got no reply in time."""
    ERROR_REPLY = "error_reply"
    """A request was answered with an error."""
    CRASH = "crash"
    """The instance crashed or was restarted (a crash loop when repeated)."""


#: Kinds counted by the ``crash_loop`` rule, whatever ``failure_kinds`` says.
CRASH_KINDS = frozenset({OutcomeKind.DISCONNECT, OutcomeKind.CRASH})
_FAILURE_KINDS = frozenset(OutcomeKind) - {OutcomeKind.SUCCESS}


class VersionStatus(StrEnum):
    """Whether a version may get traffic."""

    VALID = "valid"
    INVALID = "invalid"


class InvalidationPolicy(BaseModel):
    """When the registry marks a version invalid, applied atomically at each failure.

    A version is invalidated when, within the window, either the crash loop rule
    or the failure rate rule holds. Outcomes are counted in buckets of
    ``bucket_seconds``: an outcome counts for at least ``window_seconds``, and
    at most one bucket longer. A version's policy replaces its service's whole
    policy; with neither, the registry's defaults apply.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    window_seconds: int = Field(default=60, ge=1, le=86_400)
    """How long an outcome counts."""
    bucket_seconds: int = Field(default=10, ge=1, le=3_600)
    """Granularity of the window; at most 360 buckets per window."""
    min_failures: int = Field(default=5, ge=1)
    """Fewest failures in the window before the failure rate rule may trip."""
    max_failure_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    """Failure rate, failures / (failures + successes), above which the version trips; 1 never."""
    crash_loop: int = Field(default=5, ge=0)
    """Disconnects plus crashes in the window that trip the version whatever the rate; 0 never."""
    failure_kinds: frozenset[OutcomeKind] = Field(default=_FAILURE_KINDS)
    """Outcome kinds counted as failures by the failure rate rule."""
    min_reporters: int = Field(default=1, ge=1, le=1000)
    """Fewest distinct reporters of failures in the window before either rule may trip.

    A reporter is who gave the evidence: the requester whose request timed out
    or got an error, the instance that sent FAILURE, the instance that died.
    With 2 or more, no single client can invalidate a version on its own.
    """

    @model_validator(mode="after")
    def _check(self) -> Self:
        if OutcomeKind.SUCCESS in self.failure_kinds:
            raise ValueError("failure_kinds cannot include 'success'")
        if self.bucket_seconds > self.window_seconds:
            raise ValueError("bucket_seconds must not exceed window_seconds")
        if -(-self.window_seconds // self.bucket_seconds) > MAX_WINDOW_BUCKETS:
            raise ValueError(
                f"window_seconds / bucket_seconds must be at most {MAX_WINDOW_BUCKETS}: "
                "use larger buckets for a long window"
            )
        return self

    @field_serializer("failure_kinds")
    def _sorted_kinds(self, kinds: frozenset[OutcomeKind]) -> list[str]:
        # Sorted so that the stored JSON is stable (and diffs stay readable).
        return sorted(kinds)


def _float(value: str | None) -> float | None:
    return float(value) if value else None


@dataclass(frozen=True, slots=True)
class VersionState:
    """What the registry knows of one version.

    Attributes:
        service: The service.
        version: The version.
        state: Valid or invalid.
        reason: Why it is in this state (empty for a version never invalidated).
        changed_at: When the state last changed (epoch seconds), if ever.
        invalidated_at: When it was invalidated, while it is invalid.
        evidence: What tripped it (the counts and the policy's limits, or the
            operator's evidence), while it is invalid.
        first_seen: When the version was first registered or reported, if ever.
        last_seen: When it was last registered or reported, if ever.
    """

    service: str
    version: str
    state: VersionStatus = VersionStatus.VALID
    reason: str = ""
    changed_at: float | None = None
    invalidated_at: float | None = None
    evidence: dict[str, Any] | None = field(default=None, repr=False)
    first_seen: float | None = None
    last_seen: float | None = None

    @property
    def valid(self) -> bool:
        """Whether the version may get traffic and register instances."""
        return self.state is VersionStatus.VALID

    @classmethod
    def from_hash(cls, service: str, version: str, fields: Mapping[str, str]) -> VersionState:
        """Build from the version's Redis hash (decoded to text); empty if never known."""
        try:
            evidence = fields.get("evidence")
            return cls(
                service=service,
                version=version,
                state=VersionStatus(fields.get("state", "valid")),
                reason=fields.get("reason", ""),
                changed_at=_float(fields.get("changed_at")),
                invalidated_at=_float(fields.get("invalidated_at")),
                evidence=json.loads(evidence) if evidence else None,
                first_seen=_float(fields.get("first_seen")),
                last_seen=_float(fields.get("last_seen")),
            )
        except ValueError as exc:
            raise RegistryError(
                f"the state of {service} {version} in Redis is unreadable ({exc}); "
                "invalidate or reinstate it to rewrite it",
                service=service,
                version=version,
            ) from exc


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A version's state and its outcome counts in the current window of its policy."""

    state: VersionState
    counts: Mapping[OutcomeKind, int]

    @property
    def version(self) -> str:
        """The version."""
        return self.state.version


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    """What recording an outcome did to its version.

    Attributes:
        invalidated: This very call tripped the policy (the event is published).
        valid: Whether the version is valid after the call.
        reason: Why it is invalid, when it is.
        evidence: What tripped it, when it is invalid.
    """

    invalidated: bool
    valid: bool
    reason: str = ""
    evidence: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """One entry of a service's failure history (any outcome but success).

    Attributes:
        id: The stream entry id (time-ordered).
        service: The service.
        version: The version it was recorded against.
        kind: What happened.
        count: How many such outcomes the entry stands for.
        reason: The reason given, if any.
        instance: The instance, if known.
        server: The server, if known.
        time: When it was recorded, by Redis's clock (epoch seconds, ms precision).
    """

    id: str
    service: str
    version: str
    kind: OutcomeKind
    count: int
    reason: str
    instance: str
    server: str
    time: float

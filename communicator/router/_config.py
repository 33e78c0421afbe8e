"""The tuning of one communicator (:class:`RouterConfig`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Tuning of one communicator; the defaults are what docs/protocol.md promises."""

    partitions: int = 32
    lease_ttl: float = 2.0
    renew_every: float = 0.5
    checkpoint_every: float = 0.1
    buffer_seconds: float = 10.0
    buffer_size: int = 20_000
    cache_size: int = 1000
    default_ttl: float = 60.0
    request_timeout: float = 30.0
    flush_every: float = 0.2
    strict: bool = False
    #: Shortest request timeout counted against a version with no service definition.
    min_timeout: float = 0.1
    #: Whether REGISTER may come without a password when the service has none set.
    passwordless_ok: bool = True

"""The flag rollout strategy: raise a flag's percentage step by step, switch it off on failures.

A flag rollout turns a feature on for a growing share of users without a new
deployment: each step writes a flagd ``fractional`` rule over the flag's "on"
and "off" variants, ``{"fractional": [["on", pct], ["off", 100 - pct]]}``.
Users are bucketed by a stable hash of the flag key and their ``targetingKey``,
with "on" listed first, so a user who got the feature at 10 % keeps it at 20 %.
At 0 % and 100 % the rule goes and the default variant says it all (callers
without a ``targetingKey`` get the default variant, so "off" until 100 %).

While a step runs, the strategy watches the service's failure rate: outcomes
(everything but ``success`` counts as a failure) summed over the service's
versions, taken as the difference of two :meth:`communicator.Measurements.totals`
readings. The baseline is the rate over a window before the rollout. When a
step's rate exceeds the baseline by more than the threshold, the flag is
switched off at once (default variant "off", rule removed), which quickly
stops the test as setting a boolean flag back to false does. Every change goes
through the flag store, so its history answers "why was this flag switched
off?" with who and the measured rates.

The steps are driven by the controller's flag-run engine (``controller.engine``),
which survives restarts: this module writes the percentages and judges each
step. The rollout owns the flag's targeting while it runs: a rule the flag had
is replaced. A change somebody else makes meanwhile (``deployctl flag set``, a
manual switch-off) stops the rollout where it is, without overriding them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from communicator import DeployctlError, Measurements, OutcomeKind, Registry
from flags import Flag, FlagState, FlagStore, StoredFlag

logger = logging.getLogger(__name__)

MIN_OUTCOMES = 20
"""Outcomes a step needs before its failure rate is judged; fewer is inconclusive."""


class FlagRolloutError(DeployctlError):
    """A flag cannot be rolled out as asked; the message says what to do.

    Attributes:
        key: The flag's key.
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class FailureRate:
    """Outcomes of a service over some time, and how many of them failed."""

    failures: int
    outcomes: int

    @property
    def rate(self) -> float | None:
        """Failures per outcome, or ``None`` when nothing happened."""
        return self.failures / self.outcomes if self.outcomes else None


@dataclass(frozen=True, slots=True)
class ServiceReading:
    """Running outcome totals of a service (all its versions), read at one moment."""

    at: float  # seconds since the epoch, by Redis's clock
    counts: Mapping[str, int]

    def since(self, earlier: ServiceReading) -> FailureRate:
        """The failure rate between ``earlier`` and this reading."""
        delta = {kind: n - earlier.counts.get(kind, 0) for kind, n in self.counts.items()}
        return failure_rate(delta)


def failure_rate(counts: Mapping[str, int]) -> FailureRate:
    """The failure rate of outcome counts by kind: anything but a success is a failure."""
    outcomes = sum(max(0, n) for n in counts.values())
    return FailureRate(outcomes - max(0, counts.get(OutcomeKind.SUCCESS.value, 0)), outcomes)


def fractional_rule(on: str, off: str, percentage: int) -> dict[str, Any]:
    """The flagd rule serving ``on`` to ``percentage`` % of targeting keys, ``off`` to the rest."""
    return {"fractional": [[on, percentage], [off, 100 - percentage]]}


def on_off_variants(flag: Flag, on: str | None, off: str | None) -> tuple[str, str]:
    """The flag's "on" and "off" variant names: as given, or a boolean flag's true and false.

    Raises:
        FlagRolloutError: A name is not a variant, or the flag is not boolean and a name is missing.
    """
    if on is None or off is None:
        by_value = {value: name for name, value in flag.variants.items() if isinstance(value, bool)}
        on = on if on is not None else by_value.get(True)
        off = off if off is not None else by_value.get(False)
    if on is None or off is None:
        raise FlagRolloutError(
            f"flag {flag.key!r} has no true/false variants: name its on and off variants "
            f"(one of {sorted(flag.variants)})",
            key=flag.key,
        )
    for name in (on, off):
        if name not in flag.variants:
            raise FlagRolloutError(
                f"{name!r} is not a variant of flag {flag.key!r} (one of {sorted(flag.variants)})",
                key=flag.key,
            )
    if on == off:
        raise FlagRolloutError(f"the on and off variants are both {on!r}", key=flag.key)
    return on, off


def off_variant(flag: Flag, off: str | None) -> str:
    """The flag's "off" variant: as given, or a boolean flag's false variant.

    Raises:
        FlagRolloutError: The name is not a variant, or the flag is not boolean and it is missing.
    """
    if off is None:
        off = next((n for n, v in flag.variants.items() if v is False), None)
    if off is None or off not in flag.variants:
        raise FlagRolloutError(
            f"name the off variant of flag {flag.key!r} (one of {sorted(flag.variants)})",
            key=flag.key,
        )
    return off


def _check_percentage(percentage: int) -> int:
    if not 0 <= percentage <= 100:
        raise ValueError(f"percentage {percentage!r} is not a whole percentage (0-100)")
    return percentage


class FlagRollout:
    """Roll a feature flag out by percentage, switching it off when the service fails.

    Args:
        store: The flag store (the source of truth, with the history).
        registry: The registry, to list the service's versions.
        measurements: The outcome totals the failure rate is computed from.
    """

    kind = "flag"

    def __init__(self, *, store: FlagStore, registry: Registry, measurements: Measurements) -> None:
        self._store = store
        self._registry = registry
        self._measurements = measurements

    async def current(self, key: str) -> StoredFlag | None:
        """The flag as stored now (``None``: there is none)."""
        return await self._store.get(key)

    async def _get(self, key: str) -> StoredFlag:
        stored = await self._store.get(key)
        if stored is None:
            raise FlagRolloutError(
                f"no flag {key!r}: create it first (`deployctl flag list` shows the flags)", key=key
            )
        return stored

    async def set_percentage(
        self,
        key: str,
        percentage: int,
        *,
        who: str,
        why: str = "",
        on: str | None = None,
        off: str | None = None,
        revision: int | None = None,
    ) -> StoredFlag:
        """Serve the "on" variant to ``percentage`` % of users, "off" to the others.

        Args:
            key: The flag's key.
            percentage: 0 to 100.
            who: Who makes the change, for the history.
            why: Why, for the history (a default names the percentage).
            on: The "on" variant; by default a boolean flag's true variant.
            off: The "off" variant; by default a boolean flag's false variant.
            revision: Change the flag only if it is still at this revision.

        Returns:
            The flag as written, with its new revision.

        Raises:
            ValueError: ``percentage`` is not 0-100.
            FlagRolloutError: No such flag, or its variants do not fit.
            FlagConflict: The flag is no longer at ``revision``.
        """
        _check_percentage(percentage)
        current = await self._get(key)
        on, off = on_off_variants(current.flag, on, off)
        why = why or f"flag rollout: {on!r} for {percentage}%"

        def change(flag: Flag) -> Flag:
            targeting = None if percentage in (0, 100) else fractional_rule(on, off, percentage)
            return flag.model_copy(
                update={
                    "state": FlagState.ENABLED,
                    "default_variant": on if percentage == 100 else off,
                    "targeting": targeting,
                }
            )

        if revision is None:
            stored = await self._store.update(key, change, who=who, why=why)
        else:
            new = change(current.flag)
            stored = StoredFlag(
                new, await self._store.put(new, who=who, why=why, revision=revision)
            )
        logger.info("flag %s: %r for %d%% (%s)", key, on, percentage, why, extra={"flag": key})
        return stored

    async def switch_off(
        self, key: str, reason: str, *, who: str, off: str | None = None
    ) -> StoredFlag:
        """Serve the "off" variant to everybody, now: the rule goes, the default is "off".

        The flag stays enabled, so callers get the "off" variant and not their
        own default value. ``reason`` goes to the flag's history.
        """
        off = off_variant((await self._get(key)).flag, off)

        def change(flag: Flag) -> Flag:
            return flag.model_copy(
                update={"state": FlagState.ENABLED, "default_variant": off, "targeting": None}
            )

        stored = await self._store.update(key, change, who=who, why=f"switched off: {reason}")
        logger.warning("flag %s switched off: %s", key, reason, extra={"flag": key})
        return stored

    async def reading(self, service: str) -> ServiceReading:
        """The running outcome totals of every version of ``service``, summed."""
        versions = [info.version for info in await self._registry.versions(service)]
        totals = await asyncio.gather(
            *(self._measurements.totals(service, version) for version in versions)
        )
        counts: Counter[str] = Counter()
        for reading in totals:
            counts.update(reading.counts)
        at = max((reading.at for reading in totals), default=0.0)
        return ServiceReading(at, dict(counts))

    async def failing(
        self, key: str, service: str, *, since: ServiceReading, baseline_rate: float,
        threshold: float, min_outcomes: int = MIN_OUTCOMES,
    ) -> str | None:  # fmt: skip
        """Why the service's failure rate since ``since`` is too high, or ``None`` if it is not.

        Fewer than ``min_outcomes`` outcomes are inconclusive, and pass.
        """
        now = await self.reading(service)
        step = now.since(since)
        if step.rate is None or step.outcomes < min_outcomes:
            logger.info(
                "flag %s: %d outcomes of %s, fewer than %d: inconclusive",
                key, step.outcomes, service, min_outcomes, extra={"flag": key, "service": service},
            )  # fmt: skip
            return None
        if step.rate <= baseline_rate + threshold:
            return None
        return (
            f"failure rate of {service} {step.rate:.1%} ({step.failures}/{step.outcomes}) "
            f"is over the baseline {baseline_rate:.1%} + threshold {threshold:.1%}"
        )

"""The shadow strategy's judgement: which differences of a mirror's replies are real.

The communicators mirror traffic and count, field by field, how often the
shadow's reply differed from the primary's and how often two primaries
differed from each other (the *noise*: a timestamp, a random id). That is
mechanism, and it lives in the communicator. Deciding what the counts mean is
policy, and it lives here, as Diffy does it: a shadow difference is *real*
only when its rate exceeds the field's noise rate by a margin, over enough
comparisons (:class:`ShadowPolicy`).

:func:`shadow_report` adds up the raw reports the communicators write to Redis
(one per communicator per mirror) and judges them: counts, drop rates,
outcomes, the real differences with examples, and the noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from communicator.router import MIRROR_COUNTS as COUNTS
from communicator.router import MIRROR_OUTCOMES as OUTCOMES

#: Differing examples a report keeps.
EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    """When a field's shadow difference stands out of the noise.

    Attributes:
        real_margin: How far (0-1) the shadow's difference rate must exceed
            the noise rate to be real.
        min_comparisons: Comparisons of a field needed before its difference
            can be called real.
    """

    real_margin: float = 0.10
    min_comparisons: int = 3

    def real(self, field: FieldCounts) -> bool:
        """Whether the shadow's difference in ``field`` is real (not noise)."""
        return (
            field.compared >= self.min_comparisons
            and field.shadow_rate - field.noise_rate > self.real_margin
        )


@dataclass(slots=True)
class FieldCounts:
    """How often one field differed: primary vs shadow, and primary vs primary."""

    compared: int = 0
    shadow_diffs: int = 0
    noise_compared: int = 0
    noise_diffs: int = 0

    @property
    def shadow_rate(self) -> float:
        """Share of comparisons where the shadow differed from the primary."""
        return self.shadow_diffs / self.compared if self.compared else 0.0

    @property
    def noise_rate(self) -> float:
        """Share of comparisons where two primaries differed."""
        return self.noise_diffs / self.noise_compared if self.noise_compared else 0.0

    def add(self, raw: Mapping[str, Any]) -> None:
        """Add the counts of one communicator's report of this field."""
        self.compared += int(raw.get("compared", 0))
        self.shadow_diffs += int(raw.get("shadow_diffs", 0))
        self.noise_compared += int(raw.get("noise_compared", 0))
        self.noise_diffs += int(raw.get("noise_diffs", 0))

    def data(self) -> dict[str, Any]:
        """The field as the report shows it."""
        return {
            "compared": self.compared,
            "shadow_rate": round(self.shadow_rate, 4),
            "noise_rate": round(self.noise_rate, 4),
        }


def shadow_report(
    reports: Iterable[Mapping[str, Any]], policy: ShadowPolicy | None = None
) -> dict[str, Any]:
    """Add up the raw reports of one mirror (one per communicator) and judge them.

    Args:
        reports: What the communicators wrote (``counts``, ``outcomes``,
            ``inflight``, ``comparison`` with per-field counts and examples).
        policy: When a difference is real; the default policy when ``None``.

    Returns:
        ``counts``, ``drop_rates``, ``outcomes``, ``inflight``, ``compared``,
        ``incomplete``, ``differences`` (the real ones, by field), ``noise``
        (fields where two primaries differed) and ``examples`` (of real
        differences only).
    """
    policy = policy or ShadowPolicy()
    counts = dict.fromkeys(COUNTS, 0)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    fields: dict[str, FieldCounts] = {}
    compared = incomplete = inflight = 0
    examples: list[dict[str, Any]] = []
    for report in reports:
        for name in COUNTS:
            counts[name] += int(report.get("counts", {}).get(name, 0))
        for name in OUTCOMES:
            outcomes[name] += int(report.get("outcomes", {}).get(name, 0))
        inflight += int(report.get("inflight", 0))
        comparison = report.get("comparison", {})
        compared += int(comparison.get("compared", 0))
        incomplete += int(comparison.get("incomplete", 0))
        examples.extend(comparison.get("examples", []))
        for name, raw in comparison.get("fields", {}).items():
            fields.setdefault(name, FieldCounts()).add(raw)
    real = {name for name, field in fields.items() if policy.real(field)}
    candidates = counts["candidates"]

    def rate(n: int) -> float:
        return round(n / candidates, 4) if candidates else 0.0

    return {
        "counts": counts,
        "drop_rates": {
            name: rate(counts[name]) for name in ("dropped_busy", "dropped_bound", "failed")
        },
        "outcomes": outcomes,
        "inflight": inflight,
        "compared": compared,
        "incomplete": incomplete,
        "differences": {name: fields[name].data() for name in sorted(real)},
        "noise": {name: f.data() for name, f in sorted(fields.items()) if f.noise_diffs},
        "examples": [e for e in examples if real & set(e.get("fields", ()))][:EXAMPLES],
    }

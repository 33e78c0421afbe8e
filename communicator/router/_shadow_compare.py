"""Comparison of shadow replies with the primary's, net of noise (as Diffy does).

For a mirrored request with comparison on, the router collects three replies:
the primary's, the shadow's, and a second primary instance's (the *noise*
copy). Each field (the command, and every parameter but the correlation ones)
is compared: primary against shadow, and primary against the second primary.
A field that differs between two instances of the same version is noise (a
timestamp, a random id); a shadow difference is *real* only when its rate
exceeds the field's noise rate by :data:`REAL_MARGIN`, over at least
:data:`MIN_COMPARISONS` comparisons. Everything here is pure and synchronous.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Parameters that differ by construction between two replies: never compared.
IGNORED = frozenset({"in_reply_to", "message_id"})
#: How far (0-1) the shadow's difference rate must exceed the noise rate to be real.
REAL_MARGIN = 0.10
#: Comparisons of a field needed before its difference can be called real.
MIN_COMPARISONS = 3
#: Differing (primary, shadow) pairs kept for inspection, per mirror.
SAMPLE_SIZE = 20


def fields(reply: Mapping[str, Any]) -> dict[str, str]:
    """The comparable fields of a reply (a ``Message.model_dump()``): command and parameters."""
    out = {"command": str(reply.get("command", ""))}
    for name, value in (reply.get("parameters") or {}).items():
        if name not in IGNORED:
            out[f"parameters.{name}"] = value
    return out


def differing(a: Mapping[str, str], b: Mapping[str, str]) -> set[str]:
    """The fields whose values differ (a field missing on one side differs)."""
    return {name for name in a.keys() | b.keys() if a.get(name) != b.get(name)}


@dataclass(slots=True)
class FieldStats:
    """How often one field differed, primary vs shadow and primary vs primary."""

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

    @property
    def real(self) -> bool:
        """Whether the shadow's difference stands out of the noise."""
        return self.compared >= MIN_COMPARISONS and (
            self.shadow_rate - self.noise_rate > REAL_MARGIN
        )


@dataclass(slots=True)
class Comparison:
    """Comparison results of one mirror (service, shadow version)."""

    compared: int = 0
    incomplete: int = 0  # replies that did not all come in time
    fields: dict[str, FieldStats] = field(default_factory=dict)
    examples: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=SAMPLE_SIZE))

    def add(
        self,
        primary: Mapping[str, Any],
        shadow: Mapping[str, Any],
        noise: Mapping[str, Any] | None,
    ) -> None:
        """Compare one triple of replies (``noise`` is ``None`` without a second primary)."""
        p, s = fields(primary), fields(shadow)
        n = fields(noise) if noise is not None else None
        shadow_diff = differing(p, s)
        noise_diff = differing(p, n) if n is not None else set()
        self.compared += 1
        for name in p.keys() | s.keys() | (n.keys() if n is not None else set()):
            stats = self.fields.setdefault(name, FieldStats())
            stats.compared += 1
            stats.shadow_diffs += name in shadow_diff
            if n is not None:
                stats.noise_compared += 1
                stats.noise_diffs += name in noise_diff
        beyond_noise = sorted(shadow_diff - noise_diff)
        if beyond_noise:
            self.examples.append(
                {"fields": beyond_noise, "primary": dict(primary), "shadow": dict(shadow)}
            )

    def data(self) -> dict[str, Any]:
        """A JSON-ready form (what the router writes to Redis)."""
        return {
            "compared": self.compared,
            "incomplete": self.incomplete,
            "fields": {
                name: {
                    "compared": s.compared,
                    "shadow_diffs": s.shadow_diffs,
                    "noise_compared": s.noise_compared,
                    "noise_diffs": s.noise_diffs,
                }
                for name, s in sorted(self.fields.items())
            },
            "examples": list(self.examples),
        }


COUNTS = ("candidates", "sent", "dropped_busy", "dropped_bound", "failed")
OUTCOMES = ("replied", "error_reply", "timeout", "one_way")


def merge(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up the reports of one mirror written by several communicators."""
    counts = dict.fromkeys(COUNTS, 0)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    merged_fields: dict[str, FieldStats] = {}
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
            stats = merged_fields.setdefault(name, FieldStats())
            stats.compared += raw["compared"]
            stats.shadow_diffs += raw["shadow_diffs"]
            stats.noise_compared += raw["noise_compared"]
            stats.noise_diffs += raw["noise_diffs"]
    return summarize(counts, outcomes, inflight, compared, incomplete, merged_fields, examples)


def summarize(
    counts: Mapping[str, int],
    outcomes: Mapping[str, int],
    inflight: int,
    compared: int,
    incomplete: int,
    stats: Mapping[str, FieldStats],
    examples: list[dict[str, Any]],
) -> dict[str, Any]:
    """The report the CLI shows: counts, drop rates, real differences with examples, noise."""
    candidates = counts.get("candidates", 0)

    def rate(n: int) -> float:
        return round(n / candidates, 4) if candidates else 0.0

    def field_data(s: FieldStats) -> dict[str, Any]:
        return {
            "compared": s.compared,
            "shadow_rate": round(s.shadow_rate, 4),
            "noise_rate": round(s.noise_rate, 4),
        }

    real = {name for name, s in stats.items() if s.real}
    return {
        "counts": dict(counts),
        "drop_rates": {
            "dropped_busy": rate(counts.get("dropped_busy", 0)),
            "dropped_bound": rate(counts.get("dropped_bound", 0)),
            "failed": rate(counts.get("failed", 0)),
        },
        "outcomes": dict(outcomes),
        "inflight": inflight,
        "compared": compared,
        "incomplete": incomplete,
        "differences": {name: field_data(stats[name]) for name in sorted(real)},
        "noise": {name: field_data(s) for name, s in sorted(stats.items()) if s.noise_diffs},
        "examples": [e for e in examples if real & set(e.get("fields", ()))][:SAMPLE_SIZE],
    }

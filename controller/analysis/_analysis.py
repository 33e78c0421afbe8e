"""The judge of canary analysis: a canary against its baseline, by an ``AnalysisCriteria``.

:func:`judge` applies the criteria's rules with the tests of ``_statistics``
and returns a :class:`Verdict` whose reasons and JSON evidence say why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from controller.analysis._criteria import AnalysisCriteria
from controller.analysis._statistics import (
    mann_whitney_sorted,
    percentile_sorted,
    proportion_test,
)

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True, slots=True)
class VersionSample:
    """What one version did over the analysis window.

    Attributes:
        version: The version's name.
        successes: Outcomes that succeeded.
        failures: Outcomes that failed.
        latencies: Reply latencies in seconds (finite, not negative).
    """

    version: str
    successes: int
    failures: int
    latencies: Sequence[float] = ()

    def __post_init__(self) -> None:
        if self.successes < 0 or self.failures < 0:
            raise ValueError(f"version {self.version}: outcome counts cannot be negative")
        # min() and sum() run in C; a NaN or an infinity makes the sum NaN or infinite.
        if len(self.latencies) and not (
            min(self.latencies) >= 0 and math.isfinite(sum(self.latencies))
        ):
            raise ValueError(f"version {self.version}: latencies must be finite seconds >= 0")

    @property
    def outcomes(self) -> int:
        """Successes plus failures."""
        return self.successes + self.failures


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of :func:`judge`, with why.

    Attributes:
        outcome: ``"pass"``, ``"fail"`` or ``"inconclusive"``.
        reasons: Human sentences, the decisive ones first.
        evidence: JSON-serialisable figures behind the verdict, always with the
            same keys: ``criteria`` (the thresholds), ``canary`` and ``baseline``
            (counts, ``failure_rate``, ``latency_p50``/``latency_p99`` in
            seconds, None when there is nothing to measure), ``missing_outcomes``
            per side, ``failure_rate_test`` (``z``, ``p_value``, ``margin``,
            ``significant``; None when inconclusive) and ``latency_test``
            (``judged``, ``ratio``, and when judged ``u``, ``p_value``,
            ``method``, ``significant``).
    """

    outcome: Outcome
    reasons: list[str]
    evidence: dict[str, Any]


def judge(canary: VersionSample, baseline: VersionSample, criteria: AnalysisCriteria) -> Verdict:
    """Judge ``canary`` against ``baseline`` by ``criteria``.

    Inconclusive while either side has fewer than ``min_sample`` outcomes.
    Otherwise the canary fails if its failure rate is above
    ``max_failure_rate``, or significantly (one-sided, at ``alpha``) above the
    baseline's plus ``max_failure_rate_increase``, or, when both sides have at
    least ``min_sample`` latencies, if its latencies are significantly above
    the baseline's times ``max_latency_ratio`` (Mann-Whitney U); it passes
    otherwise. Every check is reported, failing ones first.
    """
    canary_latencies, baseline_latencies = sorted(canary.latencies), sorted(baseline.latencies)
    evidence: dict[str, Any] = {
        "criteria": criteria.model_dump(),
        "canary": _describe(canary, canary_latencies),
        "baseline": _describe(baseline, baseline_latencies),
        "missing_outcomes": {},
        "failure_rate_test": None,
        "latency_test": {"judged": False, "ratio": criteria.max_latency_ratio},
    }
    need = criteria.min_sample
    missing = evidence["missing_outcomes"] = {
        side: max(0, need - sample.outcomes)
        for side, sample in (("canary", canary), ("baseline", baseline))
    }
    if any(missing.values()):
        reasons = [
            f"{side} has {count} outcomes, {missing[side]} more needed (min_sample {need})"
            for side, count in (("canary", canary.outcomes), ("baseline", baseline.outcomes))
            if missing[side]
        ]
        return Verdict("inconclusive", reasons, evidence)

    failed: list[str] = []
    passed: list[str] = []
    rate, baseline_rate = canary.failures / canary.outcomes, baseline.failures / baseline.outcomes
    limit = criteria.max_failure_rate
    if rate > limit:
        failed.append(
            f"canary failure rate {rate:.1%} > {limit:.1%} limit"
            f" ({canary.failures} of {canary.outcomes} outcomes)"
        )
    else:
        passed.append(f"canary failure rate {rate:.1%} within {limit:.1%} limit")

    margin = criteria.max_failure_rate_increase
    test = proportion_test(
        canary.failures, canary.outcomes, baseline.failures, baseline.outcomes, margin=margin
    )
    significant = test.p_value < criteria.alpha
    evidence["failure_rate_test"] = {
        "z": test.z,
        "p_value": test.p_value,
        "margin": margin,
        "significant": significant,
    }
    (failed if significant else passed).append(
        f"canary failure rate {rate:.1%} vs baseline {baseline_rate:.1%}: "
        f"{'' if significant else 'not '}significantly above baseline + {margin * 100:.1f} points"
        f" (p={test.p_value:.2g})"
    )

    ratio = criteria.max_latency_ratio
    if len(canary_latencies) >= need and len(baseline_latencies) >= need:
        scaled = [latency * ratio for latency in baseline_latencies]  # still sorted
        latency = mann_whitney_sorted(canary_latencies, scaled, "greater", "auto")
        significant = latency.p_value < criteria.alpha
        evidence["latency_test"] = {
            "judged": True,
            "u": latency.u,
            "p_value": latency.p_value,
            "method": latency.method,
            "ratio": ratio,
            "significant": significant,
        }
        canary_median = percentile_sorted(canary_latencies, 0.5)
        baseline_median = percentile_sorted(baseline_latencies, 0.5)
        (failed if significant else passed).append(
            f"canary latency median {_ms(canary_median)} vs baseline {_ms(baseline_median)}: "
            f"{'' if significant else 'not '}significantly above {ratio:g}x"
            f" (p={latency.p_value:.2g})"
        )
    else:
        passed.append(
            f"latency not judged (failures only): canary has {len(canary_latencies)} latencies,"
            f" baseline {len(baseline_latencies)}, {need} needed on each side"
        )
    return Verdict("fail" if failed else "pass", failed + passed, evidence)


def _describe(sample: VersionSample, latencies: Sequence[float]) -> dict[str, Any]:
    """The evidence of one side: counts, failure rate, latency percentiles in seconds."""
    return {
        "version": sample.version,
        "outcomes": sample.outcomes,
        "successes": sample.successes,
        "failures": sample.failures,
        "failure_rate": sample.failures / sample.outcomes if sample.outcomes else None,
        "latencies": len(latencies),
        "latency_p50": percentile_sorted(latencies, 0.5) if latencies else None,
        "latency_p99": percentile_sorted(latencies, 0.99) if latencies else None,
    }


def _ms(seconds: float) -> str:
    """Seconds as milliseconds for a sentence: ``41 ms``, ``2.5 ms``, ``0.35 ms``."""
    milliseconds = seconds * 1000
    digits = 0 if milliseconds >= 10 else 1 if milliseconds >= 1 else 2
    return f"{milliseconds:.{digits}f} ms"

"""The statistical judge: its tests against scipy, their properties, and the verdict rules."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import optimize, stats

from controller.analysis._analysis import VersionSample, judge
from controller.analysis._criteria import AnalysisCriteria
from controller.analysis._statistics import (
    Alternative,
    _exact_counts,
    mann_whitney_u,
    percentile,
    proportion_test,
)

ALTERNATIVES: list[Alternative] = ["greater", "less", "two-sided"]
# Latencies as a service would report them: seconds, small integers of ms to force ties.
latency = st.one_of(
    st.floats(min_value=0, max_value=10, allow_nan=False),
    st.integers(min_value=0, max_value=20).map(lambda ms: ms / 1000),
)
samples = st.lists(latency, min_size=1, max_size=40)


def assert_close(ours: float, theirs: float) -> None:
    assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-300), (ours, theirs)


# -- Mann-Whitney U against scipy -------------------------------------------------------------


def random_pairs(count: int, seed: int) -> list[tuple[list[float], list[float]]]:
    """Pairs of samples of many sizes: continuous, shifted, and heavily tied."""
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        n1, n2 = (int(n) for n in rng.integers(1, 120, 2))
        if index % 3 == 0:
            x, y = rng.lognormal(size=n1), rng.lognormal(mean=rng.normal(0, 0.3), size=n2)
        else:  # a few distinct values: every kind of tie group
            x, y = rng.integers(0, 6, n1) / 1000, rng.integers(0, 6, n2) / 1000
        pairs.append((x.tolist(), y.tolist()))
    return pairs


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_asymptotic_matches_scipy(alternative: Alternative) -> None:
    """U and the asymptotic p-value equal scipy's on 600 random pairs, ties or not."""
    for x, y in random_pairs(600, seed=1):
        theirs = stats.mannwhitneyu(x, y, alternative=alternative, method="asymptotic")
        ours = mann_whitney_u(x, y, alternative, method="asymptotic")
        assert ours.u == theirs.statistic
        assert_close(ours.p_value, float(theirs.pvalue))


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_exact_matches_scipy_for_small_samples(alternative: Alternative) -> None:
    """Up to 8 values a side and no ties, ``auto`` is exact and equals scipy's exact p-value."""
    rng = random.Random(2)
    for _ in range(500):
        values = rng.sample(range(1000), rng.randint(2, 16))
        cut = rng.randint(max(1, len(values) - 8), min(8, len(values) - 1))
        x, y = values[:cut], values[cut:]
        theirs = stats.mannwhitneyu(x, y, alternative=alternative, method="exact")
        ours = mann_whitney_u(x, y, alternative)
        assert ours.method == "exact"
        assert ours.u == theirs.statistic
        assert_close(ours.p_value, float(theirs.pvalue))


def test_exact_method_on_larger_samples_matches_scipy() -> None:
    """``method="exact"`` also works beyond 8 values (scipy's exact on a 30 x 12 sample)."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.5, 1, 30).tolist(), rng.normal(0, 1, 12).tolist()
    theirs = stats.mannwhitneyu(x, y, alternative="greater", method="exact")
    assert_close(mann_whitney_u(x, y, "greater", method="exact").p_value, float(theirs.pvalue))


def test_auto_is_asymptotic_with_ties_or_more_than_eight_values() -> None:
    """The exact distribution needs both samples small and no ties; otherwise asymptotic."""
    assert mann_whitney_u([1, 2, 3], [4, 5, 6], "greater").method == "exact"
    assert mann_whitney_u([1, 2, 3], [3, 5, 6], "greater").method == "asymptotic"
    assert mann_whitney_u(list(range(9)), [10.5, 11.5], "greater").method == "asymptotic"


def test_exact_counts_cover_every_ordering() -> None:
    """The counts of U over all orderings sum to C(m + n, m) and are symmetric."""
    for m in range(1, 9):
        for n in range(1, 9):
            counts = _exact_counts(m, n)
            assert sum(counts) == math.comb(m + n, m)
            assert counts == counts[::-1]


# -- Mann-Whitney U: edge cases and properties ------------------------------------------------


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_all_ties_give_no_evidence(alternative: Alternative) -> None:
    """Every value equal: U is its mean and p is 1, as in scipy (z = -inf there)."""
    ours = mann_whitney_u([0.02] * 12, [0.02] * 30, alternative)
    theirs = stats.mannwhitneyu([0.02] * 12, [0.02] * 30, alternative=alternative)
    assert (ours.u, ours.p_value) == (180.0, 1.0) == (theirs.statistic, theirs.pvalue)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_one_value_each(alternative: Alternative) -> None:
    """n = 1 on both sides works, exact or asymptotic, as in scipy."""
    for x, y, method in (([2.0], [1.0], "exact"), ([2.0], [1.0], "asymptotic"), ([1], [1], "auto")):
        theirs = stats.mannwhitneyu(x, y, alternative=alternative, method=method)
        ours = mann_whitney_u(x, y, alternative, method=method)
        assert ours.u == theirs.statistic
        assert_close(ours.p_value, float(theirs.pvalue))


def test_bad_samples_are_refused() -> None:
    """Empty samples, NaN, and the exact method with ties raise ValueError."""
    with pytest.raises(ValueError, match="at least one value"):
        mann_whitney_u([], [1.0], "greater")
    with pytest.raises(ValueError, match="NaN"):
        mann_whitney_u([1.0, math.nan], [1.0], "greater")
    with pytest.raises(ValueError, match="ties"):
        mann_whitney_u([1.0, 2.0], [2.0], "greater", method="exact")


@given(samples, samples, st.sampled_from(ALTERNATIVES))
def test_p_value_is_a_probability(x: list[float], y: list[float], alternative: Alternative) -> None:
    """Whatever the samples, the p-value is in [0, 1] and U in [0, n1 * n2]."""
    result = mann_whitney_u(x, y, alternative)
    assert 0.0 <= result.p_value <= 1.0
    assert 0.0 <= result.u <= len(x) * len(y)


@given(samples, samples)
def test_greater_is_less_with_the_samples_swapped(x: list[float], y: list[float]) -> None:
    """greater(x, y) and less(y, x) are the same test: same p-value, U and n1*n2 - U."""
    greater, less = mann_whitney_u(x, y, "greater"), mann_whitney_u(y, x, "less")
    assert greater.p_value == less.p_value
    assert greater.u + less.u == len(x) * len(y)


@given(samples, samples, st.floats(min_value=0, max_value=5))
def test_shifting_x_up_never_weakens_the_evidence(
    x: list[float], y: list[float], shift: float
) -> None:
    """Shifting x up never raises the one-sided p-value below 0.5, where a test can reject.

    Within one method. Above 0.5 the tie correction can move p either way (a
    shift that makes every value equal gives p = 1), and ``auto`` may switch
    from exact to asymptotic when a shift creates a tie, which can raise p by
    about 1e-3; both are scipy's behaviour too.
    """
    before = mann_whitney_u(x, y, "greater", method="asymptotic")
    after = mann_whitney_u([v + shift for v in x], y, "greater", method="asymptotic")
    assert after.u >= before.u
    if before.p_value < 0.5:
        assert after.p_value <= before.p_value


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=8, unique=True), st.data())
def test_exact_p_value_never_rises_with_u(values: list[int], data: st.DataObject) -> None:
    """Exact: moving x's largest value above everything raises U and never raises p."""
    cut = data.draw(st.integers(0, len(values) - 1))
    x, y = [*values[:cut], 2 * 10**6], values[cut:] or [-1]
    moved = mann_whitney_u(x, y, "greater", method="exact")
    before = mann_whitney_u([*x[:-1], min(values) - 0.5], y, "greater", method="exact")
    assert moved.u >= before.u
    assert moved.p_value <= before.p_value


# -- proportion test --------------------------------------------------------------------------


def farrington_manning_rate_b(fa: int, na: int, fb: int, nb: int, margin: float) -> float:
    """The published closed form of the restricted MLE (a cubic's trigonometric root)."""
    p1, p2, theta = fa / na, fb / nb, nb / na
    a = 1 + theta
    b = -(1 + theta + p1 + theta * p2 + margin * (theta + 2))
    c = margin**2 + margin * (2 * p1 + theta + 1) + p1 + theta * p2
    d = -p1 * margin * (1 + margin)
    v = b**3 / (27 * a**3) - b * c / (6 * a**2) + d / (2 * a)
    u = math.copysign(math.sqrt(b**2 / (9 * a**2) - c / (3 * a)), v)
    w = (math.pi + math.acos(max(-1.0, min(1.0, v / u**3)))) / 3
    # Rounding can leave a root of 0 a hair below it: one of the form's edges.
    return max(0.0, 2 * u * math.cos(w) - b / (3 * a) - margin)


def test_no_margin_is_the_pooled_z_test() -> None:
    """With margin 0 the statistic is the classic pooled two-proportion z, p from scipy's norm."""
    rng = random.Random(4)
    for _ in range(300):
        na, nb = rng.randint(1, 5000), rng.randint(1, 5000)
        fa, fb = rng.randint(0, na), rng.randint(0, nb)
        pooled = (fa + fb) / (na + nb)
        if pooled in (0, 1):
            continue
        z = (fa / na - fb / nb) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        ours = proportion_test(fa, na, fb, nb)
        assert math.isclose(ours.z, z, rel_tol=1e-9, abs_tol=1e-12)
        assert_close(ours.p_value, float(stats.norm.sf(ours.z)))


def test_margin_uses_the_restricted_maximum_likelihood() -> None:
    """With a margin, z equals Farrington-Manning's, whose null rates maximise the likelihood.

    (statsmodels 0.14/0.15 differs here: statsmodels/statsmodels#10269.)
    """
    rng = random.Random(5)
    for _ in range(300):
        na, nb = rng.randint(5, 2000), rng.randint(5, 2000)
        fa, fb = rng.randint(0, na // 4), rng.randint(0, nb // 4)
        margin = rng.choice([0.005, 0.01, 0.05, 0.2])
        rate_b = farrington_manning_rate_b(fa, na, fb, nb, margin)

        def minus_log_likelihood(t: float, counts: tuple[int, ...] = (fa, na, fb, nb)) -> float:
            fa, na, fb, nb = counts
            rate_a = t + margin  # noqa: B023  # called in this iteration only
            return -float(stats.binom.logpmf(fa, na, rate_a) + stats.binom.logpmf(fb, nb, t))

        best = optimize.minimize_scalar(
            minus_log_likelihood, bounds=(1e-12, 1 - margin - 1e-12), method="bounded"
        )
        assert minus_log_likelihood(rate_b) <= best.fun + 1e-7
        null_a = rate_b + margin
        sd = math.sqrt(null_a * (1 - null_a) / na + rate_b * (1 - rate_b) / nb)
        ours = proportion_test(fa, na, fb, nb, margin=margin)
        assert math.isclose(ours.z, (fa / na - fb / nb - margin) / sd, rel_tol=1e-8)
        assert_close(ours.p_value, float(stats.norm.sf(ours.z)))


def test_zero_counts_and_empty_sides_are_graceful() -> None:
    """No failures, all failures, or no outcomes: a finite z, never a division by zero."""
    assert proportion_test(0, 100, 0, 100) == proportion_test(100, 100, 100, 100)
    assert proportion_test(0, 100, 0, 100).z == 0.0
    assert proportion_test(0, 100, 0, 100).p_value == 0.5
    assert proportion_test(0, 100, 0, 100, alternative="two-sided").p_value == 1.0
    assert proportion_test(0, 0, 3, 10).z == 0.0
    assert proportion_test(3, 10, 0, 0, alternative="two-sided").p_value == 1.0
    with_margin = proportion_test(0, 100, 0, 100, margin=0.01)
    assert with_margin.z < 0
    assert with_margin.p_value > 0.5
    assert proportion_test(5, 100, 0, 100).p_value < 0.05  # zero baseline failures still tests


def test_bad_counts_are_refused() -> None:
    """Failures above outcomes, negative counts and margins outside (-1, 1) raise ValueError."""
    for args, margin in (((5, 4, 0, 10), 0.0), ((-1, 4, 0, 10), 0.0), ((1, 4, 0, 10), 1.0)):
        with pytest.raises(ValueError):
            proportion_test(*args, margin=margin)


counts = st.integers(0, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@given(counts, counts, st.sampled_from([0.0, 0.01, 0.05, 0.3]), st.sampled_from(ALTERNATIVES))
def test_proportion_p_value_is_a_probability(
    a: tuple[int, int], b: tuple[int, int], margin: float, alternative: Alternative
) -> None:
    """z is finite and the p-value in [0, 1] for any counts, zero counts included."""
    result = proportion_test(*a, *b, margin=margin, alternative=alternative)
    assert math.isfinite(result.z)
    assert 0.0 <= result.p_value <= 1.0


@given(counts, counts, st.sampled_from([0.0, 0.01, 0.05, 0.3]))
def test_more_canary_failures_never_weaken_the_evidence(
    a: tuple[int, int], b: tuple[int, int], margin: float
) -> None:
    """One more failure (and one less success) on side a never raises the one-sided p-value."""
    (failures, n), before = a, proportion_test(*a, *b, margin=margin)
    if failures < n:
        assert proportion_test(failures + 1, n, *b, margin=margin).p_value <= before.p_value


# -- percentile -------------------------------------------------------------------------------


@given(st.lists(latency, min_size=1, max_size=50), st.floats(0, 1))
def test_percentile_is_numpys_linear_percentile(values: list[float], q: float) -> None:
    """``percentile`` interpolates as numpy's default method does; 0.5 is the median."""
    assert math.isclose(percentile(values, q), float(np.quantile(values, q)), abs_tol=1e-12)
    assert math.isclose(percentile(values, 0.5), float(np.median(values)), abs_tol=1e-12)


def test_percentile_refuses_no_values_and_bad_quantiles() -> None:
    """An empty sample or a quantile outside 0..1 raises ValueError."""
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 50)


# -- the judge --------------------------------------------------------------------------------

CRITERIA = AnalysisCriteria(min_sample=50)


def sample(
    version: str,
    successes: int,
    failures: int,
    median_ms: float = 20,
    count: int = 200,
    seed: int = 0,
) -> VersionSample:
    """A version with log-normal latencies around ``median_ms``."""
    rng = random.Random(seed)
    latencies = [median_ms / 1000 * rng.lognormvariate(0, 0.25) for _ in range(count)]
    return VersionSample(version, successes, failures, latencies)


def assert_serialisable(evidence: dict[str, object]) -> None:
    json.dumps(evidence, allow_nan=False)


EVIDENCE_KEYS = {
    "criteria",
    "canary",
    "baseline",
    "missing_outcomes",
    "failure_rate_test",
    "latency_test",
}


def test_evidence_has_the_same_keys_whatever_the_outcome() -> None:
    """Pass, fail and inconclusive verdicts carry the same evidence keys, for the CLI."""
    verdicts = [
        judge(sample("2.0", 990, 10), sample("1.0", 990, 10), CRITERIA),
        judge(sample("2.0", 80, 20), sample("1.0", 990, 10), CRITERIA),
        judge(sample("2.0", 9, 1), sample("1.0", 990, 10), CRITERIA),
    ]
    assert [v.outcome for v in verdicts] == ["pass", "fail", "inconclusive"]
    for verdict in verdicts:
        assert set(verdict.evidence) == EVIDENCE_KEYS
        assert verdict.evidence["criteria"]["alpha"] == CRITERIA.alpha
        assert_serialisable(verdict.evidence)


def test_healthy_canary_passes() -> None:
    """Same failure rate and latencies as the baseline: pass, every check reported."""
    verdict = judge(sample("2.0", 990, 10, seed=1), sample("1.0", 990, 10, seed=2), CRITERIA)
    assert verdict.outcome == "pass"
    assert verdict.reasons[0] == "canary failure rate 1.0% within 5.0% limit"
    assert any("not significantly above 1.5x" in reason for reason in verdict.reasons)
    assert verdict.evidence["latency_test"]["judged"] is True
    assert_serialisable(verdict.evidence)


def test_canary_with_many_failures_fails_with_the_reason() -> None:
    """20% failures against a 5% limit: fail, and the first reason says so with the figures."""
    verdict = judge(sample("2.0", 80, 20), sample("1.0", 990, 10), CRITERIA)
    assert verdict.outcome == "fail"
    assert verdict.reasons[0] == "canary failure rate 20.0% > 5.0% limit (20 of 100 outcomes)"
    assert "significantly above baseline + 1.0 points" in verdict.reasons[1]
    assert verdict.evidence["canary"]["failure_rate"] == 0.2
    assert verdict.evidence["failure_rate_test"]["significant"] is True


def test_failure_rate_significantly_above_baseline_fails_under_the_limit() -> None:
    """4% failures is under the 5% limit but significantly above a 0.5% baseline + 1 point."""
    verdict = judge(sample("2.0", 960, 40), sample("1.0", 1990, 10), CRITERIA)
    assert verdict.outcome == "fail"
    assert verdict.reasons[0].startswith(
        "canary failure rate 4.0% vs baseline 0.5%: significantly above baseline + 1.0 points (p="
    )


def test_slow_canary_fails_on_latency() -> None:
    """Median 41 ms against 20 ms with a 1.5x allowance: fail on latency, p in the sentence."""
    verdict = judge(sample("2.0", 1000, 0, median_ms=41), sample("1.0", 1000, 0), CRITERIA)
    assert verdict.outcome == "fail"
    assert len([r for r in verdict.reasons if "significantly above 1.5x" in r]) == 1
    assert verdict.reasons[0].startswith("canary latency median 4")
    assert "vs baseline 2" in verdict.reasons[0]
    test = verdict.evidence["latency_test"]
    assert test["significant"] is True
    assert test["p_value"] < 1e-6
    assert test["method"] == "asymptotic"


def test_canary_within_the_latency_ratio_passes() -> None:
    """25 ms against 20 ms is slower, but not significantly beyond 1.5x: pass."""
    verdict = judge(sample("2.0", 1000, 0, median_ms=25), sample("1.0", 1000, 0), CRITERIA)
    assert verdict.outcome == "pass"


def test_too_few_outcomes_is_inconclusive_with_the_count_needed() -> None:
    """30 canary outcomes with min_sample 50: inconclusive, 20 more needed, baseline not named."""
    verdict = judge(sample("2.0", 29, 1), sample("1.0", 500, 0), CRITERIA)
    assert verdict.outcome == "inconclusive"
    assert verdict.reasons == ["canary has 30 outcomes, 20 more needed (min_sample 50)"]
    assert verdict.evidence["missing_outcomes"] == {"canary": 20, "baseline": 0}
    assert_serialisable(verdict.evidence)


def test_no_outcomes_at_all_is_inconclusive_on_both_sides() -> None:
    """Nothing on either side: both sides named, evidence has no rate and no NaN."""
    verdict = judge(VersionSample("2.0", 0, 0), VersionSample("1.0", 0, 0), CRITERIA)
    assert verdict.outcome == "inconclusive"
    assert [r.split()[0] for r in verdict.reasons] == ["canary", "baseline"]
    assert verdict.evidence["canary"]["failure_rate"] is None
    assert verdict.evidence["canary"]["latency_p50"] is None
    assert_serialisable(verdict.evidence)


def test_zero_failures_everywhere_passes() -> None:
    """No failure on either side: the proportion test is finite and not significant."""
    verdict = judge(sample("2.0", 500, 0), sample("1.0", 500, 0, seed=3), CRITERIA)
    assert verdict.outcome == "pass"
    assert verdict.evidence["failure_rate_test"]["p_value"] > 0.5
    assert_serialisable(verdict.evidence)


def test_few_latencies_judges_failures_only_and_says_so() -> None:
    """Enough outcomes but 10 latencies: latency is not judged, and a reason says why."""
    canary = VersionSample("2.0", 500, 0, [5.0] * 10)  # very slow, but too few to judge
    verdict = judge(canary, sample("1.0", 500, 0), CRITERIA)
    assert verdict.outcome == "pass"
    assert verdict.reasons[-1] == (
        "latency not judged (failures only): canary has 10 latencies, baseline 200,"
        " 50 needed on each side"
    )
    assert verdict.evidence["latency_test"] == {"judged": False, "ratio": 1.5}


def test_empty_latencies_judge_failures_only() -> None:
    """No latencies at all still gives a verdict on failures: here a fail."""
    verdict = judge(VersionSample("2.0", 50, 50), VersionSample("1.0", 100, 0), CRITERIA)
    assert verdict.outcome == "fail"
    assert verdict.evidence["canary"]["latency_p99"] is None
    assert_serialisable(verdict.evidence)


def test_small_samples_use_the_exact_distribution() -> None:
    """With min_sample 5 and five untied latencies a side, the latency p-value is exact."""
    criteria = AnalysisCriteria(min_sample=5)
    canary = VersionSample("2.0", 5, 0, [0.100, 0.101, 0.102, 0.103, 0.104])
    baseline = VersionSample("1.0", 5, 0, [0.010, 0.011, 0.012, 0.013, 0.014])
    verdict = judge(canary, baseline, criteria)
    assert verdict.evidence["latency_test"]["method"] == "exact"
    assert verdict.evidence["latency_test"]["p_value"] == 1 / math.comb(10, 5)
    assert verdict.outcome == "fail"


def test_invalid_samples_are_refused() -> None:
    """Negative counts, negative or NaN latencies raise ValueError naming the version."""
    with pytest.raises(ValueError, match=r"version 2\.0"):
        VersionSample("2.0", -1, 0)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite seconds"):
            VersionSample("2.0", 1, 0, [0.1, bad])


def criteria_st(min_sample: st.SearchStrategy[int]) -> st.SearchStrategy[AnalysisCriteria]:
    """Any valid criteria, with ``min_sample`` drawn from ``min_sample``."""
    return st.builds(
        AnalysisCriteria,
        min_sample=min_sample,
        max_failure_rate=st.floats(0, 1),
        max_failure_rate_increase=st.floats(0, 0.5),
        max_latency_ratio=st.floats(1, 3),
        alpha=st.floats(0.001, 0.2),
    )


version_st = st.builds(
    VersionSample,
    version=st.just("v"),
    successes=st.integers(0, 300),
    failures=st.integers(0, 300),
    latencies=st.lists(latency, max_size=60),
)


@given(version_st, criteria_st(st.integers(1, 30)))
def test_identical_samples_never_fail_the_comparison(
    version: VersionSample, criteria: AnalysisCriteria
) -> None:
    """Canary identical to baseline: no comparative fail; only the absolute limit can fail it."""
    verdict = judge(version, version, criteria)
    assert_serialisable(verdict.evidence)
    if verdict.outcome == "fail":
        assert len([r for r in verdict.reasons if "> " in r and "limit" in r]) == 1
        assert verdict.evidence["failure_rate_test"]["significant"] is False
        assert verdict.evidence["latency_test"].get("significant", False) is False


@given(version_st, version_st, criteria_st(st.integers(9, 30)), st.floats(0, 2))
def test_slower_canary_never_turns_a_fail_into_a_pass(
    canary: VersionSample, baseline: VersionSample, criteria: AnalysisCriteria, shift: float
) -> None:
    """Shifting canary latencies up never lowers the chance of fail (asymptotic range, n > 8)."""
    slower = VersionSample(
        "v", canary.successes, canary.failures, [v + shift for v in canary.latencies]
    )
    before, after = judge(canary, baseline, criteria), judge(slower, baseline, criteria)
    assert_serialisable(after.evidence)
    assert after.outcome == before.outcome or (before.outcome, after.outcome) == ("pass", "fail")
    if before.outcome != "inconclusive" and before.evidence["latency_test"]["judged"]:
        p_before = before.evidence["latency_test"]["p_value"]
        if p_before < 0.5:
            assert after.evidence["latency_test"]["p_value"] <= p_before

"""The two statistical tests of canary analysis, in pure Python, checked against scipy.

The controller stays light (no numpy or scipy at run time), so they are
written out here, and the tests compare them with scipy:

- :func:`mann_whitney_u` for latencies, as ``scipy.stats.mannwhitneyu``
  computes it: the normal approximation with continuity and tie correction,
  or the exact distribution of U when both samples have at most 8 values and
  no ties (scipy's ``"auto"`` goes exact when either is that small, which
  against a large baseline costs O(m^2 n) big integers: here it stays normal);
- :func:`proportion_test` for failure rates: the Farrington-Manning score test
  of ``rate_a - rate_b > margin``;
- :func:`percentile`, numpy's default (linear) interpolation.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Literal

Alternative = Literal["greater", "less", "two-sided"]


#: Both samples at most this big and free of ties: the exact distribution of U.
EXACT_MAX_SIZE = 8


@dataclass(frozen=True, slots=True)
class MannWhitney:
    """Result of :func:`mann_whitney_u`.

    Attributes:
        u: U of the first sample (how many (x, y) pairs have x > y, ties counting half).
        p_value: The p-value under the chosen alternative.
        method: ``"exact"`` or ``"asymptotic"``: how the p-value was computed.
    """

    u: float
    p_value: float
    method: Literal["exact", "asymptotic"]


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """Result of :func:`proportion_test`: the score statistic and its p-value."""

    z: float
    p_value: float


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolated linearly (numpy's default).

    ``percentile(values, 0.5)`` is the median. Raises ValueError when ``values``
    is empty or ``q`` is outside 0..1.
    """
    if len(values) == 0:
        raise ValueError("percentile of no values")
    return percentile_sorted(sorted(values), q)


def percentile_sorted(ordered: Sequence[float], q: float) -> float:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside 0..1")
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z (erfc keeps the far tail precise)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_u(
    x: Sequence[float],
    y: Sequence[float],
    alternative: Alternative,
    *,
    method: Literal["auto", "exact", "asymptotic"] = "auto",
) -> MannWhitney:
    """Mann-Whitney U test of ``x`` against ``y``, as ``scipy.stats.mannwhitneyu`` computes it.

    ``"greater"`` tests whether ``x`` tends to be larger than ``y``. The
    asymptotic p-value uses the normal approximation with continuity and tie
    correction; ``"auto"`` uses the exact distribution instead when both
    samples have at most 8 values and no ties. O(n log n): two sorts, then
    linear walks.

    Raises:
        ValueError: A sample is empty or holds NaN, or ``method="exact"`` with ties.
    """
    if len(x) == 0 or len(y) == 0:
        raise ValueError("Mann-Whitney U needs at least one value in each sample")
    if _has_nan(x) or _has_nan(y):
        raise ValueError("Mann-Whitney U cannot rank NaN")
    return mann_whitney_sorted(sorted(x), sorted(y), alternative, method)


def _has_nan(values: Sequence[float]) -> bool:
    # sum() runs in C; only a NaN sum (a NaN, or inf + -inf) needs the slow look.
    return math.isnan(sum(values)) and any(math.isnan(v) for v in values)


def mann_whitney_sorted(
    x: Sequence[float],
    y: Sequence[float],
    alternative: Alternative,
    method: Literal["auto", "exact", "asymptotic"],
) -> MannWhitney:
    """:func:`mann_whitney_u` of sorted samples (the judge sorts its latencies once)."""
    n1, n2 = len(x), len(y)
    # U1 counts, for each x, the y below it and half the y equal to it: one merge-like
    # walk, with ``below`` and ``not_above`` the y before and after the run of equal ones.
    below = not_above = twice_u1 = 0
    for value in x:
        while below < n2 and y[below] < value:
            below += 1
        if not_above < below:
            not_above = below
        while not_above < n2 and y[not_above] <= value:
            not_above += 1
        twice_u1 += below + not_above
    u1 = twice_u1 / 2
    u2 = n1 * n2 - u1
    # Tie groups of the pooled sample, as {group size: how many groups}.
    group_sizes = Counter(Counter(chain(x, y)).values())
    tie_term = sum((t**3 - t) * k for t, k in group_sizes.items())
    if method == "auto":
        small = n1 <= EXACT_MAX_SIZE and n2 <= EXACT_MAX_SIZE
        method = "exact" if small and tie_term == 0 else "asymptotic"
    if method == "exact" and tie_term:
        raise ValueError("the exact distribution of U assumes no ties; use 'asymptotic'")
    # As scipy: the survival function of the statistic the alternative looks at.
    u, factor = {"greater": (u1, 1), "less": (u2, 1), "two-sided": (max(u1, u2), 2)}[alternative]
    if method == "exact":
        counts = _exact_counts(min(n1, n2), max(n1, n2))
        sf = sum(counts[math.ceil(u) :]) / math.comb(n1 + n2, n1)
    else:
        sf = _asymptotic_sf(u, n1, n2, tie_term)
    return MannWhitney(u=u1, p_value=min(1.0, factor * sf), method=method)


def _asymptotic_sf(u: float, n1: int, n2: int, tie_term: int) -> float:
    """P(U >= u) by the normal approximation with continuity and tie correction."""
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value tied: U is its mean, the data say nothing (scipy: z=-inf)
        return 1.0
    return _normal_sf((u - n1 * n2 / 2 - 0.5) / math.sqrt(variance))


@lru_cache(maxsize=64)
def _exact_counts(m: int, n: int) -> tuple[int, ...]:
    """How many orderings of ``m + n`` distinct values give each U from 0 to ``m * n``.

    The coefficients of the Gaussian binomial ``[m + n choose m]_q``, built as
    the product over i = 1..m of (1 - q^(n + i)) / (1 - q^i); each partial
    product is a polynomial, so truncating at degree ``m * n`` loses nothing.
    """
    size = m * n + 1
    poly = [1] + [0] * (size - 1)
    for i in range(1, m + 1):
        for k in range(size - 1, n + i - 1, -1):  # times (1 - q^(n+i)), high degrees first
            poly[k] -= poly[k - n - i]
        for k in range(i, size):  # divided by (1 - q^i): a running sum with stride i
            poly[k] += poly[k - i]
    return tuple(poly)


def proportion_test(
    failures_a: int,
    n_a: int,
    failures_b: int,
    n_b: int,
    *,
    margin: float = 0.0,
    alternative: Alternative = "greater",
) -> ProportionTest:
    """Score test of ``rate_a - rate_b`` against ``margin`` (Farrington-Manning).

    ``"greater"`` tests ``rate_a > rate_b + margin``. The variance is taken at
    the rates' maximum-likelihood estimates restricted to ``rate_a - rate_b ==
    margin`` (not at the observed rates, as the Wald test does), so zero
    failures on a side still give a usable statistic; with ``margin == 0`` it
    is the pooled two-proportion z-test.

    When a side has no outcomes, or the restricted variance is zero (no margin
    and every outcome the same on both sides), the data sit exactly at the
    null: ``z = 0.0``, hence ``p_value`` 0.5 (one-sided) or 1.0 (two-sided),
    never significant, and no division by zero.

    Raises:
        ValueError: A count is negative, failures exceed outcomes, or the margin
            is not strictly between -1 and 1.
    """
    if not (0 <= failures_a <= n_a and 0 <= failures_b <= n_b):
        raise ValueError("failures must be between 0 and the number of outcomes")
    if not -1.0 < margin < 1.0:
        raise ValueError(f"margin {margin} is not strictly between -1 and 1")
    z = 0.0
    if n_a and n_b:
        null_b = _restricted_rate_b(failures_a, n_a, failures_b, n_b, margin)
        null_a = null_b + margin
        variance = null_a * (1 - null_a) / n_a + null_b * (1 - null_b) / n_b
        if variance > 0:
            z = (failures_a / n_a - failures_b / n_b - margin) / math.sqrt(variance)
    p_value = {
        "greater": _normal_sf(z),
        "less": _normal_sf(-z),
        "two-sided": min(1.0, 2 * _normal_sf(abs(z))),
    }[alternative]
    return ProportionTest(z=z, p_value=p_value)


def _restricted_rate_b(
    failures_a: int, n_a: int, failures_b: int, n_b: int, margin: float
) -> float:
    """Maximum-likelihood rate of b under ``rate_a = rate_b + margin``.

    The log-likelihood is concave in rate_b, so its derivative decreases and
    bisection finds where it crosses zero (or the bound it is pushed to). The
    closed form, a cubic's trigonometric root, needs guards at its edges; this
    needs none and costs microseconds.
    """
    successes_a, successes_b = n_a - failures_a, n_b - failures_b

    def slope(t: float) -> float:
        total = 0.0
        if failures_a:
            total += failures_a / (t + margin)
        if successes_a:
            total -= successes_a / (1 - t - margin)
        if failures_b:
            total += failures_b / t
        if successes_b:
            total -= successes_b / (1 - t)
        return total

    low, high = max(0.0, -margin), min(1.0, 1.0 - margin)
    for _ in range(64):  # the interval is under 1e-19 wide: far below any rate's precision
        middle = (low + high) / 2
        if slope(middle) > 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2

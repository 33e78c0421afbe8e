"""Judge speed: our pure-Python judge and Mann-Whitney U against scipy, on the same data.

    .venv/bin/python bench/bench_analysis.py

For 1,000 and 10,000 latencies per side (log-normal, the canary 10% slower,
rounded to 0.1 ms so ties occur as with real timers), times:

- ``judge``: the whole verdict (sorting, percentiles, proportion test, U);
- ``mann_whitney_u`` alone, on lists;
- the baseline: ``scipy.stats.mannwhitneyu`` (asymptotic, one-sided) on numpy
  arrays prepared beforehand, its best case, with the baseline scaled by the
  latency ratio inside the timing as the judge does.

Prints ms per call (median of 7 runs) and each as a ratio of scipy (lower is
better). scipy is a dev dependency: the controller itself never imports it.
"""

from __future__ import annotations

import random
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import result, watch
from controller.analysis._analysis import VersionSample, judge
from controller.analysis._criteria import AnalysisCriteria
from controller.analysis._statistics import mann_whitney_u

SIZES = (1_000, 10_000)
RUNS = 7
CRITERIA = AnalysisCriteria(min_sample=50)
BOUND = 300.0  # s: the longest a run may take (python -m bench stops it past that)


def per_call_ms(call: Callable[[], object], number: int) -> float:
    runs = [timeit.timeit(call, number=number) / number * 1e3 for _ in range(RUNS)]
    return statistics.median(runs)


def latencies(count: int, median: float, rng: random.Random) -> list[float]:
    return [round(median * rng.lognormvariate(0, 0.3), 4) for _ in range(count)]


def main() -> None:
    rng = random.Random(42)
    ratio = CRITERIA.max_latency_ratio
    print(f"{'latencies/side':>15}{'judge ms':>10}{'ours U ms':>11}{'scipy ms':>10}", end="")
    print(f"{'judge/scipy':>13}{'U/scipy':>9}")
    for size in SIZES:
        canary = VersionSample("2.0", size - 10, 10, latencies(size, 0.022, rng))
        baseline = VersionSample("1.0", size - 10, 10, latencies(size, 0.020, rng))
        scaled = [v * ratio for v in baseline.latencies]
        canary_array, baseline_array = np.array(canary.latencies), np.array(baseline.latencies)
        ours = mann_whitney_u(canary.latencies, scaled, "greater", method="asymptotic")
        theirs = stats.mannwhitneyu(
            canary_array, baseline_array * ratio, alternative="greater", method="asymptotic"
        )
        assert ours.u == theirs.statistic, (ours, theirs)  # same data, same answer
        number = max(1, 20_000 // size)
        judge_ms = per_call_ms(lambda: judge(canary, baseline, CRITERIA), number)  # noqa: B023
        u_ms = per_call_ms(
            lambda: mann_whitney_u(canary.latencies, scaled, "greater"),  # noqa: B023
            number,
        )
        scipy_ms = per_call_ms(
            lambda: stats.mannwhitneyu(
                canary_array,  # noqa: B023
                baseline_array * ratio,  # noqa: B023
                alternative="greater",
                method="asymptotic",
            ),
            number,
        )
        print(f"{size:>15,}{judge_ms:>10.2f}{u_ms:>11.2f}{scipy_ms:>10.2f}", end="")
        print(f"{judge_ms / scipy_ms:>13.2f}{u_ms / scipy_ms:>9.2f}")
        for figure, ours_ms in (("whole judge", judge_ms), ("Mann-Whitney U", u_ms)):
            result(
                f"analysis: {figure}, {size:,} latencies per side",
                ours=ours_ms,
                baseline=scipy_ms,
                unit="ms",
                goal="",
                passed=None,
                rounds=RUNS,
                note=f"median of {RUNS} runs; baseline scipy.stats.mannwhitneyu on numpy arrays",
            )


if __name__ == "__main__":
    watch(BOUND)
    main()

"""Flag evaluation speed: our compiled flags against openfeature-provider-flagd, same flags.

Both load one flagd document. flagd is measured at its provider in file mode
(``FlagdProvider(resolver_type=FILE)``, the in-process resolver users call)
and at the ``FlagdCore`` evaluator that resolver delegates to; ours through
``flags.evaluate`` (flag looked up by key, as a service would). Each call gets
the next of 1,000 contexts. Prints µs per call (median of 5 runs), the ratio
flagd / ours, and PASS/FAIL for the goals: fractional < 2 µs, >= 3x faster.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from bench._harness import result, watch
from flags import CompiledFlag, FlagType, evaluate, flags_from_flagd_document

HELP = {"help": "Benchmark flag; nothing to do.", "help_uri": "https://e.com/bench"}
COLOURS = {"red": "#f00", "green": "#0f0", "blue": "#00f"}
DOCUMENT = {
    "flags": {
        "static": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
            "metadata": HELP,
        },
        "fractional": {
            "state": "ENABLED",
            "variants": COLOURS,
            "defaultVariant": "red",
            "targeting": {"fractional": [["red", 10], ["green", 30], ["blue", 60]]},
            "metadata": HELP,
        },
        "nested": {
            "state": "ENABLED",
            "variants": COLOURS,
            "defaultVariant": "red",
            "targeting": {
                "if": [
                    {"ends_with": [{"var": "email"}, "@example.com"]},
                    "blue",
                    {
                        "and": [
                            {">=": [{"var": "age"}, 18]},
                            {"in": [{"var": "country"}, ["fr", "de"]]},
                        ]
                    },
                    {"fractional": [["green", 50], ["blue", 50]]},
                    None,
                ]
            },
            "metadata": HELP,
        },
    }
}
CASES = [
    ("static", FlagType.BOOLEAN, False),
    ("fractional", FlagType.STRING, "x"),
    ("nested", FlagType.STRING, "x"),
]
CONTEXTS = [
    {
        "targetingKey": f"user-{i}",
        "email": f"u{i}@example.{'com' if i % 3 else 'org'}",
        "age": i % 90,
        "country": ("fr", "us")[i % 2],
    }
    for i in range(1000)
]
N = 100_000
RUNS = 5
BOUND = 300.0  # s: the longest a run may take (python -m bench stops it past that)
FASTER = 3.0  # goal: flagd's time per call / ours
FRACTIONAL_GOAL = 2.0  # µs per fractional evaluation


def per_call(call: Callable[[Any], Any], contexts: list[Any], n: int) -> float:
    """Median over RUNS of the µs per call, cycling through the contexts."""
    rounds = n // len(contexts)
    runs = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(rounds):
            for context in contexts:
                call(context)
        runs.append((time.perf_counter() - start) / (rounds * len(contexts)) * 1e6)
    return statistics.median(runs)


def main() -> int:
    logging.getLogger("openfeature").setLevel(logging.CRITICAL)
    text = json.dumps(DOCUMENT)
    ours = {key: CompiledFlag(flag) for key, flag in flags_from_flagd_document(text).items()}
    core = FlagdCore()
    core.set_flags(text)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flags.json"
        path.write_text(text)
        provider = FlagdProvider(
            resolver_type=ResolverType.FILE, offline_flag_source_path=str(path)
        )
        provider.initialize(EvaluationContext())
        try:
            return report(ours, core, provider)
        finally:
            provider.shutdown()


def report(ours: dict[str, CompiledFlag], core: FlagdCore, provider: FlagdProvider) -> int:
    theirs_contexts = [
        EvaluationContext(c["targetingKey"], {k: v for k, v in c.items() if k != "targetingKey"})
        for c in CONTEXTS
    ]
    header = f"{'ours µs':>9}{'provider µs':>13}{'core µs':>9}{'x provider':>12}{'x core':>8}"
    print(f"{'flag':<12}{header}")
    failures = 0
    for key, expected, default in CASES:
        resolve = getattr(provider, f"resolve_{expected.value}_details")
        core_resolve = getattr(core, f"resolve_{expected.value}_value")
        mine = per_call(
            lambda c, k=key, e=expected, d=default: evaluate(ours.get(k), k, d, c, e), CONTEXTS, N
        )
        via_provider = per_call(
            lambda c, r=resolve, k=key, d=default: r(k, d, c), theirs_contexts, N // 10
        )
        via_core = per_call(
            lambda c, r=core_resolve, k=key, d=default: r(k, d, c), theirs_contexts, N // 10
        )
        ratios = f"{via_provider / mine:>12.1f}{via_core / mine:>8.1f}"
        print(f"{key:<12}{mine:>9.2f}{via_provider:>13.2f}{via_core:>9.2f}{ratios}")
        fast_enough = via_provider / mine >= FASTER and via_core / mine >= FASTER
        print(f"  goal >= {FASTER:g}x faster than flagd: {'PASS' if fast_enough else 'FAIL'}")
        failures += not fast_enough
        for against, theirs in (("provider", via_provider), ("core", via_core)):
            result(
                f"flags: {key} evaluation vs flagd {against}",
                ours=mine,
                baseline=theirs,
                unit="µs",
                goal=f"ratio <= {1 / FASTER:.2f} (>= {FASTER:g}x faster)",
                passed=theirs / mine >= FASTER,
                rounds=RUNS,
                note=f"µs per call, median of {RUNS} runs over 1,000 contexts",
            )
        if key == "fractional":
            fast = mine < FRACTIONAL_GOAL
            print(f"  goal fractional < 2 µs: {'PASS' if fast else 'FAIL'} ({mine:.2f} µs)")
            failures += not fast
            result(
                "flags: fractional evaluation time",
                ours=mine,
                baseline=None,
                unit="µs",
                goal=f"< {FRACTIONAL_GOAL:g} µs",
                passed=fast,
                rounds=RUNS,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    watch(BOUND)
    sys.exit(main())

"""Codec speed: our text and JSON wire forms against the stdlib json module on the same data.

The baseline is ``json.loads``/``json.dumps`` of the equivalent dict (C code,
no validation); ours parse and validate every name. Prints µs per message and
the ratio ours / baseline (lower is better), medians of 5 runs.
"""

from __future__ import annotations

import json
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import result, watch
from communicator import decode, encode, parse_line

LINE = "<web_01:front orders/PLACE item=book;qty=2;user=alice;message_id=front1.42;note=gift wrap"
QUOTED = r'<web_01:front orders/PLACE item=book;note="a;b";text=line\none;message_id=front1.43'
MESSAGE = parse_line(LINE)
AS_JSON = encode(MESSAGE, "json")
AS_DICT = json.loads(AS_JSON)
N = 20_000
RUNS = 5
BOUND = 120.0  # s: the longest a run may take (python -m bench stops it past that)


def per_call(statement: object) -> float:
    runs = [timeit.timeit(statement, number=N) / N * 1e6 for _ in range(RUNS)]  # type: ignore[arg-type]
    return statistics.median(runs)


def main() -> None:
    baseline_decode = per_call(lambda: json.loads(AS_JSON))
    baseline_encode = per_call(lambda: json.dumps(AS_DICT, separators=(",", ":")))
    rows = [
        ("decode text (fast path)", per_call(lambda: decode(LINE.encode())), baseline_decode),
        ("decode text (quoted)", per_call(lambda: decode(QUOTED.encode())), baseline_decode),
        ("decode json", per_call(lambda: decode(AS_JSON)), baseline_decode),
        ("encode text", per_call(lambda: encode(MESSAGE)), baseline_encode),
        ("encode json", per_call(lambda: encode(MESSAGE, "json")), baseline_encode),
    ]
    print(f"{'path':<26}{'ours µs':>10}{'json µs':>10}{'ratio':>8}")
    for name, ours, base in rows:
        print(f"{name:<26}{ours:>10.2f}{base:>10.2f}{ours / base:>8.2f}")
        baseline = "json.dumps" if name.startswith("encode") else "json.loads"
        result(
            f"codec: {name}",
            ours=ours,
            baseline=base,
            unit="µs",
            goal="",
            passed=None,
            rounds=RUNS,
            note=f"µs per message, median of {RUNS} runs; baseline {baseline} of the same data",
        )


if __name__ == "__main__":
    watch(BOUND)
    main()

"""Run every benchmark in bench/ (``make bench``) under its time bound; write bench/REPORT.md.

``python -m bench bluegreen reaction`` runs only those whose file name
contains one of the words given, and prints their table without touching
bench/REPORT.md: the report is rewritten only by a full run, so it never mixes
figures of different runs or loses the benchmarks a partial run left out.

Each benchmark states its bound (``BOUND = <seconds>`` at module level; a
script without one gets :data:`DEFAULT_BOUND`) and arms it itself with
``_harness.watch(BOUND)``: past it, it dumps its threads' stacks and its
asyncio tasks' await chains into the file named by ``DEPLOYCTL_BENCH_DUMP``
and stops. This runner enforces the bound too, in case the script cannot: at
``BOUND + GRACE + MARGIN`` it sends SIGABRT (the child runs with ``-X
faulthandler``, which prints every thread's stack) and then kills the child's
process group, its ``communicatord`` and workers with it. The report names
where a timed-out benchmark waited, from those dumps.

Every figure a benchmark prints with ``_harness.result()`` (a ``BENCH-RESULT
{json}`` line) becomes a row of the report.

Unless ``DEPLOYCTL_BENCH_MQTT_URL`` names a broker, the benchmarks run against
a Mosquitto of their own configured as ``deployctl broker-config`` recommends
for production (``set_tcp_nodelay true``). Mosquitto's default leaves Nagle's
algorithm on, which adds about 10 ms to small QoS 0 deliveries.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._harness import DUMP_ENV, GRACE, RESULT_PREFIX, TIMEOUT_HEADER, machine

HERE = Path(__file__).parent
ROOT = HERE.parent
REPORT = HERE / "REPORT.md"
#: The bound of a benchmark that states none (s).
DEFAULT_BOUND = 600.0
#: Beyond ``bound + GRACE`` (the script's own last resort), this runner aborts it (s).
MARGIN = 15.0
#: How many of a failed benchmark's last stderr lines are kept to say where it failed.
TAIL = 40


@contextlib.contextmanager
def production_broker() -> Iterator[str | None]:
    """A loopback Mosquitto with set_tcp_nodelay, or ``None`` when one is given or missing."""
    if os.environ.get("DEPLOYCTL_BENCH_MQTT_URL") or not shutil.which("mosquitto"):
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nuser root\n"
    )
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def stated_bound(script: Path) -> float | None:
    """The script's module-level ``BOUND = <seconds>``, or ``None`` when it states none."""
    for node in ast.parse(script.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "BOUND" for t in node.targets)
        ) or (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "BOUND"
            and node.value is not None
        ):
            assert node.value is not None
            return float(ast.literal_eval(node.value))
    return None


@dataclass
class Run:
    """One benchmark's run: its exit, its figures, and where it stopped if it failed."""

    script: Path
    bound: float
    stated: bool
    load_before: tuple[float, float]
    load_after: tuple[float, float] = (0.0, 0.0)
    code: int | None = None
    seconds: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False
    dump: str = ""
    tail: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The script's file name."""
        return self.script.name

    @property
    def failed(self) -> bool:
        """Whether the run timed out, exited with an error or missed a goal."""
        return self.timed_out or self.code != 0

    def where(self) -> str:
        """One line: why and where the run failed ("" when it did not)."""
        if self.timed_out:
            places = "; ".join(waiting_places(self.dump)) or "no stack dumped"
            return f"timed out after its bound of {self.bound:g} s, waiting at: {places}"
        if not self.failed:
            return ""
        missed = [r["figure"] for r in self.results if r.get("passed") is False]
        if missed:
            return f"exit {self.code}: goal missed: {'; '.join(missed)}"
        return f"exit {self.code}: {error_place(self.tail)}"


_TASK_FRAME = re.compile(r"^\s+(?P<file>/\S+\.py):(?P<line>\d+) (?P<func>\S+): (?P<source>.*)$")
_THREAD_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_TRACEBACK_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


def _ours(path: str) -> bool:
    """Whether ``path`` is the project's code (not the venv's or the standard library's)."""
    return path.startswith(str(ROOT)) and "/.venv/" not in path


def _short(path: str) -> str:
    return os.path.relpath(path, ROOT)


def waiting_places(dump: str) -> list[str]:
    """From a dump, the innermost frame of our code of each task (or thread) that was waiting.

    ``watch``'s dump lists each asyncio task outermost first (the last frame
    of ours is where it waits); faulthandler's thread stacks are innermost
    first (the first frame of ours).
    """
    places: list[str] = []
    tasks = dump.split("asyncio tasks:\n", 1)
    if len(tasks) == 2:
        name, frame = "", ""
        for line in [*tasks[1].splitlines(), "task end"]:
            if line.startswith("task "):
                if frame:
                    places.append(f"task {name}: {frame}")
                name, frame = line[5:].split(" ", 1)[0].rstrip(":"), ""
            elif (match := _TASK_FRAME.match(line)) and _ours(match["file"]):
                place = f"{_short(match['file'])}:{match['line']} {match['func']}"
                frame = f"{place} ({match['source']})"
        if places:
            return places
    seen_thread = False
    for line in dump.splitlines():
        if line.startswith(("Current thread", "Thread ")):
            seen_thread = True
        elif seen_thread and (match := _THREAD_FRAME.match(line)) and _ours(match["file"]):
            places.append(f"{_short(match['file'])}:{match['line']} {match['func']}")
            seen_thread = False
    return places


def error_place(tail: list[str]) -> str:
    """The innermost frame of our code in the last traceback of ``tail``, and its error line."""
    frames = [
        f"{_short(m['file'])}:{m['line']} {m['func']}"
        for line in tail
        if (m := _TRACEBACK_FRAME.match(line)) and _ours(m["file"])
    ]
    error = next((line for line in reversed(tail) if line and not line.startswith(" ")), "")
    return f"{frames[-1]}: {error}" if frames else (error or "no output on stderr")


async def _pump(stream: asyncio.StreamReader, echo: Any, keep: list[str], run: Run) -> None:
    """Copy a child's output to ours; collect its result lines and its last lines."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip("\n")
        if text.startswith(RESULT_PREFIX):
            run.results.append(json.loads(text[len(RESULT_PREFIX) :]))
            continue
        print(text, file=echo, flush=True)
        keep.append(text)
        del keep[:-TAIL]


def _stop_group(pid: int) -> None:
    """Kill what is left of the child's process group (its communicatord, its workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def run_one(script: Path, env: dict[str, str]) -> Run:
    """Run ``script`` under its bound; collect its figures and, past the bound, its dump."""
    bound = stated_bound(script)
    one, five, _ = os.getloadavg()
    run = Run(script, bound or DEFAULT_BOUND, bound is not None, (one, five))
    with tempfile.NamedTemporaryFile("r", prefix="bench-dump-", suffix=".txt") as dump:
        start = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "faulthandler",
            str(script),
            env={**env, DUMP_ENV: dump.name},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, to stop its children with it
            limit=2**20,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        out: list[str] = []
        pumps = [
            asyncio.create_task(_pump(process.stdout, sys.stdout, out, run), name="bench-stdout"),
            asyncio.create_task(_pump(process.stderr, sys.stderr, run.tail, run), name="bench-err"),
        ]
        try:
            await asyncio.wait_for(process.wait(), run.bound + GRACE + MARGIN)
        except TimeoutError:
            run.timed_out = True
            process.send_signal(signal.SIGABRT)  # -X faulthandler: every thread's stack
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
        _stop_group(process.pid)
        await process.wait()
        await asyncio.wait(pumps, timeout=5)
        for pump in pumps:
            pump.cancel()
        run.code, run.seconds = process.returncode, time.monotonic() - start
        run.dump = dump.read()
    if TIMEOUT_HEADER in run.dump or "Timeout (" in run.dump:  # watch's, or faulthandler's own
        run.timed_out = True
    if run.timed_out and not run.dump:
        run.dump = "\n".join(run.tail)  # the SIGABRT stacks went to stderr
    one, five, _ = os.getloadavg()
    run.load_after = (one, five)
    return run


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(runs: list[Run]) -> list[str]:
    """The figures as one Markdown table (a row for a run that printed none)."""
    lines = [
        "| benchmark | figure | ours | baseline | ratio | goal | pass/fail | rounds |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for run in runs:
        verdict = "TIMEOUT" if run.timed_out else "FAIL" if run.code != 0 else ""
        if not run.results:
            lines.append(f"| {run.name} | (no figure) | - | - | - | - | {verdict or '-'} | - |")
        for r in run.results:
            unit = f" {r['unit']}" if r.get("unit") else ""
            passed = {True: "PASS", False: "FAIL", None: "-"}[r.get("passed")]
            if run.timed_out:
                passed = "TIMEOUT"
            cells = [
                run.name,
                r["figure"],
                _number(r["ours"]) + unit,
                _number(r["baseline"]) + (unit if r["baseline"] is not None else ""),
                "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                r.get("goal") or "-",
                passed,
                str(r.get("rounds", 1)),
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def note_lines(run: Run) -> list[str]:
    """The notes of ``run``'s figures, one line per distinct note (naming its figures)."""
    figures: dict[str, list[str]] = {}
    for r in run.results:
        if r.get("note"):
            figures.setdefault(r["note"], []).append(r["figure"])
    if len(figures) == 1 and len(next(iter(figures.values()))) == len(run.results):
        return [f"- {run.name}: {next(iter(figures))}"]
    return [f"- {run.name}, {'; '.join(names)}: {note}" for note, names in figures.items()]


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    return "unknown"


def report(runs: list[Run], *, broker: str, started: datetime.datetime, machines: list[str]) -> str:
    """bench/REPORT.md's text."""
    lines = [
        "# Benchmark report",
        "",
        "<!-- Generated by `make bench` (`python -m bench`) on every full run: do not edit by",
        "     hand, your changes would be lost. A partial run (`python -m bench NAME`) leaves it"
        " alone. -->",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC, {sum(r.seconds for r in runs):.0f} s in all",
        f"- commit: {_git_commit()}",
        f"- machine: {machines[0]} at the start; {machines[1]} at the end",
        f"- Python {sys.version.split()[0]}; broker: {broker}",
        "",
        "Ours and the baseline are measured in the same run; ratio = ours / baseline. Goals on a",
        "p99 (or another noisy latency) are judged over several rounds, as `rounds` and the",
        "notes below say (the median of the rounds' values unless a note says otherwise), so",
        "one noisy round on a shared machine does not fail them.",
        "",
        *table(runs),
        "",
    ]
    failures = [run for run in runs if run.failed]
    lines += ["## Failures and timeouts", ""]
    lines += [f"- {run.name}: {run.where()}" for run in failures] or ["None."]
    lines.append("")
    notes = [line for run in runs for line in note_lines(run)]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += [
        "## Runs",
        "",
        "| benchmark | exit | seconds | bound s | load before (1, 5 min) | load after (1, 5 min) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for run in runs:
        bound = f"{run.bound:g}" + ("" if run.stated else " (default)")
        exit_code = "timeout" if run.timed_out else str(run.code)
        before = f"{run.load_before[0]:.2f}, {run.load_before[1]:.2f}"
        after = f"{run.load_after[0]:.2f}, {run.load_after[1]:.2f}"
        lines.append(
            f"| {run.name} | {exit_code} | {run.seconds:.0f} | {bound} | {before} | {after} |"
        )
    for run in runs:
        if run.timed_out and run.dump:
            lines += ["", f"### Where {run.name} waited", "", "```", run.dump.rstrip(), "```"]
    return "\n".join(lines) + "\n"


async def run_all(scripts: list[Path], *, full: bool) -> int:
    """Run ``scripts`` in turn; write bench/REPORT.md if ``full``, else print the table."""
    started = datetime.datetime.now(datetime.UTC)
    machines = [machine()]
    runs = []
    with production_broker() as url:
        env = dict(os.environ)
        broker = "the one DEPLOYCTL_BENCH_MQTT_URL names" if url is None else ""
        if url is not None:
            env["DEPLOYCTL_BENCH_MQTT_URL"] = url
            broker = f"own Mosquitto with set_tcp_nodelay true ({url})"
            print(f"broker: {broker}", flush=True)
        for script in scripts:
            print(f"== {script.name}", flush=True)
            runs.append(await run_one(script, env))
            if runs[-1].failed:
                print(f"== {script.name}: {runs[-1].where()}", flush=True)
    machines.append(machine())
    if full:
        REPORT.write_text(report(runs, broker=broker, started=started, machines=machines))
        print(f"\nwrote {REPORT.relative_to(ROOT)}")
    else:
        print("\n" + "\n".join(table(runs)))
        print(f"(a partial run: {REPORT.relative_to(ROOT)} left as it was)")
    return 1 if any(run.failed for run in runs) else 0


def main(names: list[str]) -> int:
    """Run every benchmark, or those whose file name contains one of ``names``."""
    scripts = [
        script
        for script in sorted(HERE.glob("bench_*.py"))
        if not names or any(name in script.stem for name in names)
    ]
    if not scripts:
        print(f"no benchmark matches {' '.join(names)}", file=sys.stderr)
        return 2
    return asyncio.run(run_all(scripts, full=not names))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Playbooks: the YAML format, its errors (with lines and fixes), durations and placeholders."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from communicator import DefinitionError, InvalidationPolicy
from controller.analysis._criteria import AnalysisCriteria
from controller.playbook import _playbook
from controller.playbook._fields import format_duration, placeholders_in
from controller.playbook._playbook import (
    Playbook,
    RollbackPolicy,
    dump_playbook,
    load_playbook,
    parse_playbook,
    shipped_playbooks,
)
from controller.playbook._steps import (
    AnalysisStep,
    ExecStep,
    MirrorStep,
    PauseStep,
    SetWeightStep,
)

ROOT = Path(__file__).resolve().parents[2]

FULL = """\
name: checkout-careful
description: |
  Every kind of step, every field.
strategy: canary
sticky: user_id
variables:
  env: production
steps:
  - exec:
      command: ["./deploy.sh", "{service}", "{version}", "--env={env}", "{{literal}}"]
      timeout: 2m
      env: {DEPLOY_WEIGHT: "{weight}", ROLLOUT: "{rollout}"}
  - mirror: {percent: 50, duration: 1h30m, max_inflight: 20, compare: true}
  - set_weight: 10
  - pause: {duration: 250ms}
  - analysis: {window: 90, min_sample: 30, max_latency_ratio: 2}
  - pause: {}
  - set_weight: 100
rollback:
  max_failure_rate: 0.02
  min_failures: 3
  consecutive_crashes: 0
  failure_window: 5m
  max_latency_p99: 800ms
  progress_deadline: 1h
  on_inconclusive: abort
  invalidate_version: false
"""


def minimal(*steps: str, extra: str = "") -> str:
    """A playbook with the given step lines (already YAML) and extra top-level lines."""
    body = "".join(f"  - {step}\n" for step in steps)
    return f"name: test\ndescription: a test\n{extra}steps:\n{body}"


def parse_error(text: str) -> DefinitionError:
    """The error parsing ``text`` raises."""
    with pytest.raises(DefinitionError) as caught:
        parse_playbook(text, "test.yaml")
    return caught.value


# -- shipped playbooks -----------------------------------------------------------------------


def test_shipped_playbooks_are_found() -> None:
    """The three shipped playbooks are found in the source checkout."""
    shipped = shipped_playbooks()
    assert {"canary-standard", "canary-manual", "canary-fast"} <= set(shipped)
    assert all(path.parent == ROOT / "playbooks" for path in shipped.values())


@pytest.mark.parametrize("name", sorted(shipped_playbooks()))
def test_every_shipped_playbook_loads_and_round_trips(name: str) -> None:
    """Each shipped playbook is valid, named after its file, and survives dump and parse."""
    playbook = load_playbook(shipped_playbooks()[name])
    assert playbook.name == name
    assert playbook.description.strip()
    assert parse_playbook(dump_playbook(playbook), "dumped") == playbook
    assert Playbook.model_validate(playbook.model_dump(mode="json")) == playbook


def test_shipped_playbooks_do_what_their_names_say() -> None:
    """Only canary-manual waits for an operator; canary-fast judges in seconds."""
    loaded = {name: load_playbook(path) for name, path in shipped_playbooks().items()}
    manual = [s for s in loaded["canary-manual"].steps if isinstance(s, PauseStep)]
    assert [s.duration for s in manual] == [None]
    for name in ("canary-standard", "canary-fast"):
        assert not any(isinstance(s, PauseStep) for s in loaded[name].steps)
        assert [s.weight for s in loaded[name].steps if isinstance(s, SetWeightStep)][-1] == 100
    fast = loaded["canary-fast"]
    assert all(s.window <= 5 for s in fast.steps if isinstance(s, AnalysisStep))
    assert fast.rollback.max_failure_rate == 0.2
    assert fast.rollback.min_failures == 5


def test_shipped_playbooks_come_from_the_wheel_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed, the playbooks sit in controller/playbooks; that directory wins."""
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "only-here.yaml").write_text(minimal("set_weight: 100"))
    monkeypatch.setattr(_playbook.importlib.resources, "files", lambda _: tmp_path)
    assert shipped_playbooks() == {"only-here": tmp_path / "playbooks" / "only-here.yaml"}


# -- the format ------------------------------------------------------------------------------


def test_every_field_is_read_and_typed() -> None:
    """A playbook using every step and field reads into typed values, durations in seconds."""
    playbook = parse_playbook(FULL, "full.yaml")
    assert playbook.sticky == "user_id"
    assert playbook.variables == {"env": "production"}
    assert [step.kind for step in playbook.steps] == [
        "exec",
        "mirror",
        "set_weight",
        "pause",
        "analysis",
        "pause",
        "set_weight",
    ]
    run, mirror, weight, short, analysis, forever, _ = playbook.steps
    assert isinstance(run, ExecStep)
    assert run.timeout == 120.0
    assert run.env == {"DEPLOY_WEIGHT": "{weight}", "ROLLOUT": "{rollout}"}
    assert mirror == MirrorStep(percent=50, duration=5400.0, max_inflight=20, compare=True)
    assert weight == SetWeightStep(weight=10)
    assert short == PauseStep(duration=0.25)
    assert forever == PauseStep()
    assert isinstance(analysis, AnalysisStep)
    assert analysis.window == 90.0
    assert analysis.criteria == AnalysisCriteria(window=90, min_sample=30, max_latency_ratio=2)
    assert playbook.rollback == RollbackPolicy(
        max_failure_rate=0.02,
        min_failures=3,
        consecutive_crashes=0,
        failure_window=300.0,
        max_latency_p99=0.8,
        progress_deadline=3600.0,
        on_inconclusive="abort",
        invalidate_version=False,
    )


def test_defaults() -> None:
    """Strategy, variables, step fields and the whole rollback policy have defaults."""
    playbook = parse_playbook(minimal("pause: {}", "mirror: {}", "analysis: {}"), "t")
    assert playbook.strategy == "canary"
    assert playbook.sticky is None
    assert playbook.variables == {}
    assert playbook.steps[1] == MirrorStep(percent=100, duration=60, max_inflight=100)
    assert playbook.steps[2] == AnalysisStep(window=60, min_sample=50)
    assert playbook.rollback == RollbackPolicy(
        max_failure_rate=0.1,
        min_failures=5,
        consecutive_crashes=5,
        failure_window=60,
        max_latency_p99=None,
        progress_deadline=600,
        on_inconclusive="pause",
        invalidate_version=True,
    )


def test_exec_renders_placeholders_and_variables() -> None:
    """An exec step's command and environment take the built-ins, the variables, and {{ }}."""
    run = parse_playbook(FULL, "full.yaml").steps[0]
    assert isinstance(run, ExecStep)
    values = {"service": "shop", "version": "1.2", "weight": "10", "rollout": "r1", "env": "prod"}
    assert run.render(values) == ["./deploy.sh", "shop", "1.2", "--env=prod", "{literal}"]
    assert run.render_env(values) == {"DEPLOY_WEIGHT": "10", "ROLLOUT": "r1"}


def test_placeholders_are_plain_names() -> None:
    """``placeholders_in`` finds names and refuses anything else inside braces."""
    assert placeholders_in("{service}-{version}{{x}}") == ["service", "version"]
    for bad in ("{0}", "{}", "{a.b}", "{a!r}", "{a:>3}", "{open", "close}"):
        with pytest.raises(ValueError, match=r"placeholder|brace"):
            placeholders_in(bad)


def test_exec_step_built_in_python_is_checked_by_the_playbook() -> None:
    """Alone an exec step cannot know the variables; the playbook refuses unknown ones."""
    step = ExecStep(command=["run", "{colour}"])
    with pytest.raises(ValidationError, match=r"unknown placeholder \{colour\}"):
        Playbook(name="p", description="d", steps=[step])
    playbook = Playbook(name="p", description="d", variables={"colour": "blue"}, steps=[step])
    assert playbook.steps == [step]


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        (45, 45.0),
        (1.5, 1.5),
        ("2d", 172800.0),
        ("90", 90.0),
    ],
)
def test_durations(written: object, seconds: float) -> None:
    """Durations are written with units or as seconds, and stored as float seconds."""
    step = parse_playbook(minimal(f"pause: {{duration: {written}}}"), "t").steps[0]
    assert step == PauseStep(duration=seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30.0, "30s"),
        (300.0, "5m"),
        (5400.0, "1h30m"),
        (90.0, "1m30s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (7200.0, "2h"),
        (1e-9, 1e-9),
    ],
)
def test_format_duration(seconds: float, text: str | float) -> None:
    """Dumps write durations the way people do, or the number when no text reads back equal."""
    assert format_duration(seconds) == text


def test_rollback_becomes_the_invalidation_policy() -> None:
    """The failure rules map onto the communicator's invalidation policy."""
    policy = RollbackPolicy(
        max_failure_rate=0.2, min_failures=3, consecutive_crashes=4, failure_window=90.5
    )
    assert policy.to_invalidation_policy() == InvalidationPolicy(
        window_seconds=91, bucket_seconds=10, min_failures=3, max_failure_rate=0.2, crash_loop=4
    )
    day = RollbackPolicy(failure_window=86_400).to_invalidation_policy()
    assert (day.window_seconds, day.bucket_seconds) == (86_400, 240)
    short = RollbackPolicy(failure_window=0.5).to_invalidation_policy()
    assert (short.window_seconds, short.bucket_seconds) == (1, 1)


def test_rollback_in_words() -> None:
    """``describe`` says each rule of the policy."""
    lines = parse_playbook(FULL, "full.yaml").rollback.describe()
    assert lines[0] == (
        "roll back when the canary fails more than 2% of requests (after 3 failures) within 5m"
    )
    assert "p99 reply time is above 800ms" in lines[1]
    assert lines[-1] == "on rollback, leave the canary version valid"


# -- errors: the file, the line, the fix -------------------------------------------------------

ERRORS = [
    (
        minimal("setWeight: 20"),
        4,
        "did you mean set_weight? valid steps are analysis, exec, "
        "mirror, pause, set_weight, switch (or run `deployctl playbook import` for Argo manifests)",
    ),
    (minimal("set_weight: 5", "pauze: {}"), 5, "unknown step 'pauze': did you mean pause?"),
    (minimal("setCanaryScale: {weight: 5}"), 4, "setCanaryScale has no deployctl equivalent"),
    (minimal("rollout: 5"), 4, "unknown step 'rollout': valid steps are"),
    (minimal("set_weight: 120"), 4, "steps[0].set_weight: 120 is above 100: write a percentage"),
    (minimal("set_weight: -5"), 4, "-5 is below 0"),
    (minimal("set_weight: 20.5"), 4, "20.5 is not a whole percentage"),
    (minimal("mirror: {percent: 101}"), 4, "steps[0].mirror.percent: 101 is above 100"),
    (
        minimal("pause: {duration: 5 minutes}"),
        4,
        "steps[0].pause.duration: '5 minutes' is not a duration (try 30s, 250ms, 5m, 1h30m)",
    ),
    (minimal("pause: {duration: -3}"), 4, "must be more than zero"),
    (minimal("pause: {duration: true}"), 4, "True is not a duration"),
    (
        minimal("pause:"),
        4,
        "pause takes a mapping: write `- pause: {duration: 30s}`, or "
        "`- pause: {}` to wait until promoted",
    ),
    (minimal("pause"), 4, "write the step as a mapping: `- pause: {duration: 30s}`"),
    (minimal("{set_weight: 5, pause: {}}"), 4, "a step is a mapping with one key, its kind"),
    (
        minimal("pause: {duraton: 30s}"),
        4,
        "steps[0].pause.duraton: unknown field: did you mean duration?",
    ),
    (minimal("pause: {kind: analysis}"), 4, "pause has no field 'kind'"),
    (
        minimal("exec: {command: [run, '{service}', '{colour}']}"),
        4,
        "steps[0].exec.command[2]: unknown placeholder {colour}: known ones are {rollout}, "
        "{service}, {stable}, {version}, {weight} (add others under variables)",
    ),
    (
        minimal("exec:", extra="variables: {env: x}\n") + "      command:\n        - run\n"
        "        - '{envv}'\n",
        8,
        "known ones are {env}, {rollout}",
    ),
    (minimal("exec: {command: [run], env: {A: '{nope}'}}"), 4, "steps[0].exec.env.A: unknown"),
    (minimal("exec: {command: [run], env: {1A: x}}"), 4, "environment variable '1A' must match"),
    (minimal("exec: {command: ['{weight:>3}']}"), 4, "write a placeholder as a plain {name}"),
    (minimal("exec: {command: ['{oops']}"), 4, "unbalanced brace"),
    (minimal("exec: {command: []}"), 4, "command: List should have at least 1 item"),
    (minimal("exec: {command: [' ', x]}"), 4, "the command's first item (the program) is empty"),
    (
        minimal("set_weight: 5", extra="variables: {service: x}\n"),
        3,
        "variables.service: variable 'service' is a built-in placeholder",
    ),
    (minimal("set_weight: 5", extra="sticky: user-id\n"), 3, "sticky 'user-id' must be a message"),
    (
        minimal("set_weight: 5", extra="strategy: shadow\n"),
        3,
        "strategy: 'shadow' is not a strategy: write canary, bluegreen or flag",
    ),
    (
        minimal("set_weight: 5", extra="strategy: bluegreen\n"),
        1,
        "step 1 (set_weight) cannot be used with strategy bluegreen",
    ),
    (
        minimal("pause: {}", extra="strategy: bluegreen\n"),
        1,
        "a bluegreen playbook has exactly one `- switch: {}` step (found 0)",
    ),
    (
        minimal("set_weight: 5", extra="scale_down_delay: 5s\n"),
        1,
        "scale_down_delay: only for strategy bluegreen; remove it",
    ),
    (
        minimal("set_weight: 5", extra="setps: []\n"),
        3,
        "setps: unknown field: did you mean steps? valid fields are name, description",
    ),
    (
        minimal("set_weight: 5", extra="rollback:\n  failure_window: 2d\n"),
        4,
        "rollback.failure_window: failure_window is at most 24h",
    ),
    (
        minimal("set_weight: 5", extra="rollback:\n  on_inconclusive: wait\n"),
        4,
        "rollback.on_inconclusive: Input should be 'pause', 'abort' or 'continue'",
    ),
    (
        minimal("set_weight: 5", extra="rollback:\n\n  min_failure: 3\n"),
        5,
        "rollback.min_failure: unknown field: did you mean min_failures?",
    ),
    ("name: test\ndescription: x\nsteps: []\n", 3, "a playbook needs at least one step"),
    ("name: test\nsteps: [{set_weight: 5}]\n", 1, "description: required: add `description:`"),
    (
        "name: my playbook\ndescription: x\nsteps: [{set_weight: 5}]\n",
        1,
        "name 'my playbook' must match",
    ),
    ("- set_weight: 5\n", 1, "a playbook is a mapping with name, description, steps"),
    ("apiVersion: argoproj.io/v1alpha1\nkind: Rollout\n", 1, "deployctl playbook import"),
    ("name: test\n  description: [\n", 2, "invalid YAML"),
]


@pytest.mark.parametrize(("text", "line", "fix"), ERRORS)
def test_errors_name_the_line_and_the_fix(text: str, line: int, fix: str) -> None:
    """Each mistake is reported at its line, with what to write instead."""
    error = parse_error(text)
    assert (error.path, error.line) == ("test.yaml", line)
    assert str(error).startswith(f"test.yaml:{line}: ")
    assert fix in str(error)


def test_every_problem_is_reported_on_its_own_line() -> None:
    """Several mistakes: one ``file:line:`` line each, in the order of the file."""
    text = minimal("set_weight: 500", "pause: {duration: soon}", extra="strategy: x\n")
    lines = str(parse_error(text)).splitlines()
    assert [line.split(": ")[0] for line in lines] == ["test.yaml:3", "test.yaml:5", "test.yaml:6"]


def test_an_empty_file_says_where_to_start() -> None:
    """An empty playbook points at a shipped one to copy."""
    assert "deployctl playbook show canary-standard" in str(parse_error("# nothing\n"))


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file is a DefinitionError naming it."""
    with pytest.raises(DefinitionError, match="cannot read the playbook") as caught:
        load_playbook(tmp_path / "missing.yaml")
    assert caught.value.path == str(tmp_path / "missing.yaml")


def test_dump_reads_like_a_hand_written_playbook() -> None:
    """Steps as one-key items, small bodies on one line, durations with units."""
    lines = dump_playbook(parse_playbook(FULL, "full.yaml")).splitlines()
    assert lines[:3] == [
        "name: checkout-careful",
        "description: |",
        "  Every kind of step, every field.",
    ]
    expected = [
        "  - set_weight: 10",
        "  - pause: {duration: 250ms}",
        "  - pause: {}",
        "      timeout: 2m",
        "  max_latency_p99: 800ms",
        "  progress_deadline: 1h",
    ]
    assert set(expected) <= set(lines)


def test_min_reporters_reaches_the_communicators_policy() -> None:
    policy = RollbackPolicy(min_reporters=2)
    assert policy.to_invalidation_policy().min_reporters == 2
    assert "only on failures reported by 2 clients or more" in policy.describe()
    assert RollbackPolicy().to_invalidation_policy().min_reporters == 1

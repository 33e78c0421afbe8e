"""``import_argo``: Argo Rollouts canary manifests become playbooks, with what was skipped said."""

from __future__ import annotations

from pathlib import Path

import pytest

from communicator import DefinitionError
from controller.playbook._argo import import_argo
from controller.playbook._playbook import dump_playbook, parse_playbook
from controller.playbook._steps import AnalysisStep, MirrorStep, PauseStep, SetWeightStep

DATA = Path(__file__).parent / "data"


def rollout(steps: str, *, spec: str = "", strategy: str = "canary") -> str:
    """A small Rollout manifest with the given steps (YAML lines under ``steps:``)."""
    indented = "".join(f"        {line}\n" for line in steps.splitlines())
    return (
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\n"
        f"spec:\n{spec}  strategy:\n    {strategy}:\n      steps:\n{indented}"
    )


def import_error(text: str) -> DefinitionError:
    """The error importing ``text`` raises."""
    with pytest.raises(DefinitionError) as caught:
        import_argo(text, "rollout.yaml")
    return caught.value


def test_realistic_manifest() -> None:
    """The Argo docs' canary (analysis, scaling, header and mirror routes) converts step by step."""
    playbook, warnings = import_argo((DATA / "argo-rollout.yaml").read_text(), "argo.yaml")
    assert playbook.name == "rollouts-demo"
    assert playbook.strategy == "canary"
    assert playbook.steps == [
        SetWeightStep(weight=20),
        PauseStep(),
        SetWeightStep(weight=40),
        PauseStep(duration=600),
        AnalysisStep(),
        SetWeightStep(weight=60),
        PauseStep(duration=10),
        MirrorStep(percent=35),
        PauseStep(duration=30),
        SetWeightStep(weight=80),
        PauseStep(duration=3600),
    ]
    assert playbook.rollback.progress_deadline == 900
    assert "Argo step 5: analysis templates success-rate, latency-p99." in playbook.description
    assert warnings == [
        "Argo step 5 (line 63): analysis templates (success-rate, latency-p99) replaced by "
        "deployctl's analysis with default criteria (window 60s, min_sample 50): tune the step",
        "Argo step 8 (line 73): setCanaryScale skipped: deployctl routes traffic by weight and "
        "does not scale instances; start canary instances with your deploy tool (an exec step "
        "can call it)",
        "Argo step 9 (line 75): setHeaderRoute skipped: header routes have no equivalent; a "
        "sticky parameter keeps one user on one version",
        "Argo step 10 (line 81): mirrors for 60s (a mirror step's duration), where Argo mirrors "
        "until the route is removed: set duration",
        "Argo step 12 (line 90): mirror route removal skipped: a mirror step ends by itself",
        "background analysis (error-budget) not imported: the rollback policy watches failures "
        "all along; add analysis steps where you want a verdict",
        "rollback policy: deployctl defaults (max_failure_rate 0.1, min_failures 5, "
        "consecutive_crashes 5 in 60s): review it",
    ]


def test_imported_playbook_round_trips() -> None:
    """What import produces dumps to YAML that parses back to the same playbook."""
    playbook, _ = import_argo((DATA / "argo-rollout.yaml").read_text(), "argo.yaml")
    assert parse_playbook(dump_playbook(playbook), "dumped") == playbook


def test_multi_document_manifest_picks_the_rollout() -> None:
    """A Service before the Rollout is passed over."""
    playbook, warnings = import_argo((DATA / "argo-multi.yaml").read_text(), "multi.yaml")
    assert playbook.name == "canary-demo"
    assert [step.kind for step in playbook.steps] == ["set_weight", "pause"] * 4
    assert playbook.steps[3] == PauseStep(duration=60)
    assert playbook.rollback.progress_deadline == 600  # Argo's default too
    assert len(warnings) == 1  # only the rollback policy to review


@pytest.mark.parametrize(
    ("argo", "seconds"),
    [("10", 10.0), ("'30s'", 30.0), ("10m", 600.0), ("1h", 3600.0), ("'45'", 45.0), ("1.5", 1.5)],
)
def test_pause_durations(argo: str, seconds: float) -> None:
    """Argo pause durations: a number of seconds, or text with an s, m or h suffix."""
    playbook, _ = import_argo(rollout(f"- pause: {{duration: {argo}}}"), "r")
    assert playbook.steps == [PauseStep(duration=seconds)]


def test_zero_pause_and_unknown_steps_are_skipped_with_warnings() -> None:
    """A 0s pause, an experiment and a plugin step are dropped, each with a warning."""
    steps = "- setWeight: 10\n- pause: {duration: 0}\n- experiment: {}\n- plugin: {name: x}\n"
    playbook, warnings = import_argo(rollout(steps), "r")
    assert playbook.steps == [SetWeightStep(weight=10)]
    assert [w.split(":")[0] for w in warnings[:3]] == [
        "Argo step 2 (line 10)",
        "Argo step 3 (line 11)",
        "Argo step 4 (line 12)",
    ]
    assert "experiment skipped" in warnings[1]
    assert "plugin skipped" in warnings[2]


def test_no_steps_goes_straight_to_full_weight() -> None:
    """A canary without steps (Argo promotes at once) becomes one set_weight 100."""
    text = rollout("").replace("      steps:\n", "      maxSurge: 1\n")
    playbook, warnings = import_argo(text, "r")
    assert playbook.steps == [SetWeightStep(weight=100)]
    assert "goes straight to 100%" in warnings[0]


def test_mirror_without_percentage_mirrors_everything() -> None:
    """setMirrorRoute with a match and no percentage mirrors all matching traffic."""
    steps = "- setMirrorRoute:\n    name: m\n    match:\n      - method: {exact: GET}\n"
    playbook, _ = import_argo(rollout(steps), "r")
    assert playbook.steps == [MirrorStep(percent=100)]


ERRORS = [
    ("", None, "no Argo Rollout here (no `kind:` in any document)"),
    (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\nkind: Service\n",
        None,
        "no Argo Rollout here (found Deployment web, Service): import reads a `kind: Rollout`",
    ),
    ("apiVersion: example.com/v1\nkind: Rollout\n", None, "no Argo Rollout here"),
    (
        rollout("- setWeight: 10", strategy="blueGreen"),
        8,
        "Rollout web uses the blue-green strategy, which import does not support yet",
    ),
    (
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n"
        "  strategy: {}\n",
        5,
        "Rollout web has no spec.strategy.canary",
    ),
    (rollout("- setWeight: 150"), 9, "Argo step 1: 150 is above 100"),
    (
        rollout("- setWeight: 10\n- pause: {duration: ten minutes}"),
        10,
        "Argo step 2 (line 10): pause: 'ten minutes' is not a duration",
    ),
    (rollout("- {setWeight: 10, pause: {}}"), 9, "an Argo step is a mapping with one key"),
    (
        rollout("- setWeight: 10", spec="  progressDeadlineSeconds: -1\n"),
        6,
        "progressDeadlineSeconds: duration -1 must be more than zero",
    ),
    (rollout("- setWeight: 10").replace("name: web", "name: ''"), 4, "metadata.name: name ''"),
    ("kind: Rollout\n  apiVersion: [", 2, "invalid YAML"),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_errors(text: str, line: int | None, message: str) -> None:
    """What cannot be imported is a DefinitionError with the line and what to do."""
    error = import_error(text)
    assert (error.path, error.line) == ("rollout.yaml", line)
    assert message in str(error)

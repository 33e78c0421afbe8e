"""``import_argo``: Argo Rollouts manifests (canary, blue-green) become playbooks, with what was
skipped said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from communicator import DefinitionError
from controller.playbook._argo import import_argo
from controller.playbook._playbook import dump_playbook, parse_playbook
from controller.playbook._steps import (
    AnalysisStep,
    MirrorStep,
    PauseStep,
    SetWeightStep,
    SwitchStep,
)

DATA = Path(__file__).parent / "data"


def rollout(steps: str, *, spec: str = "", strategy: str = "canary") -> str:
    """A small Rollout manifest with the given steps (YAML lines under ``steps:``)."""
    indented = "".join(f"        {line}\n" for line in steps.splitlines())
    return (
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\n"
        f"spec:\n{spec}  strategy:\n    {strategy}:\n      steps:\n{indented}"
    )


def bluegreen(fields: str, *, spec: str = "") -> str:
    """A small blue-green Rollout with the given fields (YAML lines under ``blueGreen:``)."""
    indented = "".join(f"      {line}\n" for line in fields.splitlines())
    body = f"    blueGreen:\n{indented}" if indented else "    blueGreen: {}\n"
    return (
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\n"
        f"spec:\n{spec}  strategy:\n{body}"
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
        rollout("- setWeight: 10").replace("  strategy:\n", "  strategy:\n    blueGreen: {}\n"),
        7,
        "Rollout web has both spec.strategy.canary and blueGreen: Argo runs one strategy",
    ),
    (bluegreen("").replace(" {}", " [web]"), 7, "spec.strategy.blueGreen: a mapping, like"),
    (bluegreen("").replace(" {}", ""), 7, "spec.strategy.blueGreen: a mapping, like"),
    (
        bluegreen("activeService: web\nautoPromotionEnabled: 'no'"),
        9,
        "blueGreen.autoPromotionEnabled (line 9): 'no' is not true or false",
    ),
    (
        bluegreen("autoPromotionSeconds: soon"),
        8,
        "blueGreen.autoPromotionSeconds (line 8): 'soon' is not a duration",
    ),
    (
        bluegreen("activeService: web\nscaleDownDelaySeconds: -5"),
        9,
        "scaleDownDelaySeconds: duration -5 must be more than zero",
    ),
    (
        bluegreen("activeService: web", spec="  progressDeadlineSeconds: 0\n"),
        6,
        "progressDeadlineSeconds: duration 0 must be more than zero",
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


# -- blue-green ------------------------------------------------------------------------------

ROLLBACK_REVIEW = (
    "rollback policy: deployctl defaults (max_failure_rate 0.1, min_failures 5, "
    "consecutive_crashes 5 in 60s): review it"
)
SCALE_DOWN = (
    "scale_down not set: when scale_down_delay ends the old color is retired from routing, "
    "where Argo scales its ReplicaSet down: add a scale_down exec step to stop its instances"
)
NO_SCALING = "deployctl routes traffic and does not scale or place instances: your deploy tool does"
NO_LABELS = "deployctl labels no pods: routing follows the rollout's colors"


def services(line: int, active: str, preview: str) -> str:
    """The warning that the Services have nothing to map."""
    return (
        f"blueGreen.activeService (line {line}): activeService {active}, previewService "
        f"{preview}: nothing to map: deployctl routes by color (the preview color takes only "
        "messages with preview=yes, the active one the rest)"
    )


def analysis_replaced(where: str, names: str) -> str:
    """The warning that Argo's analysis templates became deployctl's default analysis."""
    return (
        f"{where}: analysis templates ({names}) replaced by deployctl's analysis with default "
        "criteria (window 60s, min_sample 50): tune the step"
    )


def test_realistic_bluegreen_manifest() -> None:
    """The Argo docs' blue-green: preview analysis, a manual gate, the switch, a post analysis."""
    path = DATA / "argo-bluegreen.yaml"
    playbook, warnings = import_argo(path.read_text(), "bg.yaml")
    assert parse_playbook(dump_playbook(playbook), "dumped") == playbook
    assert (playbook.name, playbook.strategy) == ("rollout-bluegreen", "bluegreen")
    assert playbook.steps == [AnalysisStep(), PauseStep(), SwitchStep(), AnalysisStep()]
    assert playbook.scale_down_delay == 600
    assert playbook.scale_down is None
    assert playbook.rollback.progress_deadline == 1200
    assert playbook.description.splitlines()[1:] == [
        "Argo services: activeService rollout-bluegreen-active, previewService "
        "rollout-bluegreen-preview.",
        "blueGreen.prePromotionAnalysis: analysis templates smoke-tests.",
        "blueGreen.postPromotionAnalysis: analysis templates success-rate.",
    ]
    assert warnings == [
        services(31, "rollout-bluegreen-active", "rollout-bluegreen-preview"),
        analysis_replaced("blueGreen.prePromotionAnalysis (line 37)", "smoke-tests"),
        "blueGreen.prePromotionAnalysis (line 37): before the switch only messages with "
        "preview=yes reach the new version: send some for the analysis to judge, or run your "
        "smoke tests in an exec step",
        analysis_replaced("blueGreen.postPromotionAnalysis (line 43)", "success-rate"),
        "blueGreen.scaleDownDelaySeconds (line 49): scale_down_delay counts from the end of the "
        "post-promotion analysis, where Argo counts from the switch (and cancels the analysis "
        "when the delay ends)",
        SCALE_DOWN,
        ROLLBACK_REVIEW,
    ]


def test_bluegreen_auto_promotion() -> None:
    """autoPromotionSeconds is a timed pause; what deployctl cannot do is each a warning."""
    path = DATA / "argo-bluegreen-auto.yaml"
    playbook, warnings = import_argo(path.read_text(), "auto.yaml")
    assert parse_playbook(dump_playbook(playbook), "dumped") == playbook
    assert (playbook.name, playbook.strategy) == ("vote", "bluegreen")
    assert playbook.steps == [PauseStep(duration=30), SwitchStep()]
    assert playbook.scale_down_delay == 120
    assert playbook.rollback.progress_deadline == 600  # Argo's default too
    assert warnings == [
        services(16, "vote", "vote-preview"),
        f"blueGreen.previewReplicaCount (line 20): not imported: {NO_SCALING} (start the "
        "preview color at the size you want)",
        "blueGreen.scaleDownDelayRevisionLimit (line 22): not imported: a rollout keeps one old "
        "color, retired when scale_down_delay ends",
        "blueGreen.abortScaleDownDelaySeconds (line 23): not imported: on abort deployctl "
        "switches back at once; stopping the new color's instances is your deploy tool's job",
        f"blueGreen.previewMetadata (line 24): not imported: {NO_LABELS}",
        f"blueGreen.activeMetadata (line 27): not imported: {NO_LABELS}",
        f"blueGreen.antiAffinity (line 30): not imported: {NO_SCALING}",
        SCALE_DOWN,
        ROLLBACK_REVIEW,
    ]


def test_bare_bluegreen_is_one_switch() -> None:
    """Without analyses or a pause, Argo promotes as soon as the new stack is ready: a switch."""
    playbook, warnings = import_argo(bluegreen("activeService: web-active"), "r")
    assert playbook.steps == [SwitchStep()]
    assert playbook.scale_down_delay == 30  # Argo's default too
    assert "scale_down_delay" not in playbook.model_fields_set
    assert warnings == [
        "blueGreen.activeService (line 8): activeService web-active: nothing to map: deployctl "
        "routes by color (the preview color takes only messages with preview=yes, the active "
        "one the rest)",
        SCALE_DOWN,
        ROLLBACK_REVIEW,
    ]
    assert import_argo(bluegreen(""), "r")[0].steps == [SwitchStep()]


def test_manual_promotion_ignores_auto_promotion_seconds() -> None:
    """As in Argo, autoPromotionEnabled false waits until promoted, whatever the seconds say."""
    fields = "activeService: web\nautoPromotionEnabled: false\nautoPromotionSeconds: 60"
    playbook, warnings = import_argo(bluegreen(fields), "r")
    assert playbook.steps == [PauseStep(), SwitchStep()]
    assert warnings[1] == (
        "blueGreen.autoPromotionSeconds (line 10): ignored, as Argo does when "
        "autoPromotionEnabled is false: the rollout waits until promoted"
    )
    assert len(warnings) == 4


@pytest.mark.parametrize(
    ("fields", "steps"),
    [
        ("autoPromotionEnabled: true", [SwitchStep()]),
        ("autoPromotionSeconds: 90", [PauseStep(duration=90), SwitchStep()]),
        (
            "autoPromotionEnabled: true\nautoPromotionSeconds: 5m",
            [PauseStep(duration=300), SwitchStep()],
        ),
        ("prePromotionAnalysis: {}", [AnalysisStep(), SwitchStep()]),
        ("postPromotionAnalysis: {templates: []}", [SwitchStep(), AnalysisStep()]),
    ],
)
def test_bluegreen_promotion_fields(fields: str, steps: list[Any]) -> None:
    """Each mapped field gives its step, in Argo's order around the switch."""
    playbook, _ = import_argo(bluegreen(fields), "r")
    assert playbook.steps == steps


def test_zero_seconds_are_warned_about() -> None:
    """autoPromotionSeconds 0 is no pause; scaleDownDelaySeconds 0 keeps the 30s default."""
    fields = "autoPromotionSeconds: 0\nscaleDownDelaySeconds: 0"
    playbook, warnings = import_argo(bluegreen(fields), "r")
    assert playbook.steps == [SwitchStep()]
    assert playbook.scale_down_delay == 30
    assert warnings[:2] == [
        "blueGreen.autoPromotionSeconds (line 8): pause of 0s skipped",
        "blueGreen.scaleDownDelaySeconds (line 9): 0 (scale down at once) not imported: the old "
        "color stays registered a while for an instant rollback: kept 30s (Argo's default)",
    ]


def test_unknown_bluegreen_fields_are_warned_about() -> None:
    """maxUnavailable and a field Argo may add later are listed, never dropped silently."""
    fields = "activeService: web\nmaxUnavailable: 1\nfancyNewField: {a: 1}"
    _, warnings = import_argo(bluegreen(fields), "r")
    assert warnings[1:3] == [
        f"blueGreen.maxUnavailable (line 9): not imported: {NO_SCALING}",
        "blueGreen.fancyNewField (line 10): not imported: not a blueGreen field deployctl knows",
    ]


_ANALYSIS = st.just({"templates": [{"templateName": "success-rate"}]})
_SKIPPED_KEYS = (
    "previewReplicaCount",
    "scaleDownDelayRevisionLimit",
    "abortScaleDownDelaySeconds",
    "activeMetadata",
    "previewMetadata",
    "antiAffinity",
    "maxUnavailable",
    "someFutureField",
)
_BLUEGREEN_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "activeService": st.just("web-active"),
        "previewService": st.just("web-preview"),
        "prePromotionAnalysis": _ANALYSIS,
        "postPromotionAnalysis": _ANALYSIS,
        "autoPromotionEnabled": st.booleans(),
        "autoPromotionSeconds": st.integers(0, 86_400),
        "scaleDownDelaySeconds": st.integers(0, 86_400),
        **{key: st.integers(0, 5) for key in _SKIPPED_KEYS},
    },
)


@given(fields=_BLUEGREEN_FIELDS, deadline=st.none() | st.integers(1, 86_400))
def test_any_bluegreen_imports_into_a_valid_playbook(
    fields: dict[str, Any], deadline: int | None
) -> None:
    """Any mix of blueGreen fields: a valid playbook, one switch, Argo's order, no silent drop."""
    spec: dict[str, Any] = {"strategy": {"blueGreen": fields}}
    if deadline is not None:
        spec["progressDeadlineSeconds"] = deadline
    manifest = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout"}
    text = yaml.safe_dump({**manifest, "metadata": {"name": "web"}, "spec": spec})
    playbook, warnings = import_argo(text, "r")
    assert parse_playbook(dump_playbook(playbook), "dumped") == playbook
    kinds = [step.kind for step in playbook.steps]
    manual = fields.get("autoPromotionEnabled") is False
    timed = not manual and fields.get("autoPromotionSeconds", 0) > 0
    assert kinds == [
        *(["analysis"] if "prePromotionAnalysis" in fields else []),
        *(["pause"] if manual or timed else []),
        "switch",
        *(["analysis"] if "postPromotionAnalysis" in fields else []),
    ]
    assert playbook.scale_down_delay == (fields.get("scaleDownDelaySeconds") or 30)
    assert playbook.rollback.progress_deadline == (deadline or 600)
    for key in set(_SKIPPED_KEYS) & set(fields):
        assert sum(w.startswith(f"blueGreen.{key} (line ") for w in warnings) == 1
    assert warnings[-1] == ROLLBACK_REVIEW

"""Import an Argo Rollouts ``Rollout`` manifest as a playbook.

Argo's canary steps map onto ours (``setWeight`` -> ``set_weight``, ``pause``,
``analysis``, ``setMirrorRoute`` -> ``mirror``). A ``blueGreen`` strategy
becomes a ``bluegreen`` playbook in Argo's order of events: the pre-promotion
analysis, the pause before promotion, the switch, the post-promotion analysis,
then ``scale_down_delay``. What has no equivalent here (Kubernetes scaling,
services, header routes, experiments) is skipped, and every such choice is
returned as a warning, so nothing is lost silently.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from communicator import DefinitionError, parse_duration
from communicator.wire import line_of
from controller.playbook._playbook import Playbook, RollbackPolicy

_STEPS = ("spec", "strategy", "canary", "steps")
_SKIPPED = {
    "setCanaryScale": "deployctl routes traffic by weight and does not scale instances; "
    "start canary instances with your deploy tool (an exec step can call it)",
    "setHeaderRoute": "header routes have no equivalent; a sticky parameter keeps one user "
    "on one version",
    "experiment": "experiments have no equivalent; add an analysis step to judge the canary",
    "plugin": "step plugins have no equivalent; an exec step can call your own tool",
}
_BLUEGREEN = ("spec", "strategy", "blueGreen")
_BLUEGREEN_MAPPED = frozenset(
    {
        "activeService",
        "previewService",
        "prePromotionAnalysis",
        "autoPromotionEnabled",
        "autoPromotionSeconds",
        "postPromotionAnalysis",
        "scaleDownDelaySeconds",
    }
)
_NO_SCALING = (
    "deployctl routes traffic and does not scale or place instances: your deploy tool does"
)
_NO_LABELS = "deployctl labels no pods: routing follows the rollout's colors"
_BLUEGREEN_SKIPPED = {
    "previewReplicaCount": _NO_SCALING + " (start the preview color at the size you want)",
    "scaleDownDelayRevisionLimit": "a rollout keeps one old color, retired when "
    "scale_down_delay ends",
    "abortScaleDownDelaySeconds": "on abort deployctl switches back at once; stopping the new "
    "color's instances is your deploy tool's job",
    "activeMetadata": _NO_LABELS,
    "previewMetadata": _NO_LABELS,
    "antiAffinity": _NO_SCALING,
    "maxUnavailable": _NO_SCALING,
}
#: Where one of our steps came from in the manifest, and what to call it in errors.
_Origin = tuple[tuple[str | int, ...], str]


def _argo_duration(value: object) -> float:
    """An Argo duration: a number of seconds, or text with an s, m or h suffix."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return parse_duration(value.strip())
    raise ValueError(f"{value!r} is not a duration (Argo writes 30s, 10m, 1h or seconds)")


def _get(data: Any, *path: str) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _find_rollout(text: str, source: str) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        documents = list(yaml.safe_load_all(text))
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise DefinitionError(f"invalid YAML: {exc.problem}", path=source, line=line) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"invalid YAML: {exc}", path=source) from None
    found = []
    for document, node in zip(documents, nodes, strict=True):
        if not isinstance(document, dict):
            continue
        kind, api = document.get("kind"), str(document.get("apiVersion", ""))
        if kind == "Rollout" and api.startswith("argoproj.io/"):
            return document, node
        if kind:
            found.append(f"{kind} {_get(document, 'metadata', 'name') or ''}".strip())
    seen = f" (found {', '.join(found)})" if found else " (no `kind:` in any document)"
    raise DefinitionError(
        f"no Argo Rollout here{seen}: import reads a `kind: Rollout` with "
        "`apiVersion: argoproj.io/v1alpha1`",
        path=source,
    )


def import_argo(manifest_text: str, source: str = "<manifest>") -> tuple[Playbook, list[str]]:
    """Convert the canary steps or the blue-green strategy of an Argo ``Rollout`` into a playbook.

    The manifest may hold several YAML documents (a Service, then the Rollout):
    the first Rollout is read.

    Args:
        manifest_text: The manifest, as YAML.
        source: What to call the manifest in errors (its file name).

    Returns:
        The playbook, and a warning for each thing that was skipped or needs a look.

    Raises:
        DefinitionError: There is no Rollout, it has neither a canary nor a blueGreen
            strategy (or both), or a step or field cannot be read.
    """
    rollout, node = _find_rollout(manifest_text, source)
    name = _get(rollout, "metadata", "name")
    strategy = _get(rollout, "spec", "strategy")
    strategy = strategy if isinstance(strategy, dict) else {}
    warnings: list[str] = []
    notes: list[str] = []
    fields: dict[str, Any] = {}
    if "blueGreen" in strategy:
        if "canary" in strategy:
            raise DefinitionError(
                f"Rollout {name} has both spec.strategy.canary and blueGreen: Argo runs one "
                "strategy; keep the one you use",
                path=source,
                line=line_of(node, ("spec", "strategy")),
            )
        kind = "bluegreen"
        steps, origins = _bluegreen(rollout, node, source, fields, warnings, notes)
    elif isinstance(strategy.get("canary"), dict):
        kind = "canary"
        steps, origins = _canary(rollout, node, source, warnings, notes)
    else:
        raise DefinitionError(
            f"Rollout {name} has no spec.strategy.canary or blueGreen: import converts those",
            path=source,
            line=line_of(node, ("spec", "strategy")),
        )
    warnings.append(
        "rollback policy: deployctl defaults (max_failure_rate 0.1, min_failures 5, "
        "consecutive_crashes 5 in 60s): review it"
    )
    rollback: dict[str, Any] = {}
    deadline = _get(rollout, "spec", "progressDeadlineSeconds")
    if deadline is not None:
        rollback["progress_deadline"] = deadline
    description = f"Imported from Argo Rollout {name} by `deployctl playbook import`."
    if notes:
        description += "\n" + "\n".join(notes)
    data = {"name": name, "description": description, "strategy": kind, "steps": steps, **fields}
    try:
        return Playbook.model_validate({**data, "rollback": RollbackPolicy(**rollback)}), warnings
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        at: tuple[str | int, ...]
        if loc[:1] == ("steps",) and len(loc) > 1 and isinstance(loc[1], int):
            at, what = origins[loc[1]]
        elif loc[:1] == ("name",):
            at, what = ("metadata", "name"), "metadata.name: "
        elif loc[:1] == ("scale_down_delay",):
            at, what = (*_BLUEGREEN, "scaleDownDelaySeconds"), "scaleDownDelaySeconds: "
        else:
            at, what = ("spec", "progressDeadlineSeconds"), "progressDeadlineSeconds: "
        raise DefinitionError(what + error["msg"], path=source, line=line_of(node, at)) from None


def _canary(
    rollout: dict[str, Any],
    node: yaml.Node | None,
    source: str,
    warnings: list[str],
    notes: list[str],
) -> tuple[list[dict[str, Any]], list[_Origin]]:
    """Our steps for Argo's canary steps, each with the Argo step it came from."""
    steps: list[dict[str, Any]] = []
    origins: list[_Origin] = []
    for index, argo_step in enumerate(_get(rollout, *_STEPS) or []):
        where = f"Argo step {index + 1} (line {line_of(node, (*_STEPS, index))})"
        if not isinstance(argo_step, dict) or len(argo_step) != 1:
            raise DefinitionError(
                f"{where}: an Argo step is a mapping with one key, like `- setWeight: 20`",
                path=source,
                line=line_of(node, (*_STEPS, index)),
            )
        ((key, body),) = argo_step.items()
        try:
            step = _convert(key, body, where, warnings, notes)
        except ValueError as exc:
            raise DefinitionError(
                f"{where}: {key}: {exc}", path=source, line=line_of(node, (*_STEPS, index))
            ) from None
        if step is not None:
            steps.append(step)
            origins.append(((*_STEPS, index), f"Argo step {index + 1}: "))
    if not steps:
        warnings.append("no steps to convert (Argo goes straight to 100%): added set_weight 100")
        steps.append({"set_weight": 100})
        origins.append((_STEPS, "steps: "))
    background = _get(rollout, "spec", "strategy", "canary", "analysis", "templates")
    if background:
        warnings.append(
            f"background analysis ({_template_names(background)}) not imported: the rollback "
            "policy watches failures all along; add analysis steps where you want a verdict"
        )
    return steps, origins


def _bluegreen(
    rollout: dict[str, Any],
    node: yaml.Node | None,
    source: str,
    fields: dict[str, Any],
    warnings: list[str],
    notes: list[str],
) -> tuple[list[dict[str, Any]], list[_Origin]]:
    """Our steps for a blueGreen strategy, in Argo's order of events; its delay into ``fields``.

    Preview analysis, the pause before promotion, the switch, the post-promotion
    analysis; ``scaleDownDelaySeconds`` becomes ``scale_down_delay``.
    """
    spec = _get(rollout, *_BLUEGREEN)
    if not isinstance(spec, dict):
        raise DefinitionError(
            "spec.strategy.blueGreen: a mapping, like `blueGreen: {activeService: web}`",
            path=source,
            line=line_of(node, _BLUEGREEN),
        )
    steps: list[dict[str, Any]] = []
    origins: list[_Origin] = []

    def where(key: str) -> str:
        return f"blueGreen.{key} (line {_key_line(node, (*_BLUEGREEN, key))})"

    def add(step: dict[str, Any] | None, key: str) -> None:
        if step is not None:
            steps.append(step)
            origins.append(((*_BLUEGREEN, key), f"blueGreen.{key}: "))

    def unreadable(key: str, reason: object) -> DefinitionError:
        line = _key_line(node, (*_BLUEGREEN, key))
        return DefinitionError(f"{where(key)}: {reason}", path=source, line=line)

    services = [f"{key} {spec[key]}" for key in ("activeService", "previewService") if key in spec]
    if services:
        first = "activeService" if "activeService" in spec else "previewService"
        warnings.append(
            f"{where(first)}: {', '.join(services)}: nothing to map: deployctl routes by color "
            "(the preview color takes only messages with preview=yes, the active one the rest)"
        )
        notes.append(f"Argo services: {', '.join(services)}.")
    if "prePromotionAnalysis" in spec:
        pre = where("prePromotionAnalysis")
        add(
            _convert("analysis", spec["prePromotionAnalysis"], pre, warnings, notes),
            "prePromotionAnalysis",
        )
        warnings.append(
            f"{pre}: before the switch only messages with preview=yes reach the new version: "
            "send some for the analysis to judge, or run your smoke tests in an exec step"
        )
    auto, seconds = spec.get("autoPromotionEnabled"), spec.get("autoPromotionSeconds")
    if auto is not None and not isinstance(auto, bool):
        raise unreadable("autoPromotionEnabled", f"{auto!r} is not true or false")
    if auto is False:
        add({"pause": {}}, "autoPromotionEnabled")
        if seconds is not None:
            warnings.append(
                f"{where('autoPromotionSeconds')}: ignored, as Argo does when "
                "autoPromotionEnabled is false: the rollout waits until promoted"
            )
    elif seconds is not None:
        try:
            add(
                _convert(
                    "pause", {"duration": seconds}, where("autoPromotionSeconds"), warnings, notes
                ),
                "autoPromotionSeconds",
            )
        except ValueError as exc:
            raise unreadable("autoPromotionSeconds", exc) from None
    add({"switch": {}}, "activeService")
    if "postPromotionAnalysis" in spec:
        post = where("postPromotionAnalysis")
        add(
            _convert("analysis", spec["postPromotionAnalysis"], post, warnings, notes),
            "postPromotionAnalysis",
        )
    delay = spec.get("scaleDownDelaySeconds")
    if delay is not None and delay == 0 and not isinstance(delay, bool):
        warnings.append(
            f"{where('scaleDownDelaySeconds')}: 0 (scale down at once) not imported: the old "
            "color stays registered a while for an instant rollback: kept 30s (Argo's default)"
        )
    elif delay is not None:
        fields["scale_down_delay"] = delay
        if "postPromotionAnalysis" in spec:
            warnings.append(
                f"{where('scaleDownDelaySeconds')}: scale_down_delay counts from the end of the "
                "post-promotion analysis, where Argo counts from the switch (and cancels the "
                "analysis when the delay ends)"
            )
    for key in spec:
        if key not in _BLUEGREEN_MAPPED:
            reason = _BLUEGREEN_SKIPPED.get(key, "not a blueGreen field deployctl knows")
            warnings.append(f"{where(str(key))}: not imported: {reason}")
    warnings.append(
        "scale_down not set: when scale_down_delay ends the old color is retired from routing, "
        "where Argo scales its ReplicaSet down: add a scale_down exec step to stop its instances"
    )
    return steps, origins


def _key_line(node: yaml.Node | None, path: tuple[str, ...]) -> int | None:
    """The line of the last key along ``path`` (``line_of`` gives its value's)."""
    for depth, key in enumerate(path):
        if not isinstance(node, yaml.MappingNode):
            return None
        pair = next(((k, v) for k, v in node.value if k.value == key), None)
        if pair is None:
            return None
        if depth == len(path) - 1:
            return int(pair[0].start_mark.line) + 1
        node = pair[1]
    return None


def _template_names(templates: Any) -> str:
    if not isinstance(templates, list):
        return "?"
    return ", ".join(str(_get(t, "templateName") or "?") for t in templates)


def _convert(
    key: str, body: Any, where: str, warnings: list[str], notes: list[str]
) -> dict[str, Any] | None:
    """One Argo step as ours (in the YAML form), or None when it is skipped.

    Raises:
        ValueError: The step's value cannot be read.
    """
    if key == "setWeight":
        return {"set_weight": body}
    if key == "pause":
        duration = _get(body, "duration")
        if duration is None:
            return {"pause": {}}
        seconds = _argo_duration(duration)
        if seconds <= 0:
            warnings.append(f"{where}: pause of 0s skipped")
            return None
        return {"pause": {"duration": seconds}}
    if key == "analysis":
        names = _template_names(_get(body, "templates"))
        warnings.append(
            f"{where}: analysis templates ({names}) replaced by deployctl's analysis with "
            "default criteria (window 60s, min_sample 50): tune the step"
        )
        notes.append(f"{where.split(' (')[0]}: analysis templates {names}.")
        return {"analysis": {}}
    if key == "setMirrorRoute":
        if not _get(body, "match"):
            warnings.append(f"{where}: mirror route removal skipped: a mirror step ends by itself")
            return None
        warnings.append(
            f"{where}: mirrors for 60s (a mirror step's duration), where Argo mirrors until "
            "the route is removed: set duration"
        )
        return {"mirror": {"percent": _get(body, "percentage") or 100}}
    reason = _SKIPPED.get(key, "not an Argo canary step deployctl knows")
    warnings.append(f"{where}: {key} skipped: {reason}")
    return None

"""Import an Argo Rollouts ``Rollout`` manifest as a playbook.

Argo's canary steps map onto ours (``setWeight`` -> ``set_weight``, ``pause``,
``analysis``, ``setMirrorRoute`` -> ``mirror``). What has no equivalent here
(Kubernetes scaling, header routes, experiments) is skipped, and every such
choice is returned as a warning, so nothing is lost silently.
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
    """Convert the canary steps of an Argo Rollouts ``Rollout`` into a playbook.

    The manifest may hold several YAML documents (a Service, then the Rollout):
    the first Rollout is read.

    Args:
        manifest_text: The manifest, as YAML.
        source: What to call the manifest in errors (its file name).

    Returns:
        The playbook, and a warning for each thing that was skipped or needs a look.

    Raises:
        DefinitionError: There is no Rollout, it has no canary strategy (blue-green
            is not supported by import yet), or a step cannot be read.
    """
    rollout, node = _find_rollout(manifest_text, source)
    name = _get(rollout, "metadata", "name")
    strategy = _get(rollout, "spec", "strategy") or {}
    if "blueGreen" in strategy:
        raise DefinitionError(
            f"Rollout {name} uses the blue-green strategy, which import does not support yet: "
            "write a playbook by hand (docs/playbooks.md)",
            path=source,
            line=line_of(node, ("spec", "strategy", "blueGreen")),
        )
    if not isinstance(strategy.get("canary"), dict):
        raise DefinitionError(
            f"Rollout {name} has no spec.strategy.canary: import converts canary steps",
            path=source,
            line=line_of(node, ("spec", "strategy")),
        )
    warnings: list[str] = []
    notes: list[str] = []
    steps: list[dict[str, Any]] = []
    origins: list[int] = []  # for each of our steps, the index of the Argo step it came from
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
            origins.append(index)
    if not steps:
        warnings.append("no steps to convert (Argo goes straight to 100%): added set_weight 100")
        steps.append({"set_weight": 100})
    background = _get(rollout, "spec", "strategy", "canary", "analysis", "templates")
    if background:
        warnings.append(
            f"background analysis ({_template_names(background)}) not imported: the rollback "
            "policy watches failures all along; add analysis steps where you want a verdict"
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
    data = {"name": name, "description": description, "strategy": "canary", "steps": steps}
    try:
        return Playbook.model_validate({**data, "rollback": RollbackPolicy(**rollback)}), warnings
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        at: tuple[str | int, ...]
        if loc[:1] == ("steps",) and len(loc) > 1 and isinstance(loc[1], int):
            origin = origins[loc[1]]
            at, what = (*_STEPS, origin), f"Argo step {origin + 1}: "
        elif loc[:1] == ("name",):
            at, what = ("metadata", "name"), "metadata.name: "
        else:
            at, what = ("spec", "progressDeadlineSeconds"), "progressDeadlineSeconds: "
        raise DefinitionError(what + error["msg"], path=source, line=line_of(node, at)) from None


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

"""How rollouts look to people: the tables and timelines the CLI and the demo print."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from controller.engine._rollout import Phase, Rollout, Transition

PHASE_STYLE = {
    Phase.PENDING: "yellow",
    Phase.PROGRESSING: "cyan",
    Phase.PAUSED: "magenta",
    Phase.PROMOTING: "cyan",
    Phase.SUCCEEDED: "bold green",
    Phase.ABORTED: "bold red",
    Phase.FAILED: "bold red",
}


def planned_weights(rollout: Rollout) -> dict[str, float]:
    """The share (percent) the rollout's plan gives each version."""
    if rollout.weight >= 100 or rollout.stable == rollout.canary:
        return {rollout.canary: 100.0}
    return {rollout.stable: float(100 - rollout.weight), rollout.canary: float(rollout.weight)}


def rollout_data(
    rollout: Rollout,
    traffic: dict[str, dict[str, int]] | None = None,
    effective: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A rollout as JSON for ``--json`` (with per-version traffic and effective weights)."""
    steps = rollout.playbook.get("steps", [])
    data = rollout.model_dump(mode="json", exclude={"playbook", "step_data"})
    data.update(steps=len(steps), playbook=rollout.playbook.get("name"))
    data["planned_weights"] = planned_weights(rollout)
    if traffic is not None:
        data["traffic"] = traffic
    if effective is not None:
        data["effective_weights"] = effective
    return data


def _differs(planned: dict[str, float], effective: dict[str, float]) -> bool:
    versions = set(planned) | set(effective)
    return any(abs(planned.get(v, 0) - effective.get(v, 0)) > 0.5 for v in versions)


def rollout_panel(
    rollout: Rollout,
    traffic: dict[str, dict[str, int]] | None = None,
    effective: dict[str, float] | None = None,
) -> RenderableType:
    """The live view of one rollout: phase, step, weight, traffic per version, verdicts.

    When the traffic does not follow the plan (a version of it has no live
    instance), the effective weights are shown beside the planned one, in
    yellow, so the view never says 10 % while the canary takes more.
    """
    steps = rollout.playbook.get("steps", [])
    head = Text.assemble(
        (f"{rollout.service}", "bold"),
        f"  {rollout.stable} -> {rollout.canary}  ",
        (str(rollout.phase), PHASE_STYLE[rollout.phase]),
        f"  step {min(rollout.step + 1, len(steps))}/{len(steps)}  weight {rollout.weight}%",
    )
    if (
        effective is not None
        and rollout.phase.active
        and _differs(planned_weights(rollout), effective)
    ):
        shown = ", ".join(f"{v} {w:g}%" for v, w in effective.items()) or "no live instance"
        head.append(f"  effective: {shown}", style="bold yellow")
    parts: list[RenderableType] = [head, Text(rollout.reason, style="dim")]
    if traffic:
        table = Table("version", "role", "successes", "failures", "failure rate", box=None)
        for version, role in ((rollout.stable, "stable"), (rollout.canary, "canary")):
            counts = traffic.get(version, {})
            ok = counts.get("success", 0)
            bad = sum(n for kind, n in counts.items() if kind != "success")
            rate = f"{bad / (ok + bad):.1%}" if ok + bad else "-"
            table.add_row(version, role, str(ok), str(bad), rate)
        parts.append(table)
    for verdict in rollout.verdicts[-3:]:
        style = {"pass": "green", "fail": "red"}.get(verdict["outcome"], "yellow")
        parts.append(
            Text.assemble(
                ("analysis ", "dim"),
                (verdict["outcome"], style),
                f": {'; '.join(verdict['reasons'])}",
            )
        )
    return Group(*parts)


def timeline(transitions: list[Transition], started: float | None = None) -> Table:
    """Every transition of a rollout, with the time since its start: the answer to "why?"."""
    table = Table("t+s", "phase", "step", "weight", "reason", box=None)
    origin = started if started is not None else (transitions[0].at if transitions else 0.0)
    for item in transitions:
        table.add_row(
            f"{item.at - origin:7.1f}",
            Text(str(item.phase), style=PHASE_STYLE[item.phase]),
            str(item.step + 1),
            f"{item.weight}%",
            item.reason,
        )
    return table

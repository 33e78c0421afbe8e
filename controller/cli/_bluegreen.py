"""``deployctl bluegreen``: preview a new version, switch to it at once, switch back at once.

The commands mirror ``deployctl canary``'s and reuse its machinery (the
playbook lookup, the wait for an instance, the operator requests); what they
add is the strategy check and the colors: which version is active, which is
the preview, and which old color is kept registered for an instant rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from communicator import DefinitionError, Measurements, PlanStore, RoutePlan, parse_duration
from controller.cli._canary import (
    _exit_for,
    _request,
    _store,
    controller_leads,
    effective_weights,
    resolve_playbook,
    traffic,
    wait_for_instance,
    warn_no_controller,
)
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller.cli._registry import RegistryAccess, with_registry
from controller.engine._admission import choose_stable
from controller.engine._rollout import Phase, Rollout, RolloutError, start_rollout
from controller.engine._views import rollout_data, rollout_panel, timeline
from controller.playbook._playbook import Playbook

app = typer.Typer(
    help="Blue-green rollouts: preview the new version, switch all traffic at once, switch "
    "back at once.",
    no_args_is_help=True,
)
DEFAULT_PLAYBOOK = "bluegreen-standard"
STRATEGY = "bluegreen"


def wrong_strategy(playbook: Playbook, wanted: str) -> str | None:
    """Why ``playbook`` cannot run as a ``wanted`` rollout (with the command that runs it)."""
    if playbook.strategy == wanted:
        return None
    runs_it = {
        "canary": "deployctl canary start SVC --version VER --playbook",
        "bluegreen": "deployctl bluegreen start SVC --version VER --playbook",
        "flag": "deployctl flag rollout KEY --playbook",
    }[playbook.strategy]
    return (
        f"playbook {playbook.name} is for strategy {playbook.strategy}, not {wanted}: run it "
        f"with `{runs_it} {playbook.name}`, or give a {wanted} playbook "
        "(`deployctl playbook list` shows them)"
    )


def _chosen(playbook: str | None, as_json: bool) -> Playbook:
    """The blue-green playbook to run, or exit 2 saying which to give instead."""
    try:
        chosen = resolve_playbook(playbook or DEFAULT_PLAYBOOK, None)
    except DefinitionError as exc:
        fail(str(exc), as_json=as_json)
    problem = wrong_strategy(chosen, STRATEGY)
    if problem:
        fail(problem, as_json=as_json)
    return chosen


def colors(plan: RoutePlan) -> dict[str, Any]:
    """The versions by role in a blue-green plan: active, preview, and the one kept for rollback.

    The ``standby`` color is the old one after the switch: no traffic, still
    registered, so a rollback is one plan change. All three are ``None`` for a
    plan without colors (the controller has not started the rollout yet).
    """
    active, preview = plan.active_color, plan.preview_color
    others = sorted(c for c in plan.colors if c not in (active, preview))
    standby = others[0] if others else None
    return {
        "active": plan.colors.get(active) if active else None,
        "active_color": active,
        "preview": plan.preview_version,
        "preview_color": preview,
        "standby": plan.colors.get(standby) if standby else None,
        "standby_color": standby,
        "colors": dict(plan.colors),
    }


def colors_line(service: str, roles: dict[str, Any]) -> Text:
    """The colors in words, for people."""
    if roles["active"] is None:
        return Text("no blue-green plan yet: the controller applies one when it starts", "yellow")
    line = Text.assemble(("active ", "bold"), f"{roles['active']} ({roles['active_color']})")
    if roles["preview"] is not None:
        line.append(f"   preview {roles['preview']} ({roles['preview_color']}): ")
        line.append("only preview=yes messages reach it", "dim")
    if roles["standby"] is not None:
        line.append(f"   kept for rollback {roles['standby']} ({roles['standby_color']}): ")
        line.append(f"`deployctl bluegreen rollback {service}` switches back at once", "dim")
    return line


async def _snapshot(
    access: RegistryAccess, rollout: Rollout
) -> tuple[dict[str, Any], RenderableType]:
    """The rollout with its traffic, effective weights and colors: as JSON and as a view."""
    counts = await traffic(access, rollout)
    weights = await effective_weights(access, rollout.service)
    plan = await PlanStore(redis=access.redis, keys=access.keys).get(rollout.service)
    roles = colors(plan or RoutePlan())
    data = {**rollout_data(rollout, counts, weights), "strategy": STRATEGY, **roles}
    view = Group(rollout_panel(rollout, counts, weights), colors_line(rollout.service, roles))
    return data, view


async def _bluegreen_rollout(access: RegistryAccess, service: str, as_json: bool) -> Rollout:
    """The service's rollout, or exit 1 when there is none or it is not a blue-green one."""
    rollout = await _store(access).get(service)
    if rollout is None:
        fail(
            f"no rollout for {service}; `deployctl rollouts` lists them",
            code=Exit.NO,
            as_json=as_json,
        )
    kind = rollout.playbook.get("strategy", "canary")
    if kind != STRATEGY:
        fail(
            f"the rollout of {service} is a {kind} rollout, not a blue-green one: use "
            f"`deployctl {kind} status {service}` and its other commands",
            code=Exit.NO,
            as_json=as_json,
        )
    return rollout


async def _follow(
    access: RegistryAccess, service: str, *, as_json: bool
) -> tuple[Rollout, dict[str, Any]]:
    """Show the rollout live (unless ``as_json``) until it ends; return it as it ended."""
    warned = False
    with (
        Live(console=err_console, refresh_per_second=4) if not as_json else contextlib.nullcontext()
    ) as view:
        while True:
            rollout = await _bluegreen_rollout(access, service, as_json)
            data, shown = await _snapshot(access, rollout)
            if view is not None:
                view.update(shown)
            if not rollout.phase.active:
                return rollout, data
            stuck = rollout.phase is Phase.PENDING and time.time() - rollout.created_at > 3
            if not warned and stuck and not await controller_leads(access):
                warn_no_controller()
                warned = True
            await asyncio.sleep(0.25)


@app.command("start")
def start(
    service: Annotated[str, typer.Argument(help="The service to roll out.")],
    version: Annotated[str, typer.Option("--version", help="The new version (the preview).")],
    playbook: Annotated[
        str | None,
        typer.Option(help=f"Playbook file, or shipped playbook name ({DEFAULT_PLAYBOOK})."),
    ] = None,
    stable: Annotated[
        str | None, typer.Option(help="The active version (found by itself if omitted).")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the rollout; exit 0 only if it succeeds.")
    ] = False,
    wait_for_instances: Annotated[
        str | None,
        typer.Option(
            "--wait-for-instances",
            metavar="DURATION",
            help="Wait this long (e.g. 2m) for a live instance of VERSION before refusing.",
        ),
    ] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Start a blue-green rollout of VERSION of SERVICE, driven by a bluegreen playbook.

    VERSION becomes the preview color (only preview=yes messages reach it)
    until the playbook's switch step sends it every message; the old version
    stays registered for an instant rollback until the scale-down delay ends.
    """
    chosen = _chosen(playbook, as_json)
    try:
        within = parse_duration(wait_for_instances) if wait_for_instances else 0.0
    except ValueError as exc:
        fail(str(exc), as_json=as_json)

    async def action(access: RegistryAccess) -> tuple[Rollout, dict[str, Any], int]:
        fleet = await wait_for_instance(access, service, version, within, as_json=as_json)
        try:
            rollout = await start_rollout(
                _store(access),
                Measurements(redis=access.redis, keys=access.keys),
                service=service,
                stable=choose_stable(fleet, canary=version, stable=stable),
                canary=version,
                playbook=chosen.model_dump(mode="json"),
                reason=f"requested: blue-green {version} of {service} with playbook {chosen.name}",
                production=fleet.production,
            )
        except RolloutError as exc:
            fail(str(exc), code=Exit.NO, as_json=as_json)
        if not await controller_leads(access):
            warn_no_controller()
        if not wait:
            return rollout, (await _snapshot(access, rollout))[0], Exit.OK
        rollout, data = await _follow(access, service, as_json=as_json)
        if not as_json:
            history = await _store(access).history(service)
            console.print(timeline([t for t in history if t.at >= rollout.created_at - 1]))
        return rollout, data, _exit_for(rollout)

    rollout, data, code = with_registry(action, as_json=as_json)
    emit(
        data,
        as_json=as_json,
        render=lambda: console.print(
            f"{rollout.service}: {rollout.phase} ({rollout.reason})", markup=False
        ),
    )
    raise typer.Exit(int(code))


@app.command("status")
def status(
    service: Annotated[str, typer.Argument(help="The service.")],
    watch: Annotated[bool, typer.Option(help="Keep showing it live until it ends.")] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a blue-green rollout: the active, preview and standby versions, the phase and step."""

    async def action(access: RegistryAccess) -> tuple[Rollout, dict[str, Any], RenderableType]:
        if watch:
            rollout, _ = await _follow(access, service, as_json=as_json)
        else:
            rollout = await _bluegreen_rollout(access, service, as_json)
        data, view = await _snapshot(access, rollout)
        return rollout, data, view

    rollout, data, view = with_registry(action, as_json=as_json)
    emit(data, as_json=as_json, render=lambda: console.print(view))
    raise typer.Exit(int(_exit_for(rollout)))


def _checked_request(service: str, action_name: str, as_json: bool) -> None:
    """Refuse a request for a rollout that is not a running blue-green one, else send it."""

    async def check(access: RegistryAccess) -> None:
        rollout = await _bluegreen_rollout(access, service, as_json)
        if action_name == "abort" and not rollout.phase.active:
            then = (
                f"{rollout.stable} was retired; to go back, start a blue-green rollout of it "
                f"(`deployctl bluegreen start {service} --version {rollout.stable}`) once its "
                "instances run"
                if rollout.phase is Phase.SUCCEEDED
                else f"{rollout.stable} is active already"
            )
            fail(
                f"the rollout of {service} already ended ({rollout.phase}): {then}",
                code=Exit.NO,
                as_json=as_json,
            )

    with_registry(check, as_json=as_json)
    _request(service, action_name, as_json)


@app.command("promote")
def promote(
    service: Annotated[str, typer.Argument(help="The service.")], as_json: bool = JSON_OPTION
) -> None:
    """Skip the current step: end a pause or an analysis early (the pause before the switch)."""
    _checked_request(service, "promote", as_json)


@app.command("rollback")
def rollback(
    service: Annotated[str, typer.Argument(help="The service.")], as_json: bool = JSON_OPTION
) -> None:
    """Switch back at once: every message to the old version (the new one invalid, if asked)."""
    _checked_request(service, "abort", as_json)


@app.command("abort")
def abort(
    service: Annotated[str, typer.Argument(help="The service.")], as_json: bool = JSON_OPTION
) -> None:
    """The same as rollback: end the rollout, every message to the old version at once."""
    _checked_request(service, "abort", as_json)

"""``deployctl rollouts``, ``rollout history``, ``status``, ``controller run`` and ``--check``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from communicator import BackendError, redis_backend
from controller.cli._canary import traffic
from controller.cli._output import JSON_OPTION, Exit, console, emit, fail
from controller.cli._registry import RegistryAccess, connected_settings, with_registry
from controller.engine._controller import Controller, read_health
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, RolloutStore
from controller.engine._views import PHASE_STYLE, rollout_data, timeline
from flags import FlagKeys, StatusFlags

rollout_app = typer.Typer(help="One service's rollouts.", no_args_is_help=True)
controller_app = typer.Typer(help="The rollout controller.", no_args_is_help=True)


def _store(access: RegistryAccess) -> RolloutStore:
    return RolloutStore(redis=access.redis, keys=ControllerKeys(access.settings.key_prefix))


def list_rollouts(as_json: bool = JSON_OPTION) -> None:
    """List every service's current (or last) rollout."""
    rollouts = with_registry(lambda access: _store(access).all(), as_json=as_json)

    def render() -> None:
        table = Table("service", "stable", "canary", "phase", "step", "weight", "reason", box=None)
        for r in rollouts:
            steps = len(r.playbook.get("steps", []))
            table.add_row(
                r.service,
                r.stable,
                r.canary,
                Text(str(r.phase), style=PHASE_STYLE[r.phase]),
                f"{min(r.step + 1, steps)}/{steps}",
                f"{r.weight}%",
                r.reason,
            )
        console.print(
            table if rollouts else "no rollouts yet: `deployctl canary start SVC --version VER`"
        )

    emit([rollout_data(r) for r in rollouts], as_json=as_json, render=render)


@rollout_app.command("history")
def history(
    service: Annotated[str, typer.Argument(help="The service.")],
    as_json: bool = JSON_OPTION,
) -> None:
    """Every transition of the service's rollouts, and why: "why did this roll back?"."""
    transitions = with_registry(lambda access: _store(access).history(service), as_json=as_json)
    if not transitions:
        fail(f"no rollout history for {service}", code=Exit.NO, as_json=as_json)
    emit(
        [t.model_dump(mode="json") for t in transitions],
        as_json=as_json,
        render=lambda: console.print(timeline(transitions)),
    )


def status(as_json: bool = JSON_OPTION) -> None:
    """Rollouts, services and versions at a glance; exit 0 unless a rollout failed or runs."""

    async def action(access: RegistryAccess) -> dict[str, Any]:
        rollouts = await _store(access).all()
        services = []
        for service in await access.registry.services():
            versions = await access.registry.versions(service)
            instances = await access.registry.instances(service)
            services.append(
                {
                    "service": service,
                    "instances": len(instances),
                    "versions": {v.version: str(v.state.state) for v in versions},
                }
            )
        leader = await access.redis.get(ControllerKeys(access.settings.key_prefix).leader())
        alerts = await StatusFlags(
            redis=access.redis, keys=FlagKeys(access.settings.key_prefix)
        ).list()
        return {
            "alerts": [a.model_dump(mode="json") for a in alerts],
            "controller": leader.decode() if isinstance(leader, bytes) else leader,
            "rollouts": [rollout_data(r, await traffic(access, r)) for r in rollouts],
            "services": services,
        }

    data = with_registry(action, as_json=as_json)

    def render() -> None:
        console.print(f"controller: {data['controller'] or '[yellow]none running[/]'}")
        table = Table("service", "stable", "canary", "phase", "weight", "reason", box=None)
        for r in data["rollouts"]:
            phase = Phase(r["phase"])
            table.add_row(
                r["service"],
                r["stable"],
                r["canary"],
                Text(str(phase), style=PHASE_STYLE[phase]),
                f"{r['weight']}%",
                r["reason"],
            )
        console.print(table)
        services = Table("service", "instances", "versions", box=None)
        for s in data["services"]:
            versions = ", ".join(f"{v} ({state})" for v, state in s["versions"].items())
            services.add_row(s["service"], str(s["instances"]), versions)
        console.print(services)
        for alert in data["alerts"]:
            console.print(
                f"[bold yellow]alert[/] {alert['unit']}/{alert['section']}/{alert['name']} "
                f"(priority {alert['priority']}): {escape(alert['message'])}\n"
                f"  {escape(alert['help'])}"
            )

    emit(data, as_json=as_json, render=render)
    phases = {Phase(r["phase"]) for r in data["rollouts"]}
    if phases & {Phase.ABORTED, Phase.FAILED}:
        raise typer.Exit(int(Exit.NO))
    if any(phase.active for phase in phases):
        raise typer.Exit(int(Exit.IN_PROGRESS))


@controller_app.callback(invoke_without_command=True)
def controller_group(
    ctx: typer.Context,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 0 if a leading controller reported its health lately, 1 if none did, "
            "3 if Redis cannot be reached.",
        ),
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """The rollout controller: `run` one, or `--check` that one leads."""
    if ctx.invoked_subcommand is not None:
        if check or as_json:
            fail(
                "--check and --json go alone: run `deployctl controller --check`, "
                f"not with `{ctx.invoked_subcommand}`"
            )
        return
    if not check:
        fail("say what to do: `deployctl controller run`, or `deployctl controller --check`")
    check_controllers(as_json=as_json)


def _controller_line(record: dict[str, Any], now: float) -> str:
    """One controller's health record as one line for people."""
    if record.get("leading"):
        state = f"leader  rollouts active {record.get('rollouts_active')}"
        last = record.get("last_advance")
        state += f"  last advance {max(now - last, 0):.1f} s ago" if last else "  not advanced yet"
    else:
        state = f"standby (leader: {record.get('leader') or 'none'})"
    age = max(now - float(record.get("time", now)), 0.0)
    uptime = float(record.get("uptime", 0))
    return f"{record['controller_id']}  {state}  up {uptime:.0f} s  reported {age:.1f} s ago"


def check_controllers(*, as_json: bool) -> None:
    """``deployctl controller --check``: exit 0 if a leader reported within the record TTL."""

    async def action(access: RegistryAccess) -> tuple[list[dict[str, Any]], float]:
        keys = ControllerKeys(access.settings.key_prefix)
        return await read_health(access.redis, keys), access.settings.health_ttl

    records, ttl = with_registry(action, as_json=as_json)
    if not any(record.get("leading") for record in records):
        standbys = f" ({len(records)} standing by)" if records else ""
        fail(
            f"no controller has led in the last {ttl:g} s{standbys}: is `deployctl controller "
            "run` running? see `deployctl status`",
            code=Exit.NO,
            as_json=as_json,
            controllers=records,
        )
    now = time.time()
    emit(
        {"controllers": records},
        as_json=as_json,
        render=lambda: console.print(
            "\n".join(escape(_controller_line(record, now)) for record in records)
        ),
    )


@controller_app.command("run")
def run_controller(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True)] = 0,
) -> None:
    """Run a controller: it leads (advancing every rollout) or stands by for the leader."""
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = connected_settings(as_json=False)

    async def serve() -> None:
        async with redis_backend(settings) as redis:
            controller = Controller(settings=settings, redis=redis)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, controller.stop)
            await controller.run()

    try:
        asyncio.run(serve())
    except BackendError as exc:
        fail(str(exc), code=Exit.BACKEND)

"""``deployctl flag rollout|runs|abort``: a flag's share of users, at once or by a playbook's steps.

With a percentage the flag changes at once. With ``--playbook`` the leading
controller runs the steps (:mod:`controller.engine._flag_runs`): the command records
the run and returns, or follows it with ``--wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from communicator import DefinitionError, parse_duration
from controller.cli._canary import resolve_playbook
from controller.cli._flags import ReasonOption, _change, _run, _store, _who
from controller.cli._flags import app as app  # re-exported: every flag command, ours too
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller.cli._registry import RegistryAccess
from controller.engine._flag_runs import (
    FlagRun,
    FlagRunError,
    FlagRunPhase,
    FlagRunStore,
    flag_steps,
)
from controller.engine._keys import ControllerKeys
from flags import Flag, FlagError, FlagState
from strategies import FlagRolloutError, on_off_variants


def _runs(access: RegistryAccess) -> FlagRunStore:
    return FlagRunStore(redis=access.redis, keys=ControllerKeys(access.settings.key_prefix))


def _run_data(run: FlagRun) -> dict[str, Any]:
    return {
        **run.model_dump(mode="json", exclude={"reading", "checked_at", "abort_requested"}),
        "active": run.phase.active,
        "steps": [s.model_dump() for s in run.steps],
    }


@app.command("rollout")
def rollout(
    key: Annotated[str, typer.Argument()],
    percent: Annotated[
        int | None, typer.Argument(min=0, max=100, help="Share of contexts served the variant.")
    ] = None,
    variant: Annotated[str, typer.Option(help="The variant rolled out.")] = "on",
    playbook: Annotated[
        str | None, typer.Option(help="A `strategy: flag` playbook (file or shipped name).")
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="With --playbook: the service whose failures are watched.")
    ] = None,
    baseline: Annotated[
        str, typer.Option(help="With --playbook: how long to measure the failure rate first.")
    ] = "60s",
    wait: Annotated[
        bool, typer.Option("--wait", help="With --playbook: follow the run; exit 0 if it passed.")
    ] = False,
    reason: ReasonOption = "",
    as_json: bool = JSON_OPTION,
) -> None:
    """Serve VARIANT to PERCENT % of contexts; or by a playbook's steps, off if failures rise."""
    if playbook is not None:
        _start_run(key, playbook, service, baseline, wait=wait, as_json=as_json)
        return
    if percent is None:
        fail("give PERCENT, or --playbook FILE --service SVC", as_json=as_json)

    def change(flag: Flag) -> Flag:
        rest = (
            flag.default_variant
            if flag.default_variant not in (None, variant)
            else next((v for v in flag.variants if v != variant), None)
        )
        if variant not in flag.variants or rest is None:
            raise FlagError(
                flag.key, [f"rollout needs variant {variant!r} and another one to fall back on"]
            )
        rule = {"fractional": [[variant, percent], [rest, 100 - percent]]}
        return flag.model_copy(update={"targeting": rule, "state": FlagState.ENABLED})

    _change(key, change, reason or f"rollout of {variant} to {percent}%", as_json)


def _start_run(
    key: str, name: str, service: str | None, baseline: str, *, wait: bool, as_json: bool
) -> None:
    try:
        chosen = resolve_playbook(name, None)
        baseline_seconds = parse_duration(baseline)
    except (DefinitionError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    if chosen.strategy != "flag" or service is None:
        fail(
            "--playbook needs a `strategy: flag` playbook, and --service SVC to watch",
            as_json=as_json,
        )
    steps = flag_steps(chosen)
    if not steps:
        fail(f"playbook {chosen.name} has no set_weight step", as_json=as_json)

    async def action(access: RegistryAccess) -> FlagRun:
        stored = await _store(access).get(key)
        if stored is None:
            fail(f"no flag {key!r}: create it first (`deployctl flag list`)", as_json=as_json)
        try:
            on_off_variants(stored.flag, None, None)
        except FlagRolloutError as exc:
            fail(str(exc), code=Exit.USAGE, as_json=as_json)
        run = FlagRun(
            key=key,
            service=service,
            playbook=chosen.name,
            steps=steps,
            threshold=chosen.rollback.max_failure_rate,
            baseline_seconds=baseline_seconds,
            who=_who(),
        )
        try:
            await _runs(access).start(run)
        except FlagRunError as exc:
            fail(str(exc), code=Exit.NO, as_json=as_json)
        return await _follow(access, key, as_json) if wait else run

    run = _run(action, as_json)
    emit(_run_data(run), as_json=as_json, render=lambda: console.print(_line(run), markup=False))
    if wait and run.phase is not FlagRunPhase.SUCCEEDED:
        raise typer.Exit(int(Exit.NO))


def _line(run: FlagRun) -> str:
    where = f"step {min(run.step + 1, len(run.steps))}/{len(run.steps)}, {run.percentage}%"
    return f"{run.key} ({run.service}, {run.playbook}): {run.phase} at {where}: {run.reason}"


async def _follow(access: RegistryAccess, key: str, as_json: bool) -> FlagRun:
    """Follow a run until it ends, live on stderr unless ``as_json``."""
    store, warned = _runs(access), False
    started = time.time()
    live = Live(console=err_console, refresh_per_second=4)
    with live if not as_json else contextlib.nullcontext() as view:
        while True:
            run = await store.get(key)
            if run is None:
                fail(f"no rollout of flag {key}", code=Exit.NO, as_json=as_json)
            if view is not None:
                view.update(_line(run))
            if not run.phase.active:
                return run
            leader = ControllerKeys(access.settings.key_prefix).leader()
            if not warned and time.time() - started > 3 and not await access.redis.exists(leader):
                err_console.print("[yellow]no controller is running: start one with "
                                  "`deployctl controller run`[/]")  # fmt: skip
                warned = True
            await asyncio.sleep(0.25)


@app.command("runs")
def runs(as_json: bool = JSON_OPTION) -> None:
    """Flag rollouts by steps: the ones running, and each flag's last one."""

    async def action(access: RegistryAccess) -> list[FlagRun]:
        return await _runs(access).all()

    found = _run(action, as_json)

    def render() -> None:
        if not found:
            console.print("no flag rollouts (`deployctl flag rollout KEY --playbook ...`)")
            return
        table = Table("flag", "service", "playbook", "phase", "step", "share", "reason")
        for run in found:
            step = f"{min(run.step + 1, len(run.steps))}/{len(run.steps)}"
            table.add_row(
                run.key, run.service, run.playbook, str(run.phase), step,
                f"{run.percentage}%", run.reason,
            )  # fmt: skip
        console.print(table)

    emit([_run_data(run) for run in found], as_json=as_json, render=render)


@app.command("abort")
def abort(key: Annotated[str, typer.Argument()], as_json: bool = JSON_OPTION) -> None:
    """Stop a flag's rollout by steps and switch the flag off (the controller does it at once)."""

    async def action(access: RegistryAccess) -> FlagRun:
        try:
            return await _runs(access).request_abort(key)
        except FlagRunError as exc:
            fail(str(exc), code=Exit.NO, as_json=as_json)

    run = _run(action, as_json)
    emit(
        _run_data(run),
        as_json=as_json,
        render=lambda: console.print(f"{key}: abort requested; the controller switches it off"),
    )

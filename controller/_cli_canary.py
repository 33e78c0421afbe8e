"""``deployctl canary``: start, watch, promote, abort and retry canary rollouts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from communicator import DefinitionError, Measurements, PlanStore
from controller._cli_registry import RegistryAccess, with_registry
from controller._keys import ControllerKeys
from controller._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller._playbook import Playbook, load_playbook, parse_playbook, shipped_playbooks
from controller._rollout import Phase, Rollout, RolloutError, RolloutStore, start_rollout
from controller._views import rollout_data, rollout_panel, timeline

app = typer.Typer(
    help="Canary rollouts: a new version gets a growing share of traffic.", no_args_is_help=True
)
DEFAULT_PLAYBOOK = "canary-standard"


def _store(access: RegistryAccess) -> RolloutStore:
    return RolloutStore(redis=access.redis, keys=ControllerKeys(access.settings.key_prefix))


def resolve_playbook(name_or_file: str | None, weight: int | None) -> Playbook:
    """The playbook to run: a file, a shipped playbook's name, or a manual one for ``--weight``."""
    if weight is not None:
        if name_or_file is not None:
            raise typer.BadParameter("give --weight or --playbook, not both")
        return parse_playbook(
            f"name: manual-{weight}\ndescription: {weight}% until promoted\nstrategy: canary\n"
            f"steps:\n  - set_weight: {weight}\n  - pause: {{}}\n",
            "--weight",
        )
    name = name_or_file or DEFAULT_PLAYBOOK
    shipped = shipped_playbooks()
    if name in shipped:
        return load_playbook(shipped[name])
    path = Path(name)
    if not path.exists():
        raise DefinitionError(
            f"no playbook file or shipped playbook named {name!r}; "
            f"shipped: {', '.join(sorted(shipped))}"
        )
    return load_playbook(path)


async def _stable_version(access: RegistryAccess, service: str, canary: str) -> str:
    """The version serving now: the plan's main pool, else the valid version with most instances."""
    plan = await PlanStore(redis=access.redis, keys=access.keys).get(service)
    if plan is not None and plan.effective_pools():
        main = max(plan.effective_pools(), key=lambda pool: pool.weight)
        if main.version != canary:
            return main.version
    counts: dict[str, int] = {}
    for instance in await access.registry.instances(service):
        if instance.version != canary and await access.registry.is_valid(service, instance.version):
            counts[instance.version] = counts.get(instance.version, 0) + 1
    if not counts:
        fail(
            f"{service} has no running stable version to compare {canary} with; start its "
            f"instances first, or name it with --stable",
            code=Exit.NO,
        )
    return max(counts, key=lambda version: counts[version])


async def traffic(access: RegistryAccess, rollout: Rollout) -> dict[str, dict[str, int]]:
    """Outcomes per version since the rollout started (from the running totals)."""
    measurements = Measurements(redis=access.redis, keys=access.keys)
    baseline = rollout.step_data.get("origin", {})
    result = {}
    for version in (rollout.stable, rollout.canary):
        totals = await measurements.totals(rollout.service, version)
        before = baseline.get(version, {})
        result[version] = {kind: n - before.get(kind, 0) for kind, n in totals.counts.items()}
    return result


async def wait_for_end(
    access: RegistryAccess, service: str, *, live: bool, as_json: bool
) -> Rollout:
    """Follow a rollout until it ends, showing it live unless ``as_json``."""
    store = _store(access)
    warned = False
    with (
        Live(console=err_console, refresh_per_second=4, transient=False)
        if live and not as_json
        else contextlib.nullcontext() as view
    ):
        while True:
            rollout = await store.get(service)
            if rollout is None:
                fail(f"no rollout for {service}", code=Exit.NO, as_json=as_json)
            if view is not None:
                view.update(rollout_panel(rollout, await traffic(access, rollout)))
            if not rollout.phase.active:
                return rollout
            if (
                not warned
                and rollout.phase is Phase.PENDING
                and time.time() - rollout.created_at > 3
            ) and not await access.redis.exists(
                ControllerKeys(access.settings.key_prefix).leader()
            ):
                err_console.print(
                    "[yellow]no controller is running: start `deployctl controller run`[/]"
                )
                warned = True
            await asyncio.sleep(0.25)


def _exit_for(rollout: Rollout) -> Exit:
    if rollout.phase is Phase.SUCCEEDED:
        return Exit.OK
    return Exit.IN_PROGRESS if rollout.phase.active else Exit.NO


@app.command("start")
def start(
    service: Annotated[str, typer.Argument(help="The service to roll out.")],
    version: Annotated[str, typer.Option("--version", help="The new (canary) version.")],
    playbook: Annotated[
        str | None, typer.Option(help="Playbook file, or shipped playbook name.")
    ] = None,
    weight: Annotated[
        int | None, typer.Option(min=0, max=100, help="Just this weight, until promoted.")
    ] = None,
    stable: Annotated[
        str | None, typer.Option(help="The stable version (found by itself if omitted).")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the rollout; exit 0 only if it succeeds.")
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Start a canary rollout of VERSION of SERVICE, driven by a playbook."""
    try:
        chosen = resolve_playbook(playbook, weight)
    except DefinitionError as exc:
        fail(str(exc), as_json=as_json)

    async def action(access: RegistryAccess) -> tuple[Rollout, int]:
        old = stable or await _stable_version(access, service, version)
        if old == version:
            fail(
                f"{version} is already the stable version of {service}",
                code=Exit.NO,
                as_json=as_json,
            )
        try:
            rollout = await start_rollout(
                _store(access),
                Measurements(redis=access.redis, keys=access.keys),
                service=service,
                stable=old,
                canary=version,
                playbook=chosen.model_dump(mode="json"),
                reason=f"requested: canary {version} of {service} with playbook {chosen.name}",
            )
        except RolloutError as exc:
            fail(str(exc), code=Exit.NO, as_json=as_json)
        if wait:
            rollout = await wait_for_end(access, service, live=True, as_json=as_json)
            history = await _store(access).history(service)
            if not as_json:
                console.print(timeline([t for t in history if t.at >= rollout.created_at - 1]))
        return rollout, _exit_for(rollout) if wait else Exit.OK

    rollout, code = with_registry(action, as_json=as_json)
    emit(
        rollout_data(rollout),
        as_json=as_json,
        render=lambda: console.print(f"{rollout.service}: {rollout.phase} ({rollout.reason})"),
    )
    raise typer.Exit(int(code))


@app.command("status")
def status(
    service: Annotated[str, typer.Argument(help="The service.")],
    watch: Annotated[bool, typer.Option(help="Keep showing it live until it ends.")] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a service's rollout: step, weight, traffic and failures per version, verdicts."""

    async def action(access: RegistryAccess) -> tuple[Rollout, dict[str, Any]]:
        if watch:
            rollout = await wait_for_end(access, service, live=True, as_json=as_json)
        else:
            found = await _store(access).get(service)
            if found is None:
                fail(
                    f"no rollout for {service}; `deployctl rollouts` lists them",
                    code=Exit.NO,
                    as_json=as_json,
                )
            rollout = found
        return rollout, await traffic(access, rollout)

    rollout, counts = with_registry(action, as_json=as_json)
    emit(
        rollout_data(rollout, counts),
        as_json=as_json,
        render=lambda: console.print(rollout_panel(rollout, counts)),
    )
    raise typer.Exit(int(_exit_for(rollout)))


def _request(service: str, action_name: str, as_json: bool) -> None:
    async def action(access: RegistryAccess) -> Rollout:
        rollout = await _store(access).get(service)
        if rollout is None:
            fail(
                f"no rollout for {service}; `deployctl rollouts` lists them",
                code=Exit.NO,
                as_json=as_json,
            )
        if action_name == "retry" and rollout.phase.active:
            fail(
                f"the rollout of {service} is still {rollout.phase}; only ended ones are retried",
                code=Exit.NO,
                as_json=as_json,
            )
        if action_name != "retry" and not rollout.phase.active:
            fail(
                f"the rollout of {service} already ended ({rollout.phase})",
                code=Exit.NO,
                as_json=as_json,
            )
        await _store(access).request(service, action_name)
        return rollout

    rollout = with_registry(action, as_json=as_json)
    emit(
        {"service": service, "requested": action_name, "rollout": rollout.id},
        as_json=as_json,
        render=lambda: console.print(f"{action_name} requested for {service} ({rollout.phase})"),
    )


@app.command("promote")
def promote(
    service: Annotated[str, typer.Argument(help="The service.")],
    full: Annotated[bool, typer.Option("--full", help="Skip every remaining step.")] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Go past the current pause (or, with --full, straight to 100%)."""
    _request(service, "promote_full" if full else "promote", as_json)


@app.command("abort")
def abort(
    service: Annotated[str, typer.Argument(help="The service.")], as_json: bool = JSON_OPTION
) -> None:
    """Roll back now: weight 0 for the canary."""
    _request(service, "abort", as_json)


@app.command("retry")
def retry(
    service: Annotated[str, typer.Argument(help="The service.")], as_json: bool = JSON_OPTION
) -> None:
    """Start an aborted or failed rollout again from its first step (reinstating the canary)."""
    _request(service, "retry", as_json)

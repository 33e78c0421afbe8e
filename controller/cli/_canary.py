"""``deployctl canary``: start, watch, promote, abort and retry canary rollouts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from communicator import DefinitionError, Measurements, PlanStore, Pool, RoutePlan, parse_duration
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller.cli._registry import RegistryAccess, with_registry
from controller.engine._admission import choose_stable
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import (
    Phase,
    Request,
    Rollout,
    RolloutError,
    RolloutStore,
    Transition,
    start_rollout,
)
from controller.engine._views import rollout_data, rollout_panel, timeline
from controller.playbook._playbook import Playbook, load_playbook, parse_playbook, shipped_playbooks
from strategies import Fleet, fleet_of

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


async def current_fleet(access: RegistryAccess, service: str) -> Fleet:
    """What serves ``service`` now, as the router sees it."""
    return await fleet_of(
        service, registry=access.registry, plans=PlanStore(redis=access.redis, keys=access.keys)
    )


async def wait_for_instance(
    access: RegistryAccess, service: str, version: str, within: float, *, as_json: bool
) -> Fleet:
    """Wait up to ``within`` seconds for a live, valid instance of ``version``, showing progress."""
    started = time.monotonic()
    fleet = await current_fleet(access, service)
    if within > 0 and version not in fleet.live and fleet.plan == RoutePlan():
        # No plan yet: every version would get traffic by instance count, the awaited canary
        # too, from its first moment. Pin what serves now, so it starts with none.
        serving = [v for v in fleet.shares if v != version]
        if len(serving) == 1:
            pin = RoutePlan(
                pools=[Pool(version=serving[0], weight=100)],
                revision=1,
                reason=f"pinned by canary start until {version} has an instance",
            )
            await PlanStore(redis=access.redis, keys=access.keys).set(service, pin)
    with (
        err_console.status(f"waiting for an instance of {service} {version}")
        if not as_json
        else contextlib.nullcontext()
    ) as progress:
        while version not in fleet.live and time.monotonic() - started < within:
            if progress is not None:
                progress.update(
                    f"waiting for an instance of {service} {version} "
                    f"({time.monotonic() - started:.0f}s of {within:g}s)"
                )
            await asyncio.sleep(0.25)
            fleet = await current_fleet(access, service)
    return fleet


async def controller_leads(access: RegistryAccess) -> bool:
    """Whether a controller leads now (someone will act on rollouts and requests)."""
    return bool(await access.redis.exists(ControllerKeys(access.settings.key_prefix).leader()))


def warn_no_controller() -> None:
    """Say that nothing acts on what was just written until a controller runs."""
    err_console.print(
        "[yellow]warning:[/] no controller leads, so nothing will act on this until one "
        "runs: start `deployctl controller run` (or `deployctl up`)"
    )


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


async def effective_weights(access: RegistryAccess, service: str) -> dict[str, float]:
    """Each version's share of the traffic now, in percent, as the router applies the plan."""
    fleet = await current_fleet(access, service)
    return {version: round(share * 100, 1) for version, share in fleet.shares.items()}


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
                view.update(
                    rollout_panel(
                        rollout,
                        await traffic(access, rollout),
                        await effective_weights(access, service),
                    )
                )
            if not rollout.phase.active:
                return rollout
            if (
                not warned
                and rollout.phase is Phase.PENDING
                and time.time() - rollout.created_at > 3
            ) and not await controller_leads(access):
                warn_no_controller()
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
    """Start a canary rollout of VERSION of SERVICE, driven by a playbook.

    VERSION must have a live instance; the stable version is the one serving
    most traffic now (or --stable, which must be live too).
    """
    try:
        chosen = resolve_playbook(playbook, weight)
        within = parse_duration(wait_for_instances) if wait_for_instances else 0.0
    except (DefinitionError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    if chosen.strategy != "canary":
        fail(
            f"playbook {chosen.name} is for strategy {chosen.strategy}, not canary: give a canary "
            "playbook (`deployctl playbook list`), or run this one with `deployctl "
            f"{'flag rollout' if chosen.strategy == 'flag' else 'bluegreen start'}`",
            as_json=as_json,
        )

    async def action(access: RegistryAccess) -> tuple[Rollout, int]:
        fleet = await wait_for_instance(access, service, version, within, as_json=as_json)
        try:
            old = choose_stable(fleet, canary=version, stable=stable)
            rollout = await start_rollout(
                _store(access),
                Measurements(redis=access.redis, keys=access.keys),
                service=service,
                stable=old,
                canary=version,
                playbook=chosen.model_dump(mode="json"),
                reason=f"requested: canary {version} of {service} with playbook {chosen.name}",
                production=fleet.production,
            )
        except RolloutError as exc:
            fail(str(exc), code=Exit.NO, as_json=as_json)
        if not await controller_leads(access):
            warn_no_controller()
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

    async def action(
        access: RegistryAccess,
    ) -> tuple[Rollout, dict[str, Any], dict[str, float]]:
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
        return rollout, await traffic(access, rollout), await effective_weights(access, service)

    rollout, counts, weights = with_registry(action, as_json=as_json)
    emit(
        rollout_data(rollout, counts, weights),
        as_json=as_json,
        render=lambda: console.print(rollout_panel(rollout, counts, weights)),
    )
    raise typer.Exit(int(_exit_for(rollout)))


#: Seconds a request waits for the leading controller's answer.
ANSWER_TIMEOUT = 15.0


def _request(service: str, action_name: str, as_json: bool) -> None:
    """Queue an operator request, wait for the controller's answer, and exit by it."""

    async def action(access: RegistryAccess) -> tuple[Rollout, Request, Transition | None, bool]:
        store = _store(access)
        rollout = await store.get(service)
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
        leads = await controller_leads(access)
        request = await store.request(service, action_name)
        answer = None
        deadline = time.monotonic() + (ANSWER_TIMEOUT if leads else 0.0)
        while answer is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            answer = await store.answer(service, request.id)
        return (await store.get(service) or rollout), request, answer, leads

    rollout, request, answer, leads = with_registry(action, as_json=as_json)
    data: dict[str, Any] = {
        "service": service,
        "requested": action_name,
        "request": request.id,
        "rollout": rollout.id,
        "phase": rollout.phase,
        "step": rollout.step,
        "weight": rollout.weight,
    }
    if answer is None:
        why = (
            "no controller leads; the request is queued and runs when one starts "
            "(`deployctl controller run` or `deployctl up`)"
            if not leads
            else f"the controller did not answer within {ANSWER_TIMEOUT:g}s; it is queued, see "
            f"`deployctl rollout history {service}`"
        )
        fail(
            f"{action_name} of {service} not done yet: {why}", code=Exit.NO, as_json=as_json, **data
        )
    data["answer"] = answer.reason
    refused = bool(answer.evidence.get("refused"))
    if refused:
        fail(answer.reason, code=Exit.NO, as_json=as_json, **data)
    emit(data, as_json=as_json, render=lambda: console.print(f"{service}: {answer.reason}"))


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

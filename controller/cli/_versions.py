"""``deployctl versions`` and ``deployctl version``: versions' health, and barring one by hand.

Invalidating or reinstating goes through the registry's Lua step, which also
publishes the event every communicator listens to: the change takes effect at
once, everywhere.
"""

from __future__ import annotations

import getpass
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from communicator import FailureRecord, OutcomeKind, VersionInfo, VersionState
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller.cli._registry import RegistryAccess, local_time, with_registry
from controller.cli._services import ServiceArgument, unknown_service

version_app = typer.Typer(
    help="One version of a service: invalidate it (no traffic, refused) or reinstate it.",
    no_args_is_help=True,
)

VersionArgument = Annotated[str, typer.Argument(help="The version, e.g. 1.4.2.")]


def _operator() -> str:
    """Who runs the command, for the record ("an operator" when the system cannot tell)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "an operator"


def _failure_row(record: FailureRecord) -> dict[str, Any]:
    return {
        "time": record.time,
        "kind": record.kind.value,
        "count": record.count,
        "reason": record.reason,
        "instance": record.instance,
        "server": record.server,
    }


def _state_fields(state: VersionState) -> dict[str, Any]:
    return {
        "version": state.version,
        "state": state.state.value,
        "reason": state.reason,
        "changed_at": state.changed_at,
        "invalidated_at": state.invalidated_at,
        "evidence": state.evidence,
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
    }


async def _version_row(
    access: RegistryAccess, service: str, info: VersionInfo, instances: int, failures: int
) -> dict[str, Any]:
    registry = access.registry
    policy = await registry.policy(service, info.version)
    recent = (
        await registry.failures(service, count=failures, version=info.version) if failures else []
    )
    return {
        **_state_fields(info.state),
        "instances": instances,
        "window_seconds": policy.window_seconds,
        "counts": {kind.value: info.counts.get(kind, 0) for kind in OutcomeKind},
        "failures": [_failure_row(record) for record in recent],
    }


def list_versions(
    service: ServiceArgument,
    failures: Annotated[
        int, typer.Option("--failures", "-f", min=0, help="Latest failures to show per version.")
    ] = 3,
    as_json: bool = JSON_OPTION,
) -> None:
    """List every version of a service ever seen: state, outcomes in the window, last failures."""

    async def collect(access: RegistryAccess) -> list[dict[str, Any]] | None:
        if not await access.service_known(service):
            return None
        per_version: dict[str, int] = {}
        for instance in await access.registry.instances(service):
            per_version[instance.version] = per_version.get(instance.version, 0) + 1
        return [
            await _version_row(access, service, info, per_version.get(info.version, 0), failures)
            for info in await access.registry.versions(service)
        ]

    rows = with_registry(collect, as_json=as_json)
    if rows is None:
        unknown_service(service, as_json=as_json)
    data = {"service": service, "versions": rows}

    def render() -> None:
        if not rows:
            console.print(f"{service} has no version yet: one appears when an instance registers")
            return
        windows = {row["window_seconds"] for row in rows}
        common = next(iter(windows)) if len(windows) == 1 else None
        outcomes = f"outcomes, last {common} s" if common else "outcomes"
        table = Table("version", "state", "inst.", outcomes, box=None)
        table.add_column("first seen", no_wrap=True)
        table.add_column("last seen", no_wrap=True)
        for row in rows:
            counts = ", ".join(f"{kind} {n}" for kind, n in row["counts"].items() if n)
            if common is None:  # the windows differ: say each one
                counts += f" [dim]({row['window_seconds']} s)[/]"
            table.add_row(
                f"[bold]{row['version']}[/]",
                "valid" if row["state"] == "valid" else "[bold red]invalid[/]",
                str(row["instances"]),
                counts or "none",
                local_time(row["first_seen"]),
                local_time(row["last_seen"]),
            )
        console.print(table)
        for row in rows:
            if row["state"] != "valid" or row["failures"]:
                _render_details(row)

    emit(data, as_json=as_json, render=render)


def _render_details(row: dict[str, Any]) -> None:
    console.print(f"\n[bold]{row['version']}[/]", end="")
    if row["state"] != "valid":
        console.print(
            f"  [red]invalid since {local_time(row['invalidated_at'])}:[/] {escape(row['reason'])}",
            end="",
        )
    console.print()
    for failure in row["failures"]:
        where = "/".join(part for part in (failure["server"], failure["instance"]) if part)
        count = f" x{failure['count']}" if failure["count"] > 1 else ""
        console.print(
            f"  {local_time(failure['time'])}  {failure['kind']}{count}  {where}  "
            f"{failure['reason']}",
            markup=False,
        )


def _never_seen(service: str, version: str, known: list[str], *, as_json: bool) -> NoReturn:
    """Exit 1: this version was never seen, so it is likely a typo."""
    if known:
        hint = f"known versions: {', '.join(known)}"
    else:
        hint = "the registry knows no version of it (`deployctl services` lists the services)"
    fail(
        f"version {version!r} of {service} was never seen ({hint}); check the spelling, "
        "or pass --force to bar it before it ships",
        code=Exit.NO,
        as_json=as_json,
        service=service,
        version=version,
    )


@version_app.command("invalidate")
def invalidate_version(
    service: ServiceArgument,
    version: VersionArgument,
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why, for the record (`deployctl versions`).")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Bar a version the registry has not seen yet.")
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Invalidate a version: it gets no traffic, and its instances are refused at REGISTER."""
    if not reason.strip():
        fail("--reason must say why (it is shown in `deployctl versions`)", as_json=as_json)

    async def change(access: RegistryAccess) -> dict[str, Any]:
        registry = access.registry
        known = [info.version for info in await registry.versions(service)]
        if version not in known and not force:
            _never_seen(service, version, known, as_json=as_json)
        changed = await registry.invalidate(service, version, reason, {"by": _operator()})
        state = await registry.version_state(service, version)
        return {"service": service, "changed": changed, "seen": version in known} | _state_fields(
            state
        )

    data = with_registry(change, as_json=as_json)

    def render() -> None:
        if not data["changed"]:
            console.print(
                f"{service} {version} was already invalid (since "
                f"{local_time(data['invalidated_at'])}): {data['reason']}",
                markup=False,
            )
            return
        console.print(f"[bold]{service} {version}[/] is now [bold red]invalid[/]: {escape(reason)}")
        err_console.print(
            "it gets no traffic and its instances are refused at REGISTER; undo with "
            f"`deployctl version reinstate {service} {version}`",
            markup=False,
        )

    emit(data, as_json=as_json, render=render)


@version_app.command("reinstate")
def reinstate_version(
    service: ServiceArgument,
    version: VersionArgument,
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="Why, for the record.")
    ] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Make an invalid version valid again, with fresh outcome counts."""
    why = reason if reason and reason.strip() else f"reinstated by {_operator()}"

    async def change(access: RegistryAccess) -> dict[str, Any]:
        registry = access.registry
        known = [info.version for info in await registry.versions(service)]
        if version not in known:
            _never_seen_for_reinstate(service, version, known, as_json=as_json)
        changed = await registry.reinstate(service, version, why)
        state = await registry.version_state(service, version)
        return {"service": service, "changed": changed} | _state_fields(state)

    data = with_registry(change, as_json=as_json)

    def render() -> None:
        if data["changed"]:
            console.print(f"[bold]{service} {version}[/] is [green]valid[/] again: {escape(why)}")
        else:
            console.print(f"{service} {version} was not invalid: nothing to do", markup=False)

    emit(data, as_json=as_json, render=render)


def _never_seen_for_reinstate(
    service: str, version: str, known: list[str], *, as_json: bool
) -> NoReturn:
    """Exit 1: there is no such version to reinstate."""
    fail(
        f"no version {version!r} of {service} in the registry (known: "
        f"{', '.join(known) or 'none'}); `deployctl versions {service}` lists them",
        code=Exit.NO,
        as_json=as_json,
        service=service,
        version=version,
    )

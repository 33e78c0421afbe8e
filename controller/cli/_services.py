"""``deployctl services`` and ``deployctl service``: what is registered, and service passwords."""

from __future__ import annotations

import secrets
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from communicator import InstanceInfo, VersionInfo
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller.cli._registry import RegistryAccess, local_time, with_registry

#: Shortest password accepted from an operator (``--generate`` makes 32 characters).
MIN_PASSWORD_LENGTH = 16
#: Random bytes in a generated password (base64url: 4 characters per 3 bytes).
_GENERATED_BYTES = 24

service_app = typer.Typer(
    help="One service: show its instances and versions, set its password.", no_args_is_help=True
)

ServiceArgument = Annotated[str, typer.Argument(help="The service name, e.g. orders.")]


def _split_versions(versions: list[VersionInfo]) -> dict[str, list[str]]:
    return {
        "valid": [info.version for info in versions if info.state.valid],
        "invalid": [info.version for info in versions if not info.state.valid],
    }


def _instance_row(info: InstanceInfo) -> dict[str, Any]:
    return {
        "instance": info.instance,
        "server": info.server,
        "zone": info.zone,
        "version": info.version,
        "client_id": info.client_id,
        "registered_at": info.registered_at,
        "commands": list(info.commands),
    }


def list_services(as_json: bool = JSON_OPTION) -> None:
    """List every service: its instances, valid and invalid versions, and commands."""

    async def summary(access: RegistryAccess, service: str) -> dict[str, Any]:
        registry = access.registry
        return {
            "service": service,
            "instances": len(await registry.instances(service)),
            "versions": _split_versions(await registry.versions(service)),
            "commands": await registry.commands(service),
            "password": await access.passwords.has_password(service),
        }

    async def collect(access: RegistryAccess) -> list[dict[str, Any]]:
        return [await summary(access, service) for service in await access.registry.services()]

    rows = with_registry(collect, as_json=as_json)

    def render() -> None:
        if not rows:
            console.print("no services yet: they appear when an instance registers")
            return
        table = Table("service", "instances", "valid", "invalid", "commands", box=None)
        for row in rows:
            table.add_row(
                f"[bold]{row['service']}[/]",
                str(row["instances"]),
                ", ".join(row["versions"]["valid"]),
                f"[red]{', '.join(row['versions']['invalid'])}[/]",
                ", ".join(row["commands"]),
            )
        console.print(table)

    emit(rows, as_json=as_json, render=render)


def unknown_service(service: str, *, as_json: bool) -> NoReturn:
    """Exit 1: the registry has never heard of ``service``."""
    fail(
        f"no service {service!r} in the registry; `deployctl services` lists the services",
        code=Exit.NO,
        as_json=as_json,
        service=service,
    )


@service_app.command("show")
def show_service(service: ServiceArgument, as_json: bool = JSON_OPTION) -> None:
    """Show one service: its instances, its versions with their state, and its commands."""

    async def collect(access: RegistryAccess) -> dict[str, Any] | None:
        registry = access.registry
        if not await access.service_known(service):
            return None
        return {
            "service": service,
            "instances": [_instance_row(info) for info in await registry.instances(service)],
            "versions": [
                {
                    "version": info.version,
                    "state": info.state.state.value,
                    "reason": info.state.reason,
                }
                for info in await registry.versions(service)
            ],
            "commands": await registry.commands(service),
            "password": await access.passwords.has_password(service),
        }

    data = with_registry(collect, as_json=as_json)
    if data is None:
        unknown_service(service, as_json=as_json)

    def render() -> None:
        password = "set" if data["password"] else "not set"
        console.print(f"[bold]{service}[/]  password: {password}")
        console.print(f"commands: {', '.join(data['commands']) or '(none known)'}")
        if data["instances"]:
            table = Table(
                "instance", "server", "zone", "version", "client id", "registered at", box=None
            )
            for row in data["instances"]:
                cells = ("instance", "server", "zone", "version", "client_id")
                table.add_row(
                    *(escape(row[cell]) for cell in cells), local_time(row["registered_at"])
                )
            console.print(table)
        else:
            console.print("no instance registered")
        versions = Table("version", "state", "reason", box=None)
        for row in data["versions"]:
            state = row["state"] if row["state"] == "valid" else f"[bold red]{row['state']}[/]"
            versions.add_row(row["version"], state, escape(row["reason"]))
        console.print(versions)

    emit(data, as_json=as_json, render=render)


def _interactive() -> bool:
    """Whether a person can answer a hidden prompt on stdin."""
    return sys.stdin.isatty()


def _password_from_stdin() -> str:
    """The first line of stdin, without its line ending (the rest is ignored)."""
    return typer.get_text_stream("stdin").readline().rstrip("\r\n")


def _choose_password(*, from_stdin: bool, generate: bool, service: str, as_json: bool) -> str:
    """The new password, from stdin, generated, or typed twice at a hidden prompt."""
    if from_stdin and generate:
        fail("--password-stdin and --generate exclude each other: pick one", as_json=as_json)
    if generate:
        return secrets.token_urlsafe(_GENERATED_BYTES)
    if from_stdin:
        password = _password_from_stdin()
    elif _interactive():
        password = typer.prompt(
            f"New password for {service}", hide_input=True, confirmation_prompt=True
        )
    else:
        fail(
            "stdin is not a terminal, so there is nobody to prompt: pipe the password in "
            "with --password-stdin, or pass --generate",
            as_json=as_json,
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        fail(
            f"the password is too short ({len(password)} characters): use "
            f"{MIN_PASSWORD_LENGTH} or more, or let --generate make one",
            as_json=as_json,
        )
    return password


@service_app.command("password")
def set_service_password(
    service: ServiceArgument,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
    ] = False,
    generate: Annotated[
        bool,
        typer.Option("--generate", help="Make a random strong password and print it once."),
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Set or rotate a service's password; the old one stops working at once.

    Instances give it in REGISTER (password=...). Without an option it is
    asked twice at a hidden prompt. Instances already registered stay
    registered; they need the new password at their next REGISTER.
    """
    password = _choose_password(
        from_stdin=password_stdin, generate=generate, service=service, as_json=as_json
    )

    async def store(access: RegistryAccess) -> bool:
        had = await access.passwords.has_password(service)
        await access.passwords.set_password(service, password)
        return had

    rotated = with_registry(store, as_json=as_json)
    data: dict[str, Any] = {"service": service, "rotated": rotated}
    if generate:
        data["password"] = password  # shown this once; only its hash is stored

    def render() -> None:
        done = "rotated" if rotated else "set"
        if generate:
            # The note goes to stderr, so `$(deployctl service password SVC --generate)` is
            # the password alone.
            err_console.print(
                f"password of {service} {done}; here it is, shown this once (store it now):"
            )
            console.print(password, markup=False)
        else:
            console.print(f"password of {service} {done}")

    emit(data, as_json=as_json, render=render)

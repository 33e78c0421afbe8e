"""``deployctl alerts``: the raised status flags with what to do, taking them down, raising one.

The system raises status flags (a version invalidated, a rollout aborted, bad
passwords); scripts and services raise their own with ``alerts raise``. Each
one says what it means and what to do (``help``) and where to read more
(``help_uri``), and ``deployctl alerts`` shows that first.
"""

from __future__ import annotations

import getpass
import socket
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from controller.cli._output import JSON_OPTION, Exit, console, emit, fail
from controller.cli._registry import RegistryAccess, local_time, with_registry
from flags import (
    DEFAULT_PRIORITY,
    FlagKeys,
    StatusFlag,
    StatusFlagError,
    StatusFlags,
    parse_flag_id,
)

alerts_app = typer.Typer(
    help="Status flags: problems raised for an administrator, each with what to do.",
    invoke_without_command=True,
)

FlagIdArgument = Annotated[
    str, typer.Argument(metavar="UNIT/SECTION/NAME", help="The flag, e.g. rollouts/orders/aborted.")
]

_RAISE_EXAMPLE = (
    "deployctl alerts raise disks/web_01/almost-full --message '/var is 93% full' "
    "--help-text 'Logs fill /var; run logrotate -f, then look at what grew with du -xh /var' "
    "--help-uri https://wiki.example.com/runbooks/disk-full"
)


def _store(access: RegistryAccess) -> StatusFlags:
    return StatusFlags(redis=access.redis, keys=FlagKeys(access.settings.key_prefix))


def _operator() -> str:
    """Who runs the command, as user@host (for ``source`` and the lowering's announcement)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "an operator"
    return f"{user}@{socket.gethostname()}"


def _flag_json(flag: StatusFlag) -> dict[str, Any]:
    """The flag as JSON: its id and what to do first, then the rest."""
    return {
        "id": flag.id,
        "priority": flag.priority,
        "message": flag.message,
        "help": flag.help,
        "help_uri": flag.help_uri,
    } | flag.model_dump(mode="json", exclude={"priority", "message", "help", "help_uri"})


def _checked_id(flag_id: str, *, as_json: bool) -> str:
    """The id if it is well formed, else exit 2 saying how to write one."""
    try:
        parse_flag_id(flag_id)
    except StatusFlagError as exc:
        fail(str(exc), code=Exit.USAGE, as_json=as_json)
    return flag_id


def _priority_style(priority: int) -> str:
    return "bold red" if priority >= 80 else "yellow" if priority >= 50 else "cyan"


def _render(flags: list[StatusFlag]) -> None:
    if not flags:
        console.print("no status flags raised")
        return
    for index, flag in enumerate(flags):
        if index:
            console.print()
        style = _priority_style(flag.priority)
        console.print(
            f"[{style}]{flag.priority:>3}[/] [bold]{escape(flag.id)}[/]: {escape(flag.message)}"
        )
        console.print(f"    {escape(flag.help)}")
        console.print(f"    more: {escape(flag.help_uri)}", style="blue")
        details = [
            f"raised {flag.count}x",
            f"first {local_time(flag.first_raised)}",
            f"last {local_time(flag.last_raised)}",
        ]
        if flag.source:
            details.append(f"by {flag.source}")
        if flag.manual_down:
            details.append(f"take down with `deployctl alerts down {flag.id}`")
        elif flag.lower_after is not None:
            details.append(f"goes down after {flag.lower_after:g} s without a raise")
        if flag.tags:
            details.append(" ".join(flag.tags))
        console.print(f"    {escape(', '.join(details))}", style="dim")


@alerts_app.callback()
def list_alerts(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List the raised status flags, most urgent first, each with what to do."""
    if ctx.invoked_subcommand is not None:
        return

    async def read(access: RegistryAccess) -> list[StatusFlag]:
        return await _store(access).list()

    flags = with_registry(read, as_json=as_json)
    emit({"flags": [_flag_json(f) for f in flags]}, as_json=as_json, render=lambda: _render(flags))


@alerts_app.command("down")
def take_down(flag_id: FlagIdArgument, as_json: bool = JSON_OPTION) -> None:
    """Take a status flag down by hand (acknowledge it); exit 1 if it is not raised."""
    _checked_id(flag_id, as_json=as_json)

    async def lower(access: RegistryAccess) -> bool:
        return await _store(access).lower(flag_id, by_hand=True, by=_operator())

    if not with_registry(lower, as_json=as_json):
        fail(
            f"no status flag {flag_id} is raised; `deployctl alerts` lists those that are",
            code=Exit.NO,
            as_json=as_json,
            id=flag_id,
        )
    emit(
        {"id": flag_id, "lowered": True},
        as_json=as_json,
        render=lambda: console.print(f"{flag_id} is down", markup=False),
    )


@alerts_app.command("raise")
def raise_alert(
    flag_id: FlagIdArgument,
    message: Annotated[str, typer.Option("--message", "-m", help="What happened, this time.")],
    help_text: Annotated[
        str | None,
        typer.Option("--help-text", help="What it means and what to do about it (required)."),
    ] = None,
    help_uri: Annotated[
        str | None,
        typer.Option("--help-uri", help="An absolute http(s) URL with the whole story (required)."),
    ] = None,
    priority: Annotated[
        int,
        typer.Option("--priority", "-p", min=0, max=100, help="0 to 100; higher is listed first."),
    ] = DEFAULT_PRIORITY,
    manual_down: Annotated[
        bool, typer.Option("--manual-down", help="Only `deployctl alerts down` takes it down.")
    ] = False,
    lower_after: Annotated[
        float | None,
        typer.Option("--lower-after", help="Seconds without a raise after which it goes down."),
    ] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", help="A word to filter on (repeat for more).")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Who raises it (default: user@host).")
    ] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Raise a status flag (or raise it again: it counts), for scripts and services."""
    _checked_id(flag_id, as_json=as_json)
    missing = [
        name for name, value in (("--help-text", help_text), ("--help-uri", help_uri)) if not value
    ]
    if missing:
        fail(
            f"a status flag needs {' and '.join(missing)}: what it means and what to do, and "
            f"a page with the whole story; for example:\n{_RAISE_EXAMPLE}",
            code=Exit.USAGE,
            as_json=as_json,
        )
    try:
        flag = StatusFlag.from_id(
            flag_id,
            message=message,
            help=help_text,
            help_uri=help_uri,
            priority=priority,
            manual_down=manual_down,
            lower_after=lower_after,
            tags=tuple(tags or ()),
            source=source or _operator(),
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'flag'}: {error['msg']}"
            for error in exc.errors()
        )
        fail(f"status flag {flag_id} refused: {problems}", code=Exit.USAGE, as_json=as_json)

    async def store(access: RegistryAccess) -> StatusFlag:
        return await _store(access).raise_flag(flag)

    raised = with_registry(store, as_json=as_json)
    emit(
        _flag_json(raised),
        as_json=as_json,
        render=lambda: console.print(
            f"{raised.id} is raised ({raised.count}x): {raised.message}", markup=False
        ),
    )

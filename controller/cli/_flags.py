"""``deployctl flag``: feature flags with help, from the command line."""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from controller.cli._output import JSON_OPTION, Exit, console, emit, fail
from controller.cli._registry import RegistryAccess, with_registry
from flags import (
    Flag,
    FlagError,
    FlagKeys,
    FlagState,
    FlagStore,
    FlagStoreError,
    StoredFlag,
    evaluate,
    flagd_document,
    flags_from_flagd_document,
)

app = typer.Typer(help="Feature flags: every one with help and a help URL.", no_args_is_help=True)
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the flag's history).")]


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _store(access: RegistryAccess) -> FlagStore:
    return FlagStore(redis=access.redis, keys=FlagKeys(access.settings.key_prefix))


def _value(text: str) -> Any:
    """A variant value from the command line: JSON when it parses (true, 3, {...}), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _flag_data(stored: StoredFlag) -> dict[str, Any]:
    flag = stored.flag
    return {
        "key": flag.key,
        "revision": stored.revision,
        "help": flag.help,
        "help_uri": flag.help_uri,
        "state": str(flag.state),
        "default": flag.default_variant,
        "variants": flag.variants,
        "targeting": flag.targeting,
        "owner": flag.owner,
        "tags": list(flag.tags),
        "expires": flag.expires.isoformat() if flag.expires else None,
        "stale": flag.is_stale(datetime.now(UTC)),
    }


def _run(action: Any, as_json: bool) -> Any:
    """Run a store action, turning flag errors into exit 2 and a missing flag into exit 1."""

    async def guarded(access: RegistryAccess) -> Any:
        try:
            return await action(access)
        except FlagError as exc:
            fail(str(exc), code=Exit.USAGE, as_json=as_json)
        except FlagStoreError as exc:
            fail(str(exc), code=Exit.NO if "no flag" in str(exc) else Exit.USAGE, as_json=as_json)

    return with_registry(guarded, as_json=as_json)


def _show(stored: StoredFlag, as_json: bool) -> None:
    data = _flag_data(stored)

    def render() -> None:
        flag = stored.flag
        console.print(
            Text.assemble((flag.key, "bold"), f"  {flag.state}  revision {stored.revision}")
        )
        console.print(Text(flag.help, style="cyan"))
        console.print(f"more: {flag.help_uri}", markup=False)
        console.print(
            f"variants: {json.dumps(flag.variants)}  default: {flag.default_variant}", markup=False
        )
        if flag.targeting:
            console.print(f"targeting: {json.dumps(flag.targeting)}", markup=False)
        if data["stale"]:
            console.print(
                f"[yellow]stale: expired {data['expires']}; remove it once its feature is proven[/]"
            )

    emit(data, as_json=as_json, render=render)


@app.command("create")
def create(
    key: Annotated[str, typer.Argument(help="The flag's key.")],
    help_text: Annotated[
        str, typer.Option("--help-text", help="What it does, and what to do when it misbehaves.")
    ],
    help_uri: Annotated[
        str, typer.Option("--help-uri", help="Absolute http(s) URL to its documentation.")
    ],
    variants: Annotated[
        list[str] | None,
        typer.Option("--variant", help="name=value (repeatable); default on=true off=false."),
    ] = None,
    default: Annotated[str | None, typer.Option("--default", help="The default variant.")] = None,
    owner: Annotated[str | None, typer.Option(help="Who to ask about it.")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="A label (repeatable).")] = None,
    expires: Annotated[
        str | None, typer.Option(help="Date after which the flag is reported stale.")
    ] = None,
    reason: ReasonOption = "created",
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a flag (refused without --help-text and --help-uri)."""
    pairs = [v.partition("=") for v in variants or ["on=true", "off=false"]]
    if any(not sep for _, sep, _ in pairs):
        fail("each --variant is name=value, e.g. --variant on=true", as_json=as_json)
    values = {name: _value(text) for name, _, text in pairs}

    async def action(access: RegistryAccess) -> StoredFlag:
        flag = Flag.model_validate(
            {
                "key": key,
                "variants": values,
                "defaultVariant": default or ("off" if "off" in values else next(iter(values))),
                "help": help_text,
                "help_uri": help_uri,
                "owner": owner,
                "tags": tuple(tags or ()),
                "expires": expires,
            }
        )
        revision = await _store(access).put(flag, who=_who(), why=reason, revision=0)
        return StoredFlag(flag, revision)

    try:
        stored = _run(action, as_json)
    except Exception as exc:  # pydantic's ValidationError: say what to fix
        if type(exc).__name__ != "ValidationError":
            raise
        fail(str(FlagError(key, [str(e["msg"]) for e in exc.errors()])), as_json=as_json)  # type: ignore[attr-defined]
    _show(stored, as_json)


@app.command("list")
def list_flags(
    stale: Annotated[
        bool, typer.Option("--stale", help="Only flags past their expected lifetime.")
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """List the flags (help included)."""
    found = _run(lambda access: _store(access).all(), as_json)
    rows = [_flag_data(s) for s in found.values()]
    if stale:
        rows = [r for r in rows if r["stale"]]

    def render() -> None:
        table = Table("flag", "state", "default", "help", box=None)
        for row in rows:
            table.add_row(
                row["key"] + (" [yellow](stale)[/]" if row["stale"] else ""),
                row["state"],
                str(row["default"]),
                row["help"],
            )
        console.print(table if rows else "no flags")

    emit(rows, as_json=as_json, render=render)


@app.command("show")
def show(
    key: Annotated[str, typer.Argument(help="The flag.")], as_json: bool = JSON_OPTION
) -> None:
    """Show a flag, its help first."""

    async def action(access: RegistryAccess) -> StoredFlag:
        stored = await _store(access).get(key)
        if stored is None:
            raise FlagStoreError(f"no flag {key!r}; `deployctl flag list` shows the flags")
        return stored

    _show(_run(action, as_json), as_json)


def _change(key: str, change: Any, reason: str, as_json: bool) -> None:
    async def action(access: RegistryAccess) -> StoredFlag:
        return await _store(access).update(key, change, who=_who(), why=reason)

    _show(_run(action, as_json), as_json)


@app.command("on")
def switch_on(
    key: Annotated[str, typer.Argument()],
    reason: ReasonOption = "switched on",
    as_json: bool = JSON_OPTION,
) -> None:
    """Enable a flag."""
    _change(key, lambda f: f.model_copy(update={"state": FlagState.ENABLED}), reason, as_json)


@app.command("off")
def switch_off(
    key: Annotated[str, typer.Argument()],
    reason: ReasonOption = "switched off",
    as_json: bool = JSON_OPTION,
) -> None:
    """Disable a flag: every service gets its code default at once."""
    _change(key, lambda f: f.model_copy(update={"state": FlagState.DISABLED}), reason, as_json)


@app.command("set")
def set_default(
    key: Annotated[str, typer.Argument()],
    default: Annotated[str, typer.Option("--default", help="The new default variant.")],
    reason: ReasonOption = "default changed",
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a flag's default variant."""

    def change(flag: Flag) -> Flag:
        if default not in flag.variants:
            raise FlagError(
                flag.key, [f"{default!r} is not a variant ({', '.join(flag.variants)})"]
            )
        return flag.model_copy(update={"default_variant": default})

    _change(key, change, reason, as_json)


@app.command("eval")
def eval_flag(
    key: Annotated[str, typer.Argument()],
    context: Annotated[
        list[str] | None, typer.Option("--context", help="k=v (repeatable; targetingKey=...).")
    ] = None,
    default: Annotated[
        str, typer.Option(help="The caller's default value (JSON or text).")
    ] = "false",
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluate a flag as a service would: value, variant, reason, error code (missing ones too)."""
    values = {k: _value(v) for k, _, v in (c.partition("=") for c in context or [])}

    async def action(access: RegistryAccess) -> Any:
        stored = await _store(access).get(key)
        return evaluate(stored.flag if stored else None, key, _value(default), values)

    result = _run(action, as_json)
    data = {
        "key": key,
        "value": result.value,
        "variant": result.variant,
        "reason": str(result.reason),
        "error_code": str(result.error_code) if result.error_code else None,
        "error_message": result.error_message,
        "metadata": dict(result.metadata),
    }
    emit(
        data,
        as_json=as_json,
        render=lambda: console.print(
            f"{key} = {json.dumps(result.value)}  (variant {result.variant}, {result.reason}"
            f"{', ' + str(result.error_code) if result.error_code else ''})",
            markup=False,
        ),
    )
    if result.error_code is not None:
        raise typer.Exit(int(Exit.NO))


@app.command("history")
def history(key: Annotated[str, typer.Argument()], as_json: bool = JSON_OPTION) -> None:
    """Every change of a flag: who, when, what, why."""
    changes = _run(lambda access: _store(access).history(key), as_json)
    rows = [
        {
            "at": c.at,
            "action": c.action,
            "revision": c.revision,
            "who": c.who,
            "why": c.why,
            "changes": c.changes,
        }
        for c in changes
    ]

    def render() -> None:
        table = Table("when", "rev", "who", "what", "why", box=None)
        for c in changes:
            when = datetime.fromtimestamp(c.at).astimezone().strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(when, str(c.revision), c.who, "; ".join(c.changes), c.why)
        console.print(table if changes else f"no history for {key}")

    emit(rows, as_json=as_json, render=render)


@app.command("delete")
def delete(
    key: Annotated[str, typer.Argument()],
    reason: ReasonOption = "deleted",
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete a flag (services fall back to their code defaults)."""
    deleted = _run(lambda access: _store(access).delete(key, who=_who(), why=reason), as_json)
    emit(
        {"key": key, "deleted": deleted},
        as_json=as_json,
        render=lambda: console.print(f"{key} deleted" if deleted else f"no flag {key}"),
    )
    if not deleted:
        raise typer.Exit(int(Exit.NO))


@app.command("import")
def import_flags(
    file: Annotated[Path, typer.Argument(help="A flagd flag definition file (JSON).")],
    reason: ReasonOption = "imported",
    as_json: bool = JSON_OPTION,
) -> None:
    """Import flags from flagd JSON (help and help_uri in each flag's metadata)."""
    try:
        found = flags_from_flagd_document(file.read_bytes())
    except OSError as exc:
        fail(f"cannot read {file}: {exc}", as_json=as_json)
    except FlagError as exc:
        fail(str(exc), as_json=as_json)

    async def action(access: RegistryAccess) -> list[str]:
        for flag in found.values():
            await _store(access).put(flag, who=_who(), why=reason)
        return sorted(found)

    keys = _run(action, as_json)
    emit(
        {"imported": keys},
        as_json=as_json,
        render=lambda: console.print(f"imported {len(keys)} flags: {', '.join(keys)}"),
    )


@app.command("export")
def export(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export every flag as a flagd flag definition file."""
    found = _run(lambda access: _store(access).all(), False)
    document = flagd_document([s.flag for s in found.values()])
    if out is None:
        console.file.write(document + "\n")
    else:
        out.write_text(document + "\n")

"""``deployctl messages``: list, show and check messages against their definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from communicator import (
    DefinitionError,
    MessageDefinitions,
    MessageError,
    decode,
    format_json,
    format_line,
)
from communicator.wire import render_definitions, replace_generated
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail

app = typer.Typer(
    help="Message definitions: list them, show one, check a message.", no_args_is_help=True
)

DefinitionsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--definitions",
        "-d",
        help="Extra directory of message definitions (repeatable; later ones override).",
        envvar="DEPLOYCTL_DEFINITIONS",
    ),
]


def _load(directories: list[Path] | None, *, as_json: bool = False) -> MessageDefinitions:
    try:
        return MessageDefinitions.load(*(directories or []))
    except DefinitionError as exc:
        fail(str(exc), as_json=as_json)


@app.command("list")
def list_messages(definitions: DefinitionsOption = None, as_json: bool = JSON_OPTION) -> None:
    """List every defined command."""
    loaded = _load(definitions, as_json=as_json)
    rows: list[dict[str, Any]] = [
        {
            "command": command,
            "broadcast": loaded[command].broadcast,
            "reply": loaded[command].reply,
            "parameters": list(loaded[command].parameters),
            "description": loaded[command].description,
            "source": loaded.sources.get(command),
        }
        for command in loaded.commands
    ]

    def render() -> None:
        table = Table("command", "broadcast", "parameters", "description", box=None)
        for row in rows:
            table.add_row(
                f"[bold]{row['command']}[/]",
                "yes" if row["broadcast"] else "",
                ", ".join(row["parameters"]),
                row["description"],
            )
        console.print(table)

    emit(rows, as_json=as_json, render=render)


@app.command("show")
def show_message(
    command: Annotated[str, typer.Argument(help="The command, e.g. REGISTER.")],
    definitions: DefinitionsOption = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one command's definition: its parameters, validators and whether it may broadcast."""
    loaded = _load(definitions, as_json=as_json)
    definition = loaded.get(command.upper())
    if definition is None:
        fail(
            f"no definition for {command}; `deployctl messages list` shows the defined commands",
            code=Exit.NO,
            as_json=as_json,
        )
    data = definition.model_dump(mode="json")
    data["source"] = loaded.sources.get(definition.command)

    def render() -> None:
        console.print(f"[bold]{definition.command}[/]  {definition.description}")
        facts = [f"broadcast: {'yes' if definition.broadcast else 'no'}"]
        if definition.reply:
            facts.append(f"reply: {definition.reply}")
        console.print("  ".join(facts) + f"  [dim]({data['source']})[/]")
        if not definition.parameters:
            console.print("no parameters of its own")
            return
        table = Table("parameter", "value", "required", "description", box=None)
        for name, spec in definition.parameters.items():
            table.add_row(
                name, spec.value.describe(), "yes" if spec.required else "", spec.description
            )
        console.print(table)

    emit(data, as_json=as_json, render=render)


@app.command("check")
def check_message(
    line: Annotated[
        str, typer.Argument(help="A message in the text form or JSON; '-' reads stdin.")
    ],
    definitions: DefinitionsOption = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Parse a message in either wire form and validate it; exit 0 if valid, else 1."""
    loaded = _load(definitions, as_json=as_json)
    text = typer.get_text_stream("stdin").read() if line == "-" else line
    try:
        message = decode(text)
    except MessageError as exc:
        if as_json:
            error = {"parameter": None, "reason": exc.reason, "position": exc.position}
            emit({"valid": False, "problems": [error]}, as_json=True, render=lambda: None)
        else:
            err_console.print(f"[bold red]invalid:[/] {exc}")
            if exc.position is not None and len(text) < 200:
                err_console.print(f"  {text}\n  {' ' * exc.position}^", markup=False)
        raise typer.Exit(int(Exit.NO)) from None
    problems = loaded.validate(message)
    if as_json:
        data = {
            "valid": not problems,
            "message": message.model_dump(),
            "problems": [{"parameter": p.parameter, "reason": p.reason} for p in problems],
        }
        emit(data, as_json=True, render=lambda: None)
    elif problems:
        err_console.print(f"[bold red]invalid:[/] {len(problems)} problem(s) in {message.command}")
        for problem in problems:
            err_console.print(f"  - {problem}", markup=False)
    else:
        console.print(f"[green]valid[/] {message.command}")
        console.print(f"  text: {format_line(message)}", markup=False)
        console.print(f"  json: {format_json(message)}", markup=False)
    raise typer.Exit(int(Exit.NO if problems else Exit.OK))


@app.command("docs")
def messages_docs(
    write: Annotated[
        Path | None,
        typer.Option(
            help="Update the generated section of this Markdown file instead of printing."
        ),
    ] = None,
    definitions: DefinitionsOption = None,
) -> None:
    """Print the definitions reference in Markdown (or update it inside docs/messages.md)."""
    generated = render_definitions(_load(definitions))
    if write is None:
        console.file.write(generated)
        return
    try:
        write.write_text(replace_generated(write.read_text(encoding="utf-8"), generated))
    except (OSError, ValueError) as exc:
        fail(f"cannot update {write}: {exc}")
    err_console.print(f"updated {write}")

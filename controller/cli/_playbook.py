"""``deployctl playbook``: validate, show, list and import rollout playbooks, and their schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from communicator import DefinitionError
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller.playbook._argo import import_argo
from controller.playbook._playbook import (
    Playbook,
    dump_playbook,
    load_playbook,
    playbook_schema,
    shipped_playbooks,
)

playbook_app = typer.Typer(
    help="Rollout playbooks: check one, show the shipped ones, import Argo Rollouts manifests.",
    no_args_is_help=True,
)


def _load(path: Path, *, as_json: bool) -> Playbook:
    try:
        return load_playbook(path)
    except DefinitionError as exc:
        fail(str(exc), as_json=as_json, valid=False, path=exc.path, line=exc.line)


def _summary(playbook: Playbook, source: str) -> dict[str, Any]:
    return {
        "name": playbook.name,
        "description": playbook.description,
        "strategy": playbook.strategy,
        "source": source,
        "steps": [step.describe() for step in playbook.steps],
        "then": (
            f"then the old color stays registered {playbook.scale_down_delay:g}s "
            "(instant rollback) and retires"
            if playbook.strategy == "bluegreen"
            else "then promote: the canary becomes the stable version"
        ),
        "rollback": playbook.rollback.describe(),
        "playbook": playbook.model_dump(mode="json"),
    }


def _render(summary: dict[str, Any], *, rollback: bool = True) -> None:
    console.print(
        f"[bold]{escape(summary['name'])}[/] ({summary['strategy']}, "
        f"{len(summary['steps'])} steps)  [dim]{escape(summary['source'])}[/]"
    )
    console.print(summary["description"].strip(), markup=False)
    for number, step in enumerate(summary["steps"], 1):
        console.print(f"  {number:>2}. {step}", markup=False)
    console.print(f"      {summary['then']}", style="dim", markup=False)
    if rollback:
        console.print("rollback:")
        for line in summary["rollback"]:
            console.print(f"  - {line}", markup=False)


@playbook_app.command("validate")
def validate_playbook(
    file: Annotated[Path, typer.Argument(help="The playbook file (YAML).")],
    as_json: bool = JSON_OPTION,
) -> None:
    """Check a playbook file: exit 0 with a summary of its steps, or 2 with each problem's line."""
    playbook = _load(file, as_json=as_json)
    summary = {"valid": True, **_summary(playbook, str(file))}

    def render() -> None:
        console.print("[green]valid[/] ", end="")
        _render(summary, rollback=False)

    emit(summary, as_json=as_json, render=render)


@playbook_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of playbook files (for editors: yaml-language-server, IDEs)."""
    emit(playbook_schema(), as_json=True, render=lambda: None)


@playbook_app.command("import")
def import_manifest(
    manifest: Annotated[
        str, typer.Argument(help="An Argo Rollouts manifest (YAML); '-' reads stdin.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the playbook to this file.")
    ] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Convert an Argo Rollout (canary or blueGreen) into a playbook; what it skips is on stderr."""
    try:
        text = (
            typer.get_text_stream("stdin").read()
            if manifest == "-"
            else Path(manifest).read_text(encoding="utf-8")
        )
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {manifest}: {exc}", as_json=as_json)
    source = "<stdin>" if manifest == "-" else manifest
    try:
        playbook, warnings = import_argo(text, source)
    except DefinitionError as exc:
        fail(str(exc), as_json=as_json, path=exc.path, line=exc.line)
    written = (
        f"# Imported from {source} by `deployctl playbook import`.\n"
        "# Review its rollback policy and analyses; check it: `deployctl playbook validate`.\n"
        + dump_playbook(playbook)
    )
    if out is not None:
        try:
            out.write_text(written, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc}", as_json=as_json)
    if as_json:
        data = {
            "playbook": playbook.model_dump(mode="json"),
            "warnings": warnings,
            "out": str(out) if out else None,
        }
        emit(data, as_json=True, render=lambda: None)
        return
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if out is None:
        console.file.write(written)
    else:
        err_console.print(f"wrote {escape(str(out))} ({len(playbook.steps)} steps)")


@playbook_app.command("list")
def list_playbooks(as_json: bool = JSON_OPTION) -> None:
    """List the playbooks shipped with deployctl."""
    rows: list[dict[str, Any]] = []
    for name, path in shipped_playbooks().items():
        playbook = _load(path, as_json=as_json)
        rows.append(
            {
                "name": name,
                "strategy": playbook.strategy,
                "steps": len(playbook.steps),
                "description": playbook.description.strip(),
                "path": str(path),
            }
        )

    def render() -> None:
        for row in rows:
            console.print(
                f"[bold]{escape(row['name'])}[/] ({row['strategy']}, {row['steps']} steps)"
            )
            console.print(f"  {row['description']}".replace("\n", "\n  "), markup=False)

    emit(rows, as_json=as_json, render=render)


@playbook_app.command("show")
def show_playbook(
    playbook: Annotated[str, typer.Argument(help="A shipped playbook's name, or a file.")],
    yaml_text: Annotated[
        bool, typer.Option("--yaml", help="Print the file as written (to start your own).")
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a playbook: its steps in words and its rollback policy."""
    shipped = shipped_playbooks()
    path = shipped.get(playbook, Path(playbook))
    if not path.is_file():
        fail(
            f"no shipped playbook or file named {playbook}: shipped ones are "
            f"{', '.join(shipped) or 'none'} (`deployctl playbook list`)",
            code=Exit.NO,
            as_json=as_json,
        )
    loaded = _load(path, as_json=as_json)
    if yaml_text and not as_json:
        console.file.write(path.read_text(encoding="utf-8"))
        return
    summary = _summary(loaded, str(path))
    emit(summary, as_json=as_json, render=lambda: _render(summary))

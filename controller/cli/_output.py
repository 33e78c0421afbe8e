"""How the CLI speaks: human output with rich, ``--json`` for scripts, exit codes to trust."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

#: Human output goes to stdout; errors and progress to stderr so ``--json`` stays parseable.
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


class Exit(IntEnum):
    """Exit codes of every ``deployctl`` command (documented in docs/operations.md)."""

    OK = 0
    #: The command worked and the answer is "no": invalid message, rollout failed, not found.
    NO = 1
    #: The command could not be carried out as asked: bad option, invalid file or input.
    USAGE = 2
    #: Redis or the broker could not be reached.
    BACKEND = 3
    #: A rollout is still in progress (``status``, ``canary status``).
    IN_PROGRESS = 4


def emit(data: Any, *, as_json: bool, render: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``render`` for the human form."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        render()


def fail(message: str, *, code: Exit = Exit.USAGE, as_json: bool = False, **extra: Any) -> NoReturn:
    """Report an error (what went wrong, and the fix) and exit with ``code``."""
    if as_json:
        sys.stdout.write(json.dumps({"error": message, **extra}, indent=2) + "\n")
    else:
        err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(int(code))

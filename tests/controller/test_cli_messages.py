"""``deployctl messages`` and ``--version``, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from communicator import MessageDefinitions, __version__
from communicator.wire._docs import render_definitions
from controller.cli._app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version() -> None:
    """``--version`` prints the package version and exits 0."""
    code, out, _ = run("--version")
    assert code == 0
    assert out.strip() == f"deployctl {__version__}"


def test_check_valid_message_as_json() -> None:
    """A valid message exits 0 and prints the parsed message."""
    code, out, _ = run("messages", "check", "orders/ALIVE serial=7", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["valid"] is True
    assert data["message"]["service"] == "orders"
    assert data["message"]["parameters"] == {"serial": "7"}


def test_check_json_wire_form() -> None:
    """The JSON wire form is checked the same way."""
    code, out, _ = run("messages", "check", '{"command":"FAILURE","parameters":{"reason":"x"}}')
    assert code == 0
    assert "valid FAILURE" in out


def test_check_invalid_message_lists_every_problem() -> None:
    """An invalid message exits 1 and lists each problem."""
    code, _, err = run("messages", "check", "REGISTER service=a-b;x=1")
    assert code == 1
    assert "3 problem(s)" in err
    assert "service: 'a-b' does not match" in err
    assert "x: not a parameter of REGISTER" in err
    assert "version: is required but missing" in err


def test_check_unreadable_message_shows_position() -> None:
    """A message that cannot be parsed exits 1 with the position marked."""
    code, out, err = run("messages", "check", 'REGISTER service="a')
    assert code == 1
    assert "never closed at position 17" in err
    code, out, _ = run("messages", "check", 'REGISTER service="a', "--json")
    assert code == 1
    assert json.loads(out)["problems"][0]["position"] == 17


def test_show_and_list() -> None:
    """``show`` gives one definition, ``list`` all of them, both with --json."""
    code, out, _ = run("messages", "show", "REGISTER", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["parameters"]["version"]["required"] is True
    code, out, _ = run("messages", "list", "--json")
    assert code == 0
    assert "REGISTER" in [row["command"] for row in json.loads(out)]


def test_show_unknown_command_says_what_to_do() -> None:
    """An unknown command exits 1 and points at ``messages list``."""
    code, _, err = run("messages", "show", "NOPE")
    assert code == 1
    assert "deployctl messages list" in err


def test_bad_definitions_directory_exits_2(tmp_path: Path) -> None:
    """An invalid site definition is a usage error (exit 2) naming file and line."""
    (tmp_path / "PLACE.yaml").write_text("command: PLACE\ndescription: x\nbroadcast: maybe\n")
    code, _, err = run("messages", "list", "--definitions", str(tmp_path))
    assert code == 2
    assert "PLACE.yaml:3" in err


def test_docs_are_generated_from_the_definitions() -> None:
    """docs/messages.md holds exactly what the shipped definitions render to (`make docs`)."""
    document = (ROOT / "docs" / "messages.md").read_text()
    assert render_definitions(MessageDefinitions.load()) in document + "\n"

"""``deployctl flag`` as a user runs it, against the real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli._app import app

pytestmark = pytest.mark.integration
runner = CliRunner()
HELP = [
    "--help-text",
    "Shows the new checkout; if errors rise, switch it off.",
    "--help-uri",
    "https://wiki.example.com/flags/new-checkout",
]


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> None:
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", redis_url)
    monkeypatch.setenv("DEPLOYCTL_KEY_PREFIX", key_prefix)


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_flag_without_help_is_refused_with_an_example() -> None:
    """Missing help or a relative help URI: exit 2, every problem, and an example to copy."""
    code, _, err = run("flag", "create", "x", "--help-text", " ", "--help-uri", "wiki/x")
    assert code == 2
    assert "help must say what the flag does" in err
    assert "absolute http(s) URL" in err
    assert '"help_uri": "https://' in err


def test_switch_roll_out_and_evaluate() -> None:
    """create, rollout, eval, off: values, variants and reasons as OpenFeature reports them."""
    assert run("flag", "create", "new-checkout", *HELP)[0] == 0
    _, out, _ = run("flag", "eval", "new-checkout", "--json")
    assert json.loads(out)["reason"] == "STATIC"
    assert run("flag", "rollout", "new-checkout", "100")[0] == 0
    _, out, _ = run("flag", "eval", "new-checkout", "--context", "targetingKey=u1", "--json")
    data = json.loads(out)
    assert (data["value"], data["variant"], data["reason"]) == (True, "on", "TARGETING_MATCH")
    assert data["metadata"]["help_uri"] == "https://wiki.example.com/flags/new-checkout"
    assert run("flag", "off", "new-checkout", "--reason", "errors up")[0] == 0
    _code, out, _ = run("flag", "eval", "new-checkout", "--json")
    assert json.loads(out)["reason"] == "DISABLED"
    _, out, _ = run("flag", "history", "new-checkout", "--json")
    assert [h["why"] for h in json.loads(out)][-1] == "errors up"


def test_missing_flag_is_reported_as_openfeature_does() -> None:
    """eval of a flag that does not exist: the default, FLAG_NOT_FOUND, exit 1."""
    code, out, _ = run("flag", "eval", "nope", "--json")
    assert code == 1
    data = json.loads(out)
    assert (data["reason"], data["error_code"], data["value"]) == ("ERROR", "FLAG_NOT_FOUND", False)


def test_show_puts_help_first_and_list_finds_stale_flags() -> None:
    """show starts with the help; list --stale lists only flags past their lifetime."""
    run("flag", "create", "old-banner", *HELP, "--expires", "2020-01-01")
    run("flag", "create", "fresh", *HELP, "--expires", "2999-01-01")
    _, out, _ = run("flag", "show", "old-banner")
    assert out.splitlines()[1].startswith("Shows the new checkout")
    _, out, _ = run("flag", "list", "--stale", "--json")
    assert [f["key"] for f in json.loads(out)] == ["old-banner"]


def test_export_then_import_round_trips(tmp_path: Path) -> None:
    """export writes flagd JSON (help in metadata); import reads it back."""
    run("flag", "create", "new-checkout", *HELP)
    out_file = tmp_path / "flags.json"
    assert run("flag", "export", "--out", str(out_file))[0] == 0
    document = json.loads(out_file.read_text())
    assert document["flags"]["new-checkout"]["metadata"]["help"].startswith("Shows")
    assert run("flag", "delete", "new-checkout")[0] == 0
    code, out, _ = run("flag", "import", str(out_file), "--json")
    assert code == 0
    assert json.loads(out)["imported"] == ["new-checkout"]

"""``deployctl playbook``: validate, schema, import, list and show, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from controller.cli._app import app
from controller.playbook._playbook import load_playbook, parse_playbook, shipped_playbooks
from controller.playbook._steps import STEP_KINDS

runner = CliRunner()
DATA = Path(__file__).parent / "data"
BAD = "name: broken\ndescription: x\nsteps:\n  - setWeight: 20\n  - set_weight: 120\n"


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run ``deployctl ARGS``; return the exit code, stdout and stderr."""
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_validate_a_valid_playbook() -> None:
    """A valid file exits 0 and lists its steps in words."""
    code, out, _ = run("playbook", "validate", str(shipped_playbooks()["canary-manual"]))
    assert code == 0
    assert out.startswith("valid canary-manual (canary, 6 steps)")
    assert "3. pause until promoted" in out


def test_validate_as_json() -> None:
    """``--json`` gives the summary and the playbook itself."""
    code, out, _ = run("playbook", "validate", str(shipped_playbooks()["canary-fast"]), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["valid"] is True
    assert data["steps"][1] == "analyse 5s of traffic (at least 20 outcomes per version)"
    assert data["playbook"]["steps"][0] == {"set_weight": 20}


def test_validate_an_invalid_playbook(tmp_path: Path) -> None:
    """Exit 2, and every problem with its file:line and fix on stderr."""
    path = tmp_path / "broken.yaml"
    path.write_text(BAD)
    code, out, err = run("playbook", "validate", str(path))
    assert code == 2
    assert out == ""
    assert f"{path}:4: steps[0]: unknown step 'setWeight'" in err
    assert "did you mean set_weight?" in err
    assert f"{path}:5: steps[1].set_weight: 120 is above 100" in err


def test_validate_an_invalid_playbook_as_json(tmp_path: Path) -> None:
    """With ``--json`` the error, file and first line are on stdout."""
    path = tmp_path / "broken.yaml"
    path.write_text(BAD)
    code, out, _ = run("playbook", "validate", str(path), "--json")
    assert code == 2
    data = json.loads(out)
    assert (data["valid"], data["path"], data["line"]) == (False, str(path), 4)


def test_validate_a_missing_file(tmp_path: Path) -> None:
    """A file that is not there exits 2 and says so."""
    code, _, err = run("playbook", "validate", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "cannot read the playbook" in err


def test_schema() -> None:
    """The JSON Schema goes to stdout and names every step kind."""
    code, out, _ = run("playbook", "schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "Playbook"
    kinds = {key for d in schema["$defs"].values() for key in d.get("required", [])}
    assert kinds >= STEP_KINDS


def test_import_prints_the_playbook_and_warns_on_stderr() -> None:
    """The playbook YAML on stdout parses; skipped steps are warned about on stderr."""
    code, out, err = run("playbook", "import", str(DATA / "argo-rollout.yaml"))
    assert code == 0
    assert out.startswith("# Imported from ")
    assert parse_playbook(out, "stdout").name == "rollouts-demo"
    assert "warning: Argo step 8 (line 73): setCanaryScale skipped" in err


def test_import_to_a_file(tmp_path: Path) -> None:
    """``--out`` writes a valid playbook file."""
    out_file = tmp_path / "demo.yaml"
    code, out, err = run(
        "playbook", "import", str(DATA / "argo-multi.yaml"), "--out", str(out_file)
    )
    assert code == 0
    assert out == ""
    assert f"wrote {out_file} (8 steps)" in err
    assert load_playbook(out_file).name == "canary-demo"
    assert run("playbook", "validate", str(out_file))[0] == 0


def test_import_as_json_from_stdin() -> None:
    """``-`` reads the manifest from stdin; ``--json`` gives the playbook and the warnings."""
    manifest = (DATA / "argo-rollout.yaml").read_text()
    code, out, _ = run("playbook", "import", "-", "--json", stdin=manifest)
    assert code == 0
    data = json.loads(out)
    assert data["playbook"]["name"] == "rollouts-demo"
    assert data["playbook"]["steps"][3] == {"pause": {"duration": 600.0}}
    assert len(data["warnings"]) == 7
    assert data["out"] is None


def test_import_blue_green(tmp_path: Path) -> None:
    """A blue-green Rollout imports as a bluegreen playbook; its warnings name their lines."""
    path = tmp_path / "bg.yaml"
    path.write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n"
        "  strategy:\n    blueGreen: {activeService: web}\n"
    )
    code, out, err = run("playbook", "import", str(path))
    assert code == 0
    playbook = parse_playbook(out, "stdout")
    assert (playbook.strategy, [step.kind for step in playbook.steps]) == ("bluegreen", ["switch"])
    assert "warning: blueGreen.activeService (line 6): activeService web: nothing to map" in err
    code, out, _ = run("playbook", "import", str(DATA / "argo-bluegreen.yaml"), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["playbook"]["steps"][1:3] == [{"pause": {"duration": None}}, {"switch": {}}]
    assert data["playbook"]["scale_down_delay"] == 600
    assert len(data["warnings"]) == 7


def test_list() -> None:
    """``list`` shows the shipped playbooks; ``--json`` with their files."""
    code, out, _ = run("playbook", "list")
    assert code == 0
    assert "canary-standard (canary, 5 steps)" in out
    code, out, _ = run("playbook", "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert {"canary-standard", "canary-manual", "canary-fast"} <= set(rows)
    assert Path(rows["canary-fast"]["path"]) == shipped_playbooks()["canary-fast"]


def test_show_by_name_and_by_file() -> None:
    """``show`` takes a shipped name or a file, and says the steps and the rollback policy."""
    code, out, _ = run("playbook", "show", "canary-standard")
    assert code == 0
    assert "1. send 10% of traffic to the canary" in out
    assert "abort when no step progresses for 15m" in out
    path = shipped_playbooks()["canary-fast"]
    code, out, _ = run("playbook", "show", str(path), "--json")
    assert code == 0
    assert json.loads(out)["rollback"][2] == "when an analysis is inconclusive: continue"


def test_show_yaml_prints_the_file_as_written() -> None:
    """``--yaml`` prints the file, comments and all, to start one's own."""
    path = shipped_playbooks()["canary-manual"]
    code, out, _ = run("playbook", "show", "canary-manual", "--yaml")
    assert code == 0
    assert out == path.read_text()


def test_show_unknown() -> None:
    """An unknown name exits 1 and lists the shipped ones."""
    code, _, err = run("playbook", "show", "canary-nope")
    assert code == 1
    shipped = err.partition("shipped ones are ")[2]
    assert {"canary-fast", "canary-manual", "canary-standard", "bluegreen-standard"} <= set(
        shipped.split(" (")[0].split(", ")
    )

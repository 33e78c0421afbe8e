"""Message and service definitions: loading, errors with lines, overrides and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from communicator import (
    DefinitionError,
    Message,
    MessageDefinitions,
    load_service_definition,
    load_service_definitions,
    parse_line,
)
from tests.communicator.strategies import messages

REQUIRED = {
    "HELP",
    "COMMANDS",
    "ALIVE",
    "ABSOLUTELY",
    "STOP",
    "QUITTING",
    "UNKNOWN",
    "INVALID",
    "CLOCK",
    "REGISTER",
    "UNREGISTER",
    "READY",
    "REFUSE",
    "STATUS",
    "FAILURE",
    "TRANSMISSION_REPORT",
    "SERVICE_UNAVAILABLE",
    "BUSY",
}


@pytest.fixture(scope="module")
def shipped() -> MessageDefinitions:
    return MessageDefinitions.load()


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_every_required_command_is_shipped(shipped: MessageDefinitions) -> None:
    """The built-in commands of DESIGN §4 and the protocol's own all have definitions."""
    assert set(shipped.commands) >= REQUIRED
    assert {"cache", "ttl", "transmission_report", "reply_to"} <= set(shipped.global_parameters)


def test_replies_name_defined_commands(shipped: MessageDefinitions) -> None:
    """Every ``reply`` a definition names is itself defined."""
    for command in shipped.commands:
        reply = shipped[command].reply
        assert reply is None or reply in shipped, command


def test_validate_returns_every_problem(shipped: MessageDefinitions) -> None:
    """One message with many faults gets one problem per fault."""
    message = parse_line("*/REGISTER service=bad-name;colour=red;ttl=soon;protocol=2")
    found = [str(p) for p in shipped.validate(message)]
    assert found == [
        "REGISTER may not be broadcast",
        "service: 'bad-name' does not match [A-Za-z_][A-Za-z0-9_]*",
        "colour: not a parameter of REGISTER (accepted: service, version, server, zone, "
        "instance, password, commands, protocol)",
        "ttl: 'soon' is not a duration (try 30s, 250ms, 5m, 1h30m)",
        "protocol: 2 is above the maximum 1",
        "version: is required but missing",
    ]


def test_valid_messages_pass(shipped: MessageDefinitions) -> None:
    """Well-formed messages, with global parameters, validate cleanly."""
    for line in [
        "REGISTER service=orders;version=1.4.2;zone=eu_1;commands=PLACE,CANCEL;password=s3cr3t",
        "*/ALIVE serial=9;timestamp=2026-11-28T10:00:00Z",
        "orders/FAILURE reason=db timeout;kind=timeout;cache=no;ttl=5m;message_id=abc-1",
        "REFUSE reason=throttled;retry_after=30s",
        "BUSY busy=false",
    ]:
        assert shipped.validate(parse_line(line)) == [], line


def test_unknown_command(shipped: MessageDefinitions) -> None:
    """A command without a definition is one problem that says so."""
    assert [str(p) for p in shipped.validate(Message(command="NOPE"))] == [
        "unknown command NOPE: no definition declares it"
    ]


@given(message=messages())
def test_validate_never_raises(shipped: MessageDefinitions, message: Message) -> None:
    """Validation reports problems for any message; it never raises."""
    assert all(str(problem) for problem in shipped.validate(message))


def test_site_definitions_override_and_are_reported(tmp_path: Path) -> None:
    """A site directory adds commands and overrides shipped ones; each override is reported."""
    site = tmp_path / "site"
    write(site, "PLACE.yaml", "command: PLACE\ndescription: Place an order.\n")
    path = write(site, "ALIVE.yaml", "command: ALIVE\ndescription: Site's own ALIVE.\n")
    definitions = MessageDefinitions.load(site)
    assert "PLACE" in definitions
    assert definitions["ALIVE"].description == "Site's own ALIVE."
    [override] = definitions.overrides
    assert override.name == "ALIVE"
    assert override.by == str(path)
    assert override.replaced.endswith("ALIVE.yaml")


def test_later_directories_win(tmp_path: Path) -> None:
    """Of two site directories, the later one wins."""
    write(tmp_path / "a", "PLACE.yaml", "command: PLACE\ndescription: first\n")
    write(tmp_path / "b", "PLACE.yaml", "command: PLACE\ndescription: second\n")
    definitions = MessageDefinitions.load(tmp_path / "a", tmp_path / "b")
    assert definitions["PLACE"].description == "second"


def test_redeclared_global_is_refused_naming_both(tmp_path: Path) -> None:
    """A command may not redeclare a global parameter; the error names both."""
    write(
        tmp_path,
        "PLACE.yaml",
        "command: PLACE\ndescription: x\nparameters:\n  ttl:\n    description: mine\n",
    )
    with pytest.raises(DefinitionError) as caught:
        MessageDefinitions.load(tmp_path)
    text = str(caught.value)
    assert "PLACE redeclares the global parameter(s) ttl" in text
    assert "_globals.yaml" in text
    assert caught.value.path == str(tmp_path / "PLACE.yaml")


def test_invalid_definition_names_file_and_line(tmp_path: Path) -> None:
    """A definition error points at the offending line of the file."""
    path = write(
        tmp_path,
        "PLACE.yaml",
        "command: PLACE\n"
        "description: Place an order.\n"
        "parameters:\n"
        "  amount:\n"
        "    description: how much\n"
        "    value: {type: integer, min: ten}\n",
    )
    with pytest.raises(DefinitionError) as caught:
        MessageDefinitions.load(tmp_path)
    assert caught.value.path == str(path)
    assert caught.value.line == 6
    assert str(caught.value).startswith(f"{path}:6: ")


def test_every_error_in_a_file_is_listed(tmp_path: Path) -> None:
    """All the faults of one file are reported together, each with its line."""
    write(tmp_path, "PLACE.yaml", "command: place\ndescription: ''\nbroadcast: maybe\n")
    with pytest.raises(DefinitionError) as caught:
        MessageDefinitions.load(tmp_path)
    text = str(caught.value)
    assert "line 1: command" in text
    assert "line 2: description" in text
    assert "line 3: broadcast" in text


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    """Broken YAML is reported with its line."""
    write(tmp_path, "PLACE.yaml", "command: PLACE\ndescription: [unclosed\n")
    with pytest.raises(DefinitionError, match="invalid YAML") as caught:
        MessageDefinitions.load(tmp_path)
    assert caught.value.line is not None


def test_file_name_must_match_the_command(tmp_path: Path) -> None:
    """PLACE must live in PLACE.yaml, so a site can find what it overrides."""
    write(tmp_path, "ORDER.yaml", "command: PLACE\ndescription: x\n")
    with pytest.raises(DefinitionError, match=r"name it PLACE\.yaml"):
        MessageDefinitions.load(tmp_path)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A site directory that does not exist is a clear error, not silence."""
    with pytest.raises(DefinitionError, match="not found"):
        MessageDefinitions.load(tmp_path / "nope")


def test_broadcast_flag(shipped: MessageDefinitions) -> None:
    """Commands declared broadcast may go to *, ?, . and *:service; others may not."""
    assert shipped.validate(parse_line("*:orders/ALIVE")) == []
    assert [str(p) for p in shipped.validate(parse_line("./FAILURE reason=x"))] == [
        "FAILURE may not be broadcast"
    ]


# -- service definitions ---------------------------------------------------------------------


def test_service_definition_loads(tmp_path: Path) -> None:
    """A service file declares its commands, password requirement and owner."""
    write(
        tmp_path,
        "orders.yaml",
        "name: orders\ndescription: Takes orders.\ncommands: [PLACE, CANCEL]\n"
        "password_required: true\nowner: team-shop\n",
    )
    services = load_service_definitions([tmp_path])
    assert services["orders"].commands == ["PLACE", "CANCEL"]
    assert services["orders"].password_required is True
    assert services["orders"].owner == "team-shop"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("name: orders\ndescription: x\ncommands: [PLACE, place]\n", 3, "must match"),
        ("name: orders\ndescription: x\ncommands: [PLACE, PLACE]\n", 3, "listed twice"),
        ("name: orders\ndescription: x\npassword: yes\n", 3, "Extra inputs"),
        ("name: orders\n", 1, "description"),
    ],
)
def test_service_definition_errors(tmp_path: Path, text: str, line: int, reason: str) -> None:
    """Service definition errors name the file and line."""
    path = write(tmp_path, "orders.yaml", text)
    with pytest.raises(DefinitionError) as caught:
        load_service_definition(path)
    assert caught.value.line == line
    assert reason in str(caught.value)


def test_service_file_name_must_match(tmp_path: Path) -> None:
    """The file of service ``orders`` is ``orders.yaml``."""
    path = write(tmp_path, "shop.yaml", "name: orders\ndescription: x\n")
    with pytest.raises(DefinitionError, match=r"name it orders\.yaml"):
        load_service_definition(path)

"""Service definitions: one YAML file per service, loaded before any instance registers.

With the list of commands a service accepts known ahead of time, the router can
validate and cache messages for a service that has not registered yet (seed:
"Definition files should include the list of supported messages").
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from communicator._errors import DefinitionError
from communicator.wire._message import command_problem, name_problem
from communicator.wire._validators import parse_duration
from communicator.wire._yaml import load_yaml_model


def _service_name(value: str) -> str:
    problem = name_problem("service", value)
    if problem:
        raise ValueError(problem)
    return value


def _seconds(value: object) -> object:
    """A duration as written in YAML (``100ms``), or a plain number of seconds."""
    return parse_duration(value) if isinstance(value, str) else value


def _command_names(value: list[str]) -> list[str]:
    seen: set[str] = set()
    for command in value:
        problem = command_problem(command)
        if problem:
            raise ValueError(problem)
        if command in seen:
            raise ValueError(f"command {command} is listed twice")
        seen.add(command)
    return value


class ServiceDefinition(BaseModel):
    """What a service is, who owns it, and which commands it accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: Annotated[str, AfterValidator(_service_name)]
    description: str = Field(min_length=1)
    commands: Annotated[list[str], AfterValidator(_command_names)] = Field(default_factory=list)
    password_required: bool = False
    owner: str = ""
    min_timeout: Annotated[float, BeforeValidator(_seconds)] = Field(default=0.1, ge=0, le=3600)
    """Shortest request timeout counted against this service (a duration: ``100ms``, ``2s``).

    A requester may ask for less, but the communicator then judges the request
    by its default timeout (30 s): otherwise any client could invalidate a
    version by asking it for answers within a millisecond.
    """
    trusted_reporter: bool = False
    """Whether its instances may report failures of other services and versions
    (``FAILURE service=...;version=...``), like a health checker; others only
    report their own."""


def load_service_definition(path: Path | str) -> ServiceDefinition:
    """Load one service definition file.

    Raises:
        DefinitionError: The file is invalid; the error names the file, the line and the fix.
    """
    path = Path(path)
    definition = load_yaml_model(path, ServiceDefinition)
    if path.stem != definition.name:
        raise DefinitionError(
            f"file defines service {definition.name!r}; name it {definition.name}.yaml",
            path=str(path),
        )
    return definition


def load_service_definitions(directories: Iterable[Path | str]) -> dict[str, ServiceDefinition]:
    """Load every ``*.yaml`` service definition in the given directories (later ones win).

    Raises:
        DefinitionError: A directory is missing or a file is invalid.
    """
    services: dict[str, ServiceDefinition] = {}
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise DefinitionError(
                "service definitions directory not found; check the path", path=str(directory)
            )
        for path in sorted(directory.glob("*.yaml")):
            definition = load_service_definition(path)
            services[definition.name] = definition
    return services

"""Message definitions: what each command accepts, loaded from YAML.

One file per command (``REGISTER.yaml``), plus ``_globals.yaml`` declaring the
global parameters every message may carry (``cache``, ``ttl``, ``reply_to`` …).
No command may redeclare a global parameter. The product's definitions ship in
this package; a site adds or overrides commands from extra directories, later
ones winning, and every override is reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from communicator._errors import DefinitionError
from communicator.wire._message import Message, command_problem, name_problem
from communicator.wire._validators import Problem, StringValidator, Validator
from communicator.wire._yaml import load_yaml_model

logger = logging.getLogger(__name__)

GLOBALS_FILE = "_globals.yaml"


def _command_name(value: str) -> str:
    problem = command_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _parameter_names(value: dict[str, ParameterDefinition]) -> dict[str, ParameterDefinition]:
    for name in value:
        problem = name_problem("parameter", name)
        if problem:
            raise ValueError(problem)
    return value


class ParameterDefinition(BaseModel):
    """One parameter of a command: its validator, whether it is required, what it means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(min_length=1)
    required: bool = False
    value: Validator = Field(default_factory=StringValidator)


class MessageDefinition(BaseModel):
    """What one command accepts, and whether it may be broadcast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Annotated[str, AfterValidator(_command_name)]
    description: str = Field(min_length=1)
    broadcast: bool = False
    reply: str | None = None
    parameters: Annotated[dict[str, ParameterDefinition], AfterValidator(_parameter_names)] = Field(
        default_factory=dict
    )


class GlobalParameters(BaseModel):
    """The content of ``_globals.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    globals: Annotated[dict[str, ParameterDefinition], AfterValidator(_parameter_names)]


@dataclass(frozen=True, slots=True)
class Override:
    """A definition from a later directory that replaced an earlier one."""

    name: str
    replaced: str
    by: str


class MessageDefinitions:
    """Every known command definition and the global parameters, with message validation."""

    def __init__(
        self,
        definitions: dict[str, MessageDefinition],
        global_parameters: dict[str, ParameterDefinition],
        *,
        sources: dict[str, str] | None = None,
        overrides: list[Override] | None = None,
    ) -> None:
        self._definitions = dict(sorted(definitions.items()))
        self.global_parameters = dict(sorted(global_parameters.items()))
        self.sources = sources or {}
        self.overrides = overrides or []
        for definition in self._definitions.values():
            clash = sorted(set(definition.parameters) & set(self.global_parameters))
            if clash:
                where = self.sources.get(definition.command)
                declared_in = self.sources.get("_globals", GLOBALS_FILE)
                raise DefinitionError(
                    f"command {definition.command} redeclares the global parameter(s) "
                    f"{', '.join(clash)} (declared in {declared_in});"
                    " rename the command's parameter",
                    path=where,
                )

    @classmethod
    def load(cls, *extra_dirs: Path | str) -> MessageDefinitions:
        """Load the shipped definitions, then each extra directory in order (later ones win).

        Raises:
            DefinitionError: A file is invalid (the error names file and line), a definition
                redeclares a global parameter, or a directory does not exist.
        """
        shipped = resources.files("communicator.wire") / "definitions"
        directories: list[Path] = [Path(str(shipped))]
        for extra in extra_dirs:
            path = Path(extra)
            if not path.is_dir():
                raise DefinitionError(
                    "definitions directory not found; check the path or create it", path=str(path)
                )
            directories.append(path)
        definitions: dict[str, MessageDefinition] = {}
        global_parameters: dict[str, ParameterDefinition] = {}
        sources: dict[str, str] = {}
        overrides: list[Override] = []

        def note(name: str, path: Path) -> None:
            if name in sources:
                overrides.append(Override(name, sources[name], str(path)))
                logger.warning("definition of %s in %s overrides %s", name, path, sources[name])
            sources[name] = str(path)

        for directory in directories:
            for path in sorted(directory.glob("*.yaml")):
                if path.name == GLOBALS_FILE:
                    declared = load_yaml_model(path, GlobalParameters).globals
                    for name in declared:
                        note(f"global {name}", path)
                    global_parameters.update(declared)
                    sources["_globals"] = str(path)
                    continue
                definition = load_yaml_model(path, MessageDefinition)
                if path.stem != definition.command:
                    raise DefinitionError(
                        f"file defines {definition.command}; name it {definition.command}.yaml",
                        path=str(path),
                    )
                note(definition.command, path)
                definitions[definition.command] = definition
        return cls(definitions, global_parameters, sources=sources, overrides=overrides)

    def __contains__(self, command: object) -> bool:
        return command in self._definitions

    def __getitem__(self, command: str) -> MessageDefinition:
        return self._definitions[command]

    def get(self, command: str) -> MessageDefinition | None:
        """The definition of ``command``, or ``None``."""
        return self._definitions.get(command)

    @property
    def commands(self) -> list[str]:
        """Every defined command, sorted."""
        return list(self._definitions)

    def validate(self, message: Message) -> list[Problem]:
        """Check a message against its command's definition; return every problem found."""
        definition = self._definitions.get(message.command)
        if definition is None:
            return [Problem(f"unknown command {message.command}: no definition declares it")]
        problems: list[Problem] = []
        if message.is_broadcast and not definition.broadcast:
            problems.append(Problem(f"{message.command} may not be broadcast"))
        for name, value in message.parameters.items():
            spec = definition.parameters.get(name) or self.global_parameters.get(name)
            if spec is None:
                accepted = ", ".join(definition.parameters) or "none"
                problems.append(
                    Problem(f"not a parameter of {message.command} (accepted: {accepted})", name)
                )
                continue
            problem = spec.value.problem(value)
            if problem:
                problems.append(Problem(problem, name))
        for name, spec in definition.parameters.items():
            if spec.required and name not in message.parameters:
                problems.append(Problem("is required but missing", name))
        return problems

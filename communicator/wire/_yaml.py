"""Load YAML files into pydantic models with errors that name the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from communicator._errors import DefinitionError

ModelT = TypeVar("ModelT", bound=BaseModel)


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Find the line of the deepest YAML node along a pydantic error location."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            match = node.value[part] if part < len(node.value) else None
        else:
            match = None
        if match is None:
            continue  # a union tag or a missing field: stay at the parent
        node = match
        line = node.start_mark.line + 1
    return line


def parse_yaml(text: str, path: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text, returning the data and its node tree (for line numbers).

    Raises:
        DefinitionError: The text is not valid YAML; the error has the line.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise DefinitionError(f"invalid YAML: {exc.problem}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"invalid YAML: {exc}", path=path) from None
    return data, node


def validate_yaml(data: Any, node: yaml.Node | None, model: type[ModelT], path: str) -> ModelT:
    """Validate parsed YAML against ``model``, turning every error into one with lines.

    Raises:
        DefinitionError: The data does not fit the model; every problem is listed with its line.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        first_line = None
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            line = line_of(node, loc)
            first_line = first_line or line
            field = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"line {line}: {field}: {error['msg']}")
        raise DefinitionError(
            "; ".join(problems) if len(problems) > 1 else problems[0].split(": ", 1)[1],
            path=path,
            line=first_line,
        ) from None


def load_yaml_model(path: Path, model: type[ModelT]) -> ModelT:
    """Read ``path`` and validate it as ``model``.

    Raises:
        DefinitionError: The file is unreadable, not YAML, or does not fit the model.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"cannot read the file: {exc}", path=str(path)) from None
    data, node = parse_yaml(text, str(path))
    return validate_yaml(data, node, model, str(path))

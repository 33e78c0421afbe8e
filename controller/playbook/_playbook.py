"""Playbooks: a rollout described in YAML (its steps and its rollback policy), validated.

A playbook is data a person writes, so every error names the file and the line
and says what to write instead. The format is documented in docs/playbooks.md.
"""

from __future__ import annotations

import difflib
import importlib.resources
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from communicator import DefinitionError, InvalidationPolicy
from communicator.registry import MAX_WINDOW_BUCKETS
from communicator.wire import line_of, parse_yaml
from controller.playbook._fields import (
    DURATIONS_AS_TEXT,
    NAME_RE,
    PLACEHOLDERS,
    Duration,
    format_duration,
    known_placeholders,
    placeholders_in,
    problem,
    unknown_placeholder,
)
from controller.playbook._steps import STEP_KINDS, STEP_TYPES, ExecStep, Step

#: What a playbook's name looks like (it names the file of a shipped playbook, too).
PLAYBOOK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
#: The steps each strategy can run; "flag" and "shadow" will bring their own.
STEPS_BY_STRATEGY: dict[str, frozenset[str]] = {
    "canary": STEP_KINDS - {"switch"},
    # Preview (analysis, pauses, hooks, mirrors), one switch, then post-promotion checks.
    "bluegreen": frozenset({"analysis", "pause", "exec", "mirror", "switch"}),
    # A feature flag's share: set_weight is the percentage of contexts served "on".
    "flag": frozenset({"set_weight", "pause"}),
}
#: Longest failure window: the communicator counts outcomes over at most a day.
MAX_FAILURE_WINDOW = 86_400.0
_REPO_PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


def _playbook_name(value: str) -> str:
    if not PLAYBOOK_NAME_RE.fullmatch(value):
        raise problem(
            f"name {value!r} must match {PLAYBOOK_NAME_RE.pattern} "
            "(letters, digits, '-', '_' and '.', like canary-standard)"
        )
    return value


def _sticky(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise problem(
            f"sticky {value!r} must be a message parameter name matching {NAME_RE.pattern}, "
            "like user_id"
        )
    return value


def _variable(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise problem(f"variable {value!r} must match {NAME_RE.pattern}")
    if value in PLACEHOLDERS:
        raise problem(f"variable {value!r} is a built-in placeholder: pick another name")
    return value


def _failure_window(value: float) -> float:
    if value > MAX_FAILURE_WINDOW:
        raise problem("failure_window is at most 24h (the communicator counts outcomes for a day)")
    return value


class RollbackPolicy(BaseModel):
    """When a rollout gives up and sends all traffic back to the stable version.

    The failure rules (``max_failure_rate``, ``min_failures``,
    ``consecutive_crashes`` over ``failure_window``) become the canary version's
    invalidation policy in the communicator, which cuts the canary off within
    milliseconds of the failure that crosses them; the controller then rolls back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_failure_rate: float = Field(default=0.1, ge=0, le=1)
    """Canary failure rate (failures / all outcomes) above which it rolls back; 1 never."""
    min_failures: int = Field(default=5, ge=1)
    """Fewest canary failures in the window before the rate may trip."""
    consecutive_crashes: int = Field(default=5, ge=0)
    """Crashes and unexpected disconnects of canary instances in the window that roll back
    whatever the rate; 0 never."""
    failure_window: Annotated[Duration, AfterValidator(_failure_window)] = 60.0
    """How long a failure counts (``60s``, ``5m``; at most ``24h``)."""
    min_reporters: int = Field(default=1, ge=1, le=1000)
    """Fewest distinct clients whose evidence the failures in the window hold before either
    rule may trip (requesters for timeouts and errors, instances for their own failures and
    deaths); 2 or more keeps one client from rolling a canary back on its own."""
    max_latency_p99: Duration | None = None
    """Roll back when the canary's 99th percentile reply time is above this; none by default."""
    progress_deadline: Duration = 600.0
    """Abort a rollout that has not finished a step for this long (a pause until promoted
    excepted)."""
    on_inconclusive: Literal["pause", "abort", "continue"] = "pause"
    """What an analysis without enough traffic to judge does: wait for an operator, roll
    back, or go on."""
    invalidate_version: bool = True
    """Mark the canary version invalid on rollback, so its instances are refused at REGISTER."""

    def describe(self) -> list[str]:
        """The policy in words, one rule a line."""
        window = format_duration(self.failure_window)
        crashes = f" or {self.consecutive_crashes} crashes" if self.consecutive_crashes else ""
        lines = [
            f"roll back when the canary fails more than {self.max_failure_rate:.0%} of requests "
            f"(after {self.min_failures} failures){crashes} within {window}"
        ]
        if self.min_reporters > 1:
            lines.append(f"only on failures reported by {self.min_reporters} clients or more")
        if self.max_latency_p99 is not None:
            p99 = format_duration(self.max_latency_p99)
            lines.append(f"roll back when the canary's p99 reply time is above {p99}")
        lines += [
            f"abort when no step progresses for {format_duration(self.progress_deadline)}",
            f"when an analysis is inconclusive: {self.on_inconclusive}",
            "on rollback, mark the canary version invalid"
            if self.invalidate_version
            else "on rollback, leave the canary version valid",
        ]
        return lines

    def to_invalidation_policy(self) -> InvalidationPolicy:
        """The communicator's invalidation policy for the canary version."""
        window = max(1, math.ceil(self.failure_window))
        bucket = max(min(10, window), math.ceil(window / MAX_WINDOW_BUCKETS))
        return InvalidationPolicy(
            window_seconds=window,
            bucket_seconds=bucket,
            min_failures=self.min_failures,
            max_failure_rate=self.max_failure_rate,
            crash_loop=self.consecutive_crashes,
            min_reporters=self.min_reporters,
        )


class Playbook(BaseModel):
    """A rollout: the steps that move traffic to a new version, and when to give up."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: Annotated[str, AfterValidator(_playbook_name)] = Field(
        json_schema_extra={"pattern": f"^{PLAYBOOK_NAME_RE.pattern}$"}
    )
    """What the playbook is called (``deployctl playbook show NAME``)."""
    description: str = Field(min_length=1)
    """What the rollout does and when to choose this playbook."""
    strategy: Literal["canary", "bluegreen", "flag"] = "canary"
    """How traffic moves: ``canary`` (weighted pools of stable and canary instances),
    ``bluegreen`` (a preview color, then one switch), ``flag`` (a feature flag's share)."""
    sticky: Annotated[str, AfterValidator(_sticky)] | None = None
    """A message parameter (like ``user_id``) whose value keeps a user on one version."""
    variables: dict[Annotated[str, AfterValidator(_variable)], str] = Field(default_factory=dict)
    """Extra ``{placeholders}`` for exec steps, beside the built-in ones."""
    steps: list[Step] = Field(min_length=1)
    """What to do, in order; once the last is done the canary becomes the stable version."""
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    """When to give up and send all traffic back to the stable version."""
    scale_down_delay: Duration = 30.0
    """Blue-green: how long the old color stays registered after the switch, for an instant
    rollback; the rollout succeeds when it ends."""
    scale_down: ExecStep | None = None
    """Blue-green: a command run once the scale-down delay ends, to retire the old color."""

    @model_validator(mode="wrap")
    @classmethod
    def _with_placeholders(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Exec steps check their placeholders as they are validated, so that an
        # unknown one is reported at its own line: tell them the variables.
        variables = data.get("variables") if isinstance(data, dict) else None
        names = {str(n) for n in variables} if isinstance(variables, dict) else set()
        token = known_placeholders.set(PLACEHOLDERS | names)
        try:
            return handler(data)
        finally:
            known_placeholders.reset(token)

    def _check_bluegreen(self) -> Self:
        if self.strategy != "bluegreen":
            defaults = {"scale_down_delay": 30.0, "scale_down": None}
            given = {name for name, value in defaults.items() if getattr(self, name) != value}
            if given:
                raise problem(f"{', '.join(sorted(given))}: only for strategy bluegreen; remove it")
            return self
        kinds = [step.kind for step in self.steps]
        if kinds.count("switch") != 1:
            raise problem(
                f"a bluegreen playbook has exactly one `- switch: {{}}` step (found "
                f"{kinds.count('switch')}): the preview steps before it, the checks after it"
            )
        if "mirror" in kinds[kinds.index("switch") :]:
            raise problem("a mirror step after the switch would copy traffic to the old color")
        return self

    @model_validator(mode="after")
    def _check_steps(self) -> Self:
        allowed = STEPS_BY_STRATEGY[self.strategy]
        known = frozenset(self.variables)
        for number, step in enumerate(self.steps, 1):
            if step.kind not in allowed:
                raise problem(
                    f"step {number} ({step.kind}) cannot be used with strategy {self.strategy}; "
                    f"it has {', '.join(sorted(allowed))}"
                )
            if isinstance(step, ExecStep):  # built in Python: not checked against variables yet
                for template in [*step.command, *step.env.values()]:
                    for name in placeholders_in(template):
                        if name not in PLACEHOLDERS | known:
                            raise problem(f"step {number}: {unknown_placeholder(name, known)}")
        return self._check_bluegreen()


# -- reading and writing ---------------------------------------------------------------------


def parse_playbook(text: str, source: str = "<playbook>") -> Playbook:
    """Read a playbook from YAML text; ``source`` names it in errors.

    Raises:
        DefinitionError: The text is not a valid playbook; the error names the line and the fix.
    """
    data, node = parse_yaml(text, source)
    if data is None:
        raise DefinitionError(
            "the playbook is empty: start from `deployctl playbook show canary-standard`",
            path=source,
        )
    if not isinstance(data, dict):
        raise DefinitionError(
            "a playbook is a mapping with name, description, steps and rollback",
            path=source,
            line=1,
        )
    if data.get("kind") == "Rollout" and "apiVersion" in data:
        raise DefinitionError(
            "this is an Argo Rollouts manifest: convert it with `deployctl playbook import`",
            path=source,
            line=1,
        )
    try:
        return Playbook.model_validate(data)
    except ValidationError as exc:
        problems = sorted(
            ((line_of(node, tuple(e["loc"])) or 0, _explain(e)) for e in exc.errors()),
            key=lambda item: item[0],
        )
    first_line = problems[0][0] or None
    more = "".join(f"\n{source}:{line}: {text}" for line, text in problems[1:])
    raise DefinitionError(problems[0][1] + more, path=source, line=first_line) from None


def load_playbook(path: Path | str) -> Playbook:
    """Read a playbook file.

    Raises:
        DefinitionError: The file is unreadable or not a valid playbook; the error names
            the file, the line and the fix.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"cannot read the playbook: {exc}", path=str(path)) from None
    return parse_playbook(text, str(path))


class _Dumper(yaml.SafeDumper):
    """Indents lists under their key and writes multi-line strings as literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        """Indent block sequences under their key, as people write them."""
        super().increase_indent(flow, indentless=False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Inline(dict[str, Any]):
    """A small step body, written on the step's line: ``- pause: {duration: 30s}``."""


def _represent_inline(dumper: yaml.SafeDumper, value: _Inline) -> yaml.MappingNode:
    return dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=True)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_Inline, _represent_inline)


def dump_playbook(playbook: Playbook) -> str:
    """Write a playbook as YAML, one key per step and durations as text (``30s``, ``5m``)."""
    data = playbook.model_dump(mode="json", exclude_none=True, context={DURATIONS_AS_TEXT: True})
    if not data["variables"]:
        del data["variables"]
    if playbook.strategy != "bluegreen":
        data.pop("scale_down_delay", None)  # blue-green's alone
    for step in data["steps"]:
        for kind, body in step.items():
            if (
                isinstance(body, dict)
                and len(body) <= 2
                and not any(map(_is_nested, body.values()))
            ):
                step[kind] = _Inline(body)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _is_nested(value: object) -> bool:
    return isinstance(value, dict | list)


def playbook_schema() -> dict[str, Any]:
    """The JSON Schema of a playbook file (for editors and other tools)."""
    schema = Playbook.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def shipped_playbooks() -> dict[str, Path]:
    """The playbooks shipped with deployctl, by name (from the wheel, or a source checkout)."""
    candidates: list[Path] = []
    installed = importlib.resources.files("controller") / "playbooks"
    if isinstance(installed, Path):
        candidates.append(installed)
    candidates.append(_REPO_PLAYBOOKS)
    for directory in candidates:
        if directory.is_dir():
            return {path.stem: path for path in sorted(directory.glob("*.yaml"))}
    return {}


# -- error messages --------------------------------------------------------------------------


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for index, part in enumerate(loc):
        if part == "[key]" or (part == "weight" and loc[index - 1 : index] == ("set_weight",)):
            continue  # not written in the file
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "(top level)"


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    if not loc:
        return list(Playbook.model_fields)
    if loc == ("rollback",):
        return list(RollbackPolicy.model_fields)
    if len(loc) == 3 and loc[0] == "steps" and str(loc[2]) in STEP_TYPES:
        return [f for f in STEP_TYPES[str(loc[2])].model_fields if f != "kind"]
    return []


def _explain(error: ErrorDetails) -> str:
    """One error with what to do about it, after the field it concerns."""
    loc = tuple(error["loc"])
    where = _field_path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        guess = f"did you mean {close[0]}? " if close else ""
        return f"{where}: unknown field: {guess}valid fields are {', '.join(fields)}"
    if kind == "missing":
        return f"{where}: required: add `{loc[-1]}:` (see docs/playbooks.md)"
    if kind == "literal_error" and loc == ("strategy",):
        return f"{where}: {error['input']!r} is not a strategy: write canary, bluegreen or flag"
    if kind == "too_short" and loc == ("steps",):
        return f"{where}: a playbook needs at least one step, like `- set_weight: 100`"
    return f"{where}: {error['msg']}"

"""The steps of a playbook, each written in YAML as a one-key mapping, as in Argo Rollouts.

``- set_weight: 20`` reads as :class:`SetWeightStep` with ``weight=20``; every
step has a ``kind`` and typed fields, and dumps back to its one-key form. The
checks give errors that say what to write instead, since people write these
files by hand.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    Tag,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from controller.analysis._criteria import AnalysisCriteria
from controller.playbook._fields import (
    Duration,
    Percent,
    Template,
    env_name,
    format_duration,
    problem,
)


class _Step(BaseModel):
    """What every step shares: its ``kind``, and the one-key YAML form ``{kind: body}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    #: An example of the step, shown when its body has the wrong shape.
    example: ClassVar[str]
    #: What else to say then.
    example_note: ClassVar[str] = ""

    @classmethod
    def kind_name(cls) -> str:
        """The step's kind, as written in YAML."""
        return str(cls.model_fields["kind"].default)

    @classmethod
    def _fields_from_body(cls, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise problem(
                f"{cls.kind_name()} takes a mapping: write `- {cls.example}`{cls.example_note}"
            )
        if "kind" in body:
            raise problem(f"{cls.kind_name()} has no field 'kind': remove it")
        return body

    @classmethod
    def _body_from_fields(cls, fields: dict[str, Any]) -> Any:
        return fields

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data: Any) -> Any:
        kind = cls.kind_name()
        if isinstance(data, dict) and len(data) == 1 and kind in data:
            return cls._fields_from_body(data[kind])
        return data

    @model_serializer(mode="wrap")
    def _to_yaml(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields = handler(self)
        fields.pop("kind", None)
        return {self.kind_name(): self._body_from_fields(fields)}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Describe the YAML form (what people write), not the Python fields.
        reference = handler(core_schema)
        schema = handler.resolve_ref_schema(reference)
        schema["properties"].pop("kind", None)
        body = cls._body_schema(schema)
        kind = cls.kind_name()
        wrapped = {
            "type": "object",
            "title": schema.get("title", cls.__name__),
            "description": schema.get("description", ""),
            "properties": {kind: body},
            "required": [kind],
            "additionalProperties": False,
        }
        schema.clear()
        schema.update(wrapped)
        return reference

    @classmethod
    def _body_schema(cls, schema: JsonSchemaValue) -> JsonSchemaValue:
        body = {"type": "object", "properties": schema["properties"], "additionalProperties": False}
        required = [name for name in schema.get("required", []) if name != "kind"]
        return {**body, "required": required} if required else body


class SetWeightStep(_Step):
    """Send this percentage of traffic to the canary: ``- set_weight: 20``."""

    example: ClassVar[str] = "set_weight: 20"

    kind: Literal["set_weight"] = Field(default="set_weight", exclude=True, repr=False)
    weight: Percent
    """Percentage of traffic the canary gets, 0 to 100; the stable version gets the rest."""

    @classmethod
    def _fields_from_body(cls, body: Any) -> dict[str, Any]:
        return {"weight": body}

    @classmethod
    def _body_from_fields(cls, fields: dict[str, Any]) -> Any:
        return fields["weight"]

    @classmethod
    def _body_schema(cls, schema: JsonSchemaValue) -> JsonSchemaValue:
        return dict(schema["properties"]["weight"])

    def describe(self) -> str:
        """The step in words."""
        return f"send {self.weight}% of traffic to the canary"


class PauseStep(_Step):
    """Wait for a while (``- pause: {duration: 30s}``), or until promoted (``- pause: {}``)."""

    example: ClassVar[str] = "pause: {duration: 30s}"
    example_note: ClassVar[str] = ", or `- pause: {}` to wait until promoted"

    kind: Literal["pause"] = Field(default="pause", exclude=True, repr=False)
    duration: Duration | None = None
    """How long to wait; without it, wait until an operator promotes the rollout."""

    def describe(self) -> str:
        """The step in words."""
        if self.duration is None:
            return "pause until promoted"
        return f"pause for {format_duration(self.duration)}"


class AnalysisStep(_Step, AnalysisCriteria):
    """Judge the canary against the stable version over a window: ``- analysis: {window: 60s}``.

    The fields are those of :class:`~controller.analysis._criteria.AnalysisCriteria`.
    """

    example: ClassVar[str] = "analysis: {window: 60s, min_sample: 50}"

    kind: Literal["analysis"] = Field(default="analysis", exclude=True, repr=False)
    window: Duration = 60.0
    """How much traffic to judge, from the start of the step (``60s``, ``5m``)."""

    @property
    def criteria(self) -> AnalysisCriteria:
        """The criteria alone, for the judge."""
        return AnalysisCriteria(
            **{name: getattr(self, name) for name in AnalysisCriteria.model_fields}
        )

    def describe(self) -> str:
        """The step in words."""
        return (
            f"analyse {format_duration(self.window)} of traffic "
            f"(at least {self.min_sample} outcomes per version)"
        )


class ExecStep(_Step):
    """Run a command (no shell): ``- exec: {command: ["./deploy.sh", "{service}", "{version}"]}``.

    Each argument and environment value may hold the built-in placeholders
    (``PLACEHOLDERS``) and the playbook's ``variables``. A non-zero exit, or
    running past ``timeout``, aborts the rollout.
    """

    example: ClassVar[str] = 'exec: {command: ["./deploy.sh", "{service}", "{version}"]}'

    kind: Literal["exec"] = Field(default="exec", exclude=True, repr=False)
    command: list[Template] = Field(min_length=1)
    """The program and its arguments, one string each; no shell is involved."""
    timeout: Duration = 60.0
    """Longest the command may run before it is killed and the rollout aborted."""
    env: dict[Annotated[str, AfterValidator(env_name)], Template] = Field(default_factory=dict)
    """Environment variables added to the controller's own."""

    @model_validator(mode="after")
    def _check_program(self) -> ExecStep:
        if not self.command[0].strip():
            raise problem("the command's first item (the program) is empty")
        return self

    def render(self, values: Mapping[str, str]) -> list[str]:
        """The command with its placeholders replaced by ``values``."""
        return [part.format_map(values) for part in self.command]

    def render_env(self, values: Mapping[str, str]) -> dict[str, str]:
        """The environment variables with their placeholders replaced by ``values``."""
        return {name: value.format_map(values) for name, value in self.env.items()}

    def describe(self) -> str:
        """The step in words."""
        return f"run {' '.join(self.command)} (timeout {format_duration(self.timeout)})"


class MirrorStep(_Step):
    """Copy traffic to the canary (its replies are not used): ``- mirror: {percent: 100}``."""

    example: ClassVar[str] = "mirror: {percent: 100, duration: 60s}"

    kind: Literal["mirror"] = Field(default="mirror", exclude=True, repr=False)
    percent: Percent = 100
    """Percentage of the stable version's traffic copied to the canary."""
    duration: Duration = 60.0
    """How long to mirror before the next step."""
    max_inflight: int = Field(default=100, ge=1)
    """Most copies awaiting a reply; past it copies are dropped (and counted)."""
    compare: bool = False
    """Compare the canary's replies with the stable version's, and report differences."""

    def describe(self) -> str:
        """The step in words."""
        compare = ", comparing replies" if self.compare else ""
        return f"mirror {self.percent}% of traffic for {format_duration(self.duration)}{compare}"


class SwitchStep(_Step):
    """Blue-green: every message to the new version, at once: ``- switch: {}``.

    Until this step the new version is the preview color, reached only by
    ``preview=yes`` traffic; from it on it is the active color, and the old one
    stays registered (for an instant rollback) until the scale-down delay ends.
    """

    example: ClassVar[str] = "switch: {}"

    kind: Literal["switch"] = Field(default="switch", exclude=True, repr=False)

    def describe(self) -> str:
        """The step in words."""
        return "switch all traffic to the new version"


STEP_TYPES: dict[str, type[_Step]] = {
    cls.kind_name(): cls
    for cls in (SetWeightStep, PauseStep, AnalysisStep, ExecStep, MirrorStep, SwitchStep)
}
#: Every step kind, as written in YAML.
STEP_KINDS = frozenset(STEP_TYPES)

# Argo Rollouts step names people carry over by habit, and ours (None: no equivalent).
_ARGO_STEPS = {
    "setWeight": "set_weight",
    "setMirrorRoute": "mirror",
    "setCanaryScale": None,
    "setHeaderRoute": None,
    "experiment": None,
    "plugin": None,
}


def unknown_step(key: str) -> str:
    """The error for a step kind that does not exist, with the closest one."""
    valid = ", ".join(sorted(STEP_KINDS))
    if key in _ARGO_STEPS:
        ours = _ARGO_STEPS[key]
        instead = f"did you mean {ours}?" if ours else f"{key} has no deployctl equivalent;"
        return (
            f"unknown step {key!r} (an Argo Rollouts step): {instead} valid steps are {valid} "
            "(or run `deployctl playbook import` for Argo manifests)"
        )
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", str(key)).lower()
    close = difflib.get_close_matches(snake, sorted(STEP_KINDS), n=1, cutoff=0.5)
    guess = f"did you mean {close[0]}? " if close else ""
    return f"unknown step {key!r}: {guess}valid steps are {valid}"


def _check_step_shape(value: Any) -> Any:
    if isinstance(value, _Step):
        return value
    if isinstance(value, str) and value in STEP_KINDS:
        step = STEP_TYPES[value]
        raise problem(f"write the step as a mapping: `- {step.example}`{step.example_note}")
    if not isinstance(value, dict) or len(value) != 1:
        keys = f" (found {', '.join(map(str, value))})" if isinstance(value, dict) else ""
        raise problem(
            "a step is a mapping with one key, its kind, like `- set_weight: 20` or "
            f"`- pause: {{duration: 30s}}`{keys}: put each step in its own `- ` item"
        )
    (key,) = value
    if key not in STEP_KINDS:
        raise problem(unknown_step(key))
    return value


def _step_tag(value: Any) -> str:
    return value.kind_name() if isinstance(value, _Step) else str(next(iter(value)))


Step = Annotated[
    Annotated[SetWeightStep, Tag("set_weight")]
    | Annotated[PauseStep, Tag("pause")]
    | Annotated[AnalysisStep, Tag("analysis")]
    | Annotated[ExecStep, Tag("exec")]
    | Annotated[MirrorStep, Tag("mirror")]
    | Annotated[SwitchStep, Tag("switch")],
    Discriminator(_step_tag),
    BeforeValidator(_check_step_shape),
]
"""One step of a playbook; ``step.kind`` says which."""

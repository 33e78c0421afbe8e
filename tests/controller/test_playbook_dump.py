"""Playbooks written out: the JSON Schema, YAML dumps, and dump/parse round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.playbook._fields import PLACEHOLDERS
from controller.playbook._playbook import (
    PLAYBOOK_NAME_RE,
    Playbook,
    RollbackPolicy,
    dump_playbook,
    parse_playbook,
    playbook_schema,
    shipped_playbooks,
)
from controller.playbook._steps import (
    STEP_KINDS,
    AnalysisStep,
    ExecStep,
    MirrorStep,
    PauseStep,
    SetWeightStep,
)

# -- schema -----------------------------------------------------------------------------------


def _step_kinds(schema: dict[str, Any]) -> set[str]:
    items = schema["properties"]["steps"]["items"]
    refs = [choice["$ref"].rsplit("/", 1)[1] for choice in items["oneOf"]]
    return {kind for ref in refs for kind in schema["$defs"][ref]["required"]}


def test_schema_describes_the_yaml_form() -> None:
    """The schema has every field, and steps as one-key mappings of every kind."""
    schema = playbook_schema()
    json.dumps(schema)  # serialisable as is
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == set(Playbook.model_fields)
    assert set(schema["required"]) == {"name", "description", "steps"}
    assert _step_kinds(schema) == STEP_KINDS
    set_weight = schema["$defs"]["SetWeightStep"]["properties"]["set_weight"]
    assert (set_weight["minimum"], set_weight["maximum"]) == (0, 100)
    pause = schema["$defs"]["PauseStep"]["properties"]["pause"]
    assert pause["additionalProperties"] is False
    assert "required" not in pause
    assert schema["$defs"]["ExecStep"]["properties"]["exec"]["required"] == ["command"]
    assert "anyOf" in schema["$defs"]["RollbackPolicy"]["properties"]["failure_window"]


@pytest.mark.parametrize("name", sorted(shipped_playbooks()))
def test_schema_fits_the_shipped_playbooks(name: str) -> None:
    """Every key of a shipped playbook is in the schema (jsonschema is not a dependency)."""
    schema = playbook_schema()
    data = yaml.safe_load(shipped_playbooks()[name].read_text())
    assert set(data) <= set(schema["properties"])
    assert set(data["rollback"]) <= set(schema["$defs"]["RollbackPolicy"]["properties"])
    for step in data["steps"]:
        ((kind, body),) = step.items()
        assert kind in _step_kinds(schema)
        if isinstance(body, dict):
            definition = next(d for d in schema["$defs"].values() if kind in d.get("required", []))
            assert set(body) <= set(definition["properties"][kind]["properties"])


# -- round trip -------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
durations = st.one_of(
    st.integers(1, 200_000).map(float),
    st.floats(0.001, 86_400, allow_nan=False, allow_infinity=False),
)
texts = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30),
    min_size=1,
    max_size=3,
).map("\n".join)
literal = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


@st.composite
def exec_steps(draw: st.DrawFn, variables: list[str]) -> ExecStep:
    """An exec step whose templates use known placeholders and literal braces."""
    known = sorted(PLACEHOLDERS) + variables
    part = st.tuples(literal, st.none() | st.sampled_from(known)).map(
        lambda p: p[0].replace("{", "{{").replace("}", "}}") + (f"{{{p[1]}}}" if p[1] else "")
    )
    template = st.lists(part, min_size=1, max_size=3).map("".join)
    program = st.from_regex(r"[./a-z][a-z0-9./_-]{0,10}", fullmatch=True)
    return ExecStep(
        command=[draw(program), *draw(st.lists(template, max_size=3))],
        timeout=draw(durations),
        env=draw(st.dictionaries(names, template, max_size=2)),
    )


@st.composite
def playbooks(draw: st.DrawFn) -> Playbook:
    """Any valid playbook."""
    variables = draw(st.dictionaries(names.filter(lambda n: n not in PLACEHOLDERS), literal))
    step = st.one_of(
        st.builds(SetWeightStep, weight=st.integers(0, 100)),
        st.builds(PauseStep, duration=st.none() | durations),
        st.builds(
            AnalysisStep,
            window=durations,
            min_sample=st.integers(1, 10_000),
            max_failure_rate=st.floats(0, 1),
            max_latency_ratio=st.floats(1, 10),
            alpha=st.floats(0.001, 0.49),
        ),
        exec_steps(sorted(variables)),
        st.builds(
            MirrorStep,
            percent=st.integers(0, 100),
            duration=durations,
            max_inflight=st.integers(1, 10_000),
            compare=st.booleans(),
        ),
    )
    rollback = st.builds(
        RollbackPolicy,
        max_failure_rate=st.floats(0, 1),
        min_failures=st.integers(1, 100),
        consecutive_crashes=st.integers(0, 100),
        failure_window=st.floats(0.001, 86_400),
        max_latency_p99=st.none() | durations,
        progress_deadline=durations,
        on_inconclusive=st.sampled_from(["pause", "abort", "continue"]),
        invalidate_version=st.booleans(),
    )
    return Playbook(
        name=draw(st.from_regex(PLAYBOOK_NAME_RE, fullmatch=True)),
        description=draw(texts.filter(str.strip)),
        sticky=draw(st.none() | names),
        variables=variables,
        steps=draw(st.lists(step, min_size=1, max_size=8)),
        rollback=draw(rollback),
    )


@settings(max_examples=200, deadline=None)
@given(playbooks())
def test_dump_then_parse_gives_the_same_playbook(playbook: Playbook) -> None:
    """``parse_playbook(dump_playbook(p)) == p`` for any playbook, and so does the JSON form."""
    assert parse_playbook(dump_playbook(playbook), "dumped") == playbook
    assert Playbook.model_validate(playbook.model_dump(mode="json")) == playbook

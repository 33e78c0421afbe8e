"""Our engine against openfeature-provider-flagd's in-process evaluator: identical results.

The same flagd document is loaded into both; every flag is evaluated for every
expected type and many contexts, and value, variant, reason and error code must
be identical.
"""

from __future__ import annotations

import json
import logging
import random
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType

from flags import FlagType
from tests.flags.flagd_reference import (
    compiled_flags,
    evaluation_context,
    flagd_core,
    flagd_outcome,
    our_outcome,
)

HELP = {"help": "Test flag; if it misbehaves, disable it.", "help_uri": "https://e.com/flags"}
COLOURS = {"red": "#f00", "green": "#0f0", "blue": "#00f"}


@pytest.fixture(autouse=True)
def _quiet_flagd(caplog: pytest.LogCaptureFixture) -> None:
    """flagd logs an error for each null fractional; the results are what we compare."""
    caplog.set_level(logging.CRITICAL, logger="openfeature.contrib")


def flag(variants: dict[str, Any], default: str | None, targeting: Any = None, **extra: Any) -> Any:
    """A flagd flag definition with help in its metadata."""
    data: dict[str, Any] = {"state": "ENABLED", "variants": variants, "metadata": dict(HELP)}
    if default is not None:
        data["defaultVariant"] = default
    if targeting is not None:
        data["targeting"] = targeting
    data.update(extra)
    return data


def fractional_flag(*specs: Any) -> Any:
    """A string flag split by ``fractional`` with the given arguments."""
    return flag(COLOURS, "red", {"fractional": list(specs)})


BOOL = {"on": True, "off": False}
DOCUMENT: dict[str, Any] = {
    "$schema": "https://flagd.dev/schema/v0/flags.json",
    "metadata": {"flagSetId": "differential"},
    "$evaluators": {
        "is_staff": {"ends_with": [{"var": "email"}, "@example.com"]},
        "adult": {">=": [{"var": "age"}, 18]},
    },
    "flags": {
        "bool-static": flag(BOOL, "on"),
        "bool-true-names": flag({"true": True, "false": False}, "false", {"var": "beta"}),
        "string-static": flag(COLOURS, "green"),
        "number-static": flag({"one": 1, "half": 0.5}, "one"),
        "object-static": flag({"a": {"x": 1}, "b": [1, 2]}, "b"),
        "disabled": flag(BOOL, "on", {"fractional": [["on"], ["off"]]}, state="DISABLED"),
        "no-default": flag(COLOURS, None),
        "no-default-targeted": flag(COLOURS, None, {"if": [{"var": "vip"}, "blue", None]}),
        "empty-targeting": flag(COLOURS, "red", {}),
        "starts": flag(BOOL, "off", {"if": [{"starts_with": [{"var": "email"}, "admin"]}, "on"]}),
        "ends": flag(BOOL, "off", {"if": [{"$ref": "is_staff"}, "on", "off"]}),
        "semver": flag(
            {"old": "old", "new": "new", "next": "next", "odd": "odd"},
            "old",
            {
                "if": [
                    {"sem_ver": [{"var": "version"}, ">=", "2.0.0"]},
                    "next",
                    {"sem_ver": [{"var": "version"}, "^", "1.0.0"]},
                    {"if": [{"sem_ver": [{"var": "version"}, "~", "1.2"]}, "new", "old"]},
                    {"sem_ver": [{"var": "version"}, "=", "v0.1"]},
                    "odd",
                    None,
                ]
            },
        ),
        "semver-ops": flag(
            BOOL,
            "off",
            {
                "if": [
                    {
                        "or": [
                            {"sem_ver": [{"var": "version"}, "<", "1.0.0-rc.1"]},
                            {"sem_ver": [{"var": "version"}, "<=", "0.5"]},
                            {"sem_ver": [{"var": "version"}, ">", "3"]},
                            {"sem_ver": [{"var": "version"}, "!=", "1.2.3"]},
                        ]
                    },
                    "on",
                    "off",
                ]
            },
        ),
        "nested": flag(
            {"gold": 3, "silver": 2, "bronze": 1, "none": 0},
            "none",
            {
                "if": [
                    {"and": [{"$ref": "adult"}, {"in": [{"var": "country"}, ["fr", "de", "nl"]]}]},
                    {"if": [{"==": [{"var": "tier"}, "gold"]}, "gold", "silver"]},
                    {"or": [{"!": {"var": "email"}}, {"in": ["@", {"var": "email"}]}]},
                    "bronze",
                    {"missing": ["age", "country"]},
                    "none",
                    None,
                ]
            },
        ),
        "arith": flag(
            {"1": 1, "2": 2, "3": 3, "0": 0},
            "0",
            {"cat": [{"%": [{"+": [{"var": ["age", 0]}, 1]}, 3]}]},
        ),
        "var-paths": flag(
            COLOURS,
            "red",
            {
                "if": [
                    {"==": [{"var": "user.plan"}, "pro"]},
                    "blue",
                    {"===": [{"var": "groups.0"}, "beta"]},
                    "green",
                    {">": [{"var": "groups.length"}, 2]},
                    "blue",
                    {"==": [{"var": "targetingKey"}, "vip-1"]},
                    "green",
                    {"==": [{"var": "$flagd.flagKey"}, "var-paths"]},
                    {"if": [{"var": "vip"}, "green", None]},
                    None,
                ]
            },
        ),
        "collections": flag(
            BOOL,
            "off",
            {
                "if": [
                    {
                        "or": [
                            {"some": [{"var": "groups"}, {"==": [{"var": ""}, "admins"]}]},
                            {"all": [{"var": "scores"}, {">": [{"var": ""}, 50]}]},
                            {
                                ">=": [
                                    {
                                        "reduce": [
                                            {"var": "scores"},
                                            {"+": [{"var": "current"}, {"var": "accumulator"}]},
                                            0,
                                        ]
                                    },
                                    150,
                                ]
                            },
                            {
                                "none": [
                                    {"filter": [{"var": "scores"}, {"<": [{"var": ""}, 0]}]},
                                    True,
                                ]
                            },
                        ]
                    },
                    "on",
                    "off",
                ]
            },
        ),
        "missing-some": flag(
            BOOL, "off", {"if": [{"missing_some": [2, ["email", "age", "country"]]}, "off", "on"]}
        ),
        "whole-data": flag(
            BOOL, "off", {"if": [{"in": ["vip", {"cat": [{"var": "tier"}, {"var": ""}]}]}, "on"]}
        ),
        "frac-even": fractional_flag(["red", 50], ["green", 50]),
        "frac-three": fractional_flag(["red", 10], ["green", 30], ["blue", 60]),
        "frac-no-weights": fractional_flag(["red"], ["green"], ["blue"]),
        "frac-zero": fractional_flag(["red", 0], ["green", 100], ["blue", 0]),
        "frac-negative": fractional_flag(["red", -5], ["green", 5]),
        "frac-huge": fractional_flag(["red", 2_000_000_000], ["green", 147_483_647]),
        "frac-too-heavy": fractional_flag(["red", 2_147_483_647], ["green", 1]),
        "frac-bad-weight": fractional_flag(["red", 5.5], ["green", 5]),
        "frac-bool-variants": flag(BOOL, "off", {"fractional": [[True, 50], [False, 50]]}),
        "frac-email": fractional_flag({"var": "email"}, ["red", 25], ["green", 75]),
        "frac-cat": fractional_flag(
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}, ["red", 1], ["blue", 1]
        ),
        "frac-age": fractional_flag({"var": "age"}, ["red", 1], ["green", 2], ["blue", 3]),
        "frac-nested": flag(
            COLOURS,
            "red",
            {
                "if": [
                    {"in": [{"var": "country"}, ["fr", "de"]]},
                    {"fractional": [["green", 80], ["blue", 20]]},
                    {"fractional": [{"var": "tier"}, ["red", 50], ["blue", 50]]},
                ]
            },
        ),
        "returns-number": flag({"1": "one", "2": "two"}, "1", {"if": [{"var": "vip"}, 2, 1]}),
        "unknown-variant": flag(COLOURS, "red", {"if": [{"var": "vip"}, "purple", "red"]}),
        "unknown-operator": flag(COLOURS, "red", {"if": [{"var": "vip"}, {"nope": [1]}, "red"]}),
        "divides-by-zero": flag({"1": 1, "0": 0}, "0", {"cat": [{"/": [1, {"var": ["age", 0]}]}]}),
    },
}

TARGETING_KEYS = st.one_of(
    st.none(),
    st.just(""),
    st.just("vip-1"),
    st.text(alphabet=string.ascii_letters + string.digits + "-_@.", min_size=1, max_size=24),
    st.text(max_size=30),
)
CONTEXTS = st.fixed_dictionaries(
    {},
    optional={
        "targetingKey": TARGETING_KEYS,
        "email": st.sampled_from(
            ["admin@example.com", "bob@example.com", "eve@elsewhere.org", "", "x"]
        )
        | st.emails(),
        "age": st.integers(-5, 120) | st.floats(0, 120, allow_nan=False) | st.just("30"),
        "country": st.sampled_from(["fr", "de", "nl", "us", "", "FR"]),
        "tier": st.sampled_from(["gold", "silver", "vip", "", "platinum"]) | st.none(),
        "version": st.sampled_from(
            ["1.2.3", "v1.2.9", "2.0.0", "1.0.0-rc.1", "0.1", "1", "junk", "3.1.4+build", ""]
        )
        | st.integers(0, 4),
        "vip": st.booleans() | st.integers(0, 2),
        "beta": st.sampled_from(["true", "false", "maybe"]) | st.booleans(),
        "user": st.fixed_dictionaries({}, optional={"plan": st.sampled_from(["pro", "free"])}),
        "groups": st.lists(st.sampled_from(["beta", "admins", "staff"]), max_size=4),
        "scores": st.lists(st.integers(-10, 100), max_size=5),
    },
)
DEFAULTS: dict[FlagType, Any] = {
    FlagType.BOOLEAN: False,
    FlagType.STRING: "fallback",
    FlagType.INTEGER: -1,
    FlagType.FLOAT: 7,
    FlagType.OBJECT: {"fallback": True},
}

FLAGD = flagd_core(DOCUMENT)
OURS = compiled_flags(DOCUMENT)
KEYS = [*DOCUMENT["flags"], "not-a-flag"]


def assert_same(context: dict[str, Any]) -> None:
    """Every flag, for every expected type, resolves identically in both engines."""
    for key in KEYS:
        for expected, default in DEFAULTS.items():
            theirs = flagd_outcome(FLAGD, key, default, context, expected)
            ours = our_outcome(OURS, key, default, context, expected)
            assert ours == theirs, (key, expected, context)
            assert type(ours[0]) is type(theirs[0]), (key, expected, context)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONTEXTS)
def test_generated_contexts_resolve_identically(context: dict[str, Any]) -> None:
    """Hypothesis contexts: identical value, variant, reason and error code for every flag."""
    assert_same(context)


def test_many_targeting_keys_bucket_identically() -> None:
    """Thousands of targeting keys fall in the same fractional bucket in both engines."""
    rng = random.Random(5)
    keys = [f"user-{i}" for i in range(1500)]
    keys += ["".join(rng.choices(string.printable, k=rng.randint(1, 40))) for _ in range(500)]
    keys += ["é" * 30, "ü" * 200, "😀", "x" * 300, "a" * 23, "a" * 24, "a" * 255, "a" * 256]
    fractional = [key for key in KEYS if key.startswith("frac")]
    for targeting_key in keys:
        context = {"targetingKey": targeting_key, "email": targeting_key, "age": len(targeting_key)}
        for key in fractional:
            theirs = flagd_outcome(FLAGD, key, "fallback", context, FlagType.STRING)
            assert our_outcome(OURS, key, "fallback", context, FlagType.STRING) == theirs


def test_fixed_contexts_cover_every_branch() -> None:
    """Hand-picked contexts reach each branch of the nested rules, identically."""
    contexts: list[dict[str, Any]] = [
        {},
        {"targetingKey": "vip-1"},
        {"age": 30, "country": "fr", "tier": "gold"},
        {"age": 30, "country": "de", "tier": "silver", "targetingKey": "k"},
        {"email": "a@b.c"},
        {"email": "admin@example.com", "version": "2.1.0"},
        {"version": "1.2.7"},
        {"version": "1.9.0"},
        {"version": "v0.1.0"},
        {"version": "0.4"},
        {"user": {"plan": "pro"}},
        {"groups": ["beta"]},
        {"groups": ["x", "y", "z"]},
        {"groups": ["admins"], "scores": [60, 70, 80]},
        {"scores": [-1]},
        {"vip": True},
        {"vip": 1, "age": 0},
        {"beta": True},
        {"beta": "true"},
        {"age": 17, "country": "nl", "email": "x@y"},
        {"tier": "vip"},
        {"email": "nobody"},
    ]
    for context in contexts:
        assert_same(context)
    # and the branches we meant to reach were reached, in both engines
    reached = {our_outcome(OURS, "nested", -1, c, FlagType.INTEGER)[1] for c in contexts} | {
        our_outcome(OURS, "semver", "", c, FlagType.STRING)[1] for c in contexts
    }
    assert {"gold", "silver", "bronze", "none", "old", "new", "next", "odd"} <= reached


def test_the_provider_in_file_mode_agrees(tmp_path: Path) -> None:
    """Through FlagdProvider itself (file resolver on a tmp JSON file), results agree too."""
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(DOCUMENT))
    provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    provider.initialize(evaluation_context({}))
    try:
        for i in range(200):
            context = {"targetingKey": f"user-{i}", "email": f"u{i}@example.com", "age": i % 90}
            for key in ("frac-three", "frac-email", "nested", "ends", "string-static"):
                for expected in (FlagType.STRING, FlagType.INTEGER):
                    method = getattr(provider, f"resolve_{expected.value}_details")
                    try:
                        result = method(key, DEFAULTS[expected], evaluation_context(context))
                        theirs = (result.value, result.variant, str(result.reason.value), None)
                    except Exception as error:  # compared by error code
                        code = getattr(error, "error_code", None)
                        theirs = (DEFAULTS[expected], None, "ERROR", code.value if code else None)
                    ours = our_outcome(OURS, key, DEFAULTS[expected], context, expected)
                    assert ours == theirs, (key, expected, context)
    finally:
        provider.shutdown()

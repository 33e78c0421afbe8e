"""Evaluation results: values, variants, reasons, error codes and metadata."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from flags import CompiledFlag, ErrorCode, Flag, FlagType, Reason, Resolution, evaluate

HELP = {"help": "Picks the colour; if wrong, serve red.", "help_uri": "https://e.com/colour"}
COLOURS = {"red": "#f00", "green": "#0f0"}


def compiled(**fields: Any) -> CompiledFlag:
    """A compiled string flag, red by default, with fields replaced."""
    data: dict[str, Any] = {"key": "colour", "variants": COLOURS, "default_variant": "red"}
    return CompiledFlag(Flag(**{**data, **HELP, **fields}))


def test_static_flag_serves_its_default_variant_with_metadata() -> None:
    """No targeting: the default variant, reason STATIC, and the flag's help in metadata."""
    result = compiled(owner="team", tags=("ui",)).evaluate("x", {}, FlagType.STRING)
    assert result == Resolution("#f00", "red", Reason.STATIC, metadata=result.metadata)
    assert result.metadata == {**HELP, "owner": "team", "tags": "ui"}


def test_targeting_match_null_and_unknown_variant() -> None:
    """A variant name is a TARGETING_MATCH, null is DEFAULT, an unknown name is an error."""
    flag = compiled(targeting={"if": [{"var": "pick"}, {"var": "pick"}, None]})
    assert flag.evaluate("x", {"pick": "green"})[:3] == ("#0f0", "green", Reason.TARGETING_MATCH)
    assert flag.evaluate("x", {})[:3] == ("#f00", "red", Reason.DEFAULT)
    wrong = flag.evaluate("x", {"pick": "purple"})
    assert wrong[:4] == ("x", None, Reason.ERROR, ErrorCode.GENERAL)
    assert wrong.error_message == "Resolved variant purple not in variants config."


def test_non_string_results_name_variants_as_flagd_does() -> None:
    """true names the variant "true"; numbers name the variant spelled as Python prints them."""
    flag = CompiledFlag(Flag(key="k", variants={"true": 1, "2": 2}, targeting={"var": "v"}, **HELP))
    assert flag.evaluate(0, {"v": True}).variant == "true"
    assert flag.evaluate(0, {"v": 2}).variant == "2"
    assert flag.evaluate(0, {"v": 2.0}).reason is Reason.ERROR  # "2.0" is no variant


def test_disabled_and_missing_flags_serve_the_callers_default() -> None:
    """DISABLED serves the caller's default; no flag is FLAG_NOT_FOUND."""
    assert compiled(state="DISABLED").evaluate("x")[:3] == ("x", None, Reason.DISABLED)
    missing = evaluate(None, "nope", "x", {}, FlagType.STRING)
    assert missing[:4] == ("x", None, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)


def test_no_default_variant_serves_the_callers_default() -> None:
    """Without a default variant, the caller's default, reason DEFAULT, and no type check."""
    flag = compiled(default_variant=None)
    assert flag.evaluate(42, {}, FlagType.STRING)[:3] == (42, None, Reason.DEFAULT)


def test_type_mismatch_and_float_conversion() -> None:
    """Another type is TYPE_MISMATCH; integers asked for as floats come back as floats."""
    wrong = compiled().evaluate(False, {}, FlagType.BOOLEAN)
    assert wrong[:4] == (False, None, Reason.ERROR, ErrorCode.TYPE_MISMATCH)
    numbers = CompiledFlag(Flag(key="n", variants={"one": 1}, default_variant="one", **HELP))
    as_float = numbers.evaluate(0.5, {}, FlagType.FLOAT)
    assert as_float.value == 1.0
    assert isinstance(as_float.value, float)
    assert numbers.evaluate(0, {}, FlagType.INTEGER).value == 1
    assert numbers.evaluate(0, {}, FlagType.OBJECT).error_code is ErrorCode.TYPE_MISMATCH


@pytest.mark.parametrize(
    ("targeting", "code"),
    [({"nope": []}, ErrorCode.PARSE_ERROR), ({"/": [1, 0]}, ErrorCode.GENERAL)],
)
def test_failing_targeting_is_an_error_result(targeting: Any, code: ErrorCode) -> None:
    """Unknown operators are PARSE_ERROR, failing operators GENERAL; evaluation never raises."""
    result = compiled(targeting=targeting).evaluate("x", {})
    assert result[:4] == ("x", None, Reason.ERROR, code)
    assert result.error_message


def test_evaluate_accepts_a_bare_flag_and_any_mapping() -> None:
    """evaluate compiles a bare Flag, and takes any mapping (or None) as context."""
    flag = Flag(key="f", variants=COLOURS, default_variant="red", targeting={"var": "c"}, **HELP)
    assert evaluate(flag, "f", "x", {"c": "green"}).variant == "green"
    assert evaluate(flag, "f", "x", None).variant == "red"
    fractional = compiled(targeting={"fractional": [["red", 1], ["green", 1]]})

    context = MappingProxyType({"targetingKey": "user-1"})
    assert (
        fractional.evaluate("x", context).variant == fractional.evaluate("x", dict(context)).variant
    )

"""Run flags through openfeature-provider-flagd's in-process evaluator, for comparison.

The flagd provider's in-process (and file) resolver hands every evaluation to
``FlagdCore`` (``openfeature.contrib.tools.flagd.core``); calling it directly
compares our engine with exactly that code, without file watching threads.
Errors, which flagd raises, are turned into results as the OpenFeature client does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import OpenFeatureError

from flags import CompiledFlag, FlagType, evaluate, flags_from_flagd_document

Outcome = tuple[Any, str | None, str, str | None]
"""What both engines must agree on: value, variant, reason, error code."""

_METHODS = {
    FlagType.BOOLEAN: "resolve_boolean_value",
    FlagType.STRING: "resolve_string_value",
    FlagType.INTEGER: "resolve_integer_value",
    FlagType.FLOAT: "resolve_float_value",
    FlagType.OBJECT: "resolve_object_value",
}


def flagd_core(document: Mapping[str, Any]) -> FlagdCore:
    """A flagd evaluator loaded with a flagd document."""
    core = FlagdCore()
    core.set_flags(json.dumps(document))
    return core


def compiled_flags(document: Mapping[str, Any]) -> dict[str, CompiledFlag]:
    """Our compiled flags for a flagd document."""
    flags = flags_from_flagd_document(json.dumps(document))
    return {key: CompiledFlag(flag) for key, flag in flags.items()}


def evaluation_context(context: Mapping[str, Any]) -> EvaluationContext:
    """OpenFeature's context for ours: ``targetingKey`` apart, the rest attributes."""
    attributes = {k: v for k, v in context.items() if k != "targetingKey"}
    return EvaluationContext(targeting_key=context.get("targetingKey"), attributes=attributes)


def flagd_outcome(
    core: FlagdCore, key: str, default: Any, context: Mapping[str, Any], expected: FlagType
) -> Outcome:
    """Evaluate with flagd; errors reported as the OpenFeature client reports them."""
    method = getattr(core, _METHODS[expected])
    try:
        result = method(key, default, evaluation_context(context))
    except OpenFeatureError as error:
        return default, None, "ERROR", error.error_code.value
    except Exception:  # the client reports anything else as GENERAL
        return default, None, "ERROR", "GENERAL"
    reason = result.reason.value if hasattr(result.reason, "value") else result.reason
    return result.value, result.variant, str(reason), None


def our_outcome(
    flags: Mapping[str, CompiledFlag],
    key: str,
    default: Any,
    context: Mapping[str, Any],
    expected: FlagType,
) -> Outcome:
    """Evaluate with our engine."""
    result = evaluate(flags.get(key), key, default, dict(context), expected)
    code = None if result.error_code is None else result.error_code.value
    return result.value, result.variant, result.reason.value, code

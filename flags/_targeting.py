"""Compile flagd targeting rules (JsonLogic plus flagd's operators) into Python closures.

A rule is compiled once, when its flag changes, into nested closures: evaluating
it then walks no JSON and looks up no operator. The closures reproduce what
flagd's Python in-process resolver computes, including its quirks and the
errors it raises (an unknown operator is a parse error, ``/`` by zero a general
error), so a flag resolves to the same variant here as in flagd.

flagd evaluates against the context's attributes plus ``targetingKey`` and
``$flagd`` (``flagKey``, ``timestamp``). Building that dict costs a copy per
call, so the compiler resolves ``$flagd`` paths and the flag key at compile
time and only asks for the full dict when a rule reads the data as a whole
(``{"var": ""}``, a computed path, ``missing``).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from communicator import DeployctlError
from flags._flagd_ops import (
    bucket_hash,
    canonical_cbor,
    cbor_text,
    ends_with,
    fractional,
    parse_fractions,
    pick,
    sem_ver,
    starts_with,
)
from flags._jsonlogic import BUILTINS, Operation, loose_equals, truthy, walk

Rule = Callable[[Any], Any]
"""A compiled rule: called with the data in scope, returns the rule's value."""

_LAZY = {"if", "?:", "and", "or", "filter", "map", "reduce", "all", "some", "none"}
_SCOPED = {"filter", "map", "reduce", "all", "some", "none"}
OPERATORS: frozenset[str] = frozenset(
    {*BUILTINS, *_LAZY, "fractional", "starts_with", "ends_with", "sem_ver"}
)
"""Every operator flagd's targeting knows."""

_SHORT_TEXT = [bytes((0x60 | size,)) for size in range(24)]  # CBOR heads of short strings
_FLAGD_OPS: dict[str, Operation] = {
    "starts_with": starts_with,
    "ends_with": ends_with,
    "sem_ver": sem_ver,
}


class UnknownOperator(DeployctlError, ReferenceError):
    """A rule uses an operator flagd does not know (flagd reports PARSE_ERROR)."""


@dataclass(frozen=True, slots=True)
class Targeting:
    """A compiled targeting rule.

    Attributes:
        rule: The compiled rule, called with the evaluation data.
        needs_flagd_data: The rule reads the data as a whole, so it must get
            the context with ``targetingKey`` and ``$flagd`` added.
        unknown_operators: Operators the rule uses that flagd does not know;
            evaluating a branch that uses one is a parse error.
    """

    rule: Rule
    needs_flagd_data: bool
    unknown_operators: frozenset[str]


def compile_targeting(rule: Any, flag_key: str) -> Targeting:
    """Compile a flagd targeting rule for the flag ``flag_key``."""
    compiler = _Compiler(flag_key)
    compiled = compiler.compile(rule, top=True)
    return Targeting(compiled, compiler.needs_flagd_data, frozenset(compiler.unknown))


def flagd_data(context: dict[str, Any], flag_key: str) -> dict[str, Any]:
    """The data flagd evaluates rules against: the context plus ``$flagd`` and ``targetingKey``."""
    data = {name: value for name, value in context.items() if name != "targetingKey"}
    data["$flagd"] = {"flagKey": flag_key, "timestamp": int(time.time())}
    data["targetingKey"] = context.get("targetingKey")  # last, in flagd's order
    return data


def _constant(value: Any) -> Rule:
    return lambda data: value


def _apply(operation: Operation, args: list[Rule]) -> Rule:
    """Call an operation with its arguments evaluated first, as JsonLogic does."""
    if not args:
        return lambda data: operation(data)
    if len(args) == 1:
        (a,) = args
        return lambda data: operation(data, a(data))
    if len(args) == 2:
        a, b = args
        return lambda data: operation(data, a(data), b(data))
    if len(args) == 3:
        a, b, c = args
        return lambda data: operation(data, a(data), b(data), c(data))
    return lambda data: operation(data, *[arg(data) for arg in args])


class _Compiler:
    def __init__(self, flag_key: str) -> None:
        self.flag_key = flag_key
        self.needs_flagd_data = False
        self.unknown: set[str] = set()
        self.constants: dict[Rule, Any] = {}

    def constant(self, value: Any) -> Rule:
        rule = _constant(value)
        self.constants[rule] = value
        return rule

    def compile(self, logic: Any, *, top: bool) -> Rule:
        if isinstance(logic, list):
            items = [self.compile(item, top=top) for item in logic]
            if all(item in self.constants for item in items):
                # One list shared by every call: no operator mutates its arguments,
                # and fractional can then prepare its buckets at compile time.
                return self.constant([self.constants[item] for item in items])
            return lambda data: [item(data) for item in items]
        if not isinstance(logic, dict) or len(logic) != 1:
            return self.constant(logic)
        op, raw = next(iter(logic.items()))
        raw_args = raw if isinstance(raw, list) else [raw]
        if op in _LAZY:
            return self.lazy(op, raw_args, top=top)
        args = [self.compile(arg, top=top) for arg in raw_args]
        if op == "var":
            return self.var(args, top=top)
        if op == "fractional":
            return self.fractional(args, top=top)
        if op in ("in", "==") and len(args) >= 2:
            return self.compare(op, args)
        if op in ("missing", "missing_some") and top:
            self.needs_flagd_data = True
        if op in BUILTINS:
            return _apply(BUILTINS[op], args)
        if op in _FLAGD_OPS:
            return _apply(_FLAGD_OPS[op], args)
        return self.unknown_operator(op, args)

    def unknown_operator(self, op: str, args: list[Rule]) -> Rule:
        # flagd splits dotted names into a path of operators; `var.x` then fails
        # indexing a function (a general error), anything else is unknown.
        indexes_function = "." in op and op.split(".")[0] in OPERATORS - _LAZY
        if not indexes_function:
            self.unknown.add(op)

        def fail(data: Any, *values: Any) -> Any:
            if indexes_function:
                raise TypeError(f"operator {op.split('.')[0]!r} is not subscriptable")
            raise UnknownOperator(f"Unrecognized operation: {op!r}")

        return _apply(fail, args)

    def lazy(self, op: str, raw: list[Any], *, top: bool) -> Rule:
        if op in _SCOPED:
            first = self.compile(raw[0], top=top) if raw else self.constant(None)
            rest = [self.compile(arg, top=False) for arg in raw[1:2]]
            return _scoped(op, first, rest, raw[2] if len(raw) > 2 else None, len(raw))
        args = [self.compile(arg, top=top) for arg in raw]
        if op == "and":
            return _and(args)
        if op == "or":
            return _or(args)
        return _if(args)

    def var(self, args: list[Rule], *, top: bool) -> Rule:
        if len(args) > 2:
            return _apply(BUILTINS["var"], args)  # flagd fails with a TypeError: keep it
        key = self.constants.get(args[0], ...) if args else None
        default = args[1] if len(args) == 2 else self.constant(None)
        if not isinstance(key, str) or key == "":
            if top:
                self.needs_flagd_data = True
            return _apply(BUILTINS["var"], args)
        props = key.split(".")
        if top and props[0] == "$flagd":
            flag_key = self.flag_key

            def flagd_path(data: Any) -> Any:
                fallback = default(data)
                now = {"flagKey": flag_key, "timestamp": int(time.time())}
                return walk(now, props[1:], fallback)

            return flagd_path
        if default in self.constants:
            return _path(props, self.constants[default])
        return lambda data: walk(data, props, default(data))

    def compare(self, op: str, args: list[Rule]) -> Rule:
        haystack = self.constants.get(args[1], ...)
        if op == "in" and isinstance(haystack, list) and all(type(h) is str for h in haystack):
            needle, extra = args[0], args[2:]
            strings = frozenset(haystack)

            def in_strings(data: Any) -> bool:
                value = needle(data)
                for arg in extra:
                    arg(data)
                return value in strings if type(value) is str else value in haystack

            return in_strings
        if op == "==" and len(args) == 2:
            a, b = args
            return lambda data: loose_equals(a(data), b(data))
        return _apply(BUILTINS[op], args)

    def fractional(self, args: list[Rule], *, top: bool) -> Rule:
        flag_key = self.flag_key if top else None
        specs = [self.constants.get(arg, ...) for arg in args]
        if args and top and isinstance(specs[0], list) and ... not in specs:
            parsed = parse_fractions(tuple(specs))
            if parsed is None:
                return self.constant(None)
            variants, ends = parsed
            total = ends[-1]
            prefix = b"\x82" + cbor_text(self.flag_key)

            def shorthand(data: Any) -> Any:
                key = data.get("targetingKey")
                if type(key) is not str or not key:
                    return None
                try:
                    encoded = key.encode("utf-8")
                except UnicodeEncodeError:
                    return None
                size = len(encoded)
                head = _SHORT_TEXT[size] if size < 24 else cbor_text(key)[:-size]
                bucket = (bucket_hash(prefix + head + encoded) * total) >> 32
                return variants[bisect_right(ends, bucket)]

            return shorthand
        if len(args) > 1 and ... not in specs[1:]:
            parsed = parse_fractions(tuple(specs[1:]))
            bucket_by = args[0]
            if parsed is not None and not isinstance(specs[0], list):

                def explicit(data: Any) -> Any:
                    value = bucket_by(data)
                    if isinstance(value, list | tuple):  # a computed list: flagd's shorthand
                        return fractional(data, flag_key, value, *specs[1:])
                    if value is None:
                        return None
                    try:
                        return pick(bucket_hash(canonical_cbor(value)), *parsed)
                    except (TypeError, UnicodeEncodeError):
                        return None

                return explicit
        return _apply(lambda data, *values: fractional(data, flag_key, *values), args)


def _path(props: list[str], default: Any) -> Rule:
    if len(props) == 1:
        (prop,) = props

        def one(data: Any) -> Any:
            if type(data) is dict:
                value = data.get(prop)
                return default if value is None else value
            return walk(data, props, default)

        return one
    return lambda data: walk(data, props, default)


def _and(args: list[Rule]) -> Rule:
    def all_true(data: Any) -> Any:
        current = None
        for arg in args:
            current = arg(data)
            if not truthy(current):
                return current
        return current

    return all_true


def _or(args: list[Rule]) -> Rule:
    def any_true(data: Any) -> Any:
        current = None
        for arg in args:
            current = arg(data)
            if truthy(current):
                return current
        return current

    return any_true


def _if(args: list[Rule]) -> Rule:
    branches = [(args[i], args[i + 1]) for i in range(0, len(args) - 1, 2)]
    otherwise = args[-1] if len(args) % 2 else None
    if len(branches) == 1 and otherwise is not None:
        (test, then), last = branches[0], otherwise
        return lambda data: then(data) if truthy(test(data)) else last(data)

    def choose(data: Any) -> Any:
        for test, then in branches:
            if truthy(test(data)):
                return then(data)
        return None if otherwise is None else otherwise(data)

    return choose


def _scoped(op: str, items: Rule, sub: list[Rule], initial: Any, argc: int) -> Rule:
    """``filter``, ``map``, ``reduce``, ``all``, ``some``, ``none``: a rule applied to each item."""
    each: Rule = sub[0] if sub else _constant(None)
    if op == "reduce":
        if argc < 1:
            return _constant(None)

        def reduce(data: Any) -> Any:
            values = items(data)
            if not isinstance(values, list):
                return initial
            scope = {"accumulator": initial}
            for value in values:
                scope["current"] = value
                scope["accumulator"] = each(scope)
            return scope["accumulator"]

        return reduce
    if op == "map" and argc < 1:
        return _constant([])
    if op != "map" and argc < 2:
        return _constant({"filter": [], "all": False, "some": False, "none": True}[op])

    def over_items(data: Any) -> Any:
        values = items(data)
        if op == "map":
            return [each(value) for value in values] if isinstance(values, list) else []
        if op == "filter":
            return [v for v in values if truthy(each(v))] if isinstance(values, list) else []
        if not isinstance(values, list):
            return op == "none"
        if op == "all":
            return bool(values) and all(truthy(each(value)) for value in values)
        found = any(truthy(each(value)) for value in values)
        return found if op == "some" else not found

    return over_items

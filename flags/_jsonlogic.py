"""JsonLogic's value semantics, exactly as flagd's Python resolver applies them.

flagd's in-process resolver evaluates targeting with the ``panzi-json-logic``
package; its coercions (JavaScript-like ``==``, comparisons, ``var`` paths,
``substr`` …) are reproduced here so that :mod:`flags._targeting` can compile a
rule to closures that give the same results, and errors, as flagd.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from time import mktime
from typing import Any
from wsgiref.handlers import format_date_time

NAN = float("nan")
_NUMERIC = (int, float)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INFINITIES = ("inf", "-inf", "+inf")  # numbers to Python, not to JavaScript

Operation = Callable[..., Any]
"""An operator: called with the data in scope and its evaluated arguments."""


def to_number(value: Any) -> int | float:
    """Convert a value to a number as JavaScript's ``Number()`` would (NaN when it can't)."""
    if isinstance(value, _NUMERIC):
        return value
    if value is None:
        return 0
    if isinstance(value, list):
        if not value:
            return 0
        return to_number(value[0]) if len(value) == 1 else NAN
    if isinstance(value, dict):
        return NAN
    if isinstance(value, str) and value.strip().lower() in _INFINITIES:
        return NAN
    if isinstance(value, datetime):
        return (value - _EPOCH).total_seconds() * 1000.0
    if isinstance(value, date):
        return (datetime.combine(value, time()) - _EPOCH).total_seconds() * 1000.0
    try:
        return float(value)
    except ValueError:
        return NAN


def to_string(value: Any) -> str:
    """Convert a value to a string as JavaScript's ``String()`` would."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.15g}"
    if isinstance(value, int):
        return str(value)  # flagd's JsonLogic gives "True" for true: it tests int first
    if value is None:
        return "null"
    if isinstance(value, list):
        return ",".join(to_string(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, date):
        return format_date_time(mktime(value.timetuple()))
    return str(value)


def truthy(value: Any) -> bool:
    """JsonLogic truthiness: like JavaScript's, with empty lists false."""
    if value is None:
        return False
    if type(value) is bool:
        return value
    if isinstance(value, float):
        return not math.isnan(value) and bool(value)
    if isinstance(value, str | int | list):
        return bool(value)
    return True  # objects and dates


def loose_equals(a: Any, b: Any) -> bool:
    """JsonLogic's ``==``: JavaScript's loose equality.

    Raises:
        TypeError: For pairs of types JavaScript equality is not defined on here.
    """
    if type(a) is type(b):
        return a is b if isinstance(a, list | dict) else bool(a == b)
    if isinstance(a, _NUMERIC):
        return bool(a == (b if isinstance(b, _NUMERIC) else to_number(b)))
    if isinstance(b, _NUMERIC):
        return bool(to_number(a) == b)
    if a is None or b is None:
        return False
    if isinstance(a, str):
        if isinstance(b, bool):
            return to_number(a) == to_number(b)
        if isinstance(b, list | dict):
            return a == to_string(b)
        raise TypeError
    if isinstance(a, list | dict):
        if isinstance(b, str):
            return to_string(a) == b
        raise TypeError
    raise TypeError


def _ordered(a: Any, b: Any) -> tuple[Any, Any]:
    # The coercion the four comparisons share: numbers win, then strings.
    if isinstance(a, _NUMERIC):
        return a, to_number(b)
    if isinstance(b, _NUMERIC):
        return to_number(a), b
    if isinstance(a, str):
        return a, to_string(b)
    if isinstance(b, str):
        return to_string(a), b
    return to_number(a), to_number(b)


def less(a: Any, b: Any) -> bool:
    """JsonLogic's ``<`` on two values."""
    x, y = _ordered(a, b)
    return bool(x < y)


def less_or_equal(a: Any, b: Any) -> bool:
    """JsonLogic's ``<=`` on two values."""
    x, y = _ordered(a, b)
    return bool(x <= y)


def _chain(compare: Callable[[Any, Any], bool]) -> Operation:
    def operation(data: Any = None, a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
        if c is None:
            return compare(a, b)
        return compare(a, b) and compare(b, c)

    return operation


def substr(
    data: Any = None, text: Any = None, index: Any = None, length: Any = None, *_: Any
) -> str:
    """JsonLogic's ``substr``: negative index counts from the end, negative length too."""
    string = to_string(text)
    start = to_number(index)
    size = len(string)
    if math.isnan(start):
        start = 0
    elif start < 0:
        start = 0 if -start >= size else size - int(-start)
    else:
        start = min(int(start), size)
    if length is None:
        return string[start:]
    count = to_number(length)
    if math.isnan(count):
        return ""
    count = int(count)
    end = max(size + count, start) if count < 0 else start + count
    return string[start:end]


def walk(data: Any, props: list[str], default: Any) -> Any:
    """Follow a dotted ``var`` path (already split) through dicts, lists and strings."""
    for prop in props:
        if isinstance(data, dict):
            data = data.get(prop)
        elif isinstance(data, list | str):
            if prop == "length":
                return len(data)  # as JavaScript's .length
            try:
                index = int(prop, 10)
            except ValueError:
                return default
            if prop != str(index) or index < 0 or index >= len(data):
                return default
            data = data[index]
        else:
            return default
    return default if data is None else data


def var(data: Any = None, key: Any = None, default: Any = None) -> Any:
    """JsonLogic's ``var``: the value at a dotted path (or index) in the data, or the default."""
    if key is None or key == "":
        return data
    if isinstance(key, _NUMERIC):
        if isinstance(data, list | str):
            try:
                index = int(key)
            except ValueError:
                return default
            if index != key or index < 0 or index >= len(data):
                return default
            return data[index]
        if not isinstance(data, dict):
            return default
        data = data.get(key)
        if data is None:
            return default
    return walk(data, to_string(key).split("."), default)


def missing(data: Any = None, *args: Any) -> list[Any]:
    """JsonLogic's ``missing``: the keys whose value is absent, null or empty."""
    keys = args[0] if args and isinstance(args[0], list) else args
    return [key for key in keys if (value := var(data, key)) is None or value == ""]


def missing_some(data: Any = None, need: Any = 0, keys: Any = None, *_: Any) -> list[Any]:
    """JsonLogic's ``missing_some``: the missing keys, unless at least ``need`` are present."""
    if not isinstance(keys, list):
        return []
    absent = missing(data, keys)
    return [] if len(keys) - len(absent) >= to_number(need) else absent


def merge(data: Any = None, *args: Any) -> list[Any]:
    """JsonLogic's ``merge``: one flat list of the arguments (one level deep)."""
    items: list[Any] = []
    for arg in args:
        if isinstance(arg, list):
            items.extend(arg)
        else:
            items.append(arg)
    return items


def contains(data: Any = None, needle: Any = None, haystack: Any = None, *_: Any) -> bool:
    """JsonLogic's ``in``: membership in a list, or substring of a string."""
    if isinstance(haystack, list):
        return needle in haystack
    if isinstance(haystack, str):
        return to_string(needle) in haystack
    return False


def add(data: Any = None, *args: Any) -> int | float:
    """JsonLogic's ``+``."""
    total: int | float = 0
    for arg in args:
        total += to_number(arg)
    return total


def multiply(data: Any = None, *args: Any) -> int | float:
    """JsonLogic's ``*``."""
    product: int | float = 1
    for arg in args:
        product *= to_number(arg)
    return product


def _json_default(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"unhandled type: {type(value).__name__}")


def log(data: Any = None, value: Any = None, *_: Any) -> Any:
    """JsonLogic's ``log``: print the value as JSON and return it."""
    json.dump(value, sys.stdout, default=_json_default)
    sys.stdout.write("\n")
    return value


BUILTINS: dict[str, Operation] = {
    "==": lambda data=None, a=None, b=None, *_: loose_equals(a, b),
    "!=": lambda data=None, a=None, b=None, *_: not loose_equals(a, b),
    "===": lambda data=None, a=None, b=None, *_: a == b,
    "!==": lambda data=None, a=None, b=None, *_: a != b,
    "<": _chain(less),
    ">": _chain(lambda a, b: less(b, a)),
    "<=": _chain(less_or_equal),
    ">=": _chain(lambda a, b: less_or_equal(b, a)),
    "!": lambda data=None, a=None, *_: not truthy(a),
    "!!": lambda data=None, a=None, *_: truthy(a),
    "+": add,
    "*": multiply,
    "-": lambda data=None, a=None, b=None, *_: (
        -to_number(a) if b is None else to_number(a) - to_number(b)
    ),
    "/": lambda data=None, a=None, b=None, *_: to_number(a) / to_number(b),
    "%": lambda data=None, a=None, b=None, *_: to_number(a) % to_number(b),
    "in": contains,
    "min": lambda data=None, *args: min(to_number(a) for a in args) if args else NAN,
    "max": lambda data=None, *args: max(to_number(a) for a in args) if args else NAN,
    "cat": lambda data=None, *args: "".join(to_string(a) for a in args),
    "log": log,
    "var": var,
    "substr": substr,
    "merge": merge,
    "missing": missing,
    "missing_some": missing_some,
}
"""The standard operators that take evaluated arguments (the rest are lazy)."""

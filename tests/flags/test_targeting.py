"""The targeting compiler: every operator, invalid rules, properties against flagd's JsonLogic."""

from __future__ import annotations

import math
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core.targeting import custom_ops
from openfeature.contrib.tools.flagd.core.targeting.targeting import targeting as flagd_targeting

from flags import OPERATORS, UnknownOperator, compile_targeting
from flags._flagd_ops import canonical_cbor, fractional
from flags._targeting import flagd_data
from tests.flags.flagd_reference import evaluation_context

KEY = "my-flag"
DATA: dict[str, Any] = {
    "targetingKey": "user-1",
    "a": 5,
    "b": "5",
    "s": "hello world",
    "n": None,
    "t": True,
    "user": {"plan": "pro", "tags": ["x", "y"]},
    "list": [3, 1, 2],
    "words": ["apple", "banana"],
    "version": "1.4.2",
}


def ours(rule: Any, data: dict[str, Any] | None = None) -> Any:
    """Evaluate a rule with the compiler, as evaluation does."""
    data = DATA if data is None else data
    compiled = compile_targeting(rule, KEY)
    return compiled.rule(flagd_data(data, KEY) if compiled.needs_flagd_data else data)


def theirs(rule: Any, data: dict[str, Any] | None = None) -> Any:
    """Evaluate a rule with flagd's targeting function (panzi JsonLogic plus flagd's ops)."""
    data = DATA if data is None else data
    return flagd_targeting(KEY, rule, evaluation_context(data))


def outcome(evaluate: Any, rule: Any, data: dict[str, Any]) -> tuple[str, str]:
    """A comparable outcome: the value's repr, or the kind of error."""
    try:
        return "ok", repr(evaluate(rule, data))
    except ReferenceError:
        return "error", "parse"
    except Exception:  # any other error is GENERAL in both
        return "error", "general"


CASES: list[tuple[str, Any, Any]] = [
    ("var", {"var": "a"}, 5),
    ("var dotted", {"var": "user.plan"}, "pro"),
    ("var index", {"var": "user.tags.1"}, "y"),
    ("var length", {"var": "list.length"}, 3),
    ("var default", {"var": ["nope", "dflt"]}, "dflt"),
    ("var null takes default", {"var": ["n", 0]}, 0),
    ("var number key", {"var": 1}, None),
    ("var flagKey", {"var": "$flagd.flagKey"}, KEY),
    ("var targetingKey", {"var": "targetingKey"}, "user-1"),
    ("var computed", {"var": {"cat": ["us", "er.plan"]}}, "pro"),
    ("==", {"==": [{"var": "a"}, {"var": "b"}]}, True),
    ("== null", {"==": [None, 0]}, True),  # flagd: null counts as 0
    ("===", {"===": [{"var": "a"}, {"var": "b"}]}, False),
    ("!=", {"!=": [1, "2"]}, True),
    ("!==", {"!==": [1, 1]}, False),
    ("<", {"<": [1, "2"]}, True),
    ("< between", {"<": [1, {"var": "a"}, 10]}, True),
    ("< between outside", {"<": [1, {"var": "a"}, 5]}, False),
    ("<=", {"<=": ["a", "b"]}, True),
    ("<= between", {"<=": [5, {"var": "a"}, 5]}, True),
    (">", {">": [{"var": "a"}, 4.5]}, True),
    (">=", {">=": [{"var": "a"}, "6"]}, False),
    ("and", {"and": [True, "x", 0, 1]}, 0),
    ("or", {"or": [False, "", "x"]}, "x"),
    ("!", {"!": [[]]}, True),
    ("!!", {"!!": ["0"]}, True),
    ("if", {"if": [False, 1, 2]}, 2),
    ("if chained", {"if": [False, 1, {"var": "t"}, 2, 3]}, 2),
    ("if without else", {"if": [False, 1]}, None),
    ("?:", {"?:": [True, "y", "n"]}, "y"),
    ("in string", {"in": ["wor", {"var": "s"}]}, True),
    ("in array", {"in": ["banana", {"var": "words"}]}, True),
    ("in array number", {"in": [2, {"var": "list"}]}, True),
    ("cat", {"cat": ["a", 1, 2.5, None, True, [1, 2]]}, "a12.5nullTrue1,2"),
    ("substr", {"substr": [{"var": "s"}, 6]}, "world"),
    ("substr negative", {"substr": [{"var": "s"}, -5, 2]}, "wo"),
    ("substr negative length", {"substr": [{"var": "s"}, 0, -6]}, "hello"),
    ("+", {"+": [1, "2", 3.5]}, 6.5),
    ("- unary", {"-": [4]}, -4),
    ("-", {"-": [10, "4"]}, 6.0),
    ("*", {"*": [2, 3]}, 6),
    ("/", {"/": [7, 2]}, 3.5),
    ("%", {"%": [7, 3]}, 1),
    ("min", {"min": [3, 1, 2]}, 1),
    ("max", {"max": [{"var": "a"}, 9]}, 9),
    ("merge", {"merge": [1, [2, 3], [[4]]]}, [1, 2, 3, [4]]),
    ("missing", {"missing": ["a", "zz", "n"]}, ["zz", "n"]),
    ("missing list", {"missing": [["s", "q"]]}, ["q"]),
    ("missing_some enough", {"missing_some": [1, ["a", "zz"]]}, []),
    ("missing_some short", {"missing_some": [2, ["a", "zz"]]}, ["zz"]),
    ("some", {"some": [{"var": "list"}, {">": [{"var": ""}, 2]}]}, True),
    ("all", {"all": [{"var": "list"}, {">": [{"var": ""}, 0]}]}, True),
    ("all empty", {"all": [[], True]}, False),
    ("none", {"none": [{"var": "list"}, {">": [{"var": ""}, 5]}]}, True),
    ("map", {"map": [{"var": "list"}, {"*": [{"var": ""}, 2]}]}, [6, 2, 4]),
    ("filter", {"filter": [{"var": "list"}, {"<": [{"var": ""}, 3]}]}, [1, 2]),
    (
        "reduce",
        {"reduce": [{"var": "list"}, {"+": [{"var": "current"}, {"var": "accumulator"}]}, 10]},
        16,
    ),
    ("starts_with", {"starts_with": [{"var": "s"}, "hell"]}, True),
    ("starts_with not string", {"starts_with": [{"var": "a"}, "5"]}, None),
    ("ends_with", {"ends_with": [{"var": "s"}, "world"]}, True),
    ("sem_ver >=", {"sem_ver": [{"var": "version"}, ">=", "1.4.0"]}, True),
    ("sem_ver ^", {"sem_ver": [{"var": "version"}, "^", "1.0.0"]}, True),
    ("sem_ver ~", {"sem_ver": ["v1.4", "~", "1.4.9"]}, True),
    ("sem_ver invalid", {"sem_ver": ["junk", "=", "1.0.0"]}, None),
    ("sem_ver bad op", {"sem_ver": ["1.0.0", "?", "1.0.0"]}, None),
    ("fractional", {"fractional": [["a", 1], ["b", 0]]}, "a"),
    ("fractional explicit", {"fractional": [{"var": "s"}, ["a", 0], ["b", 1]]}, "b"),
    ("fractional no key", {"fractional": [{"var": "nope"}, ["a", 1]]}, None),
    ("literal object", {"a": 1, "b": 2}, {"a": 1, "b": 2}),
    ("literal list", {"if": [True, [1, {"var": "a"}]]}, [1, 5]),
]


@pytest.mark.parametrize(("name", "rule", "expected"), CASES, ids=[c[0] for c in CASES])
def test_every_operator(name: str, rule: Any, expected: Any) -> None:
    """Each operator gives the expected value, and the same as flagd's evaluator."""
    assert repr(ours(rule)) == repr(expected), name
    assert repr(theirs(rule)) == repr(expected), name


def test_every_operator_flagd_knows_is_covered() -> None:
    """The table above exercises each operator in OPERATORS (log only prints)."""
    used = {next(iter(rule)) for _, rule, _ in CASES if isinstance(rule, dict) and len(rule) == 1}
    assert OPERATORS - used == {"log"}


def test_flagd_context_is_enriched() -> None:
    """$flagd.flagKey, $flagd.timestamp and targetingKey are in the data, as flagd adds them."""
    assert ours({"var": "$flagd.timestamp"}) >= 1_700_000_000
    whole = ours({"var": ""}, {"targetingKey": "k", "$flagd": "overwritten"})
    assert whole["$flagd"]["flagKey"] == KEY
    assert ours({"var": "targetingKey"}, {}) is None
    assert ours({"missing": ["targetingKey"]}, {}) == ["targetingKey"]


def test_log_prints_and_returns(capsys: pytest.CaptureFixture[str]) -> None:
    """log prints its argument as JSON and returns it."""
    assert ours({"log": [{"var": "a"}]}) == 5
    assert capsys.readouterr().out == "5\n"


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"nope": [1]}, UnknownOperator),
        ({"if": [True, {"nope": []}, 1]}, UnknownOperator),
        ({"a.b": [1]}, UnknownOperator),
        ({"var.x": [1]}, TypeError),
        ({"/": [1, 0]}, ZeroDivisionError),
        ({"%": [1, {"var": "n"}]}, ZeroDivisionError),
        ({"var": ["a", 1, 2]}, TypeError),
    ],
)
def test_invalid_rules_fail_as_in_flagd(rule: Any, error: type[Exception]) -> None:
    """Unknown operators raise UnknownOperator (flagd's parse error); others fail as in flagd."""
    with pytest.raises(error):
        ours(rule)
    with pytest.raises(ReferenceError if error is UnknownOperator else error):
        theirs(rule)


def test_unknown_operators_are_reported_at_compile_time() -> None:
    """Compiling lists unknown operators, even in branches not taken."""
    compiled = compile_targeting({"if": [True, 1, {"nope": [{"neither": []}]}]}, KEY)
    assert compiled.unknown_operators == {"nope", "neither"}
    assert compiled.rule(DATA) == 1


# --- properties: random rules, compiled vs flagd's JsonLogic -------------------------------

PATHS = ["a", "b", "s", "n", "t", "user.plan", "list", "list.0", "list.length", "", "zz"]
PATHS += ["targetingKey", "$flagd.flagKey", "user", "words.1"]
LEAVES = (
    st.integers(-20, 20)
    | st.floats(-100, 100, allow_nan=False, width=32)
    | st.sampled_from(["", "a", "5", "1.4.2", "hello", "x", "true", "=", "^", ">="])
    | st.booleans()
    | st.none()
    | st.builds(lambda p: {"var": p}, st.sampled_from(PATHS))
    | st.builds(lambda p, d: {"var": [p, d]}, st.sampled_from(PATHS), st.integers(0, 3))
)
OPS = sorted(OPERATORS - {"log"})


def _node(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    args = st.lists(children, max_size=4)
    return (
        st.builds(lambda op, a: {op: a}, st.sampled_from(OPS), args)
        | st.builds(lambda op, a: {op: a}, st.sampled_from(OPS), children)
        | args
        | st.builds(
            lambda w: {"fractional": [[v, w[i]] for i, v in enumerate("abc")]},
            st.lists(st.integers(-1, 5), min_size=3, max_size=3),
        )
    )


RULES = st.recursive(LEAVES, _node, max_leaves=12)
DATAS = st.fixed_dictionaries(
    {},
    optional={
        "targetingKey": st.text(max_size=8) | st.none(),
        "a": st.integers(-5, 5) | st.text(max_size=3) | st.floats(-5, 5, allow_nan=False),
        "b": st.sampled_from(["5", "", "x", "1.4.2"]) | st.booleans(),
        "s": st.text(max_size=6),
        "list": st.lists(st.integers(-3, 3) | st.text(max_size=2), max_size=4),
        "user": st.fixed_dictionaries({"plan": st.sampled_from(["pro", "free"])}),
    },
)


@settings(max_examples=1500, deadline=None)
@given(RULES, DATAS)
def test_compiled_rules_match_flagd(rule: Any, data: dict[str, Any]) -> None:
    """Any rule, on any data: same value (or same kind of error) as flagd's evaluator."""
    if not isinstance(rule, dict):
        rule = {"if": [True, rule]}  # flagd only evaluates object rules
    assert outcome(ours, rule, data) == outcome(theirs, rule, data)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=1000, deadline=None)
@given(JSON)
def test_canonical_cbor_matches_cbor2(value: Any) -> None:
    """Our CBOR encoding is byte for byte cbor2's canonical one, after flagd's number folding."""
    expected = cbor2.dumps(custom_ops.normalize_numbers(value), canonical=True)
    assert canonical_cbor(value) == expected


@settings(max_examples=1000, deadline=None)
@given(
    JSON | st.text(),
    st.lists(st.tuples(st.text(max_size=3), st.integers(-3, 2**31)), min_size=1, max_size=5),
)
def test_fractional_matches_flagd(bucket_by: Any, weights: list[tuple[str, int]]) -> None:
    """fractional picks flagd's variant for any bucketing value and weights."""
    specs = [list(pair) for pair in weights]
    data = {"targetingKey": "k", "$flagd": {"flagKey": KEY}}
    expected = custom_ops.fractional(data, bucket_by, *specs)
    assert fractional(data, None, bucket_by, *specs) == expected
    if not isinstance(bucket_by, list):
        assert fractional(data, KEY, *specs) == custom_ops.fractional(data, *specs)


def test_fractional_distributes_by_weight() -> None:
    """Over many keys each variant gets about its weight's share."""
    rule = {"fractional": [["a", 10], ["b", 30], ["c", 60]]}
    compiled = compile_targeting(rule, KEY)
    counts = {"a": 0, "b": 0, "c": 0}
    for i in range(20_000):
        counts[compiled.rule({"targetingKey": f"user-{i}"})] += 1
    for variant, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert math.isclose(counts[variant] / 20_000, share, abs_tol=0.015)

"""Every parameter validator, and the global parameter check: valid and invalid values, edges."""

from __future__ import annotations

import ipaddress
import math

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from communicator import Message, MessageDefinitions, Validator, parse_duration, parse_timestamp
from communicator.wire._message import _SURROGATE_RE
from communicator.wire._validators import _GLOBAL_RULES, MAX_ID_LENGTH, global_parameter_problems

validator = TypeAdapter(Validator).validate_python
SHIPPED_GLOBALS = MessageDefinitions.load().global_parameters


def problems(spec: object, *values: str) -> list[str | None]:
    check = validator(spec)
    return [check.problem(value) for value in values]


ALL_SPECS = [
    "string",
    {"type": "string", "regex": "[a-z]+", "min_length": 2, "max_length": 5},
    {"type": "integer", "min": -5, "max": 5},
    {"type": "float", "min": 0, "max": 1},
    "bool",
    {"type": "enum", "values": ["a", "b"]},
    {"type": "duration", "min": 1, "max": 60},
    "timestamp",
    "address(ip)",
    {"type": "address(ip)", "version": 6},
    "address(ip:port)",
    {"type": "list", "item": "integer", "max_items": 3},
]


@pytest.mark.parametrize("spec", ALL_SPECS)
@given(value=st.text(max_size=40))
def test_no_value_makes_a_validator_raise(spec: object, value: str) -> None:
    """Whatever the text, a validator answers with a problem or None."""
    result = validator(spec).problem(value)
    assert result is None or isinstance(result, str)


def test_string_length_and_regex() -> None:
    """Length bounds are inclusive; the regex must match the whole value."""
    spec = {"type": "string", "regex": "[a-z]+", "min_length": 2, "max_length": 5}
    assert problems(spec, "ab", "abcde") == [None, None]
    too_short, too_long, partial = problems(spec, "a", "abcdef", "abc1")
    assert too_short == "is 1 characters long, shorter than 2"
    assert too_long == "is 6 characters long, longer than 5"
    assert partial is not None
    assert "does not match [a-z]+" in partial


def test_string_definition_errors() -> None:
    """A regex that does not compile, or inverted bounds, are refused at load."""
    with pytest.raises(ValidationError, match="does not compile"):
        validator({"type": "string", "regex": "("})
    with pytest.raises(ValidationError, match="below min_length"):
        validator({"type": "string", "min_length": 3, "max_length": 2})


def test_integer_range_edges() -> None:
    """Both ends of an integer range are accepted; one past either is not."""
    spec = {"type": "integer", "min": -5, "max": 5}
    assert problems(spec, "-5", "5", "+3", "0") == [None] * 4
    assert problems(spec, "-6", "6") == [
        "-6 is below the minimum -5",
        "6 is above the maximum 5",
    ]
    assert all(problems(spec, "1.0", "", "x", "1e3", " 1"))


@given(st.integers())
def test_integer_accepts_every_integer_without_a_range(number: int) -> None:
    """An unbounded integer validator accepts every integer in decimal (up to 30 digits)."""
    result = validator("integer").problem(str(number))
    assert (result is None) == (len(str(abs(number))) <= 30)


def test_float_range_edges_and_non_finite() -> None:
    """Float ranges are inclusive; NaN and infinity are refused."""
    spec = {"type": "float", "min": 0, "max": 1}
    assert problems(spec, "0", "1", "0.5", ".5", "1e-3") == [None] * 5
    assert problems(spec, "1.0001", "-0.1") == [
        "1.0001 is above the maximum 1",
        "-0.1 is below the minimum 0",
    ]
    assert all(problems(spec, "nan", "inf", "1e999", "", "1,5"))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_accepts_python_reprs(number: float) -> None:
    """Any finite float, as Python writes it, is accepted."""
    assert validator("float").problem(repr(number)) is None


def test_ranges_must_be_ordered() -> None:
    """A definition with max below min is refused."""
    with pytest.raises(ValidationError, match="below min"):
        validator({"type": "integer", "min": 3, "max": 2})


def test_bool_spellings() -> None:
    """Lower-case true/false, yes/no, on/off, 1/0; nothing else."""
    assert problems("bool", "true", "false", "yes", "no", "on", "off", "1", "0") == [None] * 8
    assert problems("bool", "True", "2", "") == [
        "'True' is not a boolean (use true or false)",
        "'2' is not a boolean (use true or false)",
        "'' is not a boolean (use true or false)",
    ]


def test_enum() -> None:
    """Only listed values, exactly; an empty list is refused at load."""
    assert problems({"type": "enum", "values": ["up", "down"]}, "up", "UP") == [
        None,
        "'UP' is not one of up, down",
    ]
    with pytest.raises(ValidationError):
        validator({"type": "enum", "values": []})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("1.5", 1.5),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
    ],
)
def test_duration_syntax(text: str, seconds: float) -> None:
    """Durations are plain seconds or unit-suffixed parts added up."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "5 m", "m5", "-3", "1h-5m", "5y", "1.s"])
def test_duration_rejects(text: str) -> None:
    """Anything else is not a duration."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_duration_range_edges() -> None:
    """Duration ranges are in seconds and inclusive."""
    spec = {"type": "duration", "min": 1, "max": 60}
    assert problems(spec, "1s", "1m", "1000ms") == [None, None, None]
    assert problems(spec, "999ms", "61s") == [
        "0.999s is below the minimum 1s",
        "61s is above the maximum 60s",
    ]


@given(
    st.lists(
        st.tuples(st.integers(0, 999), st.sampled_from(["ms", "s", "m", "h", "d"])),
        min_size=1,
        max_size=4,
    )
)
def test_duration_parts_add_up(parts: list[tuple[int, str]]) -> None:
    """A compound duration is the sum of its parts."""
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert math.isclose(parse_duration(text), sum(n * scale[u] for n, u in parts))


def test_timestamps() -> None:
    """Unix seconds and RFC 3339 with a zone are timestamps; a naive time is not."""
    assert parse_timestamp("0") == 0
    assert parse_timestamp("1970-01-01T00:01:00Z") == 60
    assert parse_timestamp("1970-01-01T01:00:00+01:00") == 0
    assert problems("timestamp", "1764346898.25", "2026-11-28T16:21:38.5Z") == [None, None]
    naive, junk = problems("timestamp", "2026-11-28T16:21:38", "yesterday")
    assert naive is not None
    assert "no time zone" in naive
    assert junk is not None
    assert "not a timestamp" in junk


@given(st.ip_addresses())
def test_every_ip_address_is_accepted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """Every IPv4 and IPv6 address passes address(ip); the version filter applies."""
    assert validator("address(ip)").problem(str(address)) is None
    only_v6 = validator({"type": "address(ip)", "version": 6}).problem(str(address))
    assert (only_v6 is None) == (address.version == 6)


def test_ip_rejects() -> None:
    """Host names and garbage are not IP addresses."""
    assert all(problems("address(ip)", "localhost", "1.2.3", "1.2.3.256", "", "::g"))


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_address_and_port_is_accepted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    """Any address with a port in range passes, IPv6 in brackets."""
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    assert validator("address(ip:port)").problem(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1.2.3.4", "has no port"),
        ("1.2.3.4:0", "1 to 65535"),
        ("1.2.3.4:65536", "1 to 65535"),
        ("1.2.3.4:http", "1 to 65535"),
        ("::1:80", "must be in brackets"),
        ("[1.2.3.4]:80", "must not be in brackets"),
        ("host:80", "not an IP address"),
    ],
)
def test_address_port_rejects(text: str, reason: str) -> None:
    """Each way an ip:port can be wrong has its own reason."""
    problem = validator("address(ip:port)").problem(text)
    assert problem is not None
    assert reason in problem


def test_list_items_and_counts() -> None:
    """A list checks its item count and every item, naming the bad one."""
    spec = {"type": "list", "item": {"type": "integer", "min": 0}, "min_items": 1, "max_items": 3}
    assert problems(spec, "1", "1,2,3") == [None, None]
    assert problems(spec, "", "1,2,3,4", "1,-2") == [
        "has 0 items, fewer than 1",
        "has 4 items, more than 3",
        "item 2: -2 is below the minimum 0",
    ]


@given(st.lists(st.integers(0, 10**6), max_size=8))
def test_list_of_valid_items_passes(items: list[int]) -> None:
    """Any list of valid items, joined by the separator, passes."""
    spec = {"type": "list", "item": "integer", "separator": "|"}
    assert validator(spec).problem("|".join(map(str, items))) is None


def test_unknown_type_is_refused() -> None:
    """A type that does not exist is refused with the list of known ones."""
    with pytest.raises(ValidationError, match="address\\(ip:port\\)"):
        validator({"type": "uuid"})


# -- global parameters, checked in every mode ------------------------------------------------

#: Values the shipped definitions and the docs accept, per global parameter.
DOCUMENTED_GOOD = {
    "cache": ["yes", "no"],
    "ttl": ["0", "60", "60s", "250ms", "5m", "1h30m", "1d", "86400"],
    "timeout": ["1ms", "0.5", "30s", "1h", "3600"],
    "transmission_report": ["failure"],
    "message_id": ["web_01.42", "a", "A-z.0:9_", "x" * 128],
    "in_reply_to": ["web_01.42", "~shadow.3", "~noise.1", "any text", "x" * 128],
}
#: Values refused, per global parameter (the independent test's findings among them).
DOCUMENTED_BAD = {
    "cache": ["maybe", "", "YES", "true"],
    "ttl": ["bogus", "-5", "", "1.5x", "86401", "2d", "9" * 400],
    "timeout": ["-1", "0", "0s", "0.0001", "3601", "1d", "nan"],
    "transmission_report": ["yes", "", "always", "Failure"],
    "message_id": ["~shadow.x", "~", "", "a b", "x" * 129, "é", "a\nb", "a\x00"],
    "in_reply_to": ["", "x" * 129],
}


def global_problems(**parameters: str) -> list[str]:
    return [str(p) for p in global_parameter_problems(Message(command="X", parameters=parameters))]


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, values in DOCUMENTED_GOOD.items() for v in values]
)
def test_global_parameters_accept_the_documented_values(name: str, value: str) -> None:
    """Every value the docs allow for a global parameter passes, strict mode or not."""
    assert global_problems(**{name: value}) == []


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, values in DOCUMENTED_BAD.items() for v in values]
)
def test_global_parameters_refuse_the_rest_saying_what_to_send(name: str, value: str) -> None:
    """A bad global parameter gets one problem naming it and saying what to send instead."""
    (problem,) = global_problems(**{name: value})
    assert problem.startswith(f"{name}: ")
    assert "send" in problem


def test_a_client_message_id_may_not_use_the_reserved_prefix() -> None:
    """``~`` starts the communicator's own ids (shadow copies); a client's is refused."""
    (problem,) = global_problems(message_id="~shadow.1")
    assert "reserved" in problem
    assert global_problems(in_reply_to="~shadow.1") == []  # the reply to our own copy


def test_every_bad_global_is_reported_and_others_are_left_alone() -> None:
    """All bad globals are reported at once; other parameters are not looked at."""
    problems = global_problems(
        ttl="-5", cache="maybe", timeout="-1", message_id="~x", reply_to="!", item="\x00"
    )
    assert [p.split(":")[0] for p in problems] == ["cache", "ttl", "timeout", "message_id"]
    assert global_problems() == []


def test_global_rules_are_those_of_the_shipped_definitions() -> None:
    """The always-on rules equal ``_globals.yaml``, except ``in_reply_to``, only bounded."""
    for name, (rule, _) in _GLOBAL_RULES.items():
        if name != "in_reply_to":
            assert rule.model_dump() == SHIPPED_GLOBALS[name].value.model_dump(), name
    assert set(_GLOBAL_RULES) == set(SHIPPED_GLOBALS) - {"reply_to"}  # reply_to: not acted on


@given(st.sampled_from(sorted(_GLOBAL_RULES)), st.text(max_size=140))
@example("message_id", "~shadow.1")
@example("ttl", "1d1ms")
@example("timeout", "1ms")
def test_global_check_agrees_with_the_definitions(name: str, value: str) -> None:
    """Whatever the value, the check refuses exactly what the shipped definition refuses."""
    assume(not _SURROGATE_RE.search(value))
    problems = global_problems(**{name: value})
    if name == "in_reply_to":
        refused = not 1 <= len(value) <= MAX_ID_LENGTH
    else:
        refused = SHIPPED_GLOBALS[name].value.problem(value) is not None
    assert bool(problems) == refused
    assert len(problems) <= 1


@given(st.integers(0, 86400), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]))
def test_ttl_accepts_any_duration_up_to_a_day(number: int, unit: tuple[str, int]) -> None:
    """Every duration from 0 to one day passes as ttl; anything longer does not."""
    suffix, seconds = unit
    assert (global_problems(ttl=f"{number}{suffix}") == []) == (number * seconds <= 86400)


@given(st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True))
def test_every_documented_message_id_passes(message_id: str) -> None:
    """Any id of the documented characters and length passes, as message_id and in_reply_to."""
    assert global_problems(message_id=message_id, in_reply_to=message_id) == []

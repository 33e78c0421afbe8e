"""The two wire forms: round trips, canonical output and errors on broken input."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from communicator import (
    Message,
    MessageError,
    decode,
    encode,
    format_json,
    format_line,
    parse_json,
    parse_line,
)
from communicator.wire._codec import MAX_MESSAGE_BYTES
from tests.communicator.strategies import messages, names

#: Every control character (Unicode category Cc), which no form writes raw.
CONTROL = [chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)]]
ESCAPE_ALPHABET = [*'X a=;"\\x0f{}[]:,u', *CONTROL[:3], "\x7f"]
RAW_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Values made mostly of control characters and the characters the text form escapes.
control_values = st.text(
    alphabet=st.one_of(st.sampled_from([*CONTROL, *';="\\ x']), st.characters(codec="utf-8")),
    max_size=20,
)


@st.composite
def control_messages(draw: st.DrawFn) -> Message:
    """A valid message whose parameter values are full of control characters."""
    return Message(
        command="X", parameters=draw(st.dictionaries(names, control_values, min_size=1, max_size=4))
    )


@given(messages())
def test_text_form_round_trips(message: Message) -> None:
    """Every valid message survives the text form unchanged."""
    assert parse_line(format_line(message)) == message


@given(messages())
def test_json_form_round_trips(message: Message) -> None:
    """Every valid message survives the JSON form unchanged."""
    assert parse_json(format_json(message)) == message


@given(messages(), st.sampled_from(["text", "json"]))
def test_payload_round_trips(message: Message, form: str) -> None:
    """``decode`` reads back what ``encode`` wrote, in either form."""
    assert decode(encode(message, form)) == message  # type: ignore[arg-type]


def _decodes_or_message_error(payload: bytes | str) -> None:
    try:
        message = decode(payload)
    except MessageError as exc:
        size = len(payload)
        assert exc.position is None or 0 <= exc.position <= max(size, MAX_MESSAGE_BYTES)
        assert exc.reason
    else:
        # Whatever decodes is a valid message that survives a round trip.
        assert Message.model_validate(message.model_dump()) == message
        assert decode(encode(message)) == message
        assert decode(encode(message, "json")) == message


@given(st.binary(max_size=200))
@example(b"\xff\xfe")
@example(b"{" * 5000)
@example(b"[" * 100000)
@example(b'{"command": 1' + b"0" * 5000 + b"}")
def test_random_bytes_give_a_message_error_or_a_message(payload: bytes) -> None:
    """No byte string makes the decoder raise anything but MessageError."""
    _decodes_or_message_error(payload)


@given(st.text(alphabet=st.sampled_from(list('AB:/<*?. ;="\\\nab{}[]12_')), max_size=60))
def test_random_text_gives_a_message_error_or_a_message(text: str) -> None:
    """Text made of the syntax's own characters never breaks the decoder."""
    _decodes_or_message_error(text)


@given(st.text(alphabet=st.sampled_from(ESCAPE_ALPHABET), max_size=50))
@example('{"command":"X","parameters":{"a":"1","a":{"b":1,"b":2}}}')
@example("X a=\\x")
@example("X a=\\x4")
def test_random_escapes_and_control_characters_give_a_message_error_or_a_message(
    text: str,
) -> None:
    """Escapes, raw control characters and JSON punctuation never break the decoder."""
    _decodes_or_message_error(text)
    _decodes_or_message_error("{" + text)


@given(messages(), st.data())
def test_mutated_lines_give_a_message_error_or_a_message(
    message: Message, data: st.DataObject
) -> None:
    """Deleting or inserting a character anywhere in a valid line never breaks the decoder."""
    line = format_line(message)
    index = data.draw(st.integers(0, len(line)))
    if data.draw(st.booleans()) and index < len(line):
        mutated = line[:index] + line[index + 1 :]
    else:
        mutated = line[:index] + data.draw(st.sampled_from(list('";=\\ :/<'))) + line[index:]
    _decodes_or_message_error(mutated)


def test_text_form_full_example() -> None:
    """All parts of the text form are read into the right fields."""
    message = parse_line(r'<web1:front db2:orders/PLACE id=7;note="a;b";text=x\ny;q="\"z"')
    assert message == Message(
        command="PLACE",
        server="db2",
        service="orders",
        sent_from_server="web1",
        sent_from_service="front",
        parameters={"id": "7", "note": "a;b", "text": "x\ny", "q": '"z'},
    )


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("plain", "v=plain"),
        ("", "v="),
        ("a;b", 'v="a;b"'),
        ('"quoted', r'v="\"quoted"'),
        ('mid"dle', 'v=mid"dle'),
        ("back\\slash", r"v=back\\slash"),
        ("two\nlines\r", r"v=two\nlines\r"),
        ("a=b", "v=a=b"),
        ("nul\x00", r"v=nul\x00"),
        ("tab\tesc\x1b", r"v=tab\x09esc\x1b"),
        ("del\x7fnel\x85", r"v=del\x7fnel\x85"),
        ("é\u2028", "v=é\u2028"),
        ("bell\x07;", r'v="bell\x07;"'),
    ],
)
def test_values_are_escaped_and_quoted_as_documented(value: str, wire: str) -> None:
    """Backslash, LF, CR and control characters are escaped; ';' or a leading '"' is quoted."""
    line = format_line(Message(command="X", parameters={"v": value}))
    assert line == f"X {wire}"
    assert parse_line(line).parameters == {"v": value}


@pytest.mark.parametrize(
    ("line", "reason", "position"),
    [
        ("", "no command", 0),
        ("cmd", "must match [A-Z]", 0),
        ("svc/", "no command", 4),
        ("web-1:svc/CMD", "server name 'web-1'", 0),
        ("srv:bad-svc/CMD", "service name 'bad-svc'", 4),
        ("<ab CMD", "needs a ':'", 1),
        ("<a:b", "followed by a space", 0),
        ("CMD ", "followed by parameters", 3),
        ("CMD a", "has no '='", 4),
        ("CMD 1a=2", "parameter name '1a'", 4),
        ("CMD a=1;a=2", "given twice", 8),
        ("CMD a=1;", "empty parameter", 7),
        ("CMD a=1;;b=2", "empty parameter", 8),
        ('CMD a="never closed', "never closed", 6),
        ('CMD a="x"y', "expected ';'", 9),
        (r"CMD a=\q", "bad escape", 6),
        ("CMD a=x\ny", "raw line break", 7),
        ("CMD a=x\ry", "raw line break", 7),
        ("CMD a=x\x00y", "raw control character U+0000 in the value of 'a'; write \\x00", 7),
        ('CMD a=1;b="\ty"', "raw control character U+0009 in the value of 'b'", 11),
        ("CMD a=\x7f", "U+007F", 6),
        ("CMD a=\x85", "U+0085", 6),
        ("CM\x00D a=1", "raw control character U+0000: command", 2),
        ("<w\x1b:f CMD", "raw control character U+001B: sent_from_server", 2),
        ("srv:sv\x01c/CMD", "raw control character U+0001: service", 6),
        ("CMD a=1;b\x00=2", "raw control character U+0000: parameter name", 9),
        (r"CMD a=\x4", "two hex digits", 6),
        (r"CMD a=\xg0", "two hex digits", 6),
        (r"CMD a=\X41", "bad escape", 6),
    ],
)
def test_text_form_errors_name_the_problem_and_position(
    line: str, reason: str, position: int
) -> None:
    """Each kind of broken line gets its own reason and the position of the problem."""
    with pytest.raises(MessageError) as caught:
        parse_line(line)
    assert reason in caught.value.reason
    assert caught.value.position == position
    assert f"at position {position}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "invalid JSON"),
        ("[1]", "must be an object"),
        ('{"server":"a"}', "no command"),
        ('{"command":"X","oops":1}', "unknown JSON field"),
        ('{"command":"X","parameters":{"n":3}}', "parameters.n must be a string"),
        ('{"command":"X","parameters":[]}', "parameters must be an object"),
        ('{"command":"X","service":"a b"}', "service name"),
        ('{"command":"X","parameters":{"a":"\\ud800"}}', "lone surrogate"),
        ('{"command":"X","command":"Y"}', "JSON key 'command' is given twice"),
        ('{"command":"X","parameters":{"a":"1","a":"1"}}', "JSON key 'a' is given twice"),
        ('{"command":"X","parameters":{},"parameters":{}}', "JSON key 'parameters' is given"),
        ('{"command":"X","parameters":{"a":"\x00"}}', "Invalid control character"),
        ('{"command":"X","service":"a\\u0000"}', "service name 'a\\x00'"),
        ('{"command":"X\\t"}', "command 'X\\t'"),
    ],
)
def test_json_form_errors_name_the_problem(text: str, reason: str) -> None:
    """Broken JSON messages get a MessageError naming the field."""
    with pytest.raises(MessageError) as caught:
        parse_json(text)
    assert reason in str(caught.value)


def test_json_syntax_error_has_its_position() -> None:
    """A JSON syntax error reports where the parser stopped."""
    with pytest.raises(MessageError) as caught:
        parse_json('{"command": "X",, }')
    assert caught.value.position == 16


def test_oversized_payload_is_refused() -> None:
    """Payloads over the size limit are refused before parsing."""
    with pytest.raises(MessageError, match="larger than"):
        decode(b"CMD v=" + b"x" * MAX_MESSAGE_BYTES)


def test_bad_utf8_reports_the_byte_offset() -> None:
    """Invalid UTF-8 is reported at the offending byte."""
    with pytest.raises(MessageError) as caught:
        decode(b"CMD v=ab\xc3")
    assert caught.value.position == 8
    assert "UTF-8" in caught.value.reason


def test_one_trailing_line_break_is_tolerated() -> None:
    """Shell tools append a newline; the decoder ignores exactly one."""
    assert decode(b"ALIVE serial=1\n").parameters == {"serial": "1"}
    assert decode(b"ALIVE serial=1\r\n").parameters == {"serial": "1"}


def test_message_model_refuses_bad_names() -> None:
    """Building a Message by hand validates names like the codecs do."""
    with pytest.raises(ValueError, match="command"):
        Message(command="lower")
    with pytest.raises(ValueError, match="parameter name"):
        Message(command="X", parameters={"bad name": "v"})


def test_reply_goes_back_to_the_sender() -> None:
    """``Message.reply`` addresses the sender's server and service."""
    request = parse_line("<web1:front orders/ALIVE serial=3")
    assert request.reply("ABSOLUTELY", serial="3") == Message(
        command="ABSOLUTELY", server="web1", service="front", parameters={"serial": "3"}
    )


@given(control_messages(), st.sampled_from(["text", "json"]))
def test_control_characters_round_trip_and_never_go_out_raw(message: Message, form: str) -> None:
    """Values full of control characters survive both forms, and neither writes one raw."""
    payload = encode(message, form)  # type: ignore[arg-type]
    assert decode(payload) == message
    assert not RAW_CONTROL_RE.search(payload.decode("utf-8"))


@given(messages())
def test_both_forms_read_the_same_message(message: Message) -> None:
    """The text and JSON forms of a message decode to the same message."""
    assert decode(encode(message, "text")) == decode(encode(message, "json"))


#: Characters a value may hold without quotes or escapes.
plain = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=[*CONTROL, ";", '"', "\\"]),
    max_size=10,
)


@given(plain, st.sampled_from(CONTROL), plain, st.booleans())
@example("", "\n", "", False)
def test_a_raw_control_character_is_refused_where_it_is(
    before: str, control: str, after: str, quoted: bool
) -> None:
    """A raw control character in a value, quoted or not, is refused at its exact position."""
    quote = '"' if quoted else ""
    line = f"X a={quote}{before}{control}{after}{quote}"
    with pytest.raises(MessageError) as caught:
        parse_line(line)  # decode() would forgive one trailing line break
    assert caught.value.position == len(f"X a={quote}{before}")
    assert "in the value of 'a'" in caught.value.reason
    assert f"U+{ord(control):04X}" in caught.value.reason or "line break" in caught.value.reason


@given(st.integers(0, 255), st.booleans())
def test_hex_escapes_read_any_character_up_to_ff(code: int, upper: bool) -> None:
    r"""``\xHH`` stands for U+00HH, in either case of hex digits."""
    digits = f"{code:02X}" if upper else f"{code:02x}"
    assert parse_line(f"X a=\\x{digits}").parameters == {"a": chr(code)}


def test_json_reader_takes_raw_control_characters_that_json_allows() -> None:
    """Raw DEL and C1 characters are standard JSON, read as is (the writer escapes them)."""
    message = parse_json('{"command":"X","parameters":{"a":"\x7f\x85"}}')
    assert message.parameters == {"a": "\x7f\x85"}
    assert format_json(message) == '{"command":"X","parameters":{"a":"\\u007f\\u0085"}}'
    assert decode(b'{\n  "command": "X"\n}\n') == Message(command="X")  # JSON whitespace


@given(st.lists(names, min_size=1, max_size=5, unique=True), st.data())
def test_json_duplicate_parameters_are_refused(keys: list[str], data: st.DataObject) -> None:
    """A parameter given twice in JSON is refused, naming it, like in the text form."""
    twice = data.draw(st.sampled_from(keys))
    pairs = [*keys, twice]
    body = ",".join(f"{json.dumps(k)}:{json.dumps('v')}" for k in pairs)
    text = f'{{"command":"X","parameters":{{{body}}}}}'
    with pytest.raises(MessageError, match=f"JSON key {twice!r} is given twice"):
        decode(text)
    with pytest.raises(MessageError, match="given twice"):
        parse_line("X " + ";".join(f"{k}=v" for k in pairs))


@given(messages(), st.data())
def test_json_duplicate_fields_are_refused(message: Message, data: st.DataObject) -> None:
    """Any top-level field given twice is refused, even with the same value."""
    fields = json.loads(format_json(message))
    field = data.draw(st.sampled_from(sorted(fields)))
    text = format_json(message)[:-1] + f",{json.dumps(field)}:{json.dumps(fields[field])}}}"
    with pytest.raises(MessageError, match=f"JSON key {field!r} is given twice"):
        decode(text.encode())

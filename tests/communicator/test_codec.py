"""The two wire forms: round trips, canonical output and errors on broken input."""

from __future__ import annotations

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
from communicator._codec import MAX_MESSAGE_BYTES
from tests.communicator.strategies import messages


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
    ],
)
def test_values_are_escaped_and_quoted_as_documented(value: str, wire: str) -> None:
    """Backslash, LF, CR are escaped; a value with ';' or a leading '"' is quoted."""
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

r"""The two wire forms of a message: the Snap! text line and JSON.

Text line::

    [<from_server:from_service ][server:][service/]COMMAND[ name=value;...]

In values ``\`` is written ``\\``, LF ``\n``, CR ``\r`` and every other
control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) ``\xHH``
with two lower-case hex digits; a value that holds ``;`` or starts with ``"``
is double-quoted, with ``\"`` inside. Readers refuse a raw control character
anywhere in a line, naming its position; names never hold one.

A payload starting with ``{`` is the JSON form: standard JSON, where control
characters in strings are escaped (JSON itself refuses raw U+0000-U+001F; the
writer escapes U+007F-U+009F too, so neither form ever writes a raw control
character). Every key may appear once per object. Both forms carry exactly the
same messages, and ``decode(encode(m)) == m`` for every valid message ``m``.
Decoding never raises anything but :class:`MessageError`, which names the
problem and, where known, its position.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from communicator._errors import MessageError
from communicator.wire._message import (
    _SURROGATE_RE,
    ALL_SERVERS,
    BROADCAST_SERVICES,
    Message,
    command_problem,
    name_problem,
)

#: Largest payload accepted, in bytes (MQTT allows 256 MiB; nobody needs that here).
MAX_MESSAGE_BYTES = 1024 * 1024

_JSON_FIELDS = ("command", "server", "service", "sent_from_server", "sent_from_service")
_UNESCAPE = {"\\": "\\", "n": "\n", "r": "\r", '"': '"'}
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
#: Control characters (Unicode category Cc), never raw in a text line.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_CONTROL_RE = re.compile(f"[{_CONTROL}]")
_CONTROL_CHARS = frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
_NEEDS_ESCAPE_RE = re.compile(rf"[\\{_CONTROL}]")
_NEEDS_FULL_PARSER_RE = re.compile(rf'[\\"{_CONTROL}]')
_HEX_RE = re.compile(r"[0-9a-fA-F]{2}")
#: Control characters ``json.dumps(ensure_ascii=False)`` writes raw.
_JSON_RAW_CONTROL_RE = re.compile(r"[\x7f-\x9f]")
WireForm = Literal["text", "json"]


# -- text form -------------------------------------------------------------------------------


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\x{ord(char):02x}"


def _escape(value: str) -> str:
    if _NEEDS_ESCAPE_RE.search(value):
        value = _NEEDS_ESCAPE_RE.sub(_escape_one, value)
    if ";" in value or value.startswith('"'):
        return '"' + value.replace('"', '\\"') + '"'
    return value


def format_line(message: Message) -> str:
    """Write a message in the Snap! text form."""
    parts = []
    if message.sent_from_server or message.sent_from_service:
        parts.append(f"<{message.sent_from_server}:{message.sent_from_service} ")
    if message.server:
        parts.append(f"{message.server}:")
    if message.service:
        parts.append(f"{message.service}/")
    parts.append(message.command)
    if message.parameters:
        parts.append(" ")
        parts.append(";".join(f"{k}={_escape(v)}" for k, v in message.parameters.items()))
    return "".join(parts)


def _check(problem: str | None, position: int, name: str) -> None:
    """Raise ``problem`` about ``name`` at ``position``, pointing at a control character in it."""
    if problem is None:
        return
    control = _CONTROL_RE.search(name)
    if control is not None:
        code = ord(control.group())
        raise MessageError(
            f"raw control character U+{code:04X}: {problem}", position + control.start()
        )
    raise MessageError(problem, position)


def _parse_header(line: str) -> tuple[dict[str, Any], int]:
    """Parse everything before the parameters; return the fields and where parameters start."""
    fields: dict[str, Any] = {}
    pos = 0
    if line.startswith("<"):
        end = line.find(" ")
        if end < 0:
            raise MessageError("'<from_server:from_service' must be followed by a space", 0)
        origin = line[1:end]
        if ":" not in origin:
            raise MessageError("'<from_server:from_service' needs a ':' between the names", 1)
        from_server, from_service = origin.split(":", 1)
        if from_server:
            _check(name_problem("sent_from_server", from_server), 1, from_server)
        if from_service:
            _check(
                name_problem("sent_from_service", from_service), 2 + len(from_server), from_service
            )
        fields["sent_from_server"] = from_server
        fields["sent_from_service"] = from_service
        pos = end + 1
    end = line.find(" ", pos)
    if end < 0:
        end = len(line)
    target = line[pos:end]
    server, sep, rest = target.partition(":")
    if sep:
        _check(name_problem("server", server, extra=frozenset({ALL_SERVERS})), pos, server)
        fields["server"] = server
        pos += len(server) + 1
    else:
        rest = target
    service, sep, command = rest.partition("/")
    if sep:
        _check(name_problem("service", service, extra=BROADCAST_SERVICES), pos, service)
        fields["service"] = service
        pos += len(service) + 1
    else:
        command = rest
    if not command:
        raise MessageError("the message has no command", pos)
    _check(command_problem(command), pos, command)
    fields["command"] = command
    return fields, end


def _parse_parameters_fast(text: str) -> dict[str, str] | None:
    """Parse parameters with no quotes, escapes nor control characters; ``None`` if it cannot.

    ``None`` sends the caller to the full parser, which also explains what is wrong.
    """
    if _NEEDS_FULL_PARSER_RE.search(text):
        return None
    parameters: dict[str, str] = {}
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if not sep or name in parameters or name_problem("parameter", name):
            return None
        parameters[name] = value
    return parameters


def _unescape(line: str, j: int, name: str) -> str:
    """The character written by the escape at ``line[j]`` (a backslash) in the value of ``name``."""
    follower = line[j + 1] if j + 1 < len(line) else ""
    if follower == "x":
        digits = line[j + 2 : j + 4]
        if _HEX_RE.fullmatch(digits):
            return chr(int(digits, 16))
        raise MessageError(
            f"bad escape in the value of {name!r}: \\x needs two hex digits (\\x00 to \\xff)", j
        )
    escaped = _UNESCAPE.get(follower)
    if escaped is None:
        raise MessageError(
            f'bad escape in the value of {name!r}: only \\\\, \\n, \\r, \\" and \\xHH exist', j
        )
    return escaped


def _raw_control_problem(char: str, name: str) -> str:
    if char in "\n\r":
        return f"raw line break in the value of {name!r}; write \\n or \\r"
    code = ord(char)
    return f"raw control character U+{code:04X} in the value of {name!r}; write \\x{code:02x}"


def _parse_parameters(line: str, start: int) -> dict[str, str]:
    """Parse ``name=value;...`` from ``line[start:]``, reporting the exact position of a problem."""
    parameters: dict[str, str] = {}
    n = len(line)
    i = start
    while True:
        eq = line.find("=", i)
        semi = line.find(";", i)
        if eq < 0 or (0 <= semi < eq):
            stop = n if semi < 0 else semi
            if stop == i:
                raise MessageError("empty parameter (remove the stray ';' or add name=value)", i)
            raise MessageError(f"parameter {line[i:stop]!r} has no '=' (write name=value)", i)
        name = line[i:eq]
        _check(name_problem("parameter", name), i, name)
        if name in parameters:
            raise MessageError(f"parameter {name!r} is given twice", i)
        j = eq + 1
        quoted = j < n and line[j] == '"'
        if quoted:
            j += 1
        chars: list[str] = []
        while True:
            if j >= n:
                if quoted:
                    raise MessageError(
                        f"the quoted value of {name!r} opened at position {eq + 1} is never closed",
                        eq + 1,
                    )
                break
            c = line[j]
            if c == "\\":
                chars.append(_unescape(line, j, name))
                j += 4 if line[j + 1] == "x" else 2
                continue
            if c in _CONTROL_CHARS:
                raise MessageError(_raw_control_problem(c, name), j)
            if quoted and c == '"':
                j += 1
                if j < n and line[j] != ";":
                    raise MessageError(
                        f"expected ';' after the closing quote of the value of {name!r}", j
                    )
                break
            if not quoted and c == ";":
                break
            chars.append(c)
            j += 1
        parameters[name] = "".join(chars)
        if j >= n:
            return parameters
        i = j + 1  # skip the ';'
        if i >= n:
            raise MessageError("empty parameter after the last ';' (remove it)", j)


def parse_line(line: str) -> Message:
    """Read a message in the Snap! text form.

    Raises:
        MessageError: The line is not a valid message; the error names the problem and position.
    """
    if len(line) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message longer than {MAX_MESSAGE_BYTES} characters", MAX_MESSAGE_BYTES)
    fields, end = _parse_header(line)
    if end < len(line):
        start = end + 1
        if start == len(line):
            raise MessageError("a space after the command must be followed by parameters", end)
        params = _parse_parameters_fast(line[start:])
        if params is None:
            params = _parse_parameters(line, start)
        return Message.model_construct(parameters=params, **fields)
    return Message.model_construct(parameters={}, **fields)


# -- JSON form -------------------------------------------------------------------------------


def format_json(message: Message) -> str:
    """Write a message in the JSON form (empty fields left out)."""
    data: dict[str, Any] = {"command": message.command}
    for field in _JSON_FIELDS[1:]:
        value = getattr(message, field)
        if value:
            data[field] = value
    if message.parameters:
        data["parameters"] = message.parameters
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if _JSON_RAW_CONTROL_RE.search(text):
        # Only inside strings: JSON allows them raw, but no form writes a raw control character.
        text = _JSON_RAW_CONTROL_RE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    return text


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a key given twice (the text form refuses it too)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MessageError(f"JSON key {key!r} is given twice (send it once)")
            seen.add(key)
    return result


def _string_problem(where: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{where} must be a string, not {type(value).__name__} (quote it)"
    if _SURROGATE_RE.search(value):
        return f"{where} holds a lone surrogate, which is not valid UTF-8"
    return None


def parse_json(text: str) -> Message:
    """Read a message in the JSON form.

    Raises:
        MessageError: Invalid JSON (with its position), a key given twice, or a field of the
            wrong shape (named).
    """
    if len(text) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message longer than {MAX_MESSAGE_BYTES} characters", MAX_MESSAGE_BYTES)
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except MessageError:
        raise
    except json.JSONDecodeError as exc:
        raise MessageError(f"invalid JSON: {exc.msg}", exc.pos) from None
    except (ValueError, RecursionError) as exc:  # over-long integers, absurd nesting
        raise MessageError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(f"a JSON message must be an object, not {type(data).__name__}", 0)
    unknown = sorted(set(data) - {*_JSON_FIELDS, "parameters"})
    if unknown:
        raise MessageError(f"unknown JSON field(s) {', '.join(map(repr, unknown))}")
    fields: dict[str, Any] = {}
    for field in _JSON_FIELDS:
        value = data.get(field, "")
        problem = _string_problem(field, value)
        if problem is None and (value or field == "command"):
            if field == "command":
                problem = command_problem(value) if value else "the message has no command"
            elif field == "server":
                problem = name_problem(field, value, extra=frozenset({ALL_SERVERS}))
            elif field == "service":
                problem = name_problem(field, value, extra=BROADCAST_SERVICES)
            else:
                problem = name_problem(field, value)
        if problem:
            raise MessageError(problem)
        fields[field] = value
    parameters = data.get("parameters", {})
    if not isinstance(parameters, dict):
        raise MessageError("parameters must be an object of name: string")
    for name, value in parameters.items():
        problem = name_problem("parameter", name) or _string_problem(f"parameters.{name}", value)
        if problem:
            raise MessageError(problem)
    return Message.model_construct(parameters=parameters, **fields)


# -- payloads --------------------------------------------------------------------------------


def decode(payload: bytes | str) -> Message:
    """Read a message from an MQTT payload in either wire form.

    A payload starting with ``{`` is JSON; anything else is the text form. One
    trailing line break is tolerated (shell tools add one).

    Raises:
        MessageError: The payload is not a valid message.
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        if len(payload) > MAX_MESSAGE_BYTES:
            raise MessageError(f"payload larger than {MAX_MESSAGE_BYTES} bytes", MAX_MESSAGE_BYTES)
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"payload is not valid UTF-8 ({exc.reason})", exc.start) from None
    else:
        text = payload
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if text.startswith("{"):
        return parse_json(text)
    return parse_line(text)


def encode(message: Message, form: WireForm = "text") -> bytes:
    """Write a message as an MQTT payload in the given wire form."""
    text = format_json(message) if form == "json" else format_line(message)
    return text.encode("utf-8")

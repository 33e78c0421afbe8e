"""The wire: messages, their text and JSON codecs, definitions and validators.

What a message is and how it reads, with no I/O: every other room builds on it.
"""

from communicator.wire._codec import (
    MAX_MESSAGE_BYTES,
    decode,
    encode,
    format_json,
    format_line,
    parse_json,
    parse_line,
)
from communicator.wire._definitions import (
    MessageDefinition,
    MessageDefinitions,
    Override,
    ParameterDefinition,
)
from communicator.wire._docs import render_definitions, replace_generated
from communicator.wire._message import Message
from communicator.wire._services import (
    ServiceDefinition,
    load_service_definition,
    load_service_definitions,
)
from communicator.wire._validators import Problem, Validator, parse_duration, parse_timestamp
from communicator.wire._yaml import line_of, parse_yaml

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Message",
    "MessageDefinition",
    "MessageDefinitions",
    "Override",
    "ParameterDefinition",
    "Problem",
    "ServiceDefinition",
    "Validator",
    "decode",
    "encode",
    "format_json",
    "format_line",
    "line_of",
    "load_service_definition",
    "load_service_definitions",
    "parse_duration",
    "parse_json",
    "parse_line",
    "parse_timestamp",
    "parse_yaml",
    "render_definitions",
    "replace_generated",
]

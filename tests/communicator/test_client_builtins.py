"""What every client answers by itself: HELP, ALIVE, CLOCK, and the correlation of replies."""

from __future__ import annotations

from communicator import Message
from communicator.client._builtins import builtin_answer, correlated


def test_help_lists_the_commands() -> None:
    answer = builtin_answer(Message(command="HELP"), ["PLACE", "ALIVE"])
    assert answer is not None
    assert (answer.command, answer.parameters["list"]) == ("COMMANDS", "PLACE,ALIVE")


def test_alive_echoes_serial_and_timestamp_only() -> None:
    probe = Message(command="ALIVE", parameters={"serial": "7", "timestamp": "1.5", "x": "y"})
    answer = builtin_answer(probe, [])
    assert answer is not None
    assert answer.command == "ABSOLUTELY"
    assert (answer.parameters["serial"], answer.parameters["timestamp"]) == ("7", "1.5")
    assert "x" not in answer.parameters
    assert float(answer.parameters["reply_timestamp"]) > 0


def test_clock_returns_the_sent_time_and_ours() -> None:
    answer = builtin_answer(Message(command="CLOCK", parameters={"sent_at": "12.5"}), [])
    assert answer is not None
    assert answer.command == "CLOCK_REPLY"
    assert answer.parameters["sent_at"] == "12.5"
    assert float(answer.parameters["time"]) > 0


def test_other_commands_are_not_built_in() -> None:
    assert builtin_answer(Message(command="PLACE"), ["PLACE"]) is None


def test_a_request_gets_in_reply_to_and_a_plain_message_does_not() -> None:
    request = Message(command="PLACE", parameters={"message_id": "c1.4"})
    assert correlated(request, request.reply("PLACED")).parameters["in_reply_to"] == "c1.4"
    plain = Message(command="PLACE")
    assert "in_reply_to" not in correlated(plain, plain.reply("PLACED")).parameters
    already = request.reply("PLACED", in_reply_to="other")
    assert correlated(request, already).parameters["in_reply_to"] == "other"

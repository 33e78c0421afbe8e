"""What every client answers by itself: HELP, ALIVE, CLOCK, and the correlation of replies."""

from __future__ import annotations

import asyncio
import time

from communicator import Message, MessageDefinitions
from communicator.backends._ntp import COMMAND_SECONDS, NtpStatus
from communicator.client._builtins import builtin_answer, clock_answer, correlated


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


def test_clock_answer_gives_arrival_and_departure_times_valid_by_definition() -> None:
    """t2 when it came, t3 read last, ``time`` = t3 for older askers; ntp only when known."""
    request = Message(command="CLOCK", parameters={"sent_at": "12.5", "message_id": "c1"})
    arrived = time.time()
    answer = clock_answer(request, received_at=arrived, ntp_synchronized=False)
    parameters = answer.parameters
    assert float(parameters["received_at"]) == round(arrived, 6)
    assert float(parameters["replied_at"]) >= float(parameters["received_at"])
    assert parameters["time"] == parameters["replied_at"]
    assert parameters["ntp_synchronized"] == "no"
    assert MessageDefinitions.load().validate(answer) == []
    unknown = clock_answer(request, received_at=arrived)
    assert "ntp_synchronized" not in unknown.parameters


async def test_ntp_status_reads_yes_no_and_anything_else_as_unknown() -> None:
    for printed, expected in [("yes", True), ("no", False), ("maybe", None), ("", None)]:
        status = NtpStatus(command=("sh", "-c", f"echo {printed}"))
        assert await status.read() is expected, printed
    assert await NtpStatus(command=("sh", "-c", "echo yes; exit 1")).read() is None
    assert await NtpStatus(command=("/nonexistent/timedatectl",)).read() is None


async def test_ntp_status_never_waits_on_the_answer_path() -> None:
    """The property returns the last value at once; a stale one is refreshed in the background."""
    status = NtpStatus(command=("sh", "-c", "sleep 0.2; echo yes"))
    started = time.monotonic()
    assert status.synchronized is None  # unknown yet; the reading started
    assert time.monotonic() - started < 0.05
    for _ in range(100):
        await asyncio.sleep(0.05)
        if status.synchronized is not None:
            break
    assert status.synchronized is True


async def test_a_hanging_timedatectl_counts_as_unknown() -> None:
    started = time.monotonic()
    assert await NtpStatus(command=("sleep", "30")).read() is None
    assert time.monotonic() - started < COMMAND_SECONDS + 1


def test_other_commands_are_not_built_in() -> None:
    assert builtin_answer(Message(command="PLACE"), ["PLACE"]) is None


def test_a_request_gets_in_reply_to_and_a_plain_message_does_not() -> None:
    request = Message(command="PLACE", parameters={"message_id": "c1.4"})
    assert correlated(request, request.reply("PLACED")).parameters["in_reply_to"] == "c1.4"
    plain = Message(command="PLACE")
    assert "in_reply_to" not in correlated(plain, plain.reply("PLACED")).parameters
    already = request.reply("PLACED", in_reply_to="other")
    assert correlated(request, already).parameters["in_reply_to"] == "other"

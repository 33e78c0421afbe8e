"""The commands every client answers by itself (docs/protocol.md §4), as pure functions."""

from __future__ import annotations

import time
from collections.abc import Sequence

from communicator.backends._ntp import ntp_parameter
from communicator.wire._message import Message

#: Commands every client answers itself.
BUILT_IN = ("ALIVE", "CLOCK", "HELP", "QUITTING", "STOP")
#: Commands that stop the client.
STOPPING = frozenset({"STOP", "QUITTING"})
#: What the communicator says about earlier messages: logged, never answered.
INFORMATIONAL = frozenset(
    {"UNKNOWN", "INVALID", "TRANSMISSION_REPORT", "SERVICE_UNAVAILABLE", "STATUS"}
)


def builtin_answer(message: Message, commands: Sequence[str]) -> Message | None:
    """The answer to HELP, ALIVE or CLOCK; ``None`` for any other command."""
    if message.command == "HELP":
        return message.reply("COMMANDS", list=",".join(commands))
    if message.command == "ALIVE":
        echo = {k: v for k, v in message.parameters.items() if k in ("serial", "timestamp")}
        return message.reply("ABSOLUTELY", reply_timestamp=f"{time.time():.6f}", **echo)
    if message.command == "CLOCK":
        return clock_answer(message, received_at=time.time())
    return None


def clock_answer(
    message: Message, *, received_at: float, ntp_synchronized: bool | None = None
) -> Message:
    """CLOCK_REPLY to ``message``: when it arrived (t2) and, read last, when it leaves (t3).

    docs/protocol.md §4 gives the computation the asker makes of them.
    """
    sent_at = message.parameters.get("sent_at", "0")
    extra = ntp_parameter(ntp_synchronized)
    replied_at = f"{time.time():.6f}"
    return message.reply(
        "CLOCK_REPLY",
        sent_at=sent_at,
        received_at=f"{received_at:.6f}",
        replied_at=replied_at,
        time=replied_at,
        **extra,
    )


def correlated(request: Message, answer: Message) -> Message:
    """``answer`` carrying ``in_reply_to`` when ``request`` was a request (had a message_id)."""
    if "message_id" not in request.parameters or "in_reply_to" in answer.parameters:
        return answer
    parameters = {**answer.parameters, "in_reply_to": request.parameters["message_id"]}
    return answer.model_copy(update={"parameters": parameters})

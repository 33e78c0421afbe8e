"""The message model, as in the Snap! communicator.

A message names a ``command`` and where it goes (``server``, ``service``),
where it came from (``sent_from_server``, ``sent_from_service``) and carries
string ``parameters``. The wire forms are in :mod:`communicator.wire._codec`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
COMMAND_PATTERN = r"[A-Z][A-Z0-9_]*"

#: Service names that address every accepting instance rather than one service.
BROADCAST_SERVICES = frozenset({"*", "?", "."})
#: Server name that addresses every server.
ALL_SERVERS = "*"
#: The service name the communicator signs its own messages with (reserved).
COMMUNICATOR = "communicator"
#: Commands the client library answers by itself (probes): their requests say
#: nothing of a version's own work, so they are never judged as its outcomes.
UNJUDGED_COMMANDS = frozenset({"ALIVE", "CLOCK", "HELP"})

NAME_RE = re.compile(NAME_PATTERN)
COMMAND_RE = re.compile(COMMAND_PATTERN)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def name_problem(kind: str, name: str, *, extra: frozenset[str] = frozenset()) -> str | None:
    """Say what is wrong with a server, service or parameter name, or ``None`` if it is fine."""
    if name in extra or NAME_RE.fullmatch(name):
        return None
    allowed = f" (or one of {', '.join(sorted(extra))})" if extra else ""
    return f"{kind} name {name!r} must match {NAME_PATTERN}{allowed}"


def command_problem(command: str) -> str | None:
    """Say what is wrong with a command name, or ``None`` if it is fine."""
    if COMMAND_RE.fullmatch(command):
        return None
    return f"command {command!r} must match {COMMAND_PATTERN} (upper case, digits, '_')"


def _checked(kind: str, *, extra: frozenset[str] = frozenset(), empty: bool = True) -> Any:
    def check(value: str) -> str:
        if value == "" and empty:
            return value
        problem = name_problem(kind, value, extra=extra)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


def _check_command(value: str) -> str:
    problem = command_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_parameters(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        problem = name_problem("parameter", name)
        if problem:
            raise ValueError(problem)
        if _SURROGATE_RE.search(text):
            raise ValueError(f"parameter {name!r} holds a lone surrogate, which is not valid UTF-8")
    return value


class Message(BaseModel):
    """One message between services, routed by the communicator.

    Empty ``server`` and ``service`` mean "the communicator itself" (or, for a
    reply, "whoever the router picks"); ``*`` as server means every server;
    ``*``, ``?`` and ``.`` as service mean every accepting instance anywhere,
    in the same zone, or on the same server.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    command: Annotated[str, AfterValidator(_check_command)]
    server: Annotated[str, _checked("server", extra=frozenset({ALL_SERVERS}))] = ""
    service: Annotated[str, _checked("service", extra=BROADCAST_SERVICES)] = ""
    sent_from_server: Annotated[str, _checked("sent_from_server")] = ""
    sent_from_service: Annotated[str, _checked("sent_from_service")] = ""
    parameters: Annotated[dict[str, str], AfterValidator(_check_parameters)] = Field(
        default_factory=dict
    )

    @property
    def is_broadcast(self) -> bool:
        """Whether the message goes to more than one instance."""
        return self.service in BROADCAST_SERVICES or self.server == ALL_SERVERS

    def reply(self, command: str, /, **parameters: str) -> Message:
        """Build a reply addressed to the sender of this message.

        A reply to the communicator itself (an ALIVE or CLOCK it sent) goes to
        no address, which is how the communicator is spoken to: no instance can
        register as ``communicator``, so that address would only be cached.
        """
        from_communicator = self.sent_from_service == COMMUNICATOR
        return Message(
            command=command,
            server="" if from_communicator else self.sent_from_server,
            service="" if from_communicator else self.sent_from_service,
            parameters=parameters,
        )

"""The communicator's own commands: REGISTER, UNREGISTER, COMMANDS, FAILURE, wills, probes.

:class:`Control` checks each message addressed to the communicator against its
definition and answers it; registration and wills are handled by
:mod:`communicator.router._registration`, BUSY by the shadow traffic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from communicator.backends._logs import Throttled
from communicator.backends._ntp import machine_ntp, ntp_parameter
from communicator.registry._registry import Registry
from communicator.router._delivery import correlation
from communicator.router._directory import Instance
from communicator.router._ports import (
    BusyReports,
    CommandHandler,
    OutcomeRecorder,
    Publisher,
    Registrar,
    Senders,
)
from communicator.wire._definitions import MessageDefinitions
from communicator.wire._message import Message
from communicator.wire._services import ServiceDefinition

#: What the communicator itself answers.
COMMUNICATOR_COMMANDS = (
    "ALIVE",
    "BUSY",
    "CLOCK",
    "COMMANDS",
    "DISCONNECTED",
    "FAILURE",
    "HELP",
    "REGISTER",
    "UNREGISTER",
)
#: Answers to the communicator's own messages: logged, never answered.
_ANSWERS = ("UNKNOWN", "INVALID", "ABSOLUTELY", "CLOCK_REPLY", "READY")
#: Seconds a will waits before it counts as a failure (see Registration._record_disconnect).
WILL_GRACE = 2.0
NOT_REGISTERED = "not registered: send REGISTER service=...;version=... first"
_FAILURE_KINDS = {"failure", "error_reply", "timeout", "crash"}


class Control:
    """Handles the messages addressed to the communicator itself."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        definitions: MessageDefinitions,
        registrar: Registrar,
        senders: Senders,
        outcomes: OutcomeRecorder,
        registry: Registry,
        service_definitions: Mapping[str, ServiceDefinition],
        busy: BusyReports,
        log: Throttled,
    ) -> None:
        self._publisher = publisher
        self._definitions = definitions
        self._senders = senders
        self._outcomes = outcomes
        self._registry = registry
        self._service_definitions = service_definitions
        self._busy = busy
        self._log = log
        self._handlers: dict[str, CommandHandler] = {
            "ALIVE": self._on_alive,
            "BUSY": self._on_busy,
            "CLOCK": self._on_clock,
            "COMMANDS": registrar.on_commands,
            "DISCONNECTED": registrar.on_disconnected,
            "FAILURE": self._on_failure,
            "HELP": self._on_help,
            "REGISTER": registrar.on_register,
            "UNREGISTER": registrar.on_unregister,
        }

    async def handle(self, client_id: str, message: Message) -> None:
        """Answer one message addressed to the communicator."""
        command = message.command
        handler = self._handlers.get(command)
        if handler is None:
            if command not in _ANSWERS:
                await self._publisher.reply(client_id, "UNKNOWN", command=command)
            else:
                self._log.info(command, "%s from %s: %s", command, client_id, message.parameters)
            return
        if command != "DISCONNECTED":
            problems = self._definitions.validate(message)
            if problems:
                reason = "\n".join(str(p) for p in problems)
                if command == "REGISTER":
                    await self._publisher.reply(
                        client_id, "REFUSE", reason="malformed", message=reason
                    )
                else:
                    await self._publisher.reply(
                        client_id, "INVALID", command=command, reason=reason
                    )
                return
        await handler(client_id, message)

    async def record(self, service: str, version: str, kind: str, **details: str) -> None:
        """Record an outcome (what the outcome recorder does; kept for callers of the control)."""
        await self._outcomes.record(service, version, kind, **details)

    async def _registered_sender(self, client_id: str, message: Message) -> Instance | None:
        """The sender's instance; ``None`` (after telling it so) when it has not registered."""
        sender = self._senders.sender(client_id)
        if sender is None:
            await self._publisher.reply(
                client_id, "INVALID", command=message.command, reason=NOT_REGISTERED
            )
        return sender

    async def _on_failure(self, client_id: str, message: Message) -> None:
        sender = await self._registered_sender(client_id, message)
        if sender is None:
            return
        p = message.parameters
        service = p.get("service", sender.service)
        version = p.get("version", sender.version if service == sender.service else "")
        definition = self._service_definitions.get(sender.service)
        trusted = definition is not None and definition.trusted_reporter
        if (service, version) != (sender.service, sender.version):
            problem = await self._foreign_failure_problem(sender, service, version, trusted=trusted)
            if problem:
                await self._publisher.reply(client_id, "INVALID", command="FAILURE", reason=problem)
                return
        kind = p.get("kind", "failure")
        own = service == sender.service and version == sender.version
        await self._outcomes.record(
            service,
            version,
            kind if kind in _FAILURE_KINDS else "failure",
            reason=p["reason"] if own else f"{p['reason']} (reported by {sender.instance})",
            instance=sender.instance if own else "",
            server=sender.server if own else "",
            reporter=client_id,
        )

    async def _foreign_failure_problem(
        self, sender: Instance, service: str, version: str, *, trusted: bool
    ) -> str | None:
        """Why ``sender`` may not report a failure of ``service`` ``version`` (None: it may)."""
        if not trusted:
            return (
                f"a FAILURE counts against your own version ({sender.service} "
                f"{sender.version}); leave out service= and version=, or define "
                f"{sender.service} with trusted_reporter: true to report others"
            )
        if not version:
            return f"name the version of {service} that failed (version=...)"
        known = {v.version for v in await self._registry.versions(service)}
        if version not in known:
            return f"{service} has no version {version}; report a version that registered"
        return None

    async def _on_busy(self, client_id: str, message: Message) -> None:
        sender = await self._registered_sender(client_id, message)
        if sender is not None:
            await self._busy.on_busy(sender, message)

    async def _on_help(self, client_id: str, message: Message) -> None:
        await self._publisher.reply(client_id, "COMMANDS", list=",".join(COMMUNICATOR_COMMANDS))

    async def _on_alive(self, client_id: str, message: Message) -> None:
        answer = {k: v for k, v in message.parameters.items() if k in ("serial", "timestamp")}
        await self._publisher.reply(
            client_id, "ABSOLUTELY", reply_timestamp=f"{time.time():.6f}", **answer
        )

    async def _on_clock(self, client_id: str, message: Message) -> None:
        received_at = f"{time.time():.6f}"
        replied_at = f"{time.time():.6f}"
        await self._publisher.reply(
            client_id,
            "CLOCK_REPLY",
            sent_at=message.parameters["sent_at"],
            received_at=received_at,
            replied_at=replied_at,
            time=replied_at,
            **ntp_parameter(machine_ntp().synchronized),
            **correlation(message),
        )

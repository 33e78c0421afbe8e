"""Routing one message of an owned partition: decode, check, then hand it to whom it concerns.

The communicator's own commands go to :mod:`communicator.router._control`;
replies to shadow copies to :mod:`communicator.router._shadow`; replies to
watched requests to :mod:`communicator.router._requests`; the rest is delivered
by its address (:mod:`communicator.router._delivery`).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from communicator._errors import MessageError
from communicator.backends._backoff import being_cancelled
from communicator.backends._logs import Throttled
from communicator.router._control import NOT_REGISTERED
from communicator.router._delivery import correlation
from communicator.router._partitions import ARRIVED, PartitionTable, Received
from communicator.router._ports import (
    AddressRouter,
    ControlHandler,
    Mirrors,
    Publisher,
    Replies,
    Senders,
    Stats,
)
from communicator.router._shadow import is_shadow_reply
from communicator.wire._codec import decode
from communicator.wire._definitions import MessageDefinitions
from communicator.wire._message import ALL_SERVERS, Message
from communicator.wire._validators import global_parameter_problems

logger = logging.getLogger(__name__)


class Dispatcher:
    """Routes the messages of the partitions this communicator owns, one at a time."""

    def __init__(
        self,
        *,
        table: PartitionTable,
        senders: Senders,
        control: ControlHandler,
        mirrors: Mirrors,
        replies: Replies,
        delivery: AddressRouter,
        publisher: Publisher,
        definitions: MessageDefinitions,
        strict: bool,
        stats: Stats,
        log: Throttled,
    ) -> None:
        self._table = table
        self._senders = senders
        self._control = control
        self._mirrors = mirrors
        self._replies = replies
        self._delivery = delivery
        self._publisher = publisher
        self._definitions = definitions
        self._strict = strict
        self._stats = stats
        self._log = log
        self.in_flight: int | None = None  # Ownership.shed never gives away a message mid-route

    async def route(self, partition: int, received: Received) -> None:
        """Route one message of a partition we own (or are taking over)."""
        self.in_flight = partition
        try:
            await self._route(partition, received)
            self._table.routed(partition, received)
        finally:
            self.in_flight = None

    async def _route(self, partition: int, received: Received) -> None:
        try:
            message = decode(received.payload)
        except MessageError as exc:
            self._stats["invalid"] += 1
            self._log.info("undecodable", "unreadable message from %s: %s", received.client_id, exc)
            await self._publisher.reply(received.client_id, "INVALID", reason=str(exc))
            return
        arrived = ARRIVED.set(received.at)
        try:
            await self.dispatch(partition, received.client_id, message)
        except (RedisError, OSError) as exc:  # Redis away: routing goes on, bookkeeping waits
            if being_cancelled():
                raise asyncio.CancelledError from exc
            self._log.warning("redis", "Redis error while handling %s: %s", message.command, exc)
        except Exception:  # a bug must cost one message, never the daemon
            logger.exception("failed to route %s from %s", message.command, received.client_id)
        finally:
            ARRIVED.reset(arrived)

    async def dispatch(self, partition: int, client_id: str, message: Message) -> None:
        """Route one decoded message from ``client_id``."""
        if not message.service and message.server != ALL_SERVERS:
            await self._control.handle(client_id, message)
            return
        sender = self._senders.sender(client_id)
        if sender is None:
            await self._invalid(client_id, message, NOT_REGISTERED)
            return
        message = message.model_copy(
            update={"sent_from_server": sender.server, "sent_from_service": sender.service}
        )
        # Strict: the whole message against its definition; else the globals we act on.
        if self._strict:
            problems = self._definitions.validate(message)
        else:
            problems = global_parameter_problems(message)
        if problems:
            self._stats["invalid"] += 1
            await self._invalid(client_id, message, "\n".join(str(p) for p in problems))
            return
        in_reply_to = message.parameters.get("in_reply_to")
        if in_reply_to is not None and is_shadow_reply(in_reply_to):
            await self._mirrors.on_reply(sender, in_reply_to, message)  # never delivered
            return
        if in_reply_to is not None and await self._replies.on_reply(
            partition, sender, in_reply_to, message
        ):
            return
        await self._delivery.route_by_address(partition, sender, message)

    async def _invalid(self, client_id: str, message: Message, reason: str) -> None:
        await self._publisher.reply(
            client_id, "INVALID", command=message.command, reason=reason, **correlation(message)
        )

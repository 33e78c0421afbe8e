"""Delivering a routed message by its address: a broadcast, or one instance, else the cache.

A message whose service has no instance up right now waits in the message cache
of its sender's partition (:mod:`communicator.router._cache`) until one
registers, its ``ttl`` passes, or newer messages push it out of the full cache.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

from communicator.router._cache import Cached, MessageCache
from communicator.router._directory import Directory, Instance, Verdict
from communicator.router._ports import Mirrors, Partitions, Publisher, Stats, Watcher
from communicator.wire._message import Message
from communicator.wire._validators import parse_duration


def correlation(message: Message) -> dict[str, str]:
    """``in_reply_to`` for an answer from the router to a request, so the requester can match it."""
    message_id = message.parameters.get("message_id")
    return {"in_reply_to": message_id} if message_id is not None else {}


class Delivery:
    """Sends routed messages to the instances the directory picks, or caches them."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        directory: Directory,
        cache: MessageCache,
        partitions: Partitions,
        watcher: Watcher,
        mirrors: Mirrors,
        stats: Stats,
        default_ttl: float,
    ) -> None:
        self._publisher = publisher
        self._directory = directory
        self._cache = cache
        self._partitions = partitions
        self._watcher = watcher
        self._mirrors = mirrors
        self._stats = stats
        self._default_ttl = default_ttl

    async def route_by_address(self, partition: int, sender: Instance, message: Message) -> None:
        """Route by the message's address: broadcast, or one instance (cached if none is up)."""
        if message.is_broadcast:
            await self._broadcast(sender, message)
            return
        if self._cache.waiting(partition, sender.client_id, message.service):
            await self._cache_message(partition, sender.client_id, message)  # behind its elders
            return
        await self._unicast(partition, sender, message)

    async def _unicast(self, partition: int, sender: Instance, message: Message) -> bool:
        """Send to one instance; False when it was cached instead (no instance up)."""
        directory = self._directory
        sticky_name = directory.sticky_parameter(message.service)
        sticky = message.parameters.get(sticky_name) if sticky_name else None
        target = directory.pick(
            message.service,
            message.command,
            server=message.server,
            sticky=sticky,
            preview=message.parameters.get("preview") == "yes",
        )
        if target is Verdict.UNKNOWN:
            self._stats["unknown"] += 1
            await self._publisher.reply(
                sender.client_id, "UNKNOWN", command=message.command, **correlation(message)
            )
            return True
        if target is Verdict.UNAVAILABLE:
            await self._cache_message(partition, sender.client_id, message)
            return False
        await self.deliver(target, message, requester=sender.client_id)
        await self._mirrors.mirror(sender, message, target)
        return True

    async def deliver(self, target: Instance, message: Message, *, requester: str) -> None:
        """Send to one chosen instance and start watching the outcome."""
        await self._publisher.publish(target.client_id, message)
        self._stats["routed"] += 1
        self._watcher.watch(target, message, requester=requester)

    async def _broadcast(self, sender: Instance, message: Message) -> None:
        targets = self._broadcast_targets(sender, message)
        if not targets and self._refuses(message):
            await self._publisher.reply(
                sender.client_id, "UNKNOWN", command=message.command, **correlation(message)
            )
            return
        for target in targets:
            await self._publisher.publish(target.client_id, message)
        self._stats["routed"] += len(targets)

    def _refuses(self, message: Message) -> bool:
        """Whether a ``*:service`` broadcast names a service that is up without the command."""
        service = message.service
        return (
            service not in ("*", "?", ".")
            and not self._directory.knows_command(service, message.command)
            and bool(self._directory.instances(service))
        )

    def _broadcast_targets(self, sender: Instance, message: Message) -> list[Instance]:
        service, server = message.service, message.server
        if service not in ("*", "?", "."):  # *:service
            return self._directory.every(message.command, service=service, exclude=sender.client_id)
        if service == ".":
            server = sender.server
        return self._directory.every(
            message.command,
            server=server if service == "." or server not in ("", "*") else None,
            zone=sender.zone if service == "?" else None,
            exclude=sender.client_id,
        )

    # -- the cache ----------------------------------------------------------------------------

    async def _cache_message(self, partition: int, client_id: str, message: Message) -> None:
        report = message.parameters.get("transmission_report") == "failure"
        if message.parameters.get("cache") == "no":
            if report:
                await self.report(client_id, message, "failed", "no instance, and cache=no")
            else:
                await self._publisher.reply(
                    client_id,
                    "SERVICE_UNAVAILABLE",
                    destination_service=message.service,
                    command=message.command,
                )
            return
        ttl = self._default_ttl
        if "ttl" in message.parameters:
            with contextlib.suppress(ValueError):
                ttl = parse_duration(message.parameters["ttl"])
        pushed_out = await self._cache.add(
            partition, MessageCache.new(client_id, message, ttl, report=report)
        )
        self._stats["cached"] += 1
        self._stats["cache_dropped"] += len(pushed_out)
        if report:
            await self.report(client_id, message, "cached", "")
        for item in pushed_out:
            if item.report:
                reason = "pushed out of the full cache"
                await self.report(item.sender, item.message, "failed", reason)

    async def report(self, client_id: str, message: Message, status: str, reason: str) -> None:
        """Send a TRANSMISSION_REPORT about ``message`` to its sender."""
        destination = f"{message.server}:{message.service}" if message.server else message.service
        parameters = {"status": status, "command": message.command, "destination": destination}
        if reason:
            parameters["reason"] = reason
        await self._publisher.reply(client_id, "TRANSMISSION_REPORT", **parameters)

    async def deliver_cached(self, service: str | None = None) -> None:
        """Deliver what waits in the cache (for ``service``, or all) and can now be routed."""
        for partition in self._cache.partitions():
            if not self._partitions.owns(partition):
                continue
            done: list[Cached] = []
            blocked: set[tuple[str, str]] = set()
            for item in self._cache.entries(partition):
                key = (item.sender, item.message.service)
                if (service is not None and item.message.service != service) or key in blocked:
                    continue
                if await self._unicast(partition, self._cached_sender(item), item.message):
                    done.append(item)
                else:
                    blocked.add(key)
            await self._cache.remove(partition, done)

    def _cached_sender(self, item: Cached) -> Instance:
        """The sender of a cached message; if it left, one made up to deliver on its behalf."""
        sender = self._directory.sender(item.sender)
        if sender is not None:
            return sender
        return Instance(
            item.message.sent_from_service,
            item.sender,
            item.message.sent_from_server,
            "",
            "",
            item.sender,
            frozenset(),
        )

    async def expire_cached(self) -> None:
        """Drop the cached messages whose ttl passed (reporting those that asked)."""
        expired: dict[int, list[Cached]] = defaultdict(list)
        for partition, item in self._cache.expired():
            expired[partition].append(item)
        for partition, items in expired.items():
            await self._cache.remove(partition, items)
            for item in items:
                if item.report:
                    await self.report(item.sender, item.message, "failed", "ttl passed")

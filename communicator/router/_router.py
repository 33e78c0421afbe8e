"""The router: receives every instance's messages and sends each where it belongs.

One ``Router`` is one communicator process. It subscribes to every instance's
``in`` topic, routes the senders of the partitions it leases (see
:mod:`communicator.router._partitions`), and keeps its in-memory directory current
from the change announcements in Redis. The communicator's own commands
(REGISTER, FAILURE …) are handled in :mod:`communicator.router._control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator._errors import MessageError
from communicator.backends._backoff import backoff_delay, being_cancelled
from communicator.backends._keys import Keys
from communicator.backends._link import BrokerLink, LinkError
from communicator.backends._logs import Throttled
from communicator.backends._mqtt import broker_address, tls_context
from communicator.backends._settings import Settings
from communicator.backends._topics import Topics
from communicator.registry._measures import Measurements
from communicator.registry._passwords import PasswordStore
from communicator.registry._plans import PlanStore
from communicator.registry._registry import Registry
from communicator.router._cache import Cached, MessageCache
from communicator.router._control import NOT_REGISTERED, Control
from communicator.router._directory import Directory, Instance, Verdict
from communicator.router._leases import Leases
from communicator.router._ownership import Ownership
from communicator.router._partitions import PartitionTable, Received, fingerprint
from communicator.router._requests import Requests
from communicator.router._shadow import Shadow, is_shadow_reply
from communicator.router._tracking import OutcomeTracker
from communicator.wire._codec import decode, encode
from communicator.wire._definitions import MessageDefinitions
from communicator.wire._message import ALL_SERVERS, Message
from communicator.wire._services import ServiceDefinition
from communicator.wire._validators import global_parameter_problems, parse_duration

logger = logging.getLogger(__name__)

#: Messages routed in a row before the other tasks get a turn. Routing a message
#: rarely waits, so a flood would otherwise starve the lease renewals until the
#: partitions lapse.
YIELD_EVERY = 64


def _correlation(message: Message) -> dict[str, str]:
    """``in_reply_to`` for an answer from the router to a request, so the requester can match it."""
    message_id = message.parameters.get("message_id")
    return {"in_reply_to": message_id} if message_id is not None else {}


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Tuning of one communicator; the defaults are what docs/protocol.md promises."""

    partitions: int = 32
    lease_ttl: float = 2.0
    renew_every: float = 0.5
    checkpoint_every: float = 0.1
    buffer_seconds: float = 10.0
    buffer_size: int = 20_000
    cache_size: int = 1000
    default_ttl: float = 60.0
    request_timeout: float = 30.0
    flush_every: float = 0.2
    strict: bool = False
    #: Shortest request timeout counted against a version with no service definition.
    min_timeout: float = 0.1
    #: Whether REGISTER may come without a password when the service has none set.
    passwordless_ok: bool = True


class Router:
    """One communicator: routing, registration and outcome recording."""

    def __init__(
        self,
        *,
        settings: Settings,
        redis: Redis,
        definitions: MessageDefinitions | None = None,
        services: Mapping[str, ServiceDefinition] | None = None,
        config: RouterConfig | None = None,
        router_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or RouterConfig()
        self.router_id = (
            router_id
            or f"communicatord-{settings.server_name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.keys = Keys(settings.key_prefix)
        self.topics = Topics(settings.topic_prefix)
        self.redis = redis
        self.registry = Registry(redis=redis, keys=self.keys)
        self.passwords = PasswordStore(redis=redis, keys=self.keys)
        self.plans = PlanStore(redis=redis, keys=self.keys)
        self.measurements = Measurements(redis=redis, keys=self.keys)
        self.definitions = definitions or MessageDefinitions.load()
        self.service_definitions = dict(services or {})
        self.directory = Directory()
        self.table = PartitionTable(
            self.config.partitions,
            buffer_seconds=self.config.buffer_seconds,
            buffer_size=self.config.buffer_size,
        )
        self.leases = Leases(
            redis=redis, keys=self.keys, router_id=self.router_id, ttl=self.config.lease_ttl
        )
        self.cache = MessageCache(redis=redis, keys=self.keys, size=self.config.cache_size)
        self.tracker = OutcomeTracker()
        self.log = Throttled(logger)  # for lines a client's flood could multiply
        self.control = Control(self)
        self.ownership = Ownership(self)
        self.shadow = Shadow(self)
        self.requests = Requests(self)
        self.ready = asyncio.Event()  # set once connected and holding its share of partitions
        self._link: BrokerLink | None = None
        self._in_prefix = self.topics.inbound("")
        self._track_prefix = self.topics.tracking(0)[:-1]
        self._stopping = asyncio.Event()
        self.connections = 0  # broker connections made so far (a will checks it did not change)
        self.listening = False  # subscribed: every instance's messages reach us
        self.listening_since = 0.0  # monotonic time of the last subscription
        self.in_flight: int | None = None  # the partition of the message being routed
        self.stats: dict[str, int] = {
            "routed": 0,
            "invalid": 0,
            "unknown": 0,
            "cached": 0,
            "cache_dropped": 0,
            "retained": 0,  # retained messages ignored and cleared
        }

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Route until :meth:`stop` is called (or the task is cancelled), then hand over cleanly."""
        await self.control.load_directory()
        await self.requests.load_secret()
        try:
            async with asyncio.TaskGroup() as tasks:
                mqtt = tasks.create_task(self._mqtt_loop(), name="router-mqtt")
                background = [
                    tasks.create_task(self.ownership.lease_loop(), name="router-leases"),
                    tasks.create_task(self.ownership.checkpoint_loop(), name="router-checkpoints"),
                    tasks.create_task(self.control.change_feed(), name="router-changes"),
                    tasks.create_task(self._housekeeping_loop(), name="router-housekeeping"),
                ]
                await self._stopping.wait()
                self._link = None  # stop publishing; closing the link sends what is queued
                # Libraries sometimes turn a cancellation into their own error, which a
                # loop then handles: cancel again until every task has ended.
                tasks_left = [mqtt, *background]
                for _ in range(100):
                    for task in tasks_left:
                        task.cancel()
                    await asyncio.wait(tasks_left, timeout=0.1)
                    tasks_left = [task for task in tasks_left if not task.done()]
                    if not tasks_left:
                        break
        finally:
            await self._hand_over()

    def stop(self) -> None:
        """Ask :meth:`run` to finish: checkpoint, release the leases, disconnect."""
        self._stopping.set()

    async def _hand_over(self) -> None:
        released = await self.ownership.shed_all()
        with contextlib.suppress(RedisError, OSError):
            await self.leases.leave()
            await self._flush()
        logger.info("router %s stopped; released %d partitions", self.router_id, released)

    # -- MQTT ---------------------------------------------------------------------------------

    async def _mqtt_loop(self) -> None:
        address = broker_address(self.settings)
        tls = await asyncio.to_thread(tls_context, self.settings) if address.tls else None
        attempt = 0
        while True:
            try:
                # A clean session: a dead communicator's messages are replayed by its peers
                # (docs/protocol.md §7), not queued by the broker for an id that never returns.
                link = await BrokerLink.open(
                    address.host,
                    address.port,
                    client_id=self.router_id,
                    username=address.username,
                    password=address.password,
                    tls=tls,
                    timeout=self.settings.connect_timeout,
                )
                routed = 0
                async with link:
                    self._link = link
                    self.connections += 1
                    await link.subscribe(
                        [(self.topics.inbound_all(), 0), (self.topics.tracking_all(), 0)]
                    )
                    self.listening, self.listening_since = True, time.monotonic()
                    attempt = 0
                    logger.info("router %s connected to the broker", self.router_id)
                    async for message in link:
                        if message.retain:
                            self._retained(link, message.topic, message.payload)
                            continue
                        await self._on_mqtt(message.topic, message.payload)
                        routed += 1
                        if routed % YIELD_EVERY == 0:
                            await asyncio.sleep(0)  # let renewals run during a flood
            except (LinkError, OSError) as exc:
                self.listening = False
                if being_cancelled() or self._stopping.is_set():
                    raise asyncio.CancelledError from exc
                self._link = None
                # Peers still connected heard what we are missing now: let them route it.
                if released := await self.ownership.shed_all():
                    logger.warning("handed %d partitions over while reconnecting", released)
                attempt += 1
                delay = backoff_delay(attempt)
                hint = f"; {exc.fix}" if isinstance(exc, LinkError) and exc.fix else ""
                logger.warning(
                    "broker connection lost (%s)%s; reconnecting in %.2fs", exc, hint, delay
                )
                await asyncio.sleep(delay)

    def _retained(self, link: BrokerLink, topic: str, payload: bytes) -> None:
        """Ignore a retained message, and clear it: it would count again at every restart.

        Messages are events, not state: a retained FAILURE, say, would be
        recorded anew each time a communicator subscribes.
        """
        if not payload:
            return  # our own clearing, or one of a peer
        self.stats["retained"] += 1
        link.publish(topic, b"", retain=True)
        self.log.warning(
            "retained",
            "retained message on %s ignored and cleared (publish with retain off)",
            topic,
        )

    async def _on_mqtt(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self._in_prefix):
            number = topic[len(self._track_prefix) :]
            valid = topic.startswith(self._track_prefix) and number.isascii() and number.isdigit()
            if valid and int(number) < self.table.count:
                await self.requests.take(int(number), payload)
            return
        client_id = topic[len(self._in_prefix) :]
        if not client_id:
            self.stats["invalid"] += 1  # nobody to answer: out/ would reach every snooper
            return
        if self.control.probes:
            self.control.heard(client_id)
        received = Received(client_id, payload, fingerprint(client_id, payload), time.monotonic())
        partition = self.table.partition(client_id)
        if self.table.owns(partition, received.at):
            self.in_flight = partition  # Ownership.shed never gives away a message mid-route
            try:
                await self.route(partition, received)
            finally:
                self.in_flight = None
        else:
            self.table.hold(partition, received)

    async def publish(self, client_id: str, message: Message) -> None:
        """Send ``message`` to the instance behind ``client_id`` (dropped if disconnected)."""
        link = self._link
        if link is None or not link.publish(self.topics.outbound(client_id), encode(message)):
            self.log.warning(
                "dropped", "not connected; dropped %s for %s", message.command, client_id
            )

    def publish_raw(self, topic: str, payload: bytes) -> bool:
        """Publish bytes on any topic (QoS 0); False when not connected."""
        link = self._link
        return link is not None and link.publish(topic, payload)

    @property
    def connected(self) -> bool:
        """Whether the router is connected to the broker now."""
        return self._link is not None and self._link.connected

    async def reply(self, client_id: str, command: str, /, **parameters: str) -> None:
        """Send a message from the communicator itself to ``client_id``."""
        await self.publish(
            client_id,
            Message.model_construct(
                command=command,
                server="",
                service="",
                sent_from_server=self.settings.server_name,
                sent_from_service="communicator",
                parameters=parameters,
            ),
        )

    # -- routing ------------------------------------------------------------------------------

    async def route(self, partition: int, received: Received) -> None:
        """Route one message of a partition we own (or are taking over)."""
        try:
            message = decode(received.payload)
        except MessageError as exc:
            self.stats["invalid"] += 1
            self.log.info("undecodable", "unreadable message from %s: %s", received.client_id, exc)
            await self.reply(received.client_id, "INVALID", reason=str(exc))
        else:
            try:
                await self.dispatch(partition, received.client_id, message)
            except (RedisError, OSError) as exc:  # Redis away: routing goes on, bookkeeping waits
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                self.log.warning("redis", "Redis error while handling %s: %s", message.command, exc)
            except Exception:  # a bug must cost one message, never the daemon
                logger.exception("failed to route %s from %s", message.command, received.client_id)
        self.table.routed(partition, received)

    async def dispatch(self, partition: int, client_id: str, message: Message) -> None:
        """Route one decoded message from ``client_id``."""
        if not message.service and message.server != ALL_SERVERS:
            await self.control.handle(client_id, message)
            return
        sender = self.directory.sender(client_id)
        if sender is None:
            await self.reply(
                client_id,
                "INVALID",
                command=message.command,
                reason=NOT_REGISTERED,
                **_correlation(message),
            )
            return
        message = message.model_copy(
            update={"sent_from_server": sender.server, "sent_from_service": sender.service}
        )
        # Strict: the whole message against its definition; else the globals we act on.
        if self.config.strict:
            problems = self.definitions.validate(message)
        else:
            problems = global_parameter_problems(message)
        if problems:
            self.stats["invalid"] += 1
            reason = "\n".join(str(p) for p in problems)
            await self.reply(
                client_id,
                "INVALID",
                command=message.command,
                reason=reason,
                **_correlation(message),
            )
            return
        in_reply_to = message.parameters.get("in_reply_to")
        if in_reply_to is not None and is_shadow_reply(in_reply_to):
            await self.shadow.on_reply(sender, in_reply_to, message)  # never delivered
            return
        if in_reply_to is not None and await self.requests.on_reply(
            partition, sender, in_reply_to, message
        ):
            return
        await self.route_by_address(partition, sender, message)

    async def route_by_address(self, partition: int, sender: Instance, message: Message) -> None:
        """Route by the message's address: broadcast, or one instance (cached if none is up)."""
        if message.is_broadcast:
            await self._broadcast(sender, message)
            return
        if self.cache.waiting(partition, sender.client_id, message.service):
            await self._cache(partition, sender.client_id, message)  # queue behind its elders
            return
        await self._unicast(partition, sender, message)

    async def _unicast(self, partition: int, sender: Instance, message: Message) -> bool:
        sticky_name = self.directory.sticky_parameter(message.service)
        sticky = message.parameters.get(sticky_name) if sticky_name else None
        target = self.directory.pick(
            message.service, message.command, server=message.server, sticky=sticky
        )
        if target is Verdict.UNKNOWN:
            self.stats["unknown"] += 1
            await self.reply(
                sender.client_id, "UNKNOWN", command=message.command, **_correlation(message)
            )
            return True
        if target is Verdict.UNAVAILABLE:
            await self._cache(partition, sender.client_id, message)
            return False
        await self.deliver(target, message, requester=sender.client_id)
        await self.shadow.mirror(sender, message, target)
        return True

    async def deliver(self, target: Instance, message: Message, *, requester: str) -> None:
        """Send to one chosen instance and start watching the outcome."""
        await self.publish(target.client_id, message)
        self.stats["routed"] += 1
        self.requests.watch(target, message, requester=requester)

    async def _broadcast(self, sender: Instance, message: Message) -> None:
        service, server = message.service, message.server
        if service in ("*", "?", "."):
            targets = self.directory.every(
                message.command,
                server=sender.server
                if service == "."
                else (server if server not in ("", "*") else None),
                zone=sender.zone if service == "?" else None,
                exclude=sender.client_id,
            )
        else:  # *:service
            targets = self.directory.every(
                message.command, service=service, exclude=sender.client_id
            )
            if (
                not targets
                and not self.directory.knows_command(service, message.command)
                and self.directory.instances(service)
            ):
                await self.reply(
                    sender.client_id,
                    "UNKNOWN",
                    command=message.command,
                    **_correlation(message),
                )
                return
        for target in targets:
            await self.publish(target.client_id, message)
        self.stats["routed"] += len(targets)

    # -- cache --------------------------------------------------------------------------------

    async def _cache(self, partition: int, client_id: str, message: Message) -> None:
        report = message.parameters.get("transmission_report") == "failure"
        if message.parameters.get("cache") == "no":
            if report:
                await self._report(client_id, message, "failed", "no instance, and cache=no")
            else:
                await self.reply(
                    client_id,
                    "SERVICE_UNAVAILABLE",
                    destination_service=message.service,
                    command=message.command,
                )
            return
        ttl = self.config.default_ttl
        if "ttl" in message.parameters:
            with contextlib.suppress(ValueError):
                ttl = parse_duration(message.parameters["ttl"])
        pushed_out = await self.cache.add(
            partition, MessageCache.new(client_id, message, ttl, report=report)
        )
        self.stats["cached"] += 1
        self.stats["cache_dropped"] += len(pushed_out)
        if report:
            await self._report(client_id, message, "cached", "")
        for item in pushed_out:
            if item.report:
                await self._report(
                    item.sender, item.message, "failed", "pushed out of the full cache"
                )

    async def _report(self, client_id: str, message: Message, status: str, reason: str) -> None:
        destination = f"{message.server}:{message.service}" if message.server else message.service
        parameters = {"status": status, "command": message.command, "destination": destination}
        if reason:
            parameters["reason"] = reason
        await self.reply(client_id, "TRANSMISSION_REPORT", **parameters)

    async def deliver_cached(self, service: str | None = None) -> None:
        """Deliver what waits in the cache (for ``service``, or all) and can now be routed."""
        for partition in self.cache.partitions():
            if not self.table.owns(partition):
                continue
            done: list[Cached] = []
            blocked: set[tuple[str, str]] = set()
            for item in self.cache.entries(partition):
                key = (item.sender, item.message.service)
                if (service is not None and item.message.service != service) or key in blocked:
                    continue
                sender = self.directory.sender(item.sender)
                if sender is None:  # the sender left; deliver on its behalf all the same
                    sender = Instance(
                        item.message.sent_from_service,
                        item.sender,
                        item.message.sent_from_server,
                        "",
                        "",
                        item.sender,
                        frozenset(),
                    )
                if await self._unicast(partition, sender, item.message):
                    done.append(item)
                else:
                    blocked.add(key)
            await self.cache.remove(partition, done)

    # -- background loops ---------------------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_every)
            self.log.flush()
            try:
                await self._flush()
                await self.shadow.housekeeping()
                await self.requests.expire()
                for pending in self.tracker.timed_out():
                    await self.control.record(
                        pending.service,
                        pending.version,
                        "timeout",
                        reason="no reply in time",
                        instance=pending.instance,
                        server=pending.server,
                        reporter=pending.requester,
                    )
                expired: dict[int, list[Cached]] = {}
                for partition, item in self.cache.expired():
                    expired.setdefault(partition, []).append(item)
                for partition, items in expired.items():
                    await self.cache.remove(partition, items)
                    for item in items:
                        if item.report:
                            await self._report(item.sender, item.message, "failed", "ttl passed")
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                logger.warning("housekeeping postponed: %s", exc)

    async def _flush(self) -> None:
        successes, latencies = self.tracker.take_successes()
        if not successes:
            return
        try:
            await self.registry.record_successes(successes)
        except (RedisError, OSError):
            self.tracker.restore(successes)  # latencies are samples: losing some is fine
            raise
        await self.measurements.record_latencies(latencies)

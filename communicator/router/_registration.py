"""Registration: REGISTER and its checks, UNREGISTER, wills (DISCONNECTED) and COMMANDS.

Each change is written to the registry, applied to this router's directory,
announced to the other communicators, and told to the instances that accept
STATUS; then the cache delivers what waited for the service.

The announcements go out in order from one background task (see
:meth:`Registration._announce`): routing does not wait for their Redis round
trip, which was a quarter of a REGISTER's time. A client repeats its REGISTER
until READY comes (after 0.5, 1, 2, 4 s...); when thousands reconnect at once,
most REGISTERs are such repeats (bench/bench_storm.py). A repeat of the
REGISTER this router just answered, on the same broker connection, with the
instance unchanged in the directory, is answered READY again without the
Redis round trips (see :meth:`Registration._repeated`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import NamedTuple

from redis.exceptions import RedisError

from communicator.registry._passwords import PasswordStore
from communicator.registry._registry import InstanceInfo, Registry
from communicator.router._control import NOT_REGISTERED, WILL_GRACE
from communicator.router._directory import Directory, Instance
from communicator.router._directory_sync import instance_of
from communicator.router._identity import Probes, identity_refusal
from communicator.router._partitions import ARRIVED
from communicator.router._ports import (
    Announcer,
    CachedDelivery,
    LinkStatus,
    OutcomeRecorder,
    Publisher,
)
from communicator.wire._message import Message
from communicator.wire._services import ServiceDefinition

logger = logging.getLogger(__name__)

#: Seconds during which a REGISTER repeating the one answered READY is answered from memory.
REPEAT_WINDOW = 10.0

#: Seconds a REGISTER refused because Redis refused the write is told to wait.
REGISTRY_RETRY = 5.0


class _Answered(NamedTuple):
    """The REGISTER a client was last answered READY to, and what it registered."""

    parameters: dict[str, str]
    at: float  # monotonic
    connection: int  # the router's broker connection then (LinkStatus.connections)
    instance: Instance  # the directory's entry made for it


class Registration:
    """Registers and removes instances, on their messages and on their wills."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        directory: Directory,
        registry: Registry,
        passwords: PasswordStore,
        service_definitions: Mapping[str, ServiceDefinition],
        passwordless_ok: bool,
        server_name: str,
        announcer: Announcer,
        cached: CachedDelivery,
        outcomes: OutcomeRecorder,
        link: LinkStatus,
        probes: Probes,
    ) -> None:
        self._publisher = publisher
        self._directory = directory
        self._registry = registry
        self._passwords = passwords
        self._definitions = service_definitions
        self._passwordless_ok = passwordless_ok
        self._server_name = server_name
        self._announcer = announcer
        self._cached = cached
        self._outcomes = outcomes
        self._link = link
        self._probes = probes
        self._pending: set[asyncio.Task[None]] = set()
        # (service, added, removed) not yet announced, oldest first; one task sends them.
        self._unannounced: deque[tuple[str, InstanceInfo | None, str | None]] = deque()
        self._announcing = False
        self._answered: dict[str, _Answered] = {}  # by client id, oldest first

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _announce(
        self, service: str, *, added: InstanceInfo | None = None, removed: str | None = None
    ) -> None:
        """Announce a change to the other communicators, after those queued before it.

        One task publishes the queue in order, so peers apply the changes in the
        order this router made them, and routing goes on meanwhile.
        """
        self._unannounced.append((service, added, removed))
        if not self._announcing:
            self._announcing = True
            self._spawn(self._send_announcements(), "announcements")

    async def _send_announcements(self) -> None:
        try:
            while self._unannounced:
                service, added, removed = self._unannounced[0]
                try:
                    await self._announcer.announce(service, added=added, removed=removed)
                except (RedisError, OSError) as exc:  # as before: peers learn at their next re-read
                    logger.warning("could not announce a change of %s: %s", service, exc)
                self._unannounced.popleft()
        finally:
            self._announcing = False

    # -- REGISTER -----------------------------------------------------------------------------

    async def on_register(self, client_id: str, message: Message) -> None:
        """Check a REGISTER (identity, password, instance name), then register or refuse."""
        p = message.parameters
        service = p["service"]
        refusal = identity_refusal(client_id, service)
        if refusal is not None:
            await self._publisher.reply(client_id, "REFUSE", **refusal)
            return
        repeated = self._repeated(client_id, message)
        if repeated is not None:
            await self._ready(client_id, repeated)
            return
        if not await self._password_ok(client_id, service, p.get("password")):
            return
        name = p.get("instance", client_id)
        holder = next(
            (
                i.client_id
                for i in self._directory.instances(service)
                if i.instance == name and i.client_id != client_id
            ),
            None,
        )
        if holder is not None:
            # Asking the holder would stall routing: finish this REGISTER on the side.
            self._spawn(self._claim(holder, client_id, message), f"claim-{client_id}")
            return
        await self._register(client_id, message)

    def _repeated(self, client_id: str, message: Message) -> Instance | None:
        """The instance, if this REGISTER repeats the one just answered READY and nothing changed.

        Nothing may have changed: the same parameters (password included), within
        ``REPEAT_WINDOW``, on the same broker connection, the directory's entry
        the very one that REGISTER made (a COMMANDS, a peer's change or a re-read
        of the service replaces it), and its version still valid. Else the
        REGISTER goes the whole way again.
        """
        answered = self._answered.get(client_id)
        if answered is None:
            return None
        instance = answered.instance
        if (
            time.monotonic() - answered.at > REPEAT_WINDOW
            or answered.connection != self._link.connections
            or answered.parameters != message.parameters
            or self._directory.sender(client_id) is not instance
            or self._directory.is_invalid(instance.service, instance.version)
        ):
            return None
        return instance

    def _remember(self, client_id: str, message: Message, instance: Instance) -> None:
        """Remember the REGISTER just answered READY (see :meth:`_repeated`)."""
        now = time.monotonic()
        answered = self._answered
        answered.pop(client_id, None)
        answered[client_id] = _Answered(
            dict(message.parameters), now, self._link.connections, instance
        )
        while answered:  # insertion order is age order: drop those past the window
            oldest = next(iter(answered))
            if now - answered[oldest].at <= REPEAT_WINDOW:
                break
            del answered[oldest]

    async def _ready(self, client_id: str, instance: Instance) -> None:
        await self._publisher.reply(
            client_id,
            "READY",
            server=self._server_name,
            instance=instance.instance,
            time=f"{time.time():.6f}",
        )

    async def _password_ok(self, client_id: str, service: str, password: str | None) -> bool:
        """Whether the password admits ``client_id`` to ``service`` (else it is told why not)."""
        definition = self._definitions.get(service)
        check = await self._passwords.check(
            service,
            password,
            source=client_id,
            required=bool(definition and definition.password_required) or not self._passwordless_ok,
        )
        if check.ok:
            return True
        parameters = {"reason": check.reason, "message": check.message}
        if check.retry_after:
            parameters["retry_after"] = f"{check.retry_after:g}s"
        await self._publisher.reply(client_id, "REFUSE", **parameters)
        return False

    async def _claim(self, holder: str, client_id: str, message: Message) -> None:
        """Register ``client_id`` under a name ``holder`` has, unless ``holder`` is alive."""
        p = message.parameters
        try:
            if await self._probes.alive(holder):
                name = p.get("instance", client_id)
                await self._publisher.reply(
                    client_id,
                    "REFUSE",
                    reason="instance_taken",
                    message=f"instance {name} of {p['service']} is registered by a live client "
                    f"({holder}); choose another instance name, or stop that one first",
                )
                return
            # The holder is gone without a will yet (its host died): the name is free.
            self._directory.remove(holder)
            self._announce(p["service"], removed=holder)
            await self._register(client_id, message)
        except (RedisError, OSError) as exc:
            logger.warning("could not register %s: %s", client_id, exc)

    async def _register(self, client_id: str, message: Message) -> None:
        """Record the instance and answer READY (or REFUSE when its version is invalid)."""
        p = message.parameters
        service, version = p["service"], p["version"]
        commands = [c for c in p.get("commands", "").split(",") if c]
        info = InstanceInfo(
            service=service,
            instance=p.get("instance", client_id),
            server=p.get("server", "unknown"),
            zone=p.get("zone", ""),
            version=version,
            client_id=client_id,
            commands=commands,
            registered_at=time.time(),
        )
        # The commands become the service's in the same step (one Redis round trip).
        try:
            state = await self._registry.register_instance(info, with_commands=bool(commands))
        except (RedisError, OSError) as exc:
            # Not recorded, so not routable: say so at once rather than leave it to time out.
            logger.warning(
                "cannot register %s %s: the registry refused the write (%s); it is told to "
                "retry in %gs. Check Redis: its memory (maxmemory, noeviction) and that it runs",
                service,
                info.instance,
                exc,
                REGISTRY_RETRY,
            )
            await self._publisher.reply(
                client_id,
                "REFUSE",
                reason="unavailable",
                retry_after=f"{REGISTRY_RETRY:g}s",
                message="the registry cannot record instances right now (Redis refused the "
                "write); register again after retry_after",
            )
            return
        if not state.valid:
            await self._publisher.reply(
                client_id,
                "REFUSE",
                reason="version_invalid",
                message=f"version {version} of {service} is invalid ({state.reason}); do not "
                f"restart it here until an operator runs: deployctl version reinstate "
                f"{service} {version}",
            )
            return
        instance = instance_of(info)
        self._directory.add(instance)
        await self._ready(client_id, instance)
        self._remember(client_id, message, instance)
        await self._status(info.service, info.server, info.version, "up")
        self._announce(service, added=info)
        await self._cached.deliver_cached(service)

    # -- leaving ------------------------------------------------------------------------------

    async def on_unregister(self, client_id: str, message: Message) -> None:
        """The instance leaves on purpose."""
        await self._leave(client_id, failure=False)

    async def on_disconnected(self, client_id: str, message: Message) -> None:
        """The instance's will: it left without UNREGISTER (counted unless the broker restarted)."""
        await self._leave(client_id, failure=True)

    async def _leave(self, client_id: str, *, failure: bool) -> None:
        self._answered.pop(client_id, None)
        instance = self._directory.remove(client_id)
        if instance is None:  # not in the directory: the registry may still hold it
            info = await self._registry.instance_for_client(client_id)
            if info is None:
                return
            instance = instance_of(info)
            self._directory.remove(client_id, service=info.service)  # a re-read may be under way
        service, name, version, server = (
            instance.service,
            instance.instance,
            instance.version,
            instance.server,
        )
        await self._registry.unregister_instance(service, name)
        if failure:
            arrived = ARRIVED.get()
            self._spawn(
                self._record_disconnect(
                    client_id, service, version, name, server, self._link.connections, arrived
                ),
                f"disconnect-{client_id}",
            )
        await self._status(service, server, version, "down")
        self._announce(service, removed=client_id)

    async def _record_disconnect(
        self,
        client_id: str,
        service: str,
        version: str,
        instance: str,
        server: str,
        connection: int,
        arrived: float | None = None,
    ) -> None:
        """Count a will as a failure, unless the broker itself was going away.

        Mosquitto publishes every client's will when it shuts down; if our own
        connection drops within the grace period, the wills were the broker's
        restart, not the instances' deaths, and counting them could invalidate
        every version at once. A will that arrived before our current broker
        connection listened was one of those, even when it is routed only now
        (held in a partition's buffer while the communicators reconnected:
        ``arrived`` is when it came off the broker). Nor does a will count when
        the instance is back within the grace period (its session was taken over
        by its own new connection).
        """
        await asyncio.sleep(WILL_GRACE)
        restarted = self._link.connections != connection or not self._link.connected
        if restarted or (arrived is not None and arrived < self._link.listening_since):
            logger.info("will of %s %s ignored: the broker restarted", service, instance)
            return
        back = self._directory.sender(client_id)
        if back is not None or any(
            i.instance == instance for i in self._directory.instances(service)
        ):
            # A session taken over by a new connection of the same instance: not a death.
            logger.info("will of %s %s ignored: it registered again", service, instance)
            return
        try:
            await self._outcomes.record(
                service,
                version,
                "disconnect",
                reason="died without UNREGISTER",
                instance=instance,
                server=server,
                reporter=client_id,
            )
        except (RedisError, OSError) as exc:
            logger.warning("could not record the disconnect of %s %s: %s", service, instance, exc)

    # -- COMMANDS -----------------------------------------------------------------------------

    async def on_commands(self, client_id: str, message: Message) -> None:
        """A registered instance changes the commands it accepts."""
        sender = self._directory.sender(client_id)
        if sender is None:
            await self._publisher.reply(
                client_id, "INVALID", command=message.command, reason=NOT_REGISTERED
            )
            return
        commands = [c for c in message.parameters["list"].split(",") if c]
        info = InstanceInfo(
            service=sender.service,
            instance=sender.instance,
            server=sender.server,
            zone=sender.zone,
            version=sender.version,
            client_id=client_id,
            commands=commands,
            registered_at=sender.registered_at,
        )
        await self._registry.register_instance(info)
        await self._registry.set_commands(sender.service, commands)
        self._directory.add(instance_of(info))
        self._announce(sender.service, added=info)
        await self._cached.deliver_cached(sender.service)

    # -- STATUS -------------------------------------------------------------------------------

    async def _status(self, service: str, server: str, version: str, status: str) -> None:
        """Tell the instances that accept STATUS that an instance came up or went down."""
        for target in self._directory.every("STATUS"):
            await self._publisher.publish(
                target.client_id,
                Message.model_construct(
                    command="STATUS",
                    server="",
                    service="",
                    sent_from_server=self._server_name,
                    sent_from_service="communicator",
                    parameters={
                        "service": service,
                        "status": status,
                        "server": server,
                        "version": version,
                    },
                ),
            )

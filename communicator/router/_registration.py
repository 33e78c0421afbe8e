"""Registration: REGISTER and its checks, UNREGISTER, wills (DISCONNECTED) and COMMANDS.

Each change is written to the registry, applied to this router's directory,
announced to the other communicators, and told to the instances that accept
STATUS; then the cache delivers what waited for the service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping

from redis.exceptions import RedisError

from communicator.registry._passwords import PasswordStore
from communicator.registry._registry import InstanceInfo, Registry
from communicator.router._control import NOT_REGISTERED, WILL_GRACE
from communicator.router._directory import Directory
from communicator.router._directory_sync import instance_of
from communicator.router._identity import Probes, identity_refusal
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

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- REGISTER -----------------------------------------------------------------------------

    async def on_register(self, client_id: str, message: Message) -> None:
        """Check a REGISTER (identity, password, instance name), then register or refuse."""
        p = message.parameters
        service = p["service"]
        refusal = identity_refusal(client_id, service)
        if refusal is not None:
            await self._publisher.reply(client_id, "REFUSE", **refusal)
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
            await self._announcer.announce(p["service"], removed=holder)
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
        state = await self._registry.register_instance(info)
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
        if commands:
            await self._registry.set_commands(service, commands)
        self._directory.add(instance_of(info))
        await self._publisher.reply(
            client_id,
            "READY",
            server=self._server_name,
            instance=info.instance,
            time=f"{time.time():.6f}",
        )
        await self._status(info.service, info.server, info.version, "up")
        await self._announcer.announce(service, added=info)
        await self._cached.deliver_cached(service)

    # -- leaving ------------------------------------------------------------------------------

    async def on_unregister(self, client_id: str, message: Message) -> None:
        """The instance leaves on purpose."""
        await self._leave(client_id, failure=False)

    async def on_disconnected(self, client_id: str, message: Message) -> None:
        """The instance's will: it left without UNREGISTER (counted unless the broker restarted)."""
        await self._leave(client_id, failure=True)

    async def _leave(self, client_id: str, *, failure: bool) -> None:
        instance = self._directory.remove(client_id)
        info = await self._registry.instance_for_client(client_id)
        if info is None and instance is None:
            return
        service = instance.service if instance else info.service  # type: ignore[union-attr]
        name = instance.instance if instance else info.instance  # type: ignore[union-attr]
        version = instance.version if instance else info.version  # type: ignore[union-attr]
        server = instance.server if instance else info.server  # type: ignore[union-attr]
        if instance is None:
            self._directory.remove(client_id, service=service)  # a re-read may be under way
        await self._registry.unregister_instance(service, name)
        if failure:
            self._spawn(
                self._record_disconnect(
                    client_id, service, version, name, server, self._link.connections
                ),
                f"disconnect-{client_id}",
            )
        await self._status(service, server, version, "down")
        await self._announcer.announce(service, removed=client_id)

    async def _record_disconnect(
        self,
        client_id: str,
        service: str,
        version: str,
        instance: str,
        server: str,
        connection: int,
    ) -> None:
        """Count a will as a failure, unless the broker itself was going away.

        Mosquitto publishes every client's will when it shuts down; if our own
        connection drops within the grace period, the wills were the broker's
        restart, not the instances' deaths, and counting them could invalidate
        every version at once. Nor does a will count when the instance is back
        within the grace period (its session was taken over by its own new
        connection).
        """
        await asyncio.sleep(WILL_GRACE)
        if self._link.connections != connection or not self._link.connected:
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
        await self._announcer.announce(sender.service, added=info)
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

"""The communicator's own commands: REGISTER, UNREGISTER, COMMANDS, FAILURE, wills.

Also keeps the router's directory in step with the registry in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from communicator.backends._backoff import backoff_delay, being_cancelled
from communicator.registry._outcomes import OutcomeKind
from communicator.registry._registry import InstanceInfo
from communicator.router._directory import Instance
from communicator.wire._message import COMMUNICATOR, Message

if TYPE_CHECKING:
    from communicator.router._router import Router

logger = logging.getLogger(__name__)

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
#: Seconds a will waits before it counts as a failure (see Control._record_disconnect).
WILL_GRACE = 2.0
NOT_REGISTERED = "not registered: send REGISTER service=...;version=... first"
#: Service names no instance may take: the communicator signs its own messages with them.
RESERVED_SERVICES = frozenset({COMMUNICATOR})
#: The client ids docs/protocol.md §1 allows.
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: How long a registered instance has to show it is alive when another claims its name.
PROBE_SECONDS = 1.0
_FAILURE_KINDS = {"failure", "error_reply", "timeout", "crash"}


def _instance(info: InstanceInfo) -> Instance:
    return Instance(
        service=info.service,
        instance=info.instance,
        server=info.server,
        zone=info.zone,
        version=info.version,
        client_id=info.client_id,
        commands=frozenset(info.commands),
        registered_at=info.registered_at,
    )


class Control:
    """Handles the messages addressed to the communicator itself."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._pending: set[asyncio.Task[None]] = set()
        #: Client ids asked to show they are alive, and the future set when they do.
        self.probes: dict[str, asyncio.Future[None]] = {}
        self._serials = itertools.count(1)

    def heard(self, client_id: str) -> None:
        """Any message from a probed client answers the probe (see :meth:`alive`)."""
        probe = self.probes.get(client_id)
        if probe is not None and not probe.done():
            probe.set_result(None)

    async def alive(self, client_id: str, timeout: float = PROBE_SECONDS) -> bool:
        """Whether ``client_id`` answers an ALIVE (or says anything) within ``timeout``."""
        probe = self.probes.get(client_id)
        if probe is None:
            probe = self.probes[client_id] = asyncio.get_running_loop().create_future()
            await self._router.reply(client_id, "ALIVE", serial=f"probe-{next(self._serials)}")
        try:
            await asyncio.wait_for(asyncio.shield(probe), timeout)
        except TimeoutError:
            return False
        finally:
            if self.probes.get(client_id) is probe and probe.done():
                del self.probes[client_id]
        return True

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- directory ----------------------------------------------------------------------------

    async def load_directory(self) -> None:
        """Read every service from the registry (at start, and after missing announcements)."""
        services = set(await self._router.registry.services()) | set(
            self._router.service_definitions
        )
        for service in sorted(services):
            await self.refresh(service, deliver=False)

    async def refresh(self, service: str, *, deliver: bool = True) -> None:
        """Re-read one service from the registry, then deliver what its cache can now take."""
        router = self._router
        since = router.directory.mark()
        instances = await router.registry.instances(service)
        versions = await router.registry.versions(service)
        plan = await router.plans.get(service)
        commands = set(await router.registry.commands(service))
        definition = router.service_definitions.get(service)
        if definition is not None:
            commands.update(definition.commands)
        router.directory.replace_service(
            service,
            instances=[_instance(info) for info in instances],
            invalid_versions=[v.version for v in versions if not v.state.valid],
            plan=plan,
            defined_commands=commands,
            since=since,
        )
        if deliver:
            await router.deliver_cached(service)

    async def announce(
        self, service: str, *, added: InstanceInfo | None = None, removed: str | None = None
    ) -> None:
        """Tell every communicator that ``service`` changed.

        With the instance that came (``added``) or the client id that left
        (``removed``), peers update their directory without reading Redis;
        otherwise they re-read the whole service.
        """
        change: dict[str, object] = {"service": service, "router": self._router.router_id}
        if added is not None:
            change["added"] = added.model_dump(mode="json")
        if removed is not None:
            change["removed"] = removed
        await self._router.redis.publish(self._router.keys.changes(), json.dumps(change))

    async def apply(self, raw: str) -> None:
        """Apply an announcement: incremental from a peer, or a full re-read of the service."""
        router = self._router
        if not raw.startswith("{"):  # a plain service name, from a strategy's plan change
            await self.refresh(raw)
            return
        change = json.loads(raw)
        service = change["service"]
        if change.get("router") == router.router_id:
            return  # our own change: the directory has it already
        if "added" in change:
            router.directory.add(_instance(InstanceInfo.model_validate(change["added"])))
            await router.deliver_cached(service)
        elif "removed" in change:
            router.directory.remove(change["removed"], service=service)
        else:
            await self.refresh(service)

    async def change_feed(self) -> None:
        """Apply registry changes and invalidations announced by any communicator or strategy."""
        router = self._router
        attempt = 0
        while True:
            try:
                async with router.redis.pubsub() as pubsub:
                    await pubsub.subscribe(router.keys.changes(), router.keys.events())
                    if attempt:
                        await self.load_directory()  # we may have missed changes
                    attempt = 0
                    async for item in pubsub.listen():
                        if item["type"] == "message":
                            await self._on_change(item["channel"], item["data"])
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                attempt += 1
                logger.warning("lost the change feed (%s); resubscribing", exc)
                await asyncio.sleep(backoff_delay(attempt))

    async def _on_change(self, channel: bytes, data: bytes) -> None:
        router = self._router
        if channel.decode() == router.keys.events():
            event = json.loads(data)
            kind = event.get("type")
            if kind in ("version_invalidated", "version_reinstated"):
                router.directory.set_invalid(
                    event["service"], event["version"], kind == "version_invalidated"
                )
                await self.refresh(event["service"])
            return
        await self.apply(data.decode())

    # -- outcomes -----------------------------------------------------------------------------

    async def record(
        self,
        service: str,
        version: str,
        kind: str,
        *,
        reason: str = "",
        instance: str = "",
        server: str = "",
        reporter: str = "",
    ) -> None:
        """Record a failure; cut the version off here at once if it crossed its policy.

        ``reporter`` is the client id whose evidence this is (see the policy's
        ``min_reporters``).
        """
        result = await self._router.registry.record_outcome(
            service,
            version,
            OutcomeKind(kind),
            reason=reason,
            instance=instance,
            server=server,
            reporter=reporter,
        )
        if not result.valid:
            self._router.directory.set_invalid(service, version, True)

    # -- commands -----------------------------------------------------------------------------

    async def handle(self, client_id: str, message: Message) -> None:
        """Answer one message addressed to the communicator."""
        router = self._router
        command = message.command
        handler = getattr(self, f"_on_{command.lower()}", None)
        if handler is None or command not in COMMUNICATOR_COMMANDS:
            if command not in ("UNKNOWN", "INVALID", "ABSOLUTELY", "CLOCK_REPLY", "READY"):
                await router.reply(client_id, "UNKNOWN", command=command)
            else:
                router.log.info(command, "%s from %s: %s", command, client_id, message.parameters)
            return
        if command != "DISCONNECTED":
            problems = router.definitions.validate(message)
            if problems:
                reason = "\n".join(str(p) for p in problems)
                if command == "REGISTER":
                    await router.reply(client_id, "REFUSE", reason="malformed", message=reason)
                else:
                    await router.reply(client_id, "INVALID", command=command, reason=reason)
                return
        await handler(client_id, message)

    async def _on_register(self, client_id: str, message: Message) -> None:
        router = self._router
        p = message.parameters
        service = p["service"]
        if not CLIENT_ID_RE.fullmatch(client_id):
            await router.reply(
                client_id,
                "REFUSE",
                reason="bad_client_id",
                message=f"client id {client_id!r} must match {CLIENT_ID_RE.pattern}; "
                "connect again with such an id",
            )
            return
        if service in RESERVED_SERVICES:
            await router.reply(
                client_id,
                "REFUSE",
                reason="reserved_name",
                message=f"service name {service!r} is the communicator's own; choose another",
            )
            return
        definition = router.service_definitions.get(service)
        check = await router.passwords.check(
            service,
            p.get("password"),
            source=client_id,
            required=bool(definition and definition.password_required)
            or not router.config.passwordless_ok,
        )
        if not check.ok:
            parameters = {"reason": check.reason, "message": check.message}
            if check.retry_after:
                parameters["retry_after"] = f"{check.retry_after:g}s"
            await router.reply(client_id, "REFUSE", **parameters)
            return
        name = p.get("instance", client_id)
        holder = next(
            (
                i.client_id
                for i in router.directory.instances(service)
                if i.instance == name and i.client_id != client_id
            ),
            None,
        )
        if holder is not None:
            # Asking the holder would stall routing: finish this REGISTER on the side.
            self._spawn(self._claim(holder, client_id, message), f"claim-{client_id}")
            return
        await self._register(client_id, message)

    async def _claim(self, holder: str, client_id: str, message: Message) -> None:
        """Register ``client_id`` under a name ``holder`` has, unless ``holder`` is alive."""
        router = self._router
        p = message.parameters
        try:
            if await self.alive(holder):
                name = p.get("instance", client_id)
                await router.reply(
                    client_id,
                    "REFUSE",
                    reason="instance_taken",
                    message=f"instance {name} of {p['service']} is registered by a live client "
                    f"({holder}); choose another instance name, or stop that one first",
                )
                return
            # The holder is gone without a will yet (its host died): the name is free.
            router.directory.remove(holder)
            await self.announce(p["service"], removed=holder)
            await self._register(client_id, message)
        except (RedisError, OSError) as exc:
            logger.warning("could not register %s: %s", client_id, exc)

    async def _register(self, client_id: str, message: Message) -> None:
        """Record the instance and answer READY (or REFUSE when its version is invalid)."""
        router = self._router
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
        state = await router.registry.register_instance(info)
        if not state.valid:
            await router.reply(
                client_id,
                "REFUSE",
                reason="version_invalid",
                message=f"version {version} of {service} is invalid ({state.reason}); do not "
                f"restart it here until an operator runs: deployctl version reinstate "
                f"{service} {version}",
            )
            return
        if commands:
            await router.registry.set_commands(service, commands)
        router.directory.add(_instance(info))
        await router.reply(
            client_id,
            "READY",
            server=router.settings.server_name,
            instance=info.instance,
            time=f"{time.time():.6f}",
        )
        await self._status(info, "up")
        await self.announce(service, added=info)
        await router.deliver_cached(service)

    async def _on_unregister(self, client_id: str, message: Message) -> None:
        await self._leave(client_id, failure=False)

    async def _on_disconnected(self, client_id: str, message: Message) -> None:
        await self._leave(client_id, failure=True)

    async def _leave(self, client_id: str, *, failure: bool) -> None:
        router = self._router
        instance = router.directory.remove(client_id)
        info = await router.registry.instance_for_client(client_id)
        if info is None and instance is None:
            return
        service = instance.service if instance else info.service  # type: ignore[union-attr]
        name = instance.instance if instance else info.instance  # type: ignore[union-attr]
        version = instance.version if instance else info.version  # type: ignore[union-attr]
        server = instance.server if instance else info.server  # type: ignore[union-attr]
        if instance is None:
            router.directory.remove(client_id, service=service)  # a re-read may be under way
        await router.registry.unregister_instance(service, name)
        if failure:
            self._spawn(
                self._record_disconnect(
                    client_id, service, version, name, server, router.connections
                ),
                f"disconnect-{client_id}",
            )
        await self._status_for(service, server, version, "down")
        await self.announce(service, removed=client_id)

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
        if self._router.connections != connection or not self._router.connected:
            logger.info("will of %s %s ignored: the broker restarted", service, instance)
            return
        back = self._router.directory.sender(client_id)
        if back is not None or any(
            i.instance == instance for i in self._router.directory.instances(service)
        ):
            # A session taken over by a new connection of the same instance: not a death.
            logger.info("will of %s %s ignored: it registered again", service, instance)
            return
        try:
            await self.record(
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

    async def _registered_sender(self, client_id: str, message: Message) -> Instance | None:
        """The sender's instance; ``None`` (after telling it so) when it has not registered."""
        sender = self._router.directory.sender(client_id)
        if sender is None:
            await self._router.reply(
                client_id, "INVALID", command=message.command, reason=NOT_REGISTERED
            )
        return sender

    async def _on_commands(self, client_id: str, message: Message) -> None:
        router = self._router
        sender = await self._registered_sender(client_id, message)
        if sender is None:
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
        await router.registry.register_instance(info)
        await router.registry.set_commands(sender.service, commands)
        router.directory.add(_instance(info))
        await self.announce(sender.service, added=info)
        await router.deliver_cached(sender.service)

    async def _on_failure(self, client_id: str, message: Message) -> None:
        router = self._router
        sender = await self._registered_sender(client_id, message)
        if sender is None:
            return
        p = message.parameters
        service = p.get("service", sender.service)
        version = p.get("version", sender.version if service == sender.service else "")
        definition = router.service_definitions.get(sender.service)
        trusted = definition is not None and definition.trusted_reporter
        if (service, version) != (sender.service, sender.version):
            problem = await self._foreign_failure_problem(sender, service, version, trusted=trusted)
            if problem:
                await router.reply(client_id, "INVALID", command="FAILURE", reason=problem)
                return
        kind = p.get("kind", "failure")
        own = service == sender.service and version == sender.version
        await self.record(
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
        known = {v.version for v in await self._router.registry.versions(service)}
        if version not in known:
            return f"{service} has no version {version}; report a version that registered"
        return None

    async def _on_busy(self, client_id: str, message: Message) -> None:
        sender = await self._registered_sender(client_id, message)
        if sender is not None:
            await self._router.shadow.on_busy(sender, message)

    async def _on_help(self, client_id: str, message: Message) -> None:
        await self._router.reply(client_id, "COMMANDS", list=",".join(COMMUNICATOR_COMMANDS))

    async def _on_alive(self, client_id: str, message: Message) -> None:
        answer = {k: v for k, v in message.parameters.items() if k in ("serial", "timestamp")}
        await self._router.reply(
            client_id, "ABSOLUTELY", reply_timestamp=f"{time.time():.6f}", **answer
        )

    async def _on_clock(self, client_id: str, message: Message) -> None:
        await self._router.reply(
            client_id,
            "CLOCK_REPLY",
            sent_at=message.parameters["sent_at"],
            time=f"{time.time():.6f}",
        )

    async def _status(self, info: InstanceInfo, status: str) -> None:
        await self._status_for(info.service, info.server, info.version, status)

    async def _status_for(self, service: str, server: str, version: str, status: str) -> None:
        router = self._router
        for target in router.directory.every("STATUS"):
            await router.publish(
                target.client_id,
                Message.model_construct(
                    command="STATUS",
                    server="",
                    service="",
                    sent_from_server=router.settings.server_name,
                    sent_from_service="communicator",
                    parameters={
                        "service": service,
                        "status": status,
                        "server": server,
                        "version": version,
                    },
                ),
            )

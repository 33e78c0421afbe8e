"""Keeping the router's directory in step with the registry in Redis, and with its peers.

Every communicator announces the changes it makes (an instance registered or
gone) on the changes channel; the others apply them without reading Redis.
Strategies announce plan changes (a plain service name) and the registry
version invalidations (events): those make a communicator re-read the service.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator.backends._backoff import keep_trying
from communicator.backends._keys import Keys
from communicator.registry._plans import PlanStore
from communicator.registry._registry import InstanceInfo, Registry
from communicator.router._directory import Directory, Instance
from communicator.router._ports import CachedDelivery
from communicator.wire._services import ServiceDefinition

logger = logging.getLogger(__name__)


def instance_of(info: InstanceInfo) -> Instance:
    """The directory's entry for an instance the registry holds."""
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


class DirectorySync:
    """Reads services from the registry into the directory, and announces and applies changes."""

    def __init__(
        self,
        *,
        directory: Directory,
        registry: Registry,
        plans: PlanStore,
        service_definitions: Mapping[str, ServiceDefinition],
        cached: CachedDelivery,
        redis: Redis,
        keys: Keys,
        router_id: str,
    ) -> None:
        self._directory = directory
        self._registry = registry
        self._plans = plans
        self._definitions = service_definitions
        self._cached = cached
        self._redis = redis
        self._keys = keys
        self._router_id = router_id

    async def load_directory(self) -> None:
        """Read every service from the registry (at start, and after missing announcements)."""
        services = set(await self._registry.services()) | set(self._definitions)
        for service in sorted(services):
            await self.refresh(service, deliver=False)

    async def refresh(self, service: str, *, deliver: bool = True) -> None:
        """Re-read one service from the registry, then deliver what its cache can now take."""
        since = self._directory.mark()
        instances = await self._registry.instances(service)
        versions = await self._registry.versions(service)
        plan = await self._plans.get(service)
        commands = set(await self._registry.commands(service))
        definition = self._definitions.get(service)
        if definition is not None:
            commands.update(definition.commands)
        self._directory.replace_service(
            service,
            instances=[instance_of(info) for info in instances],
            invalid_versions=[v.version for v in versions if not v.state.valid],
            plan=plan,
            defined_commands=commands,
            since=since,
        )
        if plan is not None:  # routed by it from now on: say so (a switch waits for this)
            await self._redis.hset(self._keys.plan_applied(service), self._router_id, plan.revision)
        if deliver:
            await self._cached.deliver_cached(service)

    async def announce(
        self, service: str, *, added: InstanceInfo | None = None, removed: str | None = None
    ) -> None:
        """Tell every communicator that ``service`` changed.

        With the instance that came (``added``) or the client id that left
        (``removed``), peers update their directory without reading Redis;
        otherwise they re-read the whole service.
        """
        change: dict[str, object] = {"service": service, "router": self._router_id}
        if added is not None:
            change["added"] = added.model_dump(mode="json")
        if removed is not None:
            change["removed"] = removed
        await self._redis.publish(self._keys.changes(), json.dumps(change))

    async def apply(self, raw: str) -> None:
        """Apply an announcement: incremental from a peer, or a full re-read of the service."""
        if not raw.startswith("{"):  # a plain service name, from a strategy's plan change
            await self.refresh(raw)
            return
        change = json.loads(raw)
        service = change["service"]
        if change.get("router") == self._router_id:
            return  # our own change: the directory has it already
        if "added" in change:
            self._directory.add(instance_of(InstanceInfo.model_validate(change["added"])))
            await self._cached.deliver_cached(service)
        elif "removed" in change:
            self._directory.remove(change["removed"], service=service)
        else:
            await self.refresh(service)

    async def change_feed(self) -> None:
        """Apply registry changes and invalidations announced by any communicator or strategy."""
        attempts = itertools.count()

        async def follow() -> None:
            again = next(attempts) > 0
            async with self._redis.pubsub() as pubsub:
                await pubsub.subscribe(self._keys.changes(), self._keys.events())
                if again:
                    await self.load_directory()  # we may have missed changes
                async for item in pubsub.listen():
                    if item["type"] == "message":
                        await self._on_change(item["channel"], item["data"])

        await keep_trying(follow, what="change feed (resubscribing)", transient=_redis_down)

    async def _on_change(self, channel: bytes, data: bytes) -> None:
        if channel.decode() == self._keys.events():
            event = json.loads(data)
            kind = event.get("type")
            if kind in ("version_invalidated", "version_reinstated"):
                self._directory.set_invalid(
                    event["service"], event["version"], kind == "version_invalidated"
                )
                await self.refresh(event["service"])
            return
        await self.apply(data.decode())


def _redis_down(exc: BaseException) -> bool:
    return isinstance(exc, RedisError | OSError)

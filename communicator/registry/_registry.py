"""The registry: instances, versions and their outcomes, in Redis.

Every instance, every version ever seen per service, outcome counts per
version in time buckets, a bounded failure history per service, and the
invalidation policy applied in the same Lua step that records a failure, so a
failing version is cut off within milliseconds, by whichever router saw the
failure that crossed the line. Successes are many and harmless: the router
batches them (:meth:`Registry.record_successes`), one round trip per batch.

About 420 lines, one class on purpose: ``Registry`` is the one API over one
key space, every method a thin call of a Lua step or a pipeline; the logic
lives in ``lua/`` and in ``_outcomes``, ``_history`` and ``_events``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from communicator._errors import RegistryError
from communicator.backends._keys import Keys
from communicator.backends._replies import fields, flat_fields, text
from communicator.registry._events import Event
from communicator.registry._history import read_events, read_failures
from communicator.registry._lua import Scripts
from communicator.registry._outcomes import (
    FailureRecord,
    InvalidationPolicy,
    OutcomeKind,
    OutcomeResult,
    VersionInfo,
    VersionState,
    check_names,
)

logger = logging.getLogger(__name__)

#: Versions per EVALSHA when recording successes.
_SUCCESS_CHUNK = 200
_SCRIPTS = (
    "record_outcome",
    "record_successes",
    "version_view",
    "register_instance",
    "unregister_instance",
    "invalidate",
    "reinstate",
)


class InstanceInfo(BaseModel):
    """One registered instance of a service, as the router learnt it from REGISTER."""

    # Records written by a newer deployctl may hold more fields: ignore them.
    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    service: str
    """The service it is an instance of."""
    instance: str
    """Its name, unique within the service."""
    server: str
    """The server (machine) it runs on."""
    version: str
    """The software version it runs."""
    client_id: str
    """Its MQTT client id, which its will message names."""
    zone: str = ""
    """Its zone (data centre, rack), for ``?`` broadcasts."""
    commands: list[str] = Field(default_factory=list)
    """The commands it accepts."""
    registered_at: float = Field(default_factory=time.time)
    """When it registered (epoch seconds)."""


class Registry:
    """The communicator's registry in Redis.

    Args:
        redis: A client made with ``protocol=2``; bytes or text replies both work.
        keys: The key space.
        policy_defaults: The policy of a version whose service has none stored.
        failure_history: About how many failures each service's history keeps.
        event_history: About how many events the events stream keeps.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        keys: Keys,
        policy_defaults: InvalidationPolicy | None = None,
        failure_history: int = 1000,
        event_history: int = 10_000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._defaults = policy_defaults or InvalidationPolicy()
        self._defaults_json = self._defaults.model_dump_json()
        self._failure_history = failure_history
        self._event_history = event_history
        self._scripts = Scripts(redis, _SCRIPTS)

    # -- instances and services ------------------------------------------------

    async def register_instance(
        self, info: InstanceInfo, *, with_commands: bool = False
    ) -> VersionState:
        """Record an instance and its version as seen, unless the version is invalid.

        Returns the version's state: when it is invalid, the instance was *not*
        recorded and the router answers ``REFUSE reason=version_invalid``. One
        atomic step, so a version invalidated meanwhile cannot slip in.

        ``with_commands``: once recorded, its commands also become the
        service's (what :meth:`set_commands` does), in the same step and round trip.
        """
        check_names(info.service, info.version)
        k = self._keys
        commands = ["1", *sorted(set(info.commands))] if with_commands else [""]
        registered, state = await self._scripts.run(
            "register_instance",
            [
                k.version(info.service, info.version),
                k.service_versions(info.service),
                k.services(),
                k.service_instances(info.service),
                k.clients(),
                k.service_commands(info.service),
            ],
            [
                info.service,
                info.version,
                info.instance,
                info.client_id,
                info.model_dump_json(),
                *commands,
            ],
        )
        result = VersionState.from_hash(info.service, info.version, flat_fields(state))
        if not registered:
            logger.info(
                "refused %s/%s: version %s is invalid (%s)",
                info.service,
                info.instance,
                info.version,
                result.reason,
                extra={"service": info.service, "version": info.version},
            )
        return result

    async def unregister_instance(self, service: str, instance: str) -> InstanceInfo | None:
        """Forget an instance; returns what was recorded of it, or ``None`` if nothing."""
        check_names(service)
        k = self._keys
        record = await self._scripts.run(
            "unregister_instance",
            [k.service_instances(service), k.clients()],
            [service, instance],
        )
        return InstanceInfo.model_validate_json(record) if record else None

    async def instance_for_client(self, client_id: str) -> InstanceInfo | None:
        """The instance an MQTT client registered as (to handle its will message), if any."""
        record = await self._redis.hget(self._keys.clients(), client_id)
        return InstanceInfo.model_validate_json(record) if record else None

    async def instance(self, service: str, instance: str) -> InstanceInfo | None:
        """One registered instance, or ``None``."""
        record = await self._redis.hget(self._keys.service_instances(service), instance)
        return InstanceInfo.model_validate_json(record) if record else None

    async def instances(self, service: str) -> list[InstanceInfo]:
        """Every registered instance of a service, by instance name."""
        records = await self._redis.hgetall(self._keys.service_instances(service))
        found = [InstanceInfo.model_validate_json(record) for record in records.values()]
        return sorted(found, key=lambda info: info.instance)

    async def services(self) -> list[str]:
        """Every service ever registered, reported on or given commands, sorted."""
        return sorted(text(name) for name in await self._redis.smembers(self._keys.services()))

    async def set_commands(self, service: str, commands: Iterable[str]) -> None:
        """Replace the commands a service accepts (from its latest COMMANDS message)."""
        check_names(service)
        key = self._keys.service_commands(service)
        wanted = sorted(set(commands))
        # A transaction: routers reading meanwhile see the old list or the new one.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if wanted:
                pipe.sadd(key, *wanted)
            pipe.sadd(self._keys.services(), service)
            await pipe.execute()

    async def commands(self, service: str) -> list[str]:
        """The commands a service accepts, sorted (empty if unknown)."""
        members = await self._redis.smembers(self._keys.service_commands(service))
        return sorted(text(command) for command in members)

    # -- versions --------------------------------------------------------------

    async def version_state(self, service: str, version: str) -> VersionState:
        """What is known of a version (a valid, never-seen state if nothing)."""
        raw = await self._redis.hgetall(self._keys.version(service, version))
        return VersionState.from_hash(service, version, fields(raw))

    async def is_valid(self, service: str, version: str) -> bool:
        """Whether a version may get traffic (a version never seen is valid)."""
        state = await self._redis.hget(self._keys.version(service, version), "state")
        return state is None or text(state) != "invalid"

    async def versions(self, service: str) -> list[VersionInfo]:
        """Every version of a service ever known, oldest first, with its window's counts."""
        k = self._keys
        members: Any = await self._redis.zrange(k.service_versions(service), 0, -1)
        names = [text(member) for member in members]
        async with self._redis.pipeline(transaction=False) as pipe:
            for version in names:
                self._scripts.queue(
                    pipe,
                    "version_view",
                    [
                        k.version(service, version),
                        k.version_window(service, version),
                        k.version_policy(service, version),
                        k.service_policy(service),
                    ],
                    [self._defaults_json],
                )
            views = await self._scripts.execute(pipe)
        infos = []
        for version, (state, counts) in zip(names, views, strict=True):
            raw = json.loads(counts)
            parsed = {kind: int(raw.get(kind, 0)) for kind in OutcomeKind}
            infos.append(
                VersionInfo(VersionState.from_hash(service, version, flat_fields(state)), parsed)
            )
        return infos

    # -- outcomes --------------------------------------------------------------

    async def record_outcome(
        self,
        service: str,
        version: str,
        kind: OutcomeKind | str,
        *,
        count: int = 1,
        reason: str = "",
        instance: str = "",
        server: str = "",
        reporter: str = "",
    ) -> OutcomeResult:
        """Record outcomes of a version and apply its invalidation policy, in one atomic step.

        ``reporter`` is who gave the evidence (a client id), for the policy's
        ``min_reporters``: above 1, a failure with no reporter adds to no reporter.

        Anything but a success also goes to the service's failure history. When
        this call makes the version cross its policy, the version is marked
        invalid and a ``version_invalidated`` event is published in the same
        step; ``invalidated`` is true for that one call only.

        Raises:
            RegistryError: Bad kind, count, service or version.
        """
        outcome = self._outcome_kind(kind)
        check_names(service, version)
        if count < 1:
            raise RegistryError(f"count must be at least 1, not {count}", service=service)
        k = self._keys
        invalidated, state, why, evidence = await self._scripts.run(
            "record_outcome",
            self._outcome_keys(service, version),
            [
                service,
                version,
                outcome.value,
                count,
                reason,
                instance,
                server,
                self._defaults_json,
                self._failure_history,
                self._event_history,
                k.events(),
                reporter,
            ],
        )
        if invalidated:
            logger.warning(
                "version %s of %s invalidated: %s",
                version,
                service,
                text(why),
                extra={"service": service, "version": version},
            )
        return OutcomeResult(
            invalidated=bool(invalidated),
            valid=text(state) != "invalid",
            reason=text(why),
            evidence=json.loads(evidence) if evidence else None,
        )

    async def record_successes(self, batch: Mapping[tuple[str, str], int]) -> None:
        """Add success counts, ``{(service, version): count}``, in one round trip.

        Successes only lower a failure rate, so no policy is checked here.
        """
        entries = [(entry, count) for entry, count in batch.items() if count > 0]
        if not entries:
            return
        k = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            # A few hundred versions per EVALSHA, so no call holds Redis for long.
            for first in range(0, len(entries), _SUCCESS_CHUNK):
                keys: list[str] = [k.services()]
                args: list[str | int] = [self._defaults_json]
                for (service, version), count in entries[first : first + _SUCCESS_CHUNK]:
                    check_names(service, version)
                    keys += [
                        k.version(service, version),
                        k.version_window(service, version),
                        k.version_policy(service, version),
                        k.service_policy(service),
                        k.service_versions(service),
                    ]
                    args += [service, version, count]
                self._scripts.queue(pipe, "record_successes", keys, args)
            await self._scripts.execute(pipe)

    def _outcome_keys(self, service: str, version: str) -> list[str]:
        k = self._keys
        return [
            k.version(service, version),
            k.version_window(service, version),
            k.version_policy(service, version),
            k.service_policy(service),
            k.service_versions(service),
            k.services(),
            k.service_failures(service),
            k.events_stream(),
        ]

    @staticmethod
    def _outcome_kind(kind: OutcomeKind | str) -> OutcomeKind:
        try:
            return OutcomeKind(kind)
        except ValueError:
            known = ", ".join(OutcomeKind)
            raise RegistryError(f"unknown outcome kind {kind!r}: use one of {known}") from None

    async def failures(
        self, service: str, count: int = 100, version: str | None = None
    ) -> list[FailureRecord]:
        """The service's latest failures, newest first (only ``version``'s, if given)."""
        return await read_failures(
            self._redis, self._keys.service_failures(service), service, count, version
        )

    # -- policies --------------------------------------------------------------

    async def set_policy(
        self, service: str, policy: InvalidationPolicy, version: str | None = None
    ) -> None:
        """Store the invalidation policy of a service, or of one version (which then wins)."""
        check_names(service, version)
        await self._redis.set(self._policy_key(service, version), policy.model_dump_json())

    async def delete_policy(self, service: str, version: str | None = None) -> None:
        """Remove a stored policy: the version falls back to its service's, or the defaults."""
        await self._redis.delete(self._policy_key(service, version))

    async def policy(self, service: str, version: str | None = None) -> InvalidationPolicy:
        """The policy that applies: the version's, else the service's, else the defaults."""
        async with self._redis.pipeline(transaction=False) as pipe:
            if version is not None:
                pipe.get(self._keys.version_policy(service, version))
            pipe.get(self._keys.service_policy(service))
            stored = [raw for raw in await pipe.execute() if raw is not None]
        if not stored:
            return self._defaults
        try:
            return InvalidationPolicy.model_validate_json(stored[0])
        except ValidationError as exc:
            raise RegistryError(
                f"the stored invalidation policy of {service} is invalid ({exc}); "
                "store a valid one with set_policy",
                service=service,
                version=version,
            ) from exc

    def _policy_key(self, service: str, version: str | None) -> str:
        if version is None:
            return self._keys.service_policy(service)
        return self._keys.version_policy(service, version)

    # -- operators -------------------------------------------------------------

    async def invalidate(
        self, service: str, version: str, reason: str, evidence: Mapping[str, Any] | None = None
    ) -> bool:
        """Mark a version invalid by hand; False if it already was (no event then)."""
        check_names(service, version)
        k = self._keys
        proof = {"rule": "operator", **(evidence or {})}
        changed = await self._scripts.run(
            "invalidate",
            [k.version(service, version), k.service_versions(service), k.events_stream()],
            [service, version, reason, json.dumps(proof), self._event_history, k.events()],
        )
        return bool(changed)

    async def reinstate(self, service: str, version: str, reason: str) -> bool:
        """Make an invalid version valid again, with fresh counters; False if it was valid."""
        check_names(service, version)
        k = self._keys
        changed = await self._scripts.run(
            "reinstate",
            [k.version(service, version), k.version_window(service, version), k.events_stream()],
            [service, version, reason, self._event_history, k.events()],
        )
        return bool(changed)

    # -- events ----------------------------------------------------------------

    async def events(self, since_id: str = "0-0", count: int = 100) -> list[Event]:
        """Events recorded after stream id ``since_id`` (pass the last one seen), oldest first."""
        return await read_events(self._redis, self._keys.events_stream(), since_id, count)

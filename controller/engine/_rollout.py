"""A rollout's state, its transitions, and where both are kept in Redis."""

from __future__ import annotations

import json
import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import WatchError

from communicator import DeployctlError, Measurements
from controller.engine._keys import ControllerKeys

HISTORY_LENGTH = 10_000


class Phase(StrEnum):
    """Where a rollout is (Argo Rollouts' phases, plus ours)."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ABORTED = "Aborted"  # rolled back
    FAILED = "Failed"  # could not go on, nor roll back by itself

    @property
    def active(self) -> bool:
        """Whether the controller still has work to do on it."""
        return self in (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING)


class Transition(BaseModel):
    """One change of a rollout, with why it happened and the evidence."""

    model_config = ConfigDict(frozen=True)

    at: float
    phase: Phase
    step: int
    weight: int
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class Rollout(BaseModel):
    """One rollout of a new version of a service; the controller advances it step by step."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    service: str
    stable: str
    canary: str
    playbook: dict[str, Any]  # the Playbook, as JSON, frozen at start
    phase: Phase = Phase.PENDING
    step: int = 0  # index of the current step; len(steps) once all are done
    weight: int = 0
    reason: str = "created"
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None  # when it (last) left Pending: a retry starts afresh
    step_started_at: float = Field(default_factory=time.time)
    progressed_at: float = Field(default_factory=time.time)
    step_data: dict[str, Any] = Field(default_factory=dict)  # per-step scratch (analysis baselines)
    verdicts: list[dict[str, Any]] = Field(default_factory=list)
    retries: int = 0
    origin_production: str | None = None  # the version serving most traffic when it was created

    @property
    def strategy(self) -> str:
        """The strategy its playbook names (``canary``, ``bluegreen``)."""
        return str(self.playbook.get("strategy", "canary"))

    @property
    def command_group(self) -> str:
        """The ``deployctl`` group that drives it: ``canary`` or ``bluegreen``."""
        return "bluegreen" if self.strategy == "bluegreen" else "canary"


class Request(BaseModel):
    """An operator's request to the leading controller, answered in the rollout's history."""

    model_config = ConfigDict(frozen=True)

    action: str
    id: str = ""
    at: float = 0.0

    @classmethod
    def parse(cls, raw: bytes | str) -> Request:
        """Read a queued request (a bare action name, as older CLIs queued, is accepted)."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            return cls.model_validate_json(text)
        except ValueError:
            return cls(action=text.strip())


class RolloutError(DeployctlError):
    """A rollout request cannot be carried out; the message says why and what to do."""


def _refuse_if_active(raw: bytes | str | None, service: str) -> None:
    if raw is None:
        return
    current = Rollout.model_validate_json(raw)
    if current.phase.active:
        raise RolloutError(
            f"{service} already has an active rollout of {current.canary} ({current.phase}); "
            f"run `deployctl {current.command_group} abort {service}` first, or wait for it to end"
        )


class RolloutStore:
    """Rollouts, their history and operator requests in Redis."""

    def __init__(self, *, redis: Redis, keys: ControllerKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, service: str) -> Rollout | None:
        """The service's current (or last) rollout."""
        raw = await self._redis.get(self._keys.rollout(service))
        return None if raw is None else Rollout.model_validate_json(raw)

    async def all(self) -> list[Rollout]:
        """Every service's current (or last) rollout."""
        services = sorted(
            s.decode() if isinstance(s, bytes) else s
            for s in await self._redis.smembers(self._keys.rollouts())
        )
        found = [await self.get(service) for service in services]
        return [rollout for rollout in found if rollout is not None]

    async def create(self, rollout: Rollout) -> None:
        """Record a new rollout, unless one is active for the service.

        Raises:
            RolloutError: A rollout of the service is still active.
        """
        key = self._keys.rollout(rollout.service)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    _refuse_if_active(await pipe.get(key), rollout.service)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, rollout.model_dump_json())
                    pipe.sadd(self._keys.rollouts(), rollout.service)
                    await pipe.execute()
                    break
                except WatchError:  # written meanwhile: look again
                    continue
        await self.record(rollout, rollout.reason)

    async def save(self, rollout: Rollout) -> None:
        """Write the rollout's current state (the leader does, after each advance)."""
        await self._redis.set(self._keys.rollout(rollout.service), rollout.model_dump_json())

    async def record(
        self, rollout: Rollout, reason: str, evidence: dict[str, Any] | None = None
    ) -> Transition:
        """Append a transition to the service's history and announce it."""
        transition = Transition(
            at=time.time(),
            phase=rollout.phase,
            step=rollout.step,
            weight=rollout.weight,
            reason=reason,
            evidence=evidence or {},
        )
        payload = transition.model_dump_json()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._keys.history(rollout.service), {"t": payload}, maxlen=HISTORY_LENGTH)
            pipe.publish(
                self._keys.events(),
                json.dumps(
                    {"service": rollout.service, "rollout": rollout.id, **json.loads(payload)}
                ),
            )
            await pipe.execute()
        return transition

    async def history(self, service: str, count: int = 1000) -> list[Transition]:
        """The service's transitions, oldest first."""
        entries = await self._redis.xrevrange(self._keys.history(service), count=count)
        found = []
        for _, fields in reversed(entries or []):
            raw = (fields or {}).get(b"t") or (fields or {}).get("t")
            if raw is not None:
                found.append(Transition.model_validate_json(raw))
        return found

    async def request(self, service: str, action: str) -> Request:
        """Queue an operator request (promote, promote_full, abort, retry) and wake the leader.

        The leader answers it with a transition whose evidence names the
        request's id (:meth:`answer`): what it did, or why it did nothing.
        """
        request = Request(action=action, id=uuid.uuid4().hex[:12], at=time.time())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.rpush(self._keys.requests(service), request.model_dump_json())
            pipe.publish(self._keys.wakeup(), service)
            await pipe.execute()
        return request

    async def take_requests(self, service: str) -> list[Request]:
        """Pop every waiting request of the service, oldest first."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self._keys.requests(service), 0, -1)
            pipe.delete(self._keys.requests(service))
            raw, _ = await pipe.execute()
        return [Request.parse(item) for item in raw]

    async def answer(self, service: str, request_id: str) -> Transition | None:
        """The transition that answered request ``request_id``, if it has been answered."""
        for transition in reversed(await self.history(service, count=200)):
            if transition.evidence.get("request") == request_id:
                return transition
        return None

    async def wake(self, service: str) -> None:
        """Ask the leader to look at the service's rollout now."""
        await self._redis.publish(self._keys.wakeup(), service)


async def start_rollout(
    store: RolloutStore,
    measurements: Measurements,
    *,
    service: str,
    stable: str,
    canary: str,
    playbook: dict[str, Any],
    reason: str,
    production: str | None = None,
) -> Rollout:
    """Record a new rollout (with the versions' outcome totals so far) and wake the leader.

    ``production``: the version serving most traffic now (a rollback never
    invalidates it); the stable if not given.

    Raises:
        RolloutError: A rollout of the service is still active.
    """
    origin = {v: dict((await measurements.totals(service, v)).counts) for v in (stable, canary)}
    rollout = Rollout(
        id=uuid.uuid4().hex[:12],
        service=service,
        stable=stable,
        canary=canary,
        playbook=playbook,
        reason=reason,
        step_data={"origin": origin},
        origin_production=production or stable,
    )
    await store.create(rollout)
    await store.wake(service)
    return rollout

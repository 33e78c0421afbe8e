"""Shadow traffic: mirrored copies beside the primary, dropped when busy, replies compared.

The router calls :meth:`Shadow.mirror` after it delivered a routed message to
its primary. For each mirror of the service's route plan, a share of the
messages is a *candidate* copy, and each candidate ends as exactly one of:
``sent``, ``dropped_busy`` (every shadow instance said BUSY), ``dropped_bound``
(the mirror's copies in flight reached ``max_inflight``) or ``failed`` (no
shadow instance can take it). So ``candidates == sent + dropped_busy +
dropped_bound + failed``, always.

A copy is published like any message (synchronously into the MQTT client's
queue): the primary never waits for the shadow. A request copy carries a
``message_id`` of ours (``~shadow.<n>``) so its reply is recognised and
swallowed: it never reaches the sender. Its outcome (success, ERROR, timeout)
is recorded against the shadow version, never the primary's. With comparison
on, a second primary instance also gets a copy (``~noise.<n>``), and the
three replies are compared (:mod:`communicator.router._shadow_compare`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from communicator.backends._keys import Keys
from communicator.registry._plans import Mirror
from communicator.router._busy import BusyBoard
from communicator.router._directory import Directory, Instance
from communicator.router._ports import OutcomeRecorder, Publisher
from communicator.router._shadow_compare import COUNTS, OUTCOMES, Comparison
from communicator.router._tracking import OutcomeTracker
from communicator.wire._message import Message
from communicator.wire._validators import parse_duration

logger = logging.getLogger(__name__)

#: A mirror dropping more than this share of its copies is announced (a status flag)...
DROP_ALERT_SHARE = 0.5
#: ...once it has had at least this many candidate copies.
DROP_ALERT_MINIMUM = 20
#: ``message_id`` prefixes of the copies; replies to them are the shadow's, never delivered.
SHADOW_PREFIX = "~shadow."
NOISE_PREFIX = "~noise."

MirrorKey = tuple[str, str]  # (service, shadow version)


def is_shadow_reply(in_reply_to: str) -> bool:
    """Whether a reply answers a shadow or noise copy (and must reach nobody)."""
    return in_reply_to.startswith((SHADOW_PREFIX, NOISE_PREFIX))


@dataclass(slots=True)
class _Triple:
    """The replies to one mirrored request, gathered for comparison."""

    key: MirrorKey
    deadline: float
    expect_noise: bool
    primary: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None
    noise: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return (
            self.primary is not None
            and self.shadow is not None
            and (self.noise is not None or not self.expect_noise)
        )


@dataclass(slots=True)
class _Flight:
    """A copy in flight, waiting for its reply."""

    key: MirrorKey
    target: Instance
    sent: float
    deadline: float
    triple: tuple[str, str] | None  # (requester client id, original message id)
    noise: bool = False


@dataclass(slots=True)
class _MirrorState:
    session: float | None = None  # the mirror's started_at: a new one starts a new report
    counts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    inflight: int = 0
    peak_inflight: int = 0
    comparison: Comparison = field(default_factory=Comparison)
    cursor: int = 0


class Shadow:
    """The router's shadow traffic: mirrors, copies in flight, comparisons.

    Copies skip the instances ``busy`` says are busy (``BUSY`` messages).
    """

    def __init__(
        self,
        *,
        directory: Directory,
        publisher: Publisher,
        tracker: OutcomeTracker,
        outcomes: OutcomeRecorder,
        redis: Redis,
        keys: Keys,
        router_id: str,
        request_timeout: float,
        busy: BusyBoard,
    ) -> None:
        self._directory = directory
        self._publisher = publisher
        self._tracker = tracker
        self._outcomes = outcomes
        self._redis = redis
        self._keys = keys
        self._router_id = router_id
        self._request_timeout = request_timeout
        self._mirrors: dict[MirrorKey, _MirrorState] = {}
        self._flights: dict[str, _Flight] = {}
        self._triples: dict[tuple[str, str], _Triple] = {}
        self._busy = busy
        self._ids = itertools.count(1)
        self._dirty: set[MirrorKey] = set()
        self._dropping: set[MirrorKey] = set()  # mirrors announced as dropping most copies
        self._rng = random.Random()

    # -- copies ---------------------------------------------------------------------------

    async def mirror(self, sender: Instance, message: Message, primary: Instance) -> None:
        """Copy a message just delivered to ``primary`` to the service's mirrors, if any."""
        mirrors = self._directory.plan(message.service).mirrors
        for mirror in mirrors:
            if mirror.percent >= 100 or self._rng.random() * 100 < mirror.percent:
                await self._copy(mirror, sender, message, primary)

    async def _copy(
        self, mirror: Mirror, sender: Instance, message: Message, primary: Instance
    ) -> None:
        key = (message.service, mirror.version)
        state = self._mirrors.get(key)
        if state is None or state.session != mirror.started_at:
            # A new mirroring: a new report. Copies still in flight keep counting as load.
            inflight = state.inflight if state else 0
            state = self._mirrors[key] = _MirrorState(mirror.started_at, inflight=inflight)
        self._dirty.add(key)
        state.counts["candidates"] += 1
        directory = self._directory
        if directory.is_invalid(*key):
            state.counts["failed"] += 1
            return
        targets = sorted(
            (
                i
                for i in directory.instances(message.service)
                if i.version == mirror.version and message.command in i.commands
            ),
            key=lambda i: i.client_id,
        )
        if not targets:
            state.counts["failed"] += 1
            return
        now = time.monotonic()
        free = [t for t in targets if not self._busy.is_busy(t.client_id, now)]
        if not free:
            state.counts["dropped_busy"] += 1
            return
        if state.inflight >= mirror.max_inflight:
            state.counts["dropped_bound"] += 1
            return
        state.cursor += 1
        target = free[state.cursor % len(free)]
        original_id = message.parameters.get("message_id")
        if original_id is None:  # one-way: nothing comes back, nothing stays in flight
            await self._publisher.publish(target.client_id, message)
            state.counts["sent"] += 1
            state.outcomes["one_way"] += 1
            self._tracker.delivered(*key)
            return
        deadline = now + self._timeout(message)
        triple = None
        if mirror.compare:
            triple = (sender.client_id, original_id)
            second = self._second_primary(message, primary)
            self._triples[triple] = _Triple(key, deadline, expect_noise=second is not None)
            if second is not None:
                await self._send(NOISE_PREFIX, second, message, key, now, deadline, triple)
        await self._send(SHADOW_PREFIX, target, message, key, now, deadline, triple)
        state.counts["sent"] += 1

    async def _send(
        self,
        prefix: str,
        target: Instance,
        message: Message,
        key: MirrorKey,
        now: float,
        deadline: float,
        triple: tuple[str, str] | None,
    ) -> None:
        copy_id = f"{prefix}{next(self._ids)}"
        copy = message.model_copy(
            update={"parameters": {**message.parameters, "message_id": copy_id}}
        )
        noise = prefix == NOISE_PREFIX
        self._flights[copy_id] = _Flight(key, target, now, deadline, triple, noise)
        if not noise:
            state = self._mirrors[key]
            state.inflight += 1
            state.peak_inflight = max(state.peak_inflight, state.inflight)
        await self._publisher.publish(target.client_id, copy)

    def _second_primary(self, message: Message, primary: Instance) -> Instance | None:
        others = [
            i
            for i in self._directory.instances(message.service)
            if i.version == primary.version
            and i.client_id != primary.client_id
            and message.command in i.commands
        ]
        return self._rng.choice(others) if others else None

    def _timeout(self, message: Message) -> float:
        timeout = self._request_timeout
        if "timeout" in message.parameters:
            with contextlib.suppress(ValueError):
                timeout = parse_duration(message.parameters["timeout"])
        return timeout

    # -- replies --------------------------------------------------------------------------

    async def on_reply(self, replier: Instance, in_reply_to: str, message: Message) -> None:
        """A reply to a copy: record it against the shadow version, compare it; deliver nothing."""
        flight = self._flights.pop(in_reply_to, None)
        if flight is None or flight.target.client_id != replier.client_id:
            if flight is not None:  # not from the instance we sent it to: put it back
                self._flights[in_reply_to] = flight
            return
        reply = message.model_dump()
        triple = self._triples.get(flight.triple) if flight.triple else None
        if flight.noise:
            if triple is not None:
                triple.noise = reply
                self._complete(flight.triple)
            return
        state = self._mirrors[flight.key]
        state.inflight -= 1
        self._dirty.add(flight.key)
        if message.command == "ERROR":
            state.outcomes["error_reply"] += 1
            await self._outcomes.record(
                *flight.key,
                "error_reply",
                reason=message.parameters.get("reason", ""),
                instance=replier.instance,
                server=replier.server,
            )
        else:
            state.outcomes["replied"] += 1
            self._tracker.successes[flight.key] += 1
            self._tracker.latencies.setdefault(flight.key, []).append(
                time.monotonic() - flight.sent
            )
        if triple is not None:
            triple.shadow = reply
            self._complete(flight.triple)

    def primary_reply(self, requester: str, in_reply_to: str, message: Message) -> None:
        """The primary's reply to a request that was mirrored with comparison (else a no-op)."""
        if not self._triples:
            return
        triple = self._triples.get((requester, in_reply_to))
        if triple is not None:
            triple.primary = message.model_dump()
            self._complete((requester, in_reply_to))

    def _complete(self, ident: tuple[str, str] | None) -> None:
        triple = self._triples.get(ident) if ident else None
        if triple is None or not triple.complete:
            return
        del self._triples[ident]  # type: ignore[arg-type]
        state = self._mirrors.get(triple.key)
        if state is not None and triple.primary is not None and triple.shadow is not None:
            state.comparison.add(triple.primary, triple.shadow, triple.noise)
            self._dirty.add(triple.key)

    # -- housekeeping ---------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """End the copies past their deadline as timeouts of the shadow; write the reports."""
        now = time.monotonic()
        for copy_id, flight in list(self._flights.items()):
            if flight.deadline > now:
                continue
            del self._flights[copy_id]
            if flight.noise:
                continue
            state = self._mirrors[flight.key]
            state.inflight -= 1
            state.outcomes["timeout"] += 1
            self._dirty.add(flight.key)
            await self._outcomes.record(
                *flight.key,
                "timeout",
                reason="no reply to a shadow copy in time",
                instance=flight.target.instance,
                server=flight.target.server,
            )
        for ident, triple in list(self._triples.items()):
            if triple.deadline + 1 <= now:  # a second to let the last reply come in
                del self._triples[ident]
                if (mirror := self._mirrors.get(triple.key)) is not None:
                    mirror.comparison.incomplete += 1
                    self._dirty.add(triple.key)
        await self.flush()

    async def flush(self) -> None:
        """Write the changed mirrors' reports to Redis (one hash field per communicator)."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in dirty:
                    pipe.hset(
                        self._keys.shadow_report(key[0]),
                        f"{key[1]}|{self._router_id}",
                        json.dumps(self.data(key)),
                    )
                    self._announce_drops(pipe, key)
                await pipe.execute()
        except BaseException:
            self._dirty |= dirty
            raise

    def _announce_drops(self, pipe: Any, key: MirrorKey) -> None:
        """Announce a mirror dropping most of its copies (and its recovery) as an event."""
        counts = self._mirrors[key].counts
        candidates = counts["candidates"]
        share = (
            (counts["dropped_busy"] + counts["dropped_bound"]) / candidates if candidates else 0.0
        )
        dropping = key in self._dropping
        if not dropping and candidates >= DROP_ALERT_MINIMUM and share > DROP_ALERT_SHARE:
            self._dropping.add(key)
            kind = "shadow_dropping"
        elif dropping and share < DROP_ALERT_SHARE / 2:
            self._dropping.discard(key)
            kind = "shadow_recovered"
        else:
            return
        event = {
            "type": kind,
            "service": key[0],
            "version": key[1],
            "drop_share": round(share, 3),
            "counts": dict(counts),
            "time": time.time(),
        }
        pipe.publish(self._keys.events(), json.dumps(event))

    # -- reads ----------------------------------------------------------------------------

    def data(self, key: MirrorKey) -> dict[str, Any]:
        """The raw counts of one mirror in this communicator (what goes to Redis)."""
        state = self._mirrors.get(key, _MirrorState())
        return {
            "service": key[0],
            "version": key[1],
            "router": self._router_id,
            "session": state.session,
            "counts": {name: state.counts[name] for name in COUNTS},
            "outcomes": {name: state.outcomes[name] for name in OUTCOMES},
            "inflight": state.inflight,
            "peak_inflight": state.peak_inflight,
            "comparison": state.comparison.data(),
            "updated_at": time.time(),
        }

    def inflight(self, service: str, version: str) -> int:
        """Copies to a mirror waiting for their reply."""
        state = self._mirrors.get((service, version))
        return state.inflight if state else 0

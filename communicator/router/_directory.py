"""The router's in-memory view of who can receive what, and the routing decisions on it.

Routing a message must not cost a Redis round trip, so each communicator keeps
this directory: the registered instances, the invalid versions, the route plans
and the commands each service accepts. It is refreshed per service from Redis
whenever a change is announced. Everything here is pure and synchronous.

A re-read takes several Redis round trips, during which this router may
register, remove or invalidate something itself. Such local changes are kept
in a short journal, and :meth:`Directory.replace_service` replays those made
after the read began (``since=`` :meth:`Directory.mark`), so a slow re-read
never undoes a newer change.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from communicator.registry._plans import DEFAULT_PLAN, RoutePlan, routed_weights

logger = logging.getLogger(__name__)
JOURNAL_SIZE = 10_000  # local changes remembered; a re-read takes milliseconds
MAX_LAG = 2.0  # picks a pool may fall behind its exact share before it is taken


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance of a service."""

    service: str
    instance: str
    server: str
    zone: str
    version: str
    client_id: str
    commands: frozenset[str]
    registered_at: float = 0.0


@dataclass(frozen=True, slots=True)
class _Change:
    """One local change to the directory, kept to replay after a slower re-read."""

    serial: int
    service: str
    added: Instance | None = None
    removed: str | None = None
    invalid: tuple[str, bool] | None = None  # (version, now invalid)


class Verdict(Enum):
    """Why no instance was picked."""

    UNKNOWN = "unknown"  # the service is known and nothing of it accepts the command
    UNAVAILABLE = "unavailable"  # no valid instance accepts it right now: cache the message


@dataclass(slots=True)
class _Service:
    instances: dict[str, Instance] = field(default_factory=dict)  # by client id
    invalid_versions: frozenset[str] = frozenset()
    plan: RoutePlan = DEFAULT_PLAN
    defined_commands: frozenset[str] = frozenset()  # from the service definition / COMMANDS


class Directory:
    """Registered instances, invalid versions and route plans, with the routing decisions."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._services: dict[str, _Service] = {}
        self._by_client: dict[str, Instance] = {}
        self._choices: dict[tuple[str, str, str, bool], _Choice | Verdict] = {}
        self._serial = 0  # local changes so far
        self._journal: deque[_Change] = deque(maxlen=JOURNAL_SIZE)

    # -- updates ------------------------------------------------------------------------------

    def _changed(self, service: str, **change: Any) -> None:
        self._choices.clear()
        self._serial += 1
        self._journal.append(_Change(self._serial, service, **change))

    def mark(self) -> int:
        """Where the journal stands: pass it to :meth:`replace_service` as ``since``."""
        return self._serial

    def replace_service(
        self,
        service: str,
        *,
        instances: Iterable[Instance],
        invalid_versions: Iterable[str],
        plan: RoutePlan | None,
        defined_commands: Iterable[str] = (),
        since: int | None = None,
    ) -> None:
        """Replace everything known about ``service`` with a fresh read from the registry.

        ``since``: the :meth:`mark` taken before the read began; the local
        changes made after it are applied again on top of the read.
        """
        old = self._services.get(service)
        if old is not None:
            for client_id in old.instances:
                self._by_client.pop(client_id, None)
        entry = _Service(
            instances={i.client_id: i for i in instances},
            invalid_versions=frozenset(invalid_versions),
            plan=plan or DEFAULT_PLAN,
            defined_commands=frozenset(defined_commands),
        )
        if since is not None:
            self._replay(entry, service, since)
        self._services[service] = entry
        self._by_client.update(entry.instances)
        self._choices.clear()

    def _replay(self, entry: _Service, service: str, since: int) -> None:
        if self._journal and self._journal[0].serial > since + 1:
            logger.warning("directory journal overflowed during a re-read of %s", service)
        for change in self._journal:
            if change.serial <= since or change.service != service:
                continue
            if change.added is not None:
                entry.instances[change.added.client_id] = change.added
            if change.removed is not None:
                entry.instances.pop(change.removed, None)
                self._by_client.pop(change.removed, None)
            if change.invalid is not None:
                version, invalid = change.invalid
                versions = set(entry.invalid_versions)
                (versions.add if invalid else versions.discard)(version)
                entry.invalid_versions = frozenset(versions)

    def add(self, instance: Instance) -> None:
        """Add (or replace) one instance."""
        self.remove(instance.client_id)
        entry = self._services.setdefault(instance.service, _Service())
        entry.instances[instance.client_id] = instance
        self._by_client[instance.client_id] = instance
        self._changed(instance.service, added=instance)

    def remove(self, client_id: str, *, service: str | None = None) -> Instance | None:
        """Remove the instance of ``client_id``; return it if it was there.

        ``service``: where it belongs when this directory may not have it yet
        (a re-read in progress must not bring it back).
        """
        instance = self._by_client.pop(client_id, None)
        if instance is not None:
            self._services[instance.service].instances.pop(client_id, None)
            service = instance.service
        if service is not None:
            self._changed(service, removed=client_id)
        return instance

    def set_invalid(self, service: str, version: str, invalid: bool) -> None:
        """Mark a version invalid (no traffic) or valid again."""
        entry = self._services.setdefault(service, _Service())
        versions = set(entry.invalid_versions)
        (versions.add if invalid else versions.discard)(version)
        entry.invalid_versions = frozenset(versions)
        self._changed(service, invalid=(version, invalid))

    def set_plan(self, service: str, plan: RoutePlan | None) -> None:
        """Apply a new route plan (``None``: the default plan)."""
        self._services.setdefault(service, _Service()).plan = plan or DEFAULT_PLAN
        self._choices.clear()

    # -- reads --------------------------------------------------------------------------------

    def sender(self, client_id: str) -> Instance | None:
        """The registered instance publishing as ``client_id``."""
        return self._by_client.get(client_id)

    def services(self) -> list[str]:
        """Every service the directory knows."""
        return sorted(self._services)

    def instances(self, service: str) -> list[Instance]:
        """The registered instances of ``service``."""
        entry = self._services.get(service)
        return list(entry.instances.values()) if entry else []

    def plan(self, service: str) -> RoutePlan:
        """The route plan in force for ``service``."""
        entry = self._services.get(service)
        return entry.plan if entry else DEFAULT_PLAN

    def is_invalid(self, service: str, version: str) -> bool:
        """Whether ``version`` of ``service`` is cut off."""
        entry = self._services.get(service)
        return entry is not None and version in entry.invalid_versions

    # -- decisions ----------------------------------------------------------------------------

    def pick(
        self,
        service: str,
        command: str,
        *,
        server: str = "",
        sticky: str | None = None,
        preview: bool = False,
    ) -> Instance | Verdict:
        """Choose the instance of ``service`` (on ``server`` if given) to receive ``command``.

        ``preview`` marks preview traffic (``preview=yes``): it reaches the plan's
        preview color alone; every other message never does.
        """
        key = (service, command, server, preview)
        choice = self._choices.get(key)
        if choice is None:
            choice = self._choices[key] = self._prepare(service, command, server, preview)
        if isinstance(choice, Verdict):
            return choice
        return choice.pick(self._rng, sticky)

    def sticky_parameter(self, service: str) -> str | None:
        """The parameter the plan of ``service`` keeps users sticky on, if any."""
        entry = self._services.get(service)
        return entry.plan.sticky if entry else None

    def _prepare(self, service: str, command: str, server: str, preview: bool) -> _Choice | Verdict:
        entry = self._services.get(service)
        if entry is None:
            return Verdict.UNAVAILABLE
        known = bool(entry.instances or entry.defined_commands)
        if known and not self.knows_command(service, command):
            return Verdict.UNKNOWN
        candidates = [
            i
            for i in entry.instances.values()
            if command in i.commands
            and i.version not in entry.invalid_versions
            and (not server or i.server == server)
        ]
        if not candidates:
            return Verdict.UNAVAILABLE
        by_version: dict[str, list[Instance]] = defaultdict(list)
        for instance in sorted(candidates, key=lambda i: i.client_id):
            by_version[instance.version].append(instance)
        live = {version: len(members) for version, members in by_version.items()}
        pools = routed_weights(entry.plan, live, preview=preview)
        if not pools:
            return Verdict.UNAVAILABLE
        return _Choice([(weight, by_version[version]) for version, weight in pools])

    def every(
        self,
        command: str,
        *,
        service: str | None = None,
        server: str | None = None,
        zone: str | None = None,
        exclude: str | None = None,
    ) -> list[Instance]:
        """Every valid instance accepting ``command``, filtered by service, server and zone."""
        services = [service] if service is not None else list(self._services)
        entries = [(e, e.instances.values()) for n in services if (e := self._services.get(n))]
        return [
            instance
            for entry, instances in entries
            for instance in instances
            if command in instance.commands
            and instance.version not in entry.invalid_versions
            and (server is None or instance.server == server)
            and (zone is None or instance.zone == zone)
            and instance.client_id != exclude
        ]

    def knows_command(self, service: str, command: str) -> bool:
        """Whether anything of ``service`` (instance or definition) accepts ``command``."""
        entry = self._services.get(service)
        if entry is None:
            return False
        return command in entry.defined_commands or any(
            command in i.commands for i in entry.instances.values()
        )


class _Choice:
    """Weighted pools of instances, prepared once per (service, command, server).

    Without a sticky parameter a pool is drawn at random by weight, except that
    a pool which has fallen ``MAX_LAG`` picks behind its exact share is taken
    at once. So over any run of messages each pool's count stays within
    ``MAX_LAG`` of its share (traffic matches the plan, not just on average),
    while the order stays random: a strictly periodic order (smooth weighted
    round robin) was tried and made the canary's requests meet delayed ACKs
    in step, tripling its latency on a broker without ``set_tcp_nodelay``.
    Within a pool the instances take turns.
    """

    __slots__ = ("_cursors", "_picked", "_picks", "_pools", "_shares", "_total")

    def __init__(self, pools: list[tuple[int, list[Instance]]]) -> None:
        self._pools = [(weight, members) for weight, members in pools if weight > 0]
        self._total = sum(weight for weight, _ in self._pools)
        self._shares = [weight / self._total for weight, _ in self._pools]
        self._picked = [0] * len(self._pools)
        self._picks = 0
        self._cursors = [0] * len(self._pools)

    def pick(self, rng: random.Random, sticky: str | None) -> Instance:
        if sticky is not None:
            point = zlib.crc32(sticky.encode("utf-8", "surrogatepass"))
            members = self._members_at(point % self._total)
            return members[(point // self._total) % len(members)]
        chosen = 0
        if len(self._pools) > 1:
            self._picks += 1
            lags = [
                self._picks * share - n for share, n in zip(self._shares, self._picked, strict=True)
            ]
            behind = max(range(len(lags)), key=lags.__getitem__)
            if lags[behind] >= MAX_LAG:
                chosen = behind
            else:
                chosen = self._index_at(rng.randrange(self._total))
            self._picked[chosen] += 1
        members = self._pools[chosen][1]
        self._cursors[chosen] += 1
        return members[self._cursors[chosen] % len(members)]

    def _index_at(self, point: int) -> int:
        for index, (weight, _) in enumerate(self._pools):
            if point < weight:
                return index
            point -= weight
        return len(self._pools) - 1

    def _members_at(self, point: int) -> list[Instance]:
        return self._pools[self._index_at(point)][1]

"""The router: receives every instance's messages and sends each where it belongs.

One ``Router`` is one communicator process. It subscribes to every instance's
``in`` topic, routes the senders of the partitions it leases (see
:mod:`communicator.router._partitions`), and keeps its in-memory directory current
from the change announcements in Redis. This module only builds the
collaborators, each with the narrow ports it uses (:mod:`communicator.router._ports`),
and runs the broker connection and the background loops: a message is routed by
:mod:`communicator.router._dispatch`, the communicator's own commands are handled in
:mod:`communicator.router._control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator.backends._backoff import being_cancelled, keep_trying
from communicator.backends._keys import Keys
from communicator.backends._link import LinkError
from communicator.backends._logs import Throttled
from communicator.backends._settings import Settings
from communicator.backends._tasks import cancel_and_wait
from communicator.backends._topics import Topics
from communicator.registry._measures import Measurements
from communicator.registry._passwords import PasswordStore
from communicator.registry._plans import PlanStore
from communicator.registry._registry import Registry
from communicator.router._busy import BusyBoard
from communicator.router._cache import MessageCache
from communicator.router._config import RouterConfig
from communicator.router._control import Control
from communicator.router._delivery import Delivery
from communicator.router._directory import Directory
from communicator.router._directory_sync import DirectorySync
from communicator.router._dispatch import Dispatcher
from communicator.router._housekeeping import Housekeeping
from communicator.router._identity import Probes
from communicator.router._intake import Intake
from communicator.router._leases import Leases
from communicator.router._outcomes import Outcomes
from communicator.router._ownership import Ownership
from communicator.router._partitions import PartitionTable
from communicator.router._ports import Connect, Link, Stats
from communicator.router._registration import Registration
from communicator.router._requests import Requests
from communicator.router._session import BrokerSession, broker_connector
from communicator.router._shadow import Shadow
from communicator.router._tracking import OutcomeTracker
from communicator.router._watches import HandoffSeal, Watches
from communicator.wire._definitions import MessageDefinitions
from communicator.wire._services import ServiceDefinition

__all__ = ["Router", "RouterConfig"]

logger = logging.getLogger(__name__)

#: The counters of :attr:`Router.stats`.
STATS = ("routed", "invalid", "unknown", "cached", "cache_dropped", "retained")


class Router:
    """One communicator: routing, registration and outcome recording.

    Args:
        settings: Where Redis and the broker are, and the names of keys and topics.
        redis: The Redis client (the registry, the leases, the cache).
        definitions: The message definitions (default: the built-in ones).
        services: Service definitions by name.
        config: Tuning (see :class:`RouterConfig`).
        router_id: Its client id at the broker (default: made from host, pid and chance).
        connect: Opens the broker connection for a client id (default: MQTT to the
            broker of ``settings``); ``MemoryBroker().connect`` runs it with no broker.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        redis: Redis,
        definitions: MessageDefinitions | None = None,
        services: Mapping[str, ServiceDefinition] | None = None,
        config: RouterConfig | None = None,
        router_id: str | None = None,
        connect: Connect | None = None,
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
        self.stats: Stats = Stats(dict.fromkeys(STATS, 0))
        self.ready = asyncio.Event()  # set once connected and holding its share of partitions
        self.session = BrokerSession(
            topics=self.topics, server_name=settings.server_name, log=self.log
        )
        self._connect = connect
        self._stopping = asyncio.Event()
        self._build_routing()
        self._build_control()
        self.ownership = Ownership(
            table=self.table,
            leases=self.leases,
            cache=self.cache,
            routing=self.dispatcher,
            cached=self.delivery,
            link=self.session,
            ready=self.ready,
            log=self.log,
            lease_ttl=self.config.lease_ttl,
            renew_every=self.config.renew_every,
            checkpoint_every=self.config.checkpoint_every,
        )
        self.intake = Intake(
            topics=self.topics,
            table=self.table,
            routing=self.dispatcher,
            handoffs=self.requests,
            probes=self.probes,
            stats=self.stats,
            log=self.log,
        )
        self.housekeeping = Housekeeping(
            tracker=self.tracker,
            registry=self.registry,
            measurements=self.measurements,
            outcomes=self.outcomes,
            shadow_copies=self.shadow.housekeeping,
            held_replies=self.requests.expire,
            cached_messages=self.delivery.expire_cached,
            log=self.log,
            every=self.config.flush_every,
        )

    def _build_routing(self) -> None:
        """Outcomes, shadow traffic, request watches and delivery: what routing a message uses."""
        config, session = self.config, self.session
        self.outcomes = Outcomes(registry=self.registry, directory=self.directory)
        self.busy = BusyBoard()
        self.shadow = Shadow(
            directory=self.directory,
            busy=self.busy,
            publisher=session,
            tracker=self.tracker,
            outcomes=self.outcomes,
            redis=self.redis,
            keys=self.keys,
            router_id=self.router_id,
            request_timeout=config.request_timeout,
        )
        self.seal = HandoffSeal(redis=self.redis, key=self.keys.router_secret())
        self.watches = Watches(
            tracker=self.tracker,
            partitions=self.table,
            publisher=session,
            seal=self.seal,
            topics=self.topics,
            service_definitions=self.service_definitions,
            request_timeout=config.request_timeout,
            min_timeout=config.min_timeout,
        )
        self.delivery = Delivery(
            publisher=session,
            directory=self.directory,
            cache=self.cache,
            partitions=self.table,
            watcher=self.watches,
            mirrors=self.shadow,
            stats=self.stats,
            default_ttl=config.default_ttl,
        )
        self.requests = Requests(
            tracker=self.tracker,
            partitions=self.table,
            senders=self.directory,
            publisher=session,
            outcomes=self.outcomes,
            observer=self.shadow,
            by_address=self.delivery,
            seal=self.seal,
            watches=self.watches,
            stats=self.stats,
            log=self.log,
        )

    def _build_control(self) -> None:
        """The directory's sync with Redis, registration, the control commands, the dispatcher."""
        session = self.session
        self.sync = DirectorySync(
            directory=self.directory,
            registry=self.registry,
            plans=self.plans,
            service_definitions=self.service_definitions,
            cached=self.delivery,
            redis=self.redis,
            keys=self.keys,
            router_id=self.router_id,
        )
        self.probes = Probes(publisher=session)
        registration = Registration(
            publisher=session,
            directory=self.directory,
            registry=self.registry,
            passwords=self.passwords,
            service_definitions=self.service_definitions,
            passwordless_ok=self.config.passwordless_ok,
            server_name=self.settings.server_name,
            announcer=self.sync,
            cached=self.delivery,
            outcomes=self.outcomes,
            link=session,
            probes=self.probes,
        )
        self.control = Control(
            publisher=session,
            definitions=self.definitions,
            registrar=registration,
            senders=self.directory,
            outcomes=self.outcomes,
            registry=self.registry,
            service_definitions=self.service_definitions,
            busy=self.busy,
            log=self.log,
        )
        self.dispatcher = Dispatcher(
            table=self.table,
            senders=self.directory,
            control=self.control,
            mirrors=self.shadow,
            replies=self.requests,
            delivery=self.delivery,
            publisher=session,
            definitions=self.definitions,
            strict=self.config.strict,
            stats=self.stats,
            log=self.log,
        )

    @property
    def connected(self) -> bool:
        """Whether the router is connected to the broker now."""
        return self.session.connected

    @property
    def listening(self) -> bool:
        """Subscribed: every instance's messages reach this router."""
        return self.session.listening

    @property
    def connections(self) -> int:
        """Broker connections made so far."""
        return self.session.connections

    @property
    def in_flight(self) -> int | None:
        """The partition of the message being routed now, if any."""
        return self.dispatcher.in_flight

    @property
    def _link(self) -> Link | None:
        """The broker connection in use (``None`` while reconnecting)."""
        return self.session.link

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Route until :meth:`stop` is called (or the task is cancelled), then hand over cleanly."""
        await self.sync.load_directory()
        await self.seal.load()
        try:
            async with asyncio.TaskGroup() as tasks:
                mqtt = tasks.create_task(self._mqtt_loop(), name="router-mqtt")
                background = [
                    tasks.create_task(self.ownership.lease_loop(), name="router-leases"),
                    tasks.create_task(self.ownership.checkpoint_loop(), name="router-checkpoints"),
                    tasks.create_task(self.sync.change_feed(), name="router-changes"),
                    tasks.create_task(self.housekeeping.loop(), name="router-housekeeping"),
                ]
                await self._stopping.wait()
                self.session.detach()  # stop publishing; closing the link sends what is queued
                await cancel_and_wait([mqtt, *background])
        finally:
            await self._hand_over()

    def stop(self) -> None:
        """Ask :meth:`run` to finish: checkpoint, release the leases, disconnect."""
        self._stopping.set()

    async def _hand_over(self) -> None:
        released = await self.ownership.shed_all()
        with contextlib.suppress(RedisError, OSError):
            await self.leases.leave()
            await self.housekeeping.flush()
        logger.info("router %s stopped; released %d partitions", self.router_id, released)

    # -- the broker ---------------------------------------------------------------------------

    async def _mqtt_loop(self) -> None:
        connect = self._connect or await broker_connector(self.settings)

        async def connection() -> None:
            try:
                link = await connect(self.router_id)
                async with link:
                    self.session.attach(link)
                    await link.subscribe(
                        [(self.topics.inbound_all(), 0), (self.topics.tracking_all(), 0)]
                    )
                    self.session.subscribed()
                    logger.info("router %s connected to the broker", self.router_id)
                    await self.intake.read(link)
            except (LinkError, OSError) as exc:
                await self._disconnected(exc)
                raise

        await keep_trying(
            connection, what=f"router {self.router_id}: broker connection", transient=_link_down
        )

    async def _disconnected(self, exc: LinkError | OSError) -> None:
        """Stop listening; hand our partitions over while we reconnect (unless we stop)."""
        self.session.listening = False
        if being_cancelled() or self._stopping.is_set():
            raise asyncio.CancelledError from exc
        self.session.detach()
        # Peers still connected heard what we are missing now: let them route it.
        if released := await self.ownership.shed_all():
            logger.warning("handed %d partitions over while reconnecting", released)
        if isinstance(exc, LinkError) and exc.fix:
            logger.warning("broker connection lost: %s", exc.fix)


def _link_down(exc: BaseException) -> bool:
    return isinstance(exc, LinkError | OSError)

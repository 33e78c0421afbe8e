"""The in-memory broker, and the routing logic tested through it: no MQTT server involved.

The router runs as in production but with ``connect=broker.connect``; the
services are plain :class:`MemoryLink` clients of the same broker. Redis is the
session's real one, in this test's own key space.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from communicator import (
    Keys,
    MemoryBroker,
    MemoryLink,
    Message,
    PlanStore,
    RoutePlan,
    Settings,
    Topics,
    decode,
    encode,
)
from communicator.backends._link import LinkError
from communicator.backends._memory_link import REFUSED, topic_matches, valid_filter
from communicator.backends._mqtt_packets import Publish
from communicator.router._control import NOT_REGISTERED
from communicator.router._router import Router, RouterConfig
from tests.conftest import eventually, finished

TIMEOUT = 5.0


# -- the broker alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),  # an empty level is a level
        ("a/#", "a", True),  # the parent too
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/b", "a/b", True),
        ("#", "$SYS/load", False),  # wildcards never cover $ topics
        ("$SYS/#", "$SYS/load", True),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_filters_match_as_mqtt_says(topic_filter: str, topic: str, matches: bool) -> None:
    """``+`` is one level, ``#`` the rest (and the parent), and ``$`` topics need a literal."""
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b+", "+a"])
def test_invalid_filters_are_recognised(topic_filter: str) -> None:
    """Wildcards must fill a level, and ``#`` must come last."""
    assert not valid_filter(topic_filter)


async def test_messages_reach_the_matching_subscribers_in_order() -> None:
    """Every subscriber with a matching filter gets each message once, in publishing order."""
    broker = MemoryBroker()
    wide, narrow, other = [await broker.connect(name) for name in ("wide", "narrow", "other")]
    assert await wide.subscribe([("in/#", 0), ("in/+", 0)]) == [0, 0]
    await narrow.subscribe([("in/a", 0)])
    await other.subscribe([("out/#", 0)])
    sender = await broker.connect("sender")
    for n in range(5):
        assert sender.publish(f"in/{'ab'[n % 2]}", str(n).encode())
    assert [(await wide.receive(TIMEOUT)).payload for _ in range(5)] == [
        b"0",
        b"1",
        b"2",
        b"3",
        b"4",
    ]
    assert [(await narrow.receive(TIMEOUT)).payload for _ in range(3)] == [b"0", b"2", b"4"]
    with pytest.raises(TimeoutError):
        await other.receive(0.05)


async def test_retained_messages_reach_new_subscriptions_only() -> None:
    """A retained message goes, flagged, to each later subscription; empty clears it."""
    broker = MemoryBroker()
    early, publisher = await broker.connect("early"), await broker.connect("publisher")
    await early.subscribe([("state/+", 0)])
    publisher.publish("state/x", b"on", retain=True)
    live = await early.receive(TIMEOUT)
    assert (live.payload, live.retain) == (b"on", False)  # an established subscription
    late = await broker.connect("late")
    await late.subscribe([("state/#", 0)])
    kept = await late.receive(TIMEOUT)
    assert (kept.topic, kept.payload, kept.retain) == ("state/x", b"on", True)
    publisher.publish("state/x", b"", retain=True)
    assert dict(broker.retained) == {}


async def test_a_second_connection_takes_the_client_id_over() -> None:
    """As on a real broker, one client id has one session: the older link ends."""
    broker = MemoryBroker()
    first = await broker.connect("twin")
    second = await broker.connect("twin")
    with pytest.raises(LinkError, match="taken over"):
        await first.receive(TIMEOUT)
    assert not first.connected
    assert not first.publish("any", b"x")
    assert second.connected
    assert broker.clients == ["twin"]


async def test_a_dropped_link_hands_over_what_arrived_then_ends() -> None:
    """Messages that came before the drop are still read; then iteration ends with LinkError."""
    broker = MemoryBroker()
    link, sender = await broker.connect("reader"), await broker.connect("sender")
    await link.subscribe([("t", 0), ("bad/#/x", 0)])
    sender.publish("t", b"before")
    assert broker.disconnect("reader")
    sender.publish("t", b"after")
    assert [message.payload async for message in _until_lost(link)] == [b"before"]
    assert not broker.disconnect("reader")
    assert await (await broker.connect("x")).subscribe([("bad/#/x", 0)]) == [REFUSED]


async def _until_lost(link: MemoryLink) -> AsyncIterator[Publish]:
    try:
        async for message in link:
            yield message
    except LinkError:
        return


# -- a router on the memory broker --------------------------------------------------------------


@pytest.fixture
def memory_settings(redis_url: str, key_prefix: str, topic_prefix: str) -> Settings:
    """Settings with Redis and names of this test, and no broker at all."""
    return Settings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        topic_prefix=topic_prefix,
        server_name="router_host",
    )


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def topics(memory_settings: Settings) -> Topics:
    return Topics(memory_settings.topic_prefix)


@pytest.fixture
async def memory_router(
    memory_settings: Settings, redis: Redis, broker: MemoryBroker
) -> AsyncIterator[Router]:
    """A router connected to ``broker``, holding every partition on entry, stopped on exit."""
    router = Router(
        settings=memory_settings,
        redis=redis,
        config=RouterConfig(request_timeout=1.0, renew_every=0.1, lease_ttl=1.0),
        connect=broker.connect,
    )
    task = asyncio.create_task(router.run(), name="memory-router")
    ready = asyncio.create_task(router.ready.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    assert router.ready.is_set(), "the router did not get ready on the memory broker"
    try:
        yield router
    finally:
        router.stop()
        await finished(task, "the router")


class Peer:
    """A service instance (or any client) speaking to the router through the memory broker."""

    def __init__(self, link: MemoryLink, topics: Topics, client_id: str) -> None:
        self.link = link
        self.topics = topics
        self.client_id = client_id

    @classmethod
    async def connect(cls, broker: MemoryBroker, topics: Topics, client_id: str) -> Peer:
        link = await broker.connect(client_id)
        await link.subscribe([(topics.outbound(client_id), 0)])
        return cls(link, topics, client_id)

    def send(self, line: str) -> None:
        assert self.link.publish(self.topics.inbound(self.client_id), line.encode())

    def send_message(self, message: Message) -> None:
        assert self.link.publish(self.topics.inbound(self.client_id), encode(message))

    async def next(self, timeout: float = TIMEOUT) -> Message:
        return decode((await self.link.receive(timeout)).payload)

    async def until(self, command: str, timeout: float = TIMEOUT) -> tuple[list[Message], Message]:
        """The messages received before the first ``command``, and that one."""
        before: list[Message] = []
        async with asyncio.timeout(timeout):
            while (message := await self.next(None)).command != command:
                before.append(message)
        return before, message

    async def register(self, service: str, commands: str = "", **extra: str) -> Message:
        parameters = ";".join(f"{k}={v}" for k, v in extra.items())
        line = f"REGISTER service={service};version=1.0;commands={commands or 'HELP'}"
        self.send(f"{line};{parameters}" if parameters else line)
        _, ready = await self.until("READY")
        return ready


async def test_register_gets_ready(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """REGISTER is answered READY naming the router's server and the instance, and registers."""
    orders = await Peer.connect(broker, topics, "orders_1")
    ready = await orders.register("orders", "PLACE", instance="east")
    assert ready.parameters["server"] == "router_host"
    assert ready.parameters["instance"] == "east"
    assert ready.sent_from_service == "communicator"
    [instance] = memory_router.directory.instances("orders")
    assert (instance.client_id, instance.instance) == ("orders_1", "east")
    [stored] = await memory_router.registry.instances("orders")
    assert stored.client_id == "orders_1"


async def test_each_message_reaches_exactly_one_instance(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A message to a service goes to one of its instances: none lost, none twice, both used."""
    workers = [await Peer.connect(broker, topics, f"orders_{n}") for n in (1, 2)]
    for n, worker in enumerate(workers):
        await worker.register("orders", "PLACE,MARK", instance=f"w{n}")
    front = await Peer.connect(broker, topics, "front_1")
    await front.register("front")
    for n in range(20):
        front.send(f"orders/PLACE seq={n}")
    front.send("*:orders/MARK")  # reaches both, after every PLACE: nothing else is on its way
    seen: list[str] = []
    for worker in workers:
        before, _ = await worker.until("MARK")
        places = [m.parameters["seq"] for m in before if m.command == "PLACE"]
        assert places, f"{worker.client_id} got no PLACE"
        seen += places
    assert sorted(seen, key=int) == [str(n) for n in range(20)]
    assert memory_router.stats["routed"] == 22  # 20 PLACE and the broadcast to two


async def test_a_senders_order_is_kept(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """The messages of one sender to one instance arrive in the order they were sent."""
    orders = await Peer.connect(broker, topics, "orders_1")
    await orders.register("orders", "PLACE")
    front = await Peer.connect(broker, topics, "front_1")
    await front.register("front")
    for n in range(200):
        front.send(f"orders/PLACE seq={n}")
    received = [(await orders.next()).parameters["seq"] for _ in range(200)]
    assert received == [str(n) for n in range(200)]


async def test_a_command_the_service_does_not_accept_gets_unknown(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A known service without the command: ``UNKNOWN command=CMD``, with ``in_reply_to``."""
    orders = await Peer.connect(broker, topics, "orders_1")
    await orders.register("orders", "PLACE")
    front = await Peer.connect(broker, topics, "front_1")
    await front.register("front")
    front.send("orders/REFUND message_id=r1")
    answer = await front.next()
    assert (answer.command, answer.parameters) == (
        "UNKNOWN",
        {"command": "REFUND", "in_reply_to": "r1"},
    )
    assert memory_router.stats["unknown"] == 1
    front.send("FROBNICATE")  # to the communicator itself
    assert (await front.next()).parameters == {"command": "FROBNICATE"}


async def test_an_unregistered_sender_is_told_to_register(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A message to a service from a client that never registered is refused, not delivered."""
    stranger = await Peer.connect(broker, topics, "stranger")
    stranger.send("orders/PLACE message_id=m7")
    answer = await stranger.next()
    assert answer.command == "INVALID"
    assert answer.parameters == {"command": "PLACE", "reason": NOT_REGISTERED, "in_reply_to": "m7"}


async def test_a_message_waits_in_the_cache_until_its_service_registers(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A service nobody registered yet: the message is cached, then delivered on REGISTER."""
    front = await Peer.connect(broker, topics, "front_1")
    await front.register("front")
    front.send("orders/PLACE seq=1")
    await eventually(
        lambda: asyncio.sleep(0, memory_router.stats["cached"] == 1), "the message cached", 5
    )
    orders = await Peer.connect(broker, topics, "orders_1")
    await orders.register("orders", "PLACE")
    place = await orders.next()
    assert (place.command, place.parameters["seq"], place.sent_from_service) == (
        "PLACE",
        "1",
        "front",
    )


async def test_a_request_gets_its_reply_and_counts_a_success(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """The reply (``in_reply_to``) reaches the requester, and counts for the replier's version."""
    orders = await Peer.connect(broker, topics, "orders_1")
    await orders.register("orders", "PLACE")
    front = await Peer.connect(broker, topics, "front_1")
    await front.register("front")
    before = await memory_router.measurements.totals("orders", "1.0")
    front.send("orders/PLACE message_id=q1")
    request = await orders.next()
    orders.send_message(request.reply("DONE", in_reply_to="q1", by="1.0"))
    reply = await front.next()
    assert (reply.command, reply.parameters["in_reply_to"]) == ("DONE", "q1")
    assert (reply.sent_from_server, reply.sent_from_service) == ("unknown", "orders")

    async def counted() -> bool:
        after = await memory_router.measurements.totals("orders", "1.0")
        return after.since(before).get("success") == 1

    await eventually(counted, "the success recorded", 5)


async def test_the_router_reconnects_after_the_broker_drops_it(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A lost connection: the router connects again, claims its partitions back, routes on."""
    orders = await Peer.connect(broker, topics, "orders_1")
    await orders.register("orders", "PLACE")
    assert broker.disconnect(memory_router.router_id)
    assert not memory_router.connected

    async def routing_again() -> bool:
        return (
            memory_router.connected
            and memory_router.connections == 2
            and len(memory_router.table.owned()) == memory_router.config.partitions
        )

    await eventually(routing_again, "the router back, owning every partition", 10)
    front = await Peer.connect(broker, topics, "front_1")
    await front.register("front")
    front.send("orders/PLACE seq=after")
    assert (await orders.next()).parameters["seq"] == "after"


async def test_a_retained_message_is_ignored_and_cleared(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A retained message would count again at every restart: the router clears it unrouted."""
    orders = await Peer.connect(broker, topics, "orders_1")
    await orders.register("orders", "PLACE")
    front = await Peer.connect(broker, topics, "front_1")
    await front.register("front")
    front.link.publish(topics.inbound("front_1"), b"orders/PLACE seq=1", retain=True)
    assert (await orders.next()).parameters["seq"] == "1"  # live, it is routed like any
    assert broker.retained  # the broker keeps it for later subscriptions
    broker.disconnect(memory_router.router_id)  # the router subscribes anew: it comes flagged
    await eventually(
        lambda: asyncio.sleep(0, not broker.retained), "the retained message cleared", 10
    )
    assert memory_router.stats["retained"] == 1
    await eventually(lambda: asyncio.sleep(0, memory_router.connected), "the router back", 10)
    front.send("orders/PLACE seq=2")
    assert (await orders.next()).parameters["seq"] == "2"  # the retained copy was not routed


async def test_a_plan_change_returns_once_every_router_routes_by_it(
    memory_router: Router, memory_settings: Settings, redis: Redis
) -> None:
    """wait_applied: each live router confirms the plan's revision; a silent one is named."""
    keys = Keys(memory_settings.key_prefix)
    plans = PlanStore(redis=redis, keys=keys)
    plan = RoutePlan(colors={"blue": "1", "green": "2"}, active_color="green", revision=7)
    await plans.set("shop", plan)
    assert await plans.wait_applied("shop", 7, timeout=5) == []
    assert memory_router.directory.plan("shop").active_color == "green"
    await redis.zadd(keys.routers(), {"a-router-that-hung": time.time()})
    assert await plans.wait_applied("shop", 7, timeout=0.2) == ["a-router-that-hung"]


async def test_a_will_that_arrived_before_the_broker_restart_is_not_a_crash(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A will held in a partition's buffer while the router reconnected, routed only now.

    The broker sent it as it stopped (every client's will goes out then): it
    says nothing of the instance. The router judges a will by when it came off
    the broker: before its current connection listened, it is not counted. A
    will of the current connection still is (the control). CI saw the first
    invalidate a version under ``crash_loop=1`` in 2 of 11 broker restarts.
    """
    from communicator.router._control import WILL_GRACE
    from communicator.router._partitions import Received, fingerprint, partition_of

    for client_id in ("stale_1", "live_1"):
        peer = await Peer.connect(broker, topics, client_id)
        await peer.register(client_id.split("_")[0], "PLACE")
    listening = memory_router.session.listening_since
    for client_id, at in (("stale_1", listening - 1.0), ("live_1", time.monotonic())):
        payload = f"DISCONNECTED service={client_id.split('_')[0]}".encode()
        held = Received(client_id, payload, fingerprint(client_id, payload), at)
        await memory_router.dispatcher.route(partition_of(client_id, 32), held)

    async def counted() -> bool:
        return bool(await memory_router.registry.failures("live"))

    await eventually(counted, "the live connection's will counted", timeout=WILL_GRACE + 5)
    assert await memory_router.registry.failures("stale") == []  # judged at the same time
    assert memory_router.directory.instances("stale") == []  # it did leave, though


async def test_a_repeated_register_is_answered_from_memory_until_something_changes(
    memory_router: Router, broker: MemoryBroker, topics: Topics
) -> None:
    """A client repeats REGISTER until READY comes; an exact repeat costs no Redis write.

    Anything that changed sends it the whole way again: other parameters, or the
    instance gone from the directory (UNREGISTER).
    """
    orders = await Peer.connect(broker, topics, "orders_1")
    await orders.register("orders", "PLACE", instance="east")
    [first] = await memory_router.registry.instances("orders")
    again = await orders.register("orders", "PLACE", instance="east")
    assert again.parameters["instance"] == "east"
    [stored] = await memory_router.registry.instances("orders")
    assert stored.registered_at == first.registered_at  # answered from memory

    await orders.register("orders", "PLACE,CANCEL", instance="east")  # changed: the whole way
    [changed] = await memory_router.registry.instances("orders")
    assert changed.registered_at > first.registered_at
    assert sorted(changed.commands) == ["CANCEL", "PLACE"]

    orders.send("UNREGISTER service=orders")

    async def gone() -> bool:
        return not await memory_router.registry.instances("orders")

    await eventually(gone, "the instance unregistered")
    await orders.register("orders", "PLACE,CANCEL", instance="east")  # not a repeat any more
    assert [i.instance for i in await memory_router.registry.instances("orders")] == ["east"]

"""Pushing flags to services: Redis changes relayed to retained MQTT messages.

The leading controller runs one :class:`FlagPublisher`. On start (and after
any reconnection) it publishes every flag, retained, on its own topic; then it
relays each change announced in Redis. A service subscribing to the flags'
topics gets every current flag at once (retained) and every change after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import aiomqtt
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from communicator import Settings, keep_trying, mqtt_client
from communicator.backends import cancel_and_wait
from flags._keys import FlagKeys
from flags._store import FlagStore, StoredFlag
from flags._topics import FlagTopics


def flag_payload(stored: StoredFlag) -> bytes:
    """The retained message of a flag: its flagd form, key and revision."""
    return json.dumps(
        {"key": stored.flag.key, "revision": stored.revision, "flag": stored.flag.to_flagd()}
    ).encode()


class FlagPublisher:
    """Relays the flags in Redis to retained MQTT messages, until cancelled."""

    def __init__(self, *, settings: Settings, redis: Redis) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = FlagKeys(settings.key_prefix)
        self._topics = FlagTopics(settings.topic_prefix)
        self._store = FlagStore(redis=redis, keys=self._keys)
        self.published = 0
        self.synced = asyncio.Event()  # every flag published once since the last (re)connection

    async def run(self) -> None:
        """Publish and relay, reconnecting to the broker and Redis as needed."""
        await keep_trying(self._session, what="flag publisher", transient=_lost)

    async def _session(self) -> None:
        """One connection to each: publish every flag, then relay changes until one drops."""
        try:
            await self._publish_then_relay()
        finally:
            self.synced.clear()  # until every flag is published again
        raise RedisError("the subscription to flag changes ended")  # reconnect, as on a drop

    async def _publish_then_relay(self) -> None:
        client_id = f"deployctl-flags-{uuid.uuid4().hex[:10]}"
        async with (
            mqtt_client(self._settings, client_id=client_id) as mqtt,
            self._redis.pubsub() as pubsub,
        ):
            await pubsub.subscribe(self._keys.flag_changes())  # first, so no change slips by
            for stored in (await self._store.all()).values():
                await self._publish(mqtt, stored.flag.key, stored)
            self.synced.set()
            # Nothing is published while no flag changes: watch the connection too, or a
            # broker restart (which forgets every retained flag) goes unnoticed until then.
            relaying = asyncio.create_task(self._relay(mqtt, pubsub), name="flags-relay")
            watching = asyncio.create_task(_until_disconnected(mqtt), name="flags-watch")
            try:
                done, _ = await asyncio.wait(
                    {relaying, watching}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                await cancel_and_wait([relaying, watching])
            for task in done:
                task.result()  # the MqttError or RedisError that ended it: reconnect

    async def _relay(self, mqtt: aiomqtt.Client, pubsub: PubSub) -> None:
        async for item in pubsub.listen():
            if item["type"] != "message":
                continue
            with contextlib.suppress(ValueError, KeyError):
                key = json.loads(item["data"])["key"]
                await self._publish(mqtt, key, await self._store.get(key))

    async def _publish(self, mqtt: aiomqtt.Client, key: str, stored: StoredFlag | None) -> None:
        payload = (
            flag_payload(stored) if stored is not None else b""
        )  # empty: clears the retained flag
        await mqtt.publish(self._topics.flag(key), payload, qos=1, retain=True)
        self.published += 1


async def _until_disconnected(mqtt: aiomqtt.Client) -> None:
    """Raise ``MqttError`` when the broker connection drops (nothing is subscribed to)."""
    async for _ in mqtt.messages:
        pass
    raise aiomqtt.MqttError("the broker connection ended")


def _lost(exc: BaseException) -> bool:
    """The broker or Redis went away (worth reconnecting), as opposed to a bug."""
    return isinstance(exc, aiomqtt.MqttError | RedisError | OSError)

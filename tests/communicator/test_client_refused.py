"""A client whose re-registration is refused stops, and says why (it is no zombie)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from communicator import Client, ClientError, Keys, Message, Registry, Router, Settings
from communicator.backends._mqtt import mqtt_client

pytestmark = pytest.mark.integration


async def test_a_refused_reregistration_ends_the_client_with_the_refusal(
    settings: Settings, redis: Redis, router: Router
) -> None:
    """Version invalidated, then the connection drops: REFUSE ends the runner, stopped is set."""
    client = Client("shop", "1.0", settings=settings, client_id="shop_1")
    async with client:
        assert client.registrations == 1
        await Registry(redis=redis, keys=Keys(settings.key_prefix)).invalidate(
            "shop", "1.0", "bad build"
        )
        # Another connection with the same client id: the broker drops ours; we re-register.
        async with mqtt_client(settings, client_id="shop_1"):
            pass
        async with asyncio.timeout(15):
            await client.stopped.wait()
        assert client.error is not None
        assert client.error.reason == "version_invalid"
        with pytest.raises(ClientError, match="version_invalid"):
            await client.send(Message(command="PING", service="shop"))
        runner = client._runner
        assert runner is not None
        async with asyncio.timeout(5):
            await asyncio.wait({runner})
        assert runner.done()

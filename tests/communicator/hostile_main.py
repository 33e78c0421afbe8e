"""A hostile MQTT client in its own process, driven by the adversarial tests.

Run as ``python -m tests.communicator.hostile_main`` with the DEPLOYCTL_*
environment of the stack under attack. It speaks raw MQTT (aiomqtt), as a
shell client would: nothing of our client library, so it can send what that
library never would. It reads one JSON order per line from stdin:

``{"as": ID, "payload": TEXT, "topic": "in"|"track/N"|..., "retain": bool,
"times": N, "size": BYTES, "expect": N, "timeout": S}``

and publishes ``payload`` (or ``size`` bytes of junk) ``times`` times on
``<prefix><topic>/<as>`` (``topic`` "in", the default) or ``<prefix><topic>``,
after subscribing to ``<prefix>out/<as>`` when ``expect`` replies are wanted;
or, for ``{"connect_as": ID}``, connects with another's MQTT client id and leaves.
It prints one JSON line per order: ``{"replies": [payloads]}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

import aiomqtt

from communicator import Settings
from communicator.backends._mqtt import broker_address


async def obey(client: aiomqtt.Client, prefix: str, order: dict[str, Any]) -> list[str]:
    who = order.get("as", "")
    topic = order.get("topic", "in")
    target = f"{prefix}{topic}/{who}" if topic == "in" else f"{prefix}{topic}"
    expect, replies = order.get("expect", 0), []
    if expect:
        await client.subscribe(f"{prefix}out/{who}", qos=1)
    payload = b"x" * order["size"] if "size" in order else order.get("payload", "").encode()
    for _ in range(order.get("times", 1)):
        retain = bool(order.get("retain"))
        await client.publish(target, payload, qos=order.get("qos", 1), retain=retain)
    if expect:
        try:
            async with asyncio.timeout(order.get("timeout", 5)):
                async for message in client.messages:
                    replies.append(bytes(message.payload).decode(errors="replace"))
                    if len(replies) >= expect:
                        break
        except TimeoutError:
            pass
        await client.unsubscribe(f"{prefix}out/{who}")
    return replies


async def main() -> None:
    settings = Settings()
    address = broker_address(settings)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiomqtt.Client(
        address.host, address.port, identifier=f"hostile-{uuid.uuid4().hex[:8]}"
    ) as client:
        print(json.dumps({"ready": True}), flush=True)
        while line := await reader.readline():
            order = json.loads(line)
            if "connect_as" in order:  # take another's session over, then leave at once
                async with aiomqtt.Client(
                    address.host, address.port, identifier=order["connect_as"]
                ):
                    pass
                replies = []
            else:
                replies = await obey(client, settings.topic_prefix, order)
            print(json.dumps({"replies": replies}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())

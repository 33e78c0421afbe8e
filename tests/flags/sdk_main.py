"""A service using flags.FlagClient in its own process, reporting each value it sees.

``python -m tests.flags.sdk_main KEY`` prints JSON lines: ``synced``, then a
``value`` line (value, variant, reason, revision time) after every change.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from flags import FlagClient


async def main(key: str) -> None:
    async with FlagClient() as client:
        await client.wait_synced(10)
        client.updated.clear()  # the retained flags that made us synced
        print(json.dumps({"event": "synced"}), flush=True)
        while True:
            resolution = client.resolve(key, None, {"targetingKey": "user-1"})
            print(
                json.dumps(
                    {
                        "event": "value",
                        "value": resolution.value,
                        "variant": resolution.variant,
                        "reason": str(resolution.reason),
                        "at": time.time(),
                    }
                ),
                flush=True,
            )
            await client.updated.wait()
            client.updated.clear()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

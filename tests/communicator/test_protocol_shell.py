"""The worked session of docs/protocol.md §8, with mosquitto_pub and mosquitto_sub only.

No Python MQTT client is involved on the service side: if this passes, the
protocol document is enough to write a client in another language.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from communicator import Router, Settings, parse_line

pytestmark = pytest.mark.integration
assert shutil.which("mosquitto_pub"), (
    "install mosquitto-clients (apt-get install mosquitto-clients)"
)


class Shell:
    """mosquitto_pub / mosquitto_sub against the test's broker and topic prefix."""

    def __init__(self, settings: Settings) -> None:
        url = urlsplit(settings.mqtt_url or "")
        self.host, self.port = url.hostname or "127.0.0.1", str(url.port or 1883)
        self.prefix = settings.topic_prefix
        self.subscribers: dict[str, asyncio.subprocess.Process] = {}

    async def listen(self, client_id: str) -> None:
        """mosquitto_sub -v on the client's out topic, as docs/protocol.md §8 does."""
        process = await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            "-h",
            self.host,
            "-p",
            self.port,
            "-i",
            f"{client_id}-sub",
            "-q",
            "1",
            "-t",
            f"{self.prefix}out/{client_id}",
            "-v",
            stdout=asyncio.subprocess.PIPE,
        )
        self.subscribers[client_id] = process

    async def publish(self, client_id: str, payload: str) -> None:
        """mosquitto_pub -i CLIENT -q 1 -t prefix/in/CLIENT -m PAYLOAD."""
        process = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-h",
            self.host,
            "-p",
            self.port,
            "-i",
            client_id,
            "-q",
            "1",
            "-t",
            f"{self.prefix}in/{client_id}",
            "-m",
            payload,
        )
        assert await asyncio.wait_for(process.wait(), 10) == 0

    async def receive(self, client_id: str) -> str:
        """The next payload on the client's out topic."""
        stdout = self.subscribers[client_id].stdout
        assert stdout is not None
        line = (await asyncio.wait_for(stdout.readline(), 10)).decode().rstrip("\n")
        topic, _, payload = line.partition(" ")
        assert topic == f"{self.prefix}out/{client_id}"
        return payload

    async def close(self) -> None:
        for process in self.subscribers.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()


@pytest.fixture
async def shell(settings: Settings, router: Router) -> AsyncIterator[Shell]:
    shell = Shell(settings)
    yield shell
    await shell.close()


async def registered(shell: Shell, client_id: str, register: str) -> str:
    """Register, re-sending until READY, since mosquitto_sub may not be subscribed yet."""
    await shell.listen(client_id)
    for _ in range(20):
        await shell.publish(client_id, register)
        with contextlib.suppress(TimeoutError):
            stdout = shell.subscribers[client_id].stdout
            assert stdout is not None
            line = (await asyncio.wait_for(stdout.readline(), 0.5)).decode()
            return line.split(" ", 1)[1].rstrip("\n")
    raise AssertionError(f"{client_id} never got READY")


async def test_worked_session_with_shell_tools_only(shell: Shell) -> None:
    """Register, request, reply and UNKNOWN, exactly as docs/protocol.md §8 shows."""
    ready = parse_line(
        await registered(
            shell, "orders1", "REGISTER service=orders;version=1.0;commands=PLACE,HELP,ALIVE"
        )
    )
    assert ready.command == "READY"
    assert ready.parameters["instance"] == "orders1"
    assert (ready.sent_from_server, ready.sent_from_service) == ("router_host", "communicator")
    ready = parse_line(
        await registered(shell, "front1", "REGISTER service=front;version=2.0;commands=PLACED")
    )
    assert ready.command == "READY"

    await shell.publish("front1", "orders/PLACE item=book;message_id=r1")
    assert await shell.receive("orders1") == "<unknown:front orders/PLACE item=book;message_id=r1"

    await shell.publish("orders1", "unknown:front/PLACED in_reply_to=r1")
    assert await shell.receive("front1") == "<unknown:orders unknown:front/PLACED in_reply_to=r1"

    await shell.publish("front1", "orders/REFUND")
    assert await shell.receive("front1") == "<router_host:communicator UNKNOWN command=REFUND"

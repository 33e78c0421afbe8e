"""``deployctl broker-config`` run by Mosquitto: client ids are bound to logins, packets capped.

Before the binding, any login that connected with another instance's client id
disconnected that instance, and its will told the communicators it was gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from typer.testing import CliRunner

from communicator.backends import _mqtt_packets as packets
from communicator.backends._link import MAX_PACKET_SIZE
from controller.cli._app import app
from tests.conftest import Server, answers, free_port
from tests.controller.test_cli_broker import TIMEOUT, add_user, first_message

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("mosquitto", "mosquitto_passwd")),
        reason="needs mosquitto and mosquitto_passwd",
    ),
]
runner = CliRunner()
Connect = Callable[..., aiomqtt.Client]


@pytest.fixture
def port() -> int:
    """The generated broker's port."""
    return free_port()


@pytest.fixture
async def generated_broker(
    tmp_path: Path,
    spawn: Callable[..., Server],
    monkeypatch: pytest.MonkeyPatch,
    topic_prefix: str,
    port: int,
) -> Connect:
    """A Mosquitto on a free port with the generated config (loopback only); users
    ``communicator``, ``alpha`` and ``beta``, each with the password ``<user>-secret``.
    Returns a factory of clients ``(client_id, user, **aiomqtt options)``."""
    monkeypatch.setenv("DEPLOYCTL_TOPIC_PREFIX", topic_prefix)
    folder = tmp_path / "broker"
    arguments = ["broker-config", "--no-tls", "--local-port", str(port), "--out", str(folder)]
    result = await asyncio.to_thread(runner.invoke, app, arguments)
    assert result.exit_code == 0, result.output
    # Started as root, Mosquitto would drop to user mosquitto, who cannot enter tmp_path.
    with (folder / "mosquitto.conf").open("a") as conf:
        conf.write("user root\npersistence false\n")
    for n, user in enumerate(("communicator", "alpha", "beta")):
        add_user(folder / "passwd", user, f"{user}-secret", create=n == 0)
    spawn(
        "mosquitto-generated",
        ["mosquitto", "-c", str(folder / "mosquitto.conf")],
        ready=lambda: answers("127.0.0.1", port),
    )

    def connect(client_id: str, user: str, **options: Any) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=client_id,
            username=user,
            password=f"{user}-secret",
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=TIMEOUT,
            **options,
        )

    return connect


async def test_a_login_cannot_take_another_ones_client_id(
    generated_broker: Connect, topic_prefix: str
) -> None:
    """Beta connecting as client id "alpha" becomes "beta": alpha stays, its will stays unsent."""
    inbound = f"{topic_prefix}in/"
    gone = aiomqtt.Will(f"{inbound}alpha", b"gone", qos=1)
    async with (
        generated_broker("router-1", "communicator") as router,
        generated_broker("alpha", "alpha", will=gone) as alpha,
    ):
        await router.subscribe(f"{inbound}+", qos=1)
        async with generated_broker("alpha", "beta") as impostor:
            await impostor.publish(f"{inbound}alpha", b"forged", qos=1)
            await impostor.publish(f"{inbound}beta", b"from beta", qos=1)
            # First: so neither alpha's will (sent on a takeover) nor the forgery came before.
            assert await first_message(router) == (f"{inbound}beta", b"from beta")
            await alpha.publish(f"{inbound}alpha", b"still here", qos=1)
            assert await first_message(router) == (f"{inbound}alpha", b"still here")


async def test_the_broker_refuses_packets_the_communicators_would_not_read(
    generated_broker: Connect, topic_prefix: str, port: int
) -> None:
    """A publish over max_packet_size disconnects its sender and reaches nobody."""
    inbound = f"{topic_prefix}in/"
    async with generated_broker("router-1", "communicator") as router:
        await router.subscribe(f"{inbound}+", qos=1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                packets.connect("beta", keepalive=60, username="beta", password="beta-secret")
            )
            async with asyncio.timeout(TIMEOUT):
                assert await reader.readexactly(4) == b"\x20\x02\x00\x00"  # CONNACK: accepted
                writer.write(packets.publish(f"{inbound}beta", bytes(MAX_PACKET_SIZE)))
                # The broker hangs up: an end of stream, or a reset with our bytes unread.
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        async with generated_broker("beta", "beta") as beta:
            await beta.publish(f"{inbound}beta", b"within the limit", qos=1)
        assert await first_message(router) == (f"{inbound}beta", b"within the limit")

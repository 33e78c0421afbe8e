"""mqtt_client and wait_for_broker against real Mosquitto brokers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from communicator._errors import BackendError
from communicator.backends._mqtt import broker_address, broker_url, mqtt_client, wait_for_broker
from communicator.backends._settings import Settings
from tests.communicator.conftest import needs_mosquitto
from tests.conftest import free_port

pytestmark = pytest.mark.integration


async def round_trip(settings: Settings, topic: str) -> bytes:
    """Publish one QoS 1 message to ourselves and return what arrived."""
    async with mqtt_client(settings, client_id=f"rt-{time.monotonic_ns()}") as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"ping", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no message")


async def test_round_trip(mqtt_url: str, topic_prefix: str) -> None:
    """A client from the settings publishes and receives through the real broker."""
    settings = Settings(mqtt_url=mqtt_url)
    assert await round_trip(settings, f"{topic_prefix}echo") == b"ping"


async def test_wait_for_broker_up(mqtt_url: str) -> None:
    """wait_for_broker returns quickly when the broker answers."""
    await wait_for_broker(Settings(mqtt_url=mqtt_url), 2)


async def test_broker_down_fails_within_deadline() -> None:
    """Nothing listening: BackendError saying 'refused the connection' and the fix, in time."""
    settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(
        BackendError, match="refused the connection; start it or set DEPLOYCTL_MQTT_URL"
    ) as caught:
        await wait_for_broker(settings, 0.6)
    assert time.monotonic() - start < 1.5
    assert caught.value.backend == "mqtt"


@needs_mosquitto
async def test_right_password(password_broker: int, topic_prefix: str) -> None:
    """The right user and password get in, from the URL or from the separate settings."""
    in_url = Settings(mqtt_url=f"mqtt://alice:wonderland@127.0.0.1:{password_broker}")
    assert await round_trip(in_url, f"{topic_prefix}a") == b"ping"
    separate = Settings(
        mqtt_url=f"mqtt://127.0.0.1:{password_broker}",
        mqtt_username="alice",
        mqtt_password="wonderland",
    )
    await wait_for_broker(separate, 2)


@needs_mosquitto
async def test_wrong_password(password_broker: int) -> None:
    """A wrong password fails at once with 'not authorised' and the settings to fix."""
    settings = Settings(mqtt_url=f"mqtt://alice:queen@127.0.0.1:{password_broker}")
    start = time.monotonic()
    with pytest.raises(BackendError, match="not authorised") as caught:
        await wait_for_broker(settings, 5)
    assert time.monotonic() - start < 1, "a wrong password is not worth retrying"
    message = str(caught.value)
    assert "DEPLOYCTL_MQTT_PASSWORD" in message
    assert "queen" not in message
    assert "refused the connection" not in message


@needs_mosquitto
async def test_anonymous_refused(password_broker: int) -> None:
    """No credentials on a password-only broker says 'not authorised' too."""
    with pytest.raises(BackendError, match=r"not authorised.*anonymous"):
        await wait_for_broker(Settings(mqtt_url=f"mqtt://127.0.0.1:{password_broker}"), 5)


@needs_mosquitto
async def test_tls_with_ca(
    tls_broker: Callable[[], int], certificates: Path, topic_prefix: str
) -> None:
    """mqtts:// with the CA that signed the broker's certificate works."""
    port = tls_broker()
    settings = Settings(mqtt_url=f"mqtts://127.0.0.1:{port}", mqtt_tls_ca=certificates / "ca.pem")
    assert await round_trip(settings, f"{topic_prefix}tls") == b"ping"


@needs_mosquitto
async def test_tls_unknown_ca(tls_broker: Callable[[], int]) -> None:
    """Without the CA, the certificate check fails at once, naming DEPLOYCTL_MQTT_TLS_CA."""
    port = tls_broker()
    with pytest.raises(BackendError, match="DEPLOYCTL_MQTT_TLS_CA"):
        await wait_for_broker(Settings(mqtt_url=f"mqtts://127.0.0.1:{port}"), 5)


@needs_mosquitto
async def test_tls_insecure(tls_broker: Callable[[], int]) -> None:
    """mqtt_tls_insecure skips the certificate check (for tests only)."""
    port = tls_broker()
    await wait_for_broker(Settings(mqtt_url=f"mqtts://127.0.0.1:{port}", mqtt_tls_insecure=True), 2)


async def test_tls_unreadable_ca_file(tmp_path: Path) -> None:
    """A TLS file that cannot be read is reported at once, naming the settings."""
    settings = Settings(
        mqtt_url=f"mqtts://127.0.0.1:{free_port()}", mqtt_tls_ca=tmp_path / "missing.pem"
    )
    start = time.monotonic()
    with pytest.raises(
        BackendError, match=r"cannot load the MQTT TLS files.*DEPLOYCTL_MQTT_TLS_CA"
    ):
        await wait_for_broker(settings, 5)
    assert time.monotonic() - start < 1


async def test_will_is_published_when_a_client_vanishes(mqtt_url: str, topic_prefix: str) -> None:
    """The will given to mqtt_client reaches subscribers when its client dies unannounced."""
    settings = Settings(mqtt_url=mqtt_url)
    will = aiomqtt.Will(f"{topic_prefix}gone", b"bye", qos=1)
    async with mqtt_client(settings, client_id=f"watcher-{time.monotonic_ns()}") as watcher:
        await watcher.subscribe(f"{topic_prefix}gone", qos=1)
        doomed = mqtt_client(settings, client_id=f"doomed-{time.monotonic_ns()}", will=will)
        async with doomed:
            # A crash: the connection drops without a DISCONNECT packet.
            connection = doomed._client.socket()
            assert isinstance(connection, socket.socket)
            connection.shutdown(socket.SHUT_RDWR)
            async with asyncio.timeout(5):
                async for message in watcher.messages:
                    assert message.payload == b"bye"
                    break


def test_embedded_address_defaults() -> None:
    """Without mqtt_url, clients go to the embedded broker; a wildcard bind means loopback."""
    assert broker_url(Settings()) == "mqtt://127.0.0.1:18830"
    wildcard = Settings(embedded_mqtt_host="0.0.0.0", embedded_mqtt_port=1999)
    assert broker_url(wildcard) == "mqtt://127.0.0.1:1999"
    assert broker_url(Settings(embedded_mqtt_host="::")) == "mqtt://[::1]:18830"


def test_credentials_fields_win_over_url() -> None:
    """mqtt_username / mqtt_password win over the URL's; each falls back to the URL."""
    settings = Settings(mqtt_url="mqtts://u:p@broker", mqtt_password="field")
    address = broker_address(settings)
    assert (address.host, address.port, address.tls) == ("broker", 8883, True)
    assert (address.username, address.password) == ("u", "field")
    assert broker_url(settings) == "mqtts://u:***@broker"

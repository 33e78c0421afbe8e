"""connect_redis against real Redis servers: TCP, unix socket, Sentinel, failures."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from communicator._errors import BackendError, ConfigError
from communicator.backends._backoff import FIRST_WAIT, MAX_WAIT, backoff_delay
from communicator.backends._redis import connect_redis
from communicator.backends._settings import Settings
from tests.conftest import Server, answers, free_port, redis_args, redis_server_binary

pytestmark = pytest.mark.integration


def settings_for(url: str | None, *, connect_timeout: float = 3) -> Settings:
    """Settings reaching Redis at ``url``, failing fast."""
    return Settings(redis_url=url, connect_timeout=connect_timeout)


@pytest.fixture
def unix_socket(spawn: Callable[..., Server]) -> Iterator[Path]:
    """A redis-server listening only on a unix socket in a short temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="dr-"))  # socket paths are limited to ~100 bytes
    path = folder / "redis.sock"

    def ready() -> bool:
        if not path.exists():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                return False
            return True

    spawn("redis-unix", redis_args(0, "--unixsocket", str(path)), ready=ready)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def password_redis(spawn: Callable[..., Server]) -> int:
    """Port of a redis-server that requires the password 'right'."""
    port = free_port()
    spawn(
        "redis-auth",
        redis_args(port, "--requirepass", "right"),
        ready=lambda: answers("127.0.0.1", port),
    )
    return port


@pytest.fixture
def sentinel(spawn: Callable[..., Server], tmp_path: Path) -> int:
    """Port of a real Sentinel monitoring a real master named 'mymaster'."""
    master = free_port()
    spawn("redis-master", redis_args(master), ready=lambda: answers("127.0.0.1", master))
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites it: it must be writable
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master} 1\n"
    )
    spawn(
        "redis-sentinel",
        [redis_server_binary(), str(config), "--sentinel"],
        ready=lambda: answers("127.0.0.1", port),
    )
    return port


async def test_tcp_round_trip(redis_url: str, key_prefix: str) -> None:
    """A client from a redis:// URL stores and returns bytes, speaking RESP2."""
    client = await connect_redis(settings_for(redis_url))
    try:
        await client.set(f"{key_prefix}k", "välue")
        assert await client.get(f"{key_prefix}k") == "välue".encode()
        assert client.connection_pool.connection_kwargs["protocol"] == 2
        # RESP2 reply shape: HGETALL is a flat list turned into a dict of bytes.
        await client.hset(f"{key_prefix}h", mapping={"a": "1"})
        assert await client.hgetall(f"{key_prefix}h") == {b"a": b"1"}
    finally:
        await client.aclose()


async def test_unix_socket(unix_socket: Path) -> None:
    """unix:// URLs reach a server on a socket, with a database number."""
    client = await connect_redis(settings_for(f"unix://{unix_socket}?db=2"))
    try:
        await client.set("k", b"v")
        assert await client.get("k") == b"v"
        assert (await client.client_info())["db"] == 2
    finally:
        await client.aclose()


async def test_sentinel(sentinel: int) -> None:
    """redis+sentinel:// finds the master through the Sentinel; closing closes both."""
    client = await connect_redis(settings_for(f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/1"))
    try:
        await client.set("through-sentinel", b"yes")
        assert await client.get("through-sentinel") == b"yes"
        assert (await client.client_info())["db"] == 1
    finally:
        await client.aclose()


async def test_sentinel_unknown_master(sentinel: int) -> None:
    """A master name the Sentinel does not know gives a BackendError naming the fix."""
    url = f"redis+sentinel://127.0.0.1:{sentinel}/nosuchmaster"
    with pytest.raises(BackendError, match="check the master name in DEPLOYCTL_REDIS_URL"):
        await connect_redis(settings_for(url, connect_timeout=5))


async def test_wrong_password(password_redis: int) -> None:
    """A wrong password fails at once, saying the password was refused."""
    start = time.monotonic()
    with pytest.raises(BackendError, match="refused our password") as caught:
        await connect_redis(settings_for(f"redis://:wrong@127.0.0.1:{password_redis}"))
    assert time.monotonic() - start < 1, "a wrong password is not worth retrying"
    assert "wrong" not in caught.value.url
    assert caught.value.backend == "redis"


async def test_missing_password(password_redis: int) -> None:
    """No password where one is required says to put it in the URL."""
    with pytest.raises(BackendError, match=r"requires a password.*DEPLOYCTL_REDIS_URL"):
        await connect_redis(settings_for(f"redis://127.0.0.1:{password_redis}"))


async def test_right_password(password_redis: int) -> None:
    """The right password connects."""
    client = await connect_redis(settings_for(f"redis://:right@127.0.0.1:{password_redis}"))
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_redis_down_fails_within_deadline() -> None:
    """Nothing listening: retries with backoff, then a BackendError with the fix, in time."""
    url = f"redis://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(
        BackendError, match="refused the connection; start it or set DEPLOYCTL_REDIS_URL"
    ):
        await connect_redis(settings_for(url, connect_timeout=0.6))
    assert time.monotonic() - start < 1.2


async def test_no_retry_fails_at_once() -> None:
    """retry=False makes one attempt only."""
    start = time.monotonic()
    with pytest.raises(BackendError):
        await connect_redis(settings_for(f"redis://127.0.0.1:{free_port()}"), retry=False)
    assert time.monotonic() - start < 0.5


async def test_no_url_is_a_config_error() -> None:
    """Without a URL (embedded mode), connect_redis says what to do instead."""
    with pytest.raises(ConfigError, match="redis_backend"):
        await connect_redis(settings_for(None))


async def test_url_argument_overrides_settings(redis_url: str) -> None:
    """The url= argument is used instead of settings.redis_url."""
    client = await connect_redis(settings_for("redis://127.0.0.1:1/0"), url=redis_url)
    try:
        assert isinstance(client, Redis)
        assert await client.ping()
    finally:
        await client.aclose()


def test_backoff_delay_is_capped_full_jitter() -> None:
    """Hand-made retry loops get waits in [0, min(MAX_WAIT, FIRST_WAIT * 2**attempt)]."""
    for attempt in (0, 3, 10, 1000):
        cap = min(MAX_WAIT, FIRST_WAIT * 2 ** min(attempt, 32))
        assert all(0 <= backoff_delay(attempt) <= cap for _ in range(200))

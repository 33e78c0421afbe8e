"""Connecting to Redis: by URL (TCP, TLS, unix socket, Sentinel), or to the embedded one.

Every client speaks RESP2 (``protocol=2``: redis-py 8 would pick RESP3 and
change reply shapes) and returns ``bytes`` (``decode_responses=False``): the
store keeps MQTT payloads, which are bytes, so callers decode what they know
to be text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from communicator._errors import BackendError, ConfigError
from communicator.backends._backoff import backoff
from communicator.backends._embedded_redis import EmbeddedRedis
from communicator.backends._settings import Settings, masked, parse_sentinel_url

logger = logging.getLogger(__name__)


class _SentinelRedis(Redis):
    """A master's client that also closes the Sentinel clients that find the master."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await cast(SentinelConnectionPool, self.connection_pool).sentinel_manager.aclose()


def _client(url: str, settings: Settings, *, retries: bool) -> Redis:
    options: dict[str, Any] = {
        "protocol": 2,
        "decode_responses": False,
        "socket_connect_timeout": settings.connect_timeout,
    }
    if not retries:  # the probe: our own backoff does the retrying
        options["retry"] = Retry(NoBackoff(), 0)
    if not url.startswith("redis+sentinel://"):
        return Redis.from_url(url, **options)
    address = parse_sentinel_url(url)
    secret = settings.redis_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8
        list(address.sentinels),
        sentinel_kwargs={**options, "password": secret.get_secret_value() if secret else None},
        **options,
    )
    master = sentinel.master_for(
        address.master,
        redis_class=_SentinelRedis,
        db=address.db,
        username=address.username,
        password=address.password,
    )
    return cast(Redis, master)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: Redis may be starting, failing over or loading."""
    if isinstance(exc, AuthenticationError):
        return False
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _backend_error(url: str, exc: BaseException, timeout: float) -> BackendError:
    where = masked(url)
    text = str(exc)
    if isinstance(exc, AuthenticationError):
        if "required" in text.lower() or "NOAUTH" in text:
            fix = "it requires a password: put it in DEPLOYCTL_REDIS_URL (redis://:PASSWORD@host)"
        else:
            fix = f"it refused our password ({text}); fix the password in DEPLOYCTL_REDIS_URL"
        return BackendError(f"Redis at {where}: {fix}", backend="redis", url=where)
    if isinstance(exc, MasterNotFoundError):
        message = (
            f"no Sentinel at {where} could name the master ({text}); check the master name "
            "in DEPLOYCTL_REDIS_URL and that the Sentinels and the master run"
        )
    elif isinstance(exc, TimeoutError | RedisTimeoutError):
        message = (
            f"Redis at {where} did not answer within {timeout:g} s; check the address in "
            "DEPLOYCTL_REDIS_URL, or raise DEPLOYCTL_CONNECT_TIMEOUT"
        )
    elif _caused_by(exc, ConnectionRefusedError):
        message = f"Redis at {where} refused the connection; start it or set DEPLOYCTL_REDIS_URL"
    elif isinstance(exc, RedisConnectionError | OSError):
        message = f"cannot reach Redis at {where} ({text}); start it or set DEPLOYCTL_REDIS_URL"
    else:
        message = f"Redis at {where} rejected us ({text}); fix DEPLOYCTL_REDIS_URL"
    return BackendError(message, backend="redis", url=where)


async def connect_redis(settings: Settings, *, url: str | None = None, retry: bool = True) -> Redis:
    """Connect to Redis and check that it answers.

    Supports ``redis://``, ``rediss://`` (TLS options as query arguments, e.g.
    ``?ssl_ca_certs=/path/ca.pem``), ``unix://`` and
    ``redis+sentinel://[:password@]host:port[,host:port...]/master[/db]``.

    Args:
        settings: Where Redis is (``redis_url``) and how long to try (``connect_timeout``).
        url: Connect here instead of ``settings.redis_url`` (e.g. an embedded Redis).
        retry: Keep trying with backoff until ``connect_timeout``; ``False`` tries once.

    Returns:
        A client that speaks RESP2 and returns bytes; the caller closes it (``aclose``).

    Raises:
        BackendError: Redis cannot be reached or refused us; the message says what to do.
        ConfigError: There is no URL to connect to.
    """
    target = url or settings.redis_url
    if target is None:
        raise ConfigError("no Redis to connect to: set DEPLOYCTL_REDIS_URL or use redis_backend()")
    deadline = settings.connect_timeout
    probe = _client(target, settings, retries=False)
    try:
        async with asyncio.timeout(deadline):
            async for attempt in backoff(deadline=deadline, transient=_transient, retry=retry):
                with attempt:
                    await probe.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        raise _backend_error(target, exc, deadline) from exc
    finally:
        await probe.aclose()
    logger.debug("connected to Redis at %s", masked(target))
    return _client(target, settings, retries=True)


@asynccontextmanager
async def redis_backend(settings: Settings) -> AsyncIterator[Redis]:
    """Yield a connected client: to ``settings.redis_url``, or to an embedded Redis.

    With ``redis_url`` unset, an :class:`EmbeddedRedis` on ``redis_embedded_path``
    runs for the duration and is stopped (and saved) on exit.

    Raises:
        BackendError: Redis cannot be reached or started.
    """
    async with AsyncExitStack() as stack:
        url = settings.redis_url
        if url is None:
            url = (await stack.enter_async_context(EmbeddedRedis.from_settings(settings))).url
        client = await connect_redis(settings, url=url)
        stack.push_async_callback(client.aclose)
        yield client

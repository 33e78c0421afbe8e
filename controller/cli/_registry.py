"""What the commands that read or change the registry share: one connection, one error policy.

Each command parses its options, then hands an async function to
:func:`with_registry`, which loads the settings, connects to Redis (the
configured one, or the embedded one), runs the function with ``asyncio.run``
and turns backend failures into exit code 3 and bad names into exit code 2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator import (
    BackendError,
    ConfigError,
    Keys,
    PasswordStore,
    Registry,
    RegistryError,
    Settings,
    masked,
    redis_backend,
)
from controller.cli._output import Exit, fail
from controller.local._discovery import with_backends

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RegistryAccess:
    """The settings and the registry's stores, connected for one command."""

    settings: Settings
    redis: Redis
    keys: Keys
    registry: Registry
    passwords: PasswordStore

    async def service_known(self, service: str) -> bool:
        """Whether the registry has heard of ``service`` (registered, reported, or barred)."""
        if service in await self.registry.services():
            return True
        return bool(await self.registry.versions(service))


def load_settings(*, as_json: bool) -> Settings:
    """The settings from the environment and the config file, or exit 2 saying what to fix."""
    try:
        return Settings()
    except ConfigError as exc:
        fail(str(exc), code=Exit.USAGE, as_json=as_json)


def connected_settings(*, as_json: bool) -> Settings:
    """The settings, pointing at the configured Redis or at the running ``deployctl up``.

    Never an embedded Redis of the command's own: with neither, exit 3 naming both fixes.
    """
    try:
        return with_backends(load_settings(as_json=as_json))
    except BackendError as exc:
        fail(str(exc), code=Exit.BACKEND, as_json=as_json, backend=exc.backend)


def with_registry(action: Callable[[RegistryAccess], Awaitable[T]], *, as_json: bool) -> T:
    """Run ``action`` against the configured Redis and return what it returns.

    Exits 3 when Redis cannot be reached or fails meanwhile, 2 when the registry
    refuses a name; ``action`` itself may exit (``fail``) with any code.
    """
    settings = connected_settings(as_json=as_json)

    async def connected() -> T:
        async with redis_backend(settings) as redis:
            keys = Keys(settings.key_prefix)
            access = RegistryAccess(
                settings=settings,
                redis=redis,
                keys=keys,
                registry=Registry(redis=redis, keys=keys),
                passwords=PasswordStore(redis=redis, keys=keys),
            )
            return await action(access)

    try:
        return asyncio.run(connected())
    except BackendError as exc:
        fail(str(exc), code=Exit.BACKEND, as_json=as_json, backend=exc.backend)
    except (RedisError, OSError) as exc:
        where = masked(settings.redis_url) if settings.redis_url else "the embedded Redis"
        fail(
            f"Redis at {where} failed during the command ({exc}); check that it runs, "
            "then run the command again",
            code=Exit.BACKEND,
            as_json=as_json,
            backend="redis",
        )
    except RegistryError as exc:
        fail(str(exc), code=Exit.USAGE, as_json=as_json)


def local_time(epoch: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM:SS`` for people ("" when unknown)."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")

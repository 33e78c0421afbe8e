"""The Lua scripts of the registry and the password store, loaded from ``communicator/lua``.

Each script is the shared prelude (``_prelude.lua``: the clock, policies,
outcome windows, events) followed by its own body, so every script is
self-contained when Redis runs it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

_PRELUDE = "_prelude.lua"


@functools.cache
def script_source(name: str) -> str:
    """The full source of script ``name`` (``record_outcome``...), prelude included."""
    folder = resources.files("communicator.registry") / "lua"
    prelude = (folder / _PRELUDE).read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return f"{prelude}\n{body}"


class Scripts:
    """The scripts registered on one Redis client, by name."""

    def __init__(self, redis: Redis, names: Sequence[str]) -> None:
        self._redis = redis
        self._scripts = {name: redis.register_script(script_source(name)) for name in names}
        self._loaded = False

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA script ``name``, loading it first if Redis does not have it."""
        script = self._scripts[name]
        # Straight to EVALSHA: redis-py's Script.__call__ costs about a fifth
        # more per call, which the failure path feels.
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)

    def queue(self, pipe: Pipeline, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue an EVALSHA of ``name`` on ``pipe``; run :meth:`execute` on it after."""
        script = self._scripts[name]
        pipe.evalsha(script.sha, len(keys), *keys, *args)

    async def execute(self, pipe: Pipeline) -> list[Any]:
        """Execute a pipeline of queued scripts in one round trip.

        redis-py's own pipeline support asks ``SCRIPT EXISTS`` before every
        execute, a second round trip on the hot path; instead the scripts are
        loaded once, and only after Redis lost them (restart, ``SCRIPT
        FLUSH``) does a batch cost a reload and a retry of what failed.
        """
        if not self._loaded:
            await self._load_all()
        commands = list(pipe.command_stack)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self._load_all()
            async with self._redis.pipeline(transaction=False) as retry:
                for i in missing:
                    args, options = commands[i]
                    retry.execute_command(*args, **options)
                for i, result in zip(missing, await retry.execute(), strict=True):
                    results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _load_all(self) -> None:
        for script in self._scripts.values():
            await self._redis.script_load(script.script)
        self._loaded = True

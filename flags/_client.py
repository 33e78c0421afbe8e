"""``flags.FlagClient``: in-process evaluation of flags pushed to the service.

It starts from a bootstrap file (flagd JSON) if given, then gets every flag
from the broker (retained messages) and each change as it happens, compiling
a flag once per change. Evaluation never touches the network: while the broker
is away it serves the last known flags with reason ``STALE``.

Listeners (:meth:`FlagClient.add_listener`) hear of each :class:`FlagEvent`:
``ready`` once the broker's flags are in (again, after each reconnection),
``changed`` with the keys of a change after that, and ``stale`` when the
broker goes away. The OpenFeature provider turns them into provider events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiomqtt

from communicator import Settings, keep_trying, mqtt_client
from communicator.backends import being_cancelled, cancel_and_wait
from flags._errors import FlagError
from flags._evaluate import CompiledFlag, FlagType, Reason, Resolution, evaluate
from flags._model import Flag, flags_from_flagd_document
from flags._topics import FlagTopics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """A change in what a :class:`FlagClient` serves."""

    kind: Literal["ready", "changed", "stale"]
    keys: tuple[str, ...] = ()  # the flags that changed (``changed`` only)


FlagListener = Callable[[FlagEvent], None]


class FlagClient:
    """Feature flags for one service, evaluated in-process.

    Example::

        async with FlagClient(bootstrap=Path("flags.json")) as flags:
            if flags.boolean("new-checkout", False, {"targetingKey": user_id}):
                ...
    """

    def __init__(self, *, settings: Settings | None = None, bootstrap: Path | None = None) -> None:
        self.settings = settings or Settings()
        self._bootstrap = bootstrap
        self._topics = FlagTopics(self.settings.topic_prefix)
        self._flags: dict[str, CompiledFlag] = {}
        self._revisions: dict[str, int] = {}
        self._connected = False
        self._task: asyncio.Task[None] | None = None
        self.updated = asyncio.Event()  # set (and cleared by whoever waits) on each change
        self.synced = asyncio.Event()  # the broker's flags arrived at least once
        self._listeners: list[FlagListener] = []
        self._in_sync = False  # the broker's flags are in, on this connection

    async def __aenter__(self) -> Self:
        if self._bootstrap is not None:
            text = await asyncio.to_thread(self._bootstrap.read_bytes)
            for key, flag in flags_from_flagd_document(text).items():
                self._flags[key] = CompiledFlag(flag)
        self._task = asyncio.create_task(self._follow(), name="flag-client")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def wait_synced(self, timeout: float = 5.0) -> bool:
        """Wait (up to ``timeout``) for the broker's flags; ``False`` if they did not come."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.synced.wait(), timeout)
        return self.synced.is_set()

    def add_listener(self, listener: FlagListener) -> Callable[[], None]:
        """Call ``listener`` (on the event loop) with each :class:`FlagEvent`; returns its remover.

        A listener must not block; one that raises is logged and kept.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, event: FlagEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("flags: a listener failed on %s", event.kind)

    # -- evaluation (never blocks) --------------------------------------------------------------

    def resolve(
        self,
        key: str,
        default: Any,
        context: Mapping[str, Any] | None = None,
        expected_type: FlagType | None = None,
    ) -> Resolution:
        """Evaluate a flag: value, variant, reason (``STALE`` offline), error code, metadata."""
        resolution = evaluate(self._flags.get(key), key, default, context, expected_type)
        if not self._connected and resolution.reason not in (Reason.ERROR, Reason.DISABLED):
            return resolution._replace(reason=Reason.STALE)
        return resolution

    def boolean(self, key: str, default: bool, context: Mapping[str, Any] | None = None) -> bool:
        """The flag's boolean value (``default`` when missing, disabled or failing)."""
        return bool(self.resolve(key, default, context, FlagType.BOOLEAN).value)

    def string(self, key: str, default: str, context: Mapping[str, Any] | None = None) -> str:
        """The flag's string value."""
        return str(self.resolve(key, default, context, FlagType.STRING).value)

    def number(self, key: str, default: float, context: Mapping[str, Any] | None = None) -> float:
        """The flag's numeric value."""
        value = self.resolve(key, default, context, FlagType.FLOAT).value
        return float(value)

    def object_value(self, key: str, default: Any, context: Mapping[str, Any] | None = None) -> Any:
        """The flag's object value."""
        return self.resolve(key, default, context, FlagType.OBJECT).value

    def flags(self) -> dict[str, Flag]:
        """Every flag known now."""
        return {key: compiled.flag for key, compiled in self._flags.items()}

    @property
    def connected(self) -> bool:
        """Whether changes reach this client now (if not, resolutions say ``STALE``)."""
        return self._connected

    # -- following the broker -------------------------------------------------------------------

    async def _follow(self) -> None:
        client_id = f"flags-{self.settings.server_name}-{uuid.uuid4().hex[:8]}"
        await keep_trying(
            lambda: self._session(client_id),
            what="flags: broker unreachable, serving the last known flags",
            transient=lambda exc: isinstance(exc, aiomqtt.MqttError),
        )

    async def _session(self, client_id: str) -> None:
        """One connection: the retained flags, then each change, until the connection drops."""
        try:
            async with mqtt_client(self.settings, client_id=client_id) as mqtt:
                await mqtt.subscribe(self._topics.all_flags(), qos=1)
                self._connected = True
                await self._receive(mqtt.messages.__aiter__())
        except aiomqtt.MqttError:
            if not being_cancelled():  # closing is no outage
                self._lost()
            raise

    async def _receive(self, messages: AsyncIterator[aiomqtt.Message]) -> None:
        """Apply each message; the retained flags come first: a short quiet after them is sync."""
        while True:
            try:
                message = await asyncio.wait_for(messages.__anext__(), 0.2)
            except TimeoutError:
                self._synced()
                message = await messages.__anext__()
            self._apply(message.topic.value, message.payload)

    def _lost(self) -> None:
        if self._connected:
            self._emit(FlagEvent("stale"))
        self._connected = self._in_sync = False

    def _synced(self) -> None:
        self.synced.set()
        if not self._in_sync:
            self._in_sync = True
            self._emit(FlagEvent("ready"))

    def _apply(self, topic: str, payload: Any) -> None:
        key = topic.rsplit("/", 1)[-1]
        if not payload:
            self._flags.pop(key, None)
            self._revisions.pop(key, None)
        else:
            try:
                data = json.loads(payload if isinstance(payload, bytes | str) else str(payload))
                revision = int(data["revision"])
                if revision < self._revisions.get(key, 0):
                    return  # an older message overtaken by a newer one
                self._flags[key] = CompiledFlag(Flag.from_flagd(key, data["flag"]))
                self._revisions[key] = revision
            except (ValueError, KeyError, TypeError, FlagError) as exc:
                logger.warning("flags: ignored an unreadable update of %s: %s", key, exc)
                return
        self.updated.set()
        if self._in_sync:
            self._emit(FlagEvent("changed", (key,)))

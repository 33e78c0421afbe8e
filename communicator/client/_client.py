"""``communicator.Client``: what a service uses to talk through the communicator.

It follows docs/protocol.md: one MQTT client per instance, a will that reports
an unexpected death, REGISTER/READY, the built-in commands answered here, and
reconnection (with re-registration) after the broker or the network goes away.

About 500 lines, one class on purpose: life cycle, registration, serving and
sending share one connection's state (the MQTT client, the pending requests,
the registered future); the pure parts live in ``_builtins``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Self

import aiomqtt

from communicator._errors import ClientError, MessageError, RegistrationRefused, RequestFailed
from communicator.backends._backoff import MAX_WAIT, keep_trying
from communicator.backends._mqtt import mqtt_client
from communicator.backends._ntp import machine_ntp
from communicator.backends._settings import Settings
from communicator.backends._tasks import cancel_and_wait
from communicator.backends._topics import Topics
from communicator.client._builtins import (
    BUILT_IN,
    INFORMATIONAL,
    STOPPING,
    builtin_answer,
    clock_answer,
    correlated,
)
from communicator.wire._codec import WireForm, decode, encode
from communicator.wire._message import Message
from communicator.wire._validators import parse_duration

logger = logging.getLogger(__name__)

#: Seconds without a message after UNREGISTER before a leaving client stops receiving.
DRAIN_QUIET = 0.1
#: Longest a leaving client keeps receiving and handling after UNREGISTER.
DRAIN_SECONDS = 2.0

Handler = Callable[[Message], Awaitable[Message | None]]


class Client:
    """An async context manager: connect, register, serve handlers, send; reconnect on loss.

    Example::

        async with Client("orders", "1.4.2", commands=["PLACE"]) as client:
            @client.handler("PLACE")
            async def place(message: Message) -> Message | None:
                return message.reply("PLACED", id="7")

            await client.stopped.wait()
    """

    def __init__(
        self,
        service: str,
        version: str,
        *,
        settings: Settings | None = None,
        commands: Iterable[str] = (),
        handlers: dict[str, Handler] | None = None,
        server: str | None = None,
        zone: str | None = None,
        instance: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        form: WireForm = "text",
        qos: int = 1,
        register_timeout: float = 10.0,
        request_timeout: float = 30.0,
        concurrency: int = 1,
    ) -> None:
        self.settings = settings or Settings()
        self.service = service
        self.version = version
        self.server = server or self.settings.server_name
        self.zone = zone if zone is not None else self.settings.zone
        self.client_id = (
            client_id
            or self.settings.mqtt_client_id
            or f"{service}-{self.server}-{uuid.uuid4().hex[:8]}"
        )
        self.instance = instance or self.client_id
        self._password = password
        self._handlers: dict[str, Handler] = dict(handlers or {})
        self._commands = list(dict.fromkeys([*commands, *self._handlers]))
        self._form = form
        self._qos = qos
        self._register_timeout = register_timeout
        self._request_timeout = request_timeout
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1 (1: messages handled in order)")
        self._concurrency = concurrency
        topics = Topics(self.settings.topic_prefix)
        self._in = topics.inbound(self.client_id)
        self._out = topics.outbound(self.client_id)
        self._mqtt: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._registered: asyncio.Future[Message] | None = None
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._ntp = machine_ntp()
        self._last_received = time.monotonic()
        self._handling = 0  # handlers running now
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self.stopped = asyncio.Event()  # set on STOP, QUITTING, or a refusal for good
        self.error: RegistrationRefused | None = None
        """Why the client stopped by itself: the communicator refused its (re-)registration."""
        self.registrations = 0  # how many times READY came (1 + reconnections)

    # -- handlers -----------------------------------------------------------------------------

    def handler(self, command: str) -> Callable[[Handler], Handler]:
        """Decorator: handle ``command``; a returned message is sent (as the reply of a request)."""

        def register(function: Handler) -> Handler:
            self.add_handler(command, function)
            return function

        return register

    def add_handler(self, command: str, function: Handler) -> None:
        """Handle ``command`` with ``function`` (announced with COMMANDS if already registered)."""
        self._handlers[command] = function
        if command not in self._commands:
            self._commands.append(command)
            if self._connected.is_set():
                self._spawn(
                    self.send(
                        Message(command="COMMANDS", parameters={"list": ",".join(self.commands)})
                    )
                )

    @property
    def commands(self) -> list[str]:
        """Every command this instance accepts, built-ins included."""
        return list(dict.fromkeys([*self._commands, *BUILT_IN]))

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise ClientError(
                "this Client is already running; it is not re-entrant", service=self.service
            )
        loop = asyncio.get_running_loop()
        self._registered = loop.create_future()
        self._runner = asyncio.create_task(self._run(), name=f"client-{self.client_id}")
        try:
            await asyncio.wait_for(asyncio.shield(self._registered), self._register_timeout)
        except BaseException:
            await self._shutdown(goodbye=False)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown(goodbye=True)

    async def _shutdown(self, *, goodbye: bool) -> None:
        if goodbye and self._mqtt is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                unregister = Message(command="UNREGISTER", parameters={"service": self.service})
                await self._mqtt.publish(
                    self._in, encode(unregister, self._form), qos=self._qos, timeout=2
                )
            await self._drain()
        if self._runner is not None:
            await cancel_and_wait([self._runner])
        self._runner = None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    async def _drain(self) -> None:
        """Handle what was routed here before the communicators heard the UNREGISTER.

        Leaving is not instant: a message routed a moment before is still on its
        way. Receiving goes on until nothing has come for ``DRAIN_QUIET`` seconds
        and every handler has finished (at most ``DRAIN_SECONDS``), so a clean
        exit loses none of them.
        """
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self._last_received >= DRAIN_QUIET
            if quiet and self._inbox.empty() and not self._handling:
                return
            await asyncio.sleep(DRAIN_QUIET / 4)
        logger.warning(
            "%s: still busy %g s after UNREGISTER; leaving", self.client_id, DRAIN_SECONDS
        )

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            serving = tasks.create_task(self._serve(), name=f"client-{self.client_id}-handlers")
            await keep_trying(
                self._connection,
                what=f"{self.client_id}: connection to the communicator",
                transient=_worth_reconnecting,
            )
            serving.cancel()  # refused for good

    async def _connection(self) -> None:
        """One connection; returns only when the communicator refuses this client for good."""
        try:
            await self._session()
        except RegistrationRefused as exc:
            if self._registered is not None and not self._registered.done():
                self._registered.set_exception(exc)
            if exc.reason not in ("throttled", "unavailable"):
                self._end(exc)
                return
            await asyncio.sleep(exc.retry_after or MAX_WAIT)
            raise  # throttled: worth reconnecting, once its wait is over
        raise aiomqtt.MqttError("the broker ended the session")  # reconnect, as on a drop

    def _end(self, refusal: RegistrationRefused) -> None:
        """The communicator refused us for good: stop, and say why to whoever waits or sends."""
        logger.error("%s: %s; this client stops", self.client_id, refusal)
        self.error = refusal
        for future in self._pending.values():
            if not future.done():
                future.set_exception(refusal)
        self._pending.clear()
        self.stopped.set()

    async def _session(self) -> None:
        """One connection: subscribe, register, then receive until the connection drops."""
        will = aiomqtt.Will(self._in, f"DISCONNECTED service={self.service}".encode(), qos=1)
        try:
            async with mqtt_client(self.settings, client_id=self.client_id, will=will) as mqtt:
                self._mqtt = mqtt
                await self._register_then_receive(mqtt)
        finally:
            self._connected.clear()
            self._mqtt = None

    async def _register_then_receive(self, mqtt: aiomqtt.Client) -> None:
        await mqtt.subscribe(self._out, qos=1)
        ready: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending["\0register"] = ready
        register = encode(Message(command="REGISTER", parameters=self._registration()), self._form)
        repeat = asyncio.create_task(
            self._register(mqtt, register, ready), name=f"client-{self.client_id}-register"
        )
        try:
            async for incoming in mqtt.messages:
                await self._receive(incoming.payload)
        finally:
            repeat.cancel()

    def _registration(self) -> dict[str, str]:
        """The parameters of REGISTER."""
        parameters = {
            "service": self.service,
            "version": self.version,
            "server": self.server,
            "instance": self.instance,
            "commands": ",".join(self.commands),
            "protocol": "1",
        }
        if self.zone:
            parameters["zone"] = self.zone
        if self._password is not None:
            parameters["password"] = self._password
        return parameters

    async def _register(
        self, mqtt: aiomqtt.Client, register: bytes, ready: asyncio.Future[Message]
    ) -> None:
        """Send REGISTER until READY (or REFUSE) comes: no communicator may be listening yet."""
        attempt = 0
        while not ready.done():
            await mqtt.publish(self._in, register, qos=self._qos)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ready), min(0.5 * 2**attempt, MAX_WAIT * 2))
            attempt += 1

    # -- receiving ----------------------------------------------------------------------------

    async def _receive(self, payload: object) -> None:
        received_at, self._last_received = time.time(), time.monotonic()
        try:
            message = decode(payload if isinstance(payload, bytes | str) else str(payload))
        except MessageError as exc:
            logger.warning("%s: unreadable message from the communicator: %s", self.client_id, exc)
            return
        if message.command in ("READY", "REFUSE"):
            self._on_registration(message)
            return
        if message.command == "CLOCK" and "CLOCK" not in self._handlers:
            # Answered here, ahead of queued work: a busy instance's clock reads true.
            answer = clock_answer(
                message, received_at=received_at, ntp_synchronized=self._ntp.synchronized
            )
            self._spawn(self._answer_quietly(message, answer))
            return
        in_reply_to = message.parameters.get("in_reply_to")
        if in_reply_to is not None and in_reply_to in self._pending:
            future = self._pending.pop(in_reply_to)
            if not future.done():
                future.set_result(message)
            return
        await self._inbox.put(message)

    def _on_registration(self, message: Message) -> None:
        waiter = self._pending.pop("\0register", None)
        if message.command == "REFUSE":
            reason = message.parameters.get("reason", "")
            retry = message.parameters.get("retry_after")
            raise RegistrationRefused(
                f"{self.service} {self.version} refused: {reason} "
                f"({message.parameters.get('message', '')})",
                service=self.service,
                reason=reason,
                retry_after=parse_duration(retry) if retry else None,
            )
        if waiter is None:
            return  # READY to a repeated REGISTER: already registered in this session
        self.registrations += 1
        self._connected.set()
        if self._registered is not None and not self._registered.done():
            self._registered.set_result(message)
        if not waiter.done():
            waiter.set_result(message)

    async def _serve(self) -> None:
        """Handle received messages: in order, or up to ``concurrency`` at once."""
        if self._concurrency == 1:
            while True:
                await self._handle_safely(await self._inbox.get())
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as handlers:
            while True:
                message = await self._inbox.get()
                await slots.acquire()
                task = handlers.create_task(self._handle_safely(message))
                task.add_done_callback(lambda _: slots.release())

    async def _handle_safely(self, message: Message) -> None:
        self._handling += 1
        try:
            await self._handle(message)
        except Exception:  # a handler's bug must not kill the client
            logger.exception("%s: handler for %s failed", self.client_id, message.command)
            if "message_id" in message.parameters:
                await self._reply_error(message, "the handler raised an exception")
        finally:
            self._handling -= 1

    async def _handle(self, message: Message) -> None:
        command = message.command
        if command in self._handlers:
            answer = await self._handlers[command](message)
        elif command in STOPPING:
            logger.info("%s: %s received; stopping", self.client_id, command)
            self.stopped.set()
            return
        elif command in INFORMATIONAL:
            logger.info("%s: %s %s", self.client_id, command, message.parameters)
            return
        else:
            answer = builtin_answer(message, self.commands)
            if answer is None:
                answer = message.reply("UNKNOWN", command=command)
        if answer is not None:
            await self._answer(message, answer)

    async def _answer(self, request: Message, answer: Message) -> None:
        await self.send(correlated(request, answer))

    async def _answer_quietly(self, request: Message, answer: Message) -> None:
        """Answer, unless the connection is gone (the asker then times out)."""
        with contextlib.suppress(ClientError):
            await self._answer(request, answer)

    async def _reply_error(self, request: Message, reason: str) -> None:
        await self._answer_quietly(request, request.reply("ERROR", reason=reason))

    # -- sending ------------------------------------------------------------------------------

    async def send(self, message: Message, *, timeout: float = 10.0) -> None:
        """Send a message (waiting up to ``timeout`` for a connection if the broker is away).

        Raises:
            ClientError: Not connected within ``timeout``, or the communicator
                refused this client for good (:attr:`error` says why).
        """
        if self.error is not None:
            raise ClientError(
                f"could not send {message.command}: {self.error}", service=self.service
            ) from self.error
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            mqtt = self._mqtt
            if mqtt is None:  # lost again since the wait
                raise aiomqtt.MqttError("not connected")  # noqa: TRY301
            await mqtt.publish(
                self._in, encode(message, self._form), qos=self._qos, timeout=timeout
            )
        except (TimeoutError, aiomqtt.MqttError) as exc:
            raise ClientError(
                f"could not send {message.command}: not connected to the broker ({exc}); "
                "check that the broker and a communicator are running",
                service=self.service,
            ) from exc

    async def broadcast(self, command: str, *, service: str = "*", **parameters: str) -> None:
        """Send ``command`` to every accepting instance (``*``, ``?``, ``.``), or of one service."""
        if service in ("*", "?", "."):
            message = Message(command=command, service=service, parameters=parameters)
        else:
            message = Message(command=command, server="*", service=service, parameters=parameters)
        await self.send(message)

    async def request(self, message: Message, *, timeout: float | None = None) -> Message:
        """Send a request and wait for its reply.

        Raises:
            RequestFailed: The answer was ERROR, UNKNOWN or INVALID, or none came in time.
        """
        timeout = self._request_timeout if timeout is None else timeout
        message_id = f"{self.client_id}.{next(self._ids)}"
        parameters = {**message.parameters, "message_id": message_id, "timeout": f"{timeout:g}s"}
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self.send(message.model_copy(update={"parameters": parameters}), timeout=timeout)
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestFailed(
                f"no reply to {message.command} within {timeout:g}s",
                service=self.service,
                command=message.command,
            ) from None
        finally:
            self._pending.pop(message_id, None)
        if answer.command in ("ERROR", "UNKNOWN", "INVALID"):
            raise RequestFailed(
                f"{message.command} answered with {answer.command}: {answer.parameters}",
                service=self.service,
                command=message.command,
                answer=answer,
            )
        return answer

    async def report_failure(
        self,
        reason: str,
        *,
        kind: str = "failure",
        service: str | None = None,
        version: str | None = None,
    ) -> None:
        """Report a failure of this instance's version to the communicator.

        ``service`` and ``version`` name another one, which only a trusted
        reporter may do (a service defined with ``trusted_reporter: true``); the
        communicator answers anyone else's with INVALID.
        """
        parameters = {"reason": reason, "kind": kind}
        if service is not None:
            parameters["service"] = service
        if version is not None:
            parameters["version"] = version
        await self.send(Message(command="FAILURE", parameters=parameters))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        if self._tasks is not None:
            self._tasks.create_task(coroutine)  # type: ignore[arg-type]

    @property
    def connected(self) -> bool:
        """Whether the client is connected and registered right now."""
        return self._connected.is_set()


def _worth_reconnecting(exc: BaseException) -> bool:
    """The broker went away, or the communicator asked us to register again later."""
    if isinstance(exc, RegistrationRefused):
        return exc.reason == "throttled"
    return isinstance(exc, aiomqtt.MqttError)

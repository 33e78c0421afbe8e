"""``deployctl demo shadow``: ``up`` plus a fleet whose live traffic is mirrored to a new version.

Three instances of ``shop`` 1.0 serve ORDER requests from a front end; one
instance of ``shop`` 2.0 runs beside them as a shadow: it gets a copy of every
order (what ``deployctl shadow start shop --version 2.0 --compare`` sets up),
its answers reach nobody, and the communicator compares them with the
primary's. Version 2.0 is slow (it says BUSY when swamped, and the mirror
allows only a few copies in flight, so copies are dropped, never queued) and
it has a real difference: a bulk discount on orders of 4 or more items, so its
``total`` differs on two orders in five (1 to 5 items each). Both versions stamp their
answers with ``at=<time>``, which differs between any two instances: noise,
which the comparison learns from a second 1.0 instance and ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from contextlib import AsyncExitStack
from typing import Any

from redis.asyncio import Redis
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from communicator import (
    Client,
    ClientError,
    Keys,
    Message,
    Mirror,
    PlanStore,
    Pool,
    RoutePlan,
    RouterConfig,
    Settings,
    with_mirror,
)
from communicator.backends import text
from controller.local._demo import demo_settings
from controller.local._up import Stack
from strategies import shadow_report

SERVICE = "shop"
STABLE, SHADOW = "1.0", "2.0"
PRIMARIES = 3
RATE = 60.0  # orders per second from the front end
SECONDS = 10.0  # of mirrored traffic
MAX_INFLIGHT = 4  # copies in flight to the shadow beyond which copies are dropped
PRICE = 12.5
BULK = 4  # 2.0 gives a 10 % discount from this many items on: the real difference


def _total(qty: int, *, discount: bool) -> str:
    total = qty * PRICE * (0.9 if discount and qty >= BULK else 1.0)
    return f"{total:.2f}"


async def _primary(message: Message) -> Message:
    await asyncio.sleep(random.uniform(0.002, 0.008))
    qty = int(message.parameters.get("qty", "1"))
    return message.reply(
        "ORDERED",
        order=message.parameters.get("order", ""),
        total=_total(qty, discount=False),
        at=f"{time.time():.6f}",  # noise: differs between any two instances
    )


class _ShadowService:
    """Version 2.0: slow, sheds load with BUSY, and discounts bulk orders."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.working = 0
        self._quiet_until = 0.0  # says BUSY at most once a second

    async def order(self, message: Message) -> Message:
        self.working += 1
        try:
            if self.working >= 3 and time.monotonic() > self._quiet_until and self.client:
                # Swamped: ask the communicator for no copies for a moment.
                self._quiet_until = time.monotonic() + 1.0
                await self.client.send(Message(command="BUSY", parameters={"for": "0.15s"}))
            await asyncio.sleep(random.uniform(0.03, 0.2))  # a slow new code path
            qty = int(message.parameters.get("qty", "1"))
            return message.reply(
                "ORDERED",
                order=message.parameters.get("order", ""),
                total=_total(qty, discount=True),
                at=f"{time.time():.6f}",
            )
        finally:
            self.working -= 1


async def _traffic(front: Client, stop: asyncio.Event, sent: list[int]) -> None:
    """Orders at about RATE per second, each in its own task so a slow one blocks nothing."""
    pending: set[asyncio.Task[Message]] = set()
    while not stop.is_set():
        sent[0] += 1
        order = Message(
            command="ORDER",
            service=SERVICE,
            parameters={"order": str(sent[0]), "item": "book", "qty": str(random.randint(1, 5))},
        )
        task = asyncio.create_task(front.request(order, timeout=2))
        pending.add(task)
        task.add_done_callback(pending.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.sleep(1 / RATE)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def read_report(redis: Redis, keys: Keys) -> dict[str, Any] | None:
    """The merged report of the 2.0 mirror, from Redis (what ``deployctl shadow report`` reads)."""
    raw = await redis.hgetall(keys.shadow_report(SERVICE))
    reports = [json.loads(text(value)) for value in raw.values()]
    mine = [r for r in reports if r.get("version") == SHADOW]
    return shadow_report(mine) if mine else None


def _view(report: dict[str, Any] | None, elapsed: float, orders: int) -> Group:
    counts = report["counts"] if report else {}
    outcomes = report["outcomes"] if report else {}
    table = Table(title=f"{SERVICE} {STABLE} → shadow {SHADOW} (100 %, compare)")
    for name in ("candidates", "sent", "dropped busy", "dropped bound", "failed", "in flight"):
        table.add_column(name, justify="right")
    table.add_row(
        *(
            str(counts.get(k, 0))
            for k in ("candidates", "sent", "dropped_busy", "dropped_bound", "failed")
        ),
        str(report["inflight"] if report else 0),
    )
    lines = Table.grid(padding=(0, 2))
    lines.add_row(
        f"{elapsed:4.1f} s, {orders} orders",
        f"shadow replied {outcomes.get('replied', 0)}, errors {outcomes.get('error_reply', 0)}, "
        f"timeouts {outcomes.get('timeout', 0)}",
        f"compared {report['compared'] if report else 0}",
    )
    if report:
        for name, d in report["differences"].items():
            lines.add_row(
                f"[red]differs[/] {escape(name)}",
                f"shadow {d['shadow_rate']:.0%} vs noise {d['noise_rate']:.0%}",
                f"over {d['compared']}",
            )
        for name, d in report["noise"].items():
            lines.add_row(f"[dim]noise {escape(name)}[/]", f"[dim]{d['noise_rate']:.0%}[/]", "")
    return Group(table, lines)


def _print_report(console: Console, report: dict[str, Any]) -> None:
    c, rates = report["counts"], report["drop_rates"]
    console.print(f"\n[bold]Report[/] (deployctl shadow report {SERVICE})")
    console.print(
        f"{c['candidates']} candidate copies: {c['sent']} sent, "
        f"{c['dropped_busy']} dropped busy ({rates['dropped_busy']:.1%}), "
        f"{c['dropped_bound']} dropped at the bound of {MAX_INFLIGHT} in flight "
        f"({rates['dropped_bound']:.1%}), {c['failed']} failed ({rates['failed']:.1%})"
    )
    console.print(
        f"shadow replies: {report['outcomes']}; compared {report['compared']} "
        f"({report['incomplete']} incomplete)"
    )
    if not report["differences"]:
        console.print("[green]no real difference[/]")
    for name, d in report["differences"].items():
        console.print(
            f"[red]real difference[/] {escape(name)}: the shadow differs on "
            f"{d['shadow_rate']:.0%} of {d['compared']} compared replies, two {STABLE} instances "
            f"on {d['noise_rate']:.0%}"
        )
    for example in report["examples"][:1]:
        p, s = example["primary"]["parameters"], example["shadow"]["parameters"]
        shown = ", ".join(
            f"{f}: {STABLE} {p.get(f.removeprefix('parameters.'))!r} vs {SHADOW} "
            f"{s.get(f.removeprefix('parameters.'))!r}"
            for f in example["fields"]
        )
        console.print(f"  example, order {escape(str(p.get('order')))}: {escape(shown)}")
    for name, d in report["noise"].items():
        if name not in report["differences"]:
            console.print(
                f"[dim]ignored as noise[/] {escape(name)}: differs between two {STABLE} "
                f"instances on {d['noise_rate']:.0%} of replies"
            )


async def run_shadow_demo(console: Console, settings: Settings | None = None) -> dict[str, Any]:
    """Run the shadow demo; return the mirror's final report (as ``deployctl shadow report``)."""
    settings = settings or demo_settings()
    console.print(f"[bold]deployctl demo shadow[/]: embedded broker and Redis in {settings.home}")
    async with (
        Stack(settings, router_config=RouterConfig(request_timeout=2.0)) as stack,
        AsyncExitStack() as fleet,
    ):
        s = stack.settings
        assert stack.redis is not None
        keys = Keys(s.key_prefix)
        plans = PlanStore(redis=stack.redis, keys=keys)
        # Primary traffic pinned to 1.0 before 2.0 exists, so 2.0 never gets any of it.
        await plans.set(SERVICE, RoutePlan(pools=[Pool(version=STABLE, weight=PRIMARIES)]))
        for n in range(PRIMARIES):
            await fleet.enter_async_context(
                Client(
                    SERVICE,
                    STABLE,
                    settings=s,
                    server=f"web_{n}",
                    concurrency=16,
                    handlers={"ORDER": _primary},
                )
            )
        shadow = _ShadowService()
        shadow.client = await fleet.enter_async_context(
            Client(
                SERVICE,
                SHADOW,
                settings=s,
                server="shadow_1",
                concurrency=8,
                handlers={"ORDER": shadow.order},
            )
        )
        front = await fleet.enter_async_context(Client("front", "1.0", settings=s, server="edge"))
        mirror = Mirror(version=SHADOW, percent=100, max_inflight=MAX_INFLIGHT, compare=True)
        plan = await plans.get(SERVICE) or RoutePlan()
        # What ``deployctl shadow start shop --version 2.0 --max-inflight 4 --compare`` writes.
        reason = f"shadow {SHADOW} of {SERVICE}: 100% mirrored"
        await plans.set(SERVICE, with_mirror(plan, mirror, reason=reason))
        console.print(
            f"fleet: {PRIMARIES} x {SERVICE} {STABLE} serving a front end at {RATE:.0f} orders/s; "
            f"{SERVICE} {SHADOW} mirrored 100 % (at most {MAX_INFLIGHT} copies in flight, "
            f"compared): slow, and it discounts orders of {BULK}+ items"
        )
        stop = asyncio.Event()
        sent = [0]
        traffic = asyncio.create_task(_traffic(front, stop, sent), name="demo-shadow-traffic")
        started = time.monotonic()
        try:
            with Live(console=console, refresh_per_second=4) as live:
                while (elapsed := time.monotonic() - started) < SECONDS:
                    live.update(_view(await read_report(stack.redis, keys), elapsed, sent[0]))
                    await asyncio.sleep(0.25)
                stop.set()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await traffic
                await asyncio.sleep(0.5)  # the last copies' replies, and a flush
                report = await read_report(stack.redis, keys)
                live.update(_view(report, time.monotonic() - started, sent[0]))
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await traffic
        # What ``deployctl shadow stop shop`` writes.
        await plans.set(SERVICE, plan.model_copy(update={"revision": plan.revision + 2}))
    if report is None:
        console.print("[red]no shadow traffic recorded[/]")
        return {}
    _print_report(console, report)
    return {"service": SERVICE, "version": SHADOW, "mirror": mirror.model_dump(), **report}

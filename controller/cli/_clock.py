"""``deployctl clock check``: every server's clock against this machine's, as NTP measures it.

One instance per server answers CLOCK a few times; the round trip with the
smallest delay gives the offset, known within half that delay
(docs/operations.md, "Cluster time"). Exit 1 when a server is beyond the
threshold, 0 when every one is within it (or could not be judged: those rows
say why).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from communicator import ClientError, MessageError, parse_duration
from controller.cli._output import JSON_OPTION, Exit, console, emit, fail
from controller.cli._registry import RegistryAccess, with_registry
from controller.engine._clock import ServerClock, check_clocks, clock_client

clock_app = typer.Typer(help="Cluster time: how far each server's clock is off.")

_STYLE = {"ok": "green", "skewed": "bold red", "inconclusive": "yellow", "no answer": "red"}


def _milliseconds(seconds: float | None, *, signed: bool = False) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1e3:+.1f}" if signed else f"{seconds * 1e3:.1f}"


def _ntp(value: bool | None) -> str:
    return {True: "yes", False: "[red]no[/]", None: ""}[value]


@clock_app.command("check")
def check(
    threshold: Annotated[
        str, typer.Option(help="How far a clock may be off: 50ms, 0.2s, 1 (seconds).")
    ] = "50ms",
    samples: Annotated[
        int, typer.Option(min=1, max=100, help="CLOCK round trips per server; the fastest counts.")
    ] = 4,
    server: Annotated[
        list[str] | None, typer.Option("--server", help="Check only this server (repeatable).")
    ] = None,
    timeout: Annotated[str, typer.Option(help="How long to wait for each answer.")] = "2s",
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure the clock of every server with a registered instance; exit 1 if one is off."""
    try:
        limit, wait = parse_duration(threshold), parse_duration(timeout)
    except (MessageError, ValueError) as exc:
        fail(f"{exc}; write durations as 50ms, 0.5s or 2", as_json=as_json)
    if limit <= 0 or wait <= 0:
        fail("--threshold and --timeout must be more than zero", as_json=as_json)

    async def measure(access: RegistryAccess) -> list[ServerClock]:
        try:
            async with clock_client(access.settings) as client:
                return await check_clocks(
                    client, access.registry, samples=samples, servers=server, timeout=wait
                )
        except ClientError as exc:
            fail(
                f"cannot ask the clocks: {exc}; check that a communicator runs "
                "(`deployctl communicator run`) and that the broker answers",
                code=Exit.BACKEND,
                as_json=as_json,
            )

    rows = with_registry(measure, as_json=as_json)
    report: dict[str, Any] = {
        "threshold": limit,
        "servers": [row.to_json(limit) for row in rows],
    }
    skewed = [row.server for row in rows if row.status(limit) == "skewed"]
    report["skewed"] = skewed

    def render() -> None:
        if not rows:
            console.print("No server has a registered instance to ask.")
            return
        table = Table("server", "offset ms", "± ms", "delay ms", "ntp", "status", "via", box=None)
        for row in rows:
            status = row.status(limit)
            found = row.estimate
            table.add_row(
                row.server,
                _milliseconds(found.offset if found else None, signed=True),
                _milliseconds(found.error if found else None),
                _milliseconds(found.delay if found else None),
                _ntp(row.ntp_synchronized),
                f"[{_STYLE[status]}]{status}[/]" + (f" ({row.problem})" if row.problem else ""),
                row.service or "",
            )
        console.print(table)
        if skewed:
            console.print(
                f"[bold red]{len(skewed)} server(s) beyond {limit * 1e3:.0f} ms[/]: synchronise "
                "them with NTP (chrony or systemd-timesyncd; docs/operations.md#cluster-time)."
            )
        else:
            console.print(f"Every clock that answered is within {limit * 1e3:.0f} ms.")

    emit(report, as_json=as_json, render=render)
    if skewed:
        raise typer.Exit(int(Exit.NO))

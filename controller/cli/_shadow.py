"""``deployctl shadow``: mirror a share of a service's traffic to a shadow version, and compare.

``start`` writes a mirror into the service's route plan (the communicators
apply it within a pub/sub round trip); ``status`` and ``report`` read the
counts and comparisons every communicator writes to Redis; ``stop`` removes
the mirrors.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from communicator import Mirror, PlanStore, Pool, RoutePlan, with_mirror
from communicator.backends import text
from controller.cli._output import JSON_OPTION, Exit, console, emit, fail
from controller.cli._registry import RegistryAccess, with_registry
from strategies import shadow_report

shadow_app = typer.Typer(
    help="Shadow traffic: copies of live messages to a version that answers nobody.",
    no_args_is_help=True,
)


def _plans(access: RegistryAccess) -> PlanStore:
    return PlanStore(redis=access.redis, keys=access.keys)


async def _primary_pools(access: RegistryAccess, service: str, shadow: str) -> list[Pool]:
    """Pools pinning the primary traffic to the valid versions running now, but the shadow."""
    counts: dict[str, int] = defaultdict(int)
    for instance in await access.registry.instances(service):
        if instance.version != shadow and await access.registry.is_valid(service, instance.version):
            counts[instance.version] += 1
    return [Pool(version=v, weight=n) for v, n in sorted(counts.items())]


async def read_reports(access: RegistryAccess, service: str) -> dict[str, dict[str, Any]]:
    """Each shadow version's latest mirroring of ``service``, merged over the communicators."""
    raw = await access.redis.hgetall(access.keys.shadow_report(service))
    by_version: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for value in raw.values():
        data = json.loads(text(value))
        by_version[data["version"]].append(data)
    reports = {}
    for version, parts in sorted(by_version.items()):
        latest = max(part.get("session") or 0.0 for part in parts)
        current = [p for p in parts if (p.get("session") or 0.0) == latest]
        reports[version] = {**shadow_report(current), "since": latest or None}
    return reports


@shadow_app.command("start")
def start(
    service: Annotated[str, typer.Argument(help="The service whose traffic is mirrored.")],
    version: Annotated[str, typer.Option("--version", help="The shadow version.")],
    percent: Annotated[
        float, typer.Option(min=0, max=100, help="Share of the messages copied.")
    ] = 100.0,
    max_inflight: Annotated[
        int, typer.Option(min=1, help="Copies in flight beyond which copies are dropped.")
    ] = 100,
    compare: Annotated[
        bool, typer.Option("--compare", help="Compare shadow replies with the primary's.")
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Mirror PERCENT % of SERVICE's messages to VERSION (its replies reach nobody)."""

    async def action(access: RegistryAccess) -> RoutePlan:
        plan = await _plans(access).get(service) or RoutePlan()
        if any(p.version == version and p.weight > 0 for p in plan.effective_pools()):
            fail(
                f"{version} takes primary traffic of {service} in its route plan; a shadow "
                "version must not (end its canary or blue-green first)",
                code=Exit.NO,
                as_json=as_json,
            )
        # The router never sends primary traffic to a mirror's version, so the pools stay as
        # they are; but mirroring a service with nothing else running would mirror nothing.
        if not await _primary_pools(access, service, version):
            fail(
                f"{service} has no running version besides {version} to mirror; start its "
                "instances first",
                code=Exit.NO,
                as_json=as_json,
            )
        mirror = Mirror(
            version=version, percent=percent, max_inflight=max_inflight, compare=compare
        )
        reason = f"shadow {version} of {service}: {percent:g}% mirrored"
        new = with_mirror(plan, mirror, reason=reason)
        await _plans(access).set(service, new)
        return new

    plan = with_registry(action, as_json=as_json)
    emit(
        {"service": service, "plan": plan.model_dump(mode="json")},
        as_json=as_json,
        render=lambda: console.print(
            f"mirroring {percent:g}% of {escape(service)} to {escape(version)} "
            f"(at most {max_inflight} in flight{', compared' if compare else ''})"
        ),
    )


@shadow_app.command("stop")
def stop(
    service: Annotated[str, typer.Argument(help="The service.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Only this shadow version.")
    ] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Stop mirroring SERVICE's traffic (to every shadow version, or to VERSION)."""

    async def action(access: RegistryAccess) -> list[str]:
        plan = await _plans(access).get(service)
        if plan is None or not plan.mirrors:
            fail(f"{service} has no shadow running", code=Exit.NO, as_json=as_json)
        kept = [m for m in plan.mirrors if version is not None and m.version != version]
        removed = [m.version for m in plan.mirrors if m not in kept]
        if not removed:
            fail(f"{service} does not mirror to {version}", code=Exit.NO, as_json=as_json)
        await _plans(access).set(
            service,
            plan.model_copy(
                update={
                    "mirrors": kept,
                    "revision": plan.revision + 1,
                    "reason": f"shadow of {service} stopped",
                }
            ),
        )
        return removed

    removed = with_registry(action, as_json=as_json)
    emit(
        {"service": service, "stopped": removed},
        as_json=as_json,
        render=lambda: console.print(
            f"stopped mirroring {escape(service)} to {', '.join(removed)}"
        ),
    )


async def _status(access: RegistryAccess, service: str) -> dict[str, Any]:
    plan = await _plans(access).get(service)
    mirrors = plan.mirrors if plan else []
    reports = await read_reports(access, service)
    return {
        "service": service,
        "mirrors": [m.model_dump(mode="json") for m in mirrors],
        "reports": reports,
    }


@shadow_app.command("status")
def status(
    service: Annotated[str, typer.Argument(help="The service.")],
    as_json: bool = JSON_OPTION,
) -> None:
    """The mirrors of SERVICE, with their counts and drop rates."""
    data = with_registry(lambda access: _status(access, service), as_json=as_json)
    out = {
        "service": service,
        "mirrors": data["mirrors"],
        "counts": {
            v: {k: r[k] for k in ("counts", "drop_rates", "outcomes", "inflight")}
            for v, r in data["reports"].items()
        },
    }

    def render() -> None:
        if not data["mirrors"]:
            console.print(f"{escape(service)}: no shadow running")
        table = Table(
            "version",
            "%",
            "max in flight",
            "compare",
            "candidates",
            "sent",
            "busy",
            "bound",
            "failed",
            "in flight",
        )
        for m in data["mirrors"]:
            r = data["reports"].get(m["version"])
            c = r["counts"] if r else {}
            table.add_row(
                m["version"],
                f"{m['percent']:g}",
                str(m["max_inflight"]),
                str(m["compare"]),
                *(
                    str(c.get(k, 0))
                    for k in ("candidates", "sent", "dropped_busy", "dropped_bound", "failed")
                ),
                str(r["inflight"] if r else 0),
            )
        console.print(table)

    emit(out, as_json=as_json, render=render)


@shadow_app.command("report")
def report(
    service: Annotated[str, typer.Argument(help="The service.")],
    as_json: bool = JSON_OPTION,
) -> None:
    """Counts, drop rates, and the real differences (above the noise) with examples."""
    data = with_registry(lambda access: _status(access, service), as_json=as_json)
    if not data["reports"]:
        fail(f"no shadow traffic recorded for {service}", code=Exit.NO, as_json=as_json)

    def render() -> None:
        for version, r in data["reports"].items():
            c, rates = r["counts"], r["drop_rates"]
            since = (
                f" (mirrored since {datetime.fromtimestamp(r['since']):%Y-%m-%d %H:%M:%S})"
                if r["since"]
                else ""
            )
            console.print(
                f"[bold]{escape(service)} → shadow {escape(version)}[/]{since}: "
                f"{c['candidates']} candidates, {c['sent']} sent, "
                f"{c['dropped_busy']} dropped busy ({rates['dropped_busy']:.1%}), "
                f"{c['dropped_bound']} dropped at the bound ({rates['dropped_bound']:.1%}), "
                f"{c['failed']} failed; replies {r['outcomes']}"
            )
            console.print(f"compared {r['compared']} ({r['incomplete']} incomplete)")
            for name, d in r["differences"].items():
                console.print(
                    f"  [red]differs[/] {escape(name)}: shadow {d['shadow_rate']:.0%} vs noise "
                    f"{d['noise_rate']:.0%} over {d['compared']}"
                )
            for name, d in r["noise"].items():
                console.print(f"  noise {escape(name)}: {d['noise_rate']:.0%}")
            for example in r["examples"][:3]:
                console.print(f"  example: {escape(json.dumps(example))}")

    emit({"service": service, "reports": data["reports"]}, as_json=as_json, render=render)

"""Blue-green routing: the active color takes ordinary traffic, the preview only preview traffic.

The invariant ("traffic goes where the plan says") is tried on the router's
own directory with random fleets, plans and addressing (hypothesis), then
with the cases an operator meets: a down color, ``server:`` addressing, a
preview without instances.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from communicator import RoutePlan, routed_weights, traffic_shares
from communicator.router._directory import Directory, Instance, Verdict
from communicator.wire._message import Message
from communicator.wire._validators import global_parameter_problems

COLORS = {"blue": "1.0", "green": "1.1"}
PREVIEWING = RoutePlan(colors=COLORS, active_color="blue", preview_color="green")


def instance(client_id: str, version: str, server: str = "s1") -> Instance:
    return Instance("shop", client_id, server, "z1", version, client_id, frozenset({"ORDER"}))


def directory(*instances: Instance, plan: RoutePlan, invalid: tuple[str, ...] = ()) -> Directory:
    d = Directory()
    d.replace_service("shop", instances=instances, invalid_versions=invalid, plan=plan)
    return d


def versions_picked(d: Directory, n: int = 200, **kw: object) -> set[str]:
    picked = set()
    for _ in range(n):
        chosen = d.pick("shop", "ORDER", **kw)  # type: ignore[arg-type]
        picked.add(chosen.version if isinstance(chosen, Instance) else chosen.name)
    return picked


def test_ordinary_traffic_reaches_the_active_color_only() -> None:
    d = directory(instance("b1", "1.0"), instance("g1", "1.1"), plan=PREVIEWING)
    assert versions_picked(d) == {"1.0"}


def test_preview_traffic_reaches_the_preview_color_only() -> None:
    d = directory(instance("b1", "1.0"), instance("g1", "1.1"), plan=PREVIEWING)
    assert versions_picked(d, preview=True) == {"1.1"}


def test_server_addressing_does_not_reach_the_preview() -> None:
    """``s2:shop/ORDER`` where only the preview runs on s2: it waits, it does not leak."""
    d = directory(instance("b1", "1.0", "s1"), instance("g1", "1.1", "s2"), plan=PREVIEWING)
    assert versions_picked(d, server="s2") == {"UNAVAILABLE"}
    assert versions_picked(d, server="s2", preview=True) == {"1.1"}


def test_a_down_active_color_sends_traffic_nowhere_else() -> None:
    """No fallback to the preview, nor to an old color still registered: messages are cached."""
    plan = RoutePlan(colors={**COLORS, "red": "0.9"}, active_color="blue", preview_color="green")
    d = directory(instance("g1", "1.1"), instance("r1", "0.9"), plan=plan)
    assert versions_picked(d) == {"UNAVAILABLE"}
    d = directory(instance("b1", "1.0"), instance("g1", "1.1"), plan=plan, invalid=("1.0",))
    assert versions_picked(d) == {"UNAVAILABLE"}


def test_a_preview_without_instances_is_waited_for() -> None:
    d = directory(instance("b1", "1.0"), plan=PREVIEWING)
    assert versions_picked(d, preview=True) == {"UNAVAILABLE"}


def test_without_a_preview_color_preview_traffic_is_ordinary() -> None:
    plan = RoutePlan(colors=COLORS, active_color="green")
    d = directory(instance("b1", "1.0"), instance("g1", "1.1"), plan=plan)
    assert versions_picked(d, preview=True) == versions_picked(d) == {"1.1"}


def test_the_switch_is_one_plan_change() -> None:
    """Promote: the next pick after set_plan goes to the new color, none to the old."""
    d = directory(instance("b1", "1.0"), instance("g1", "1.1"), plan=PREVIEWING)
    assert versions_picked(d) == {"1.0"}
    d.set_plan("shop", RoutePlan(colors=COLORS, active_color="green"))
    assert versions_picked(d) == {"1.1"}
    d.set_plan("shop", RoutePlan(colors=COLORS, active_color="blue"))  # rollback
    assert versions_picked(d) == {"1.0"}


def test_the_cli_shows_the_shares_the_router_applies() -> None:
    live = {"1.0": 3, "1.1": 2}
    assert traffic_shares(PREVIEWING, live) == {"1.0": 1.0}
    assert traffic_shares(PREVIEWING, live, preview=True) == {"1.1": 1.0}


def test_a_plan_with_a_bad_preview_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs an active_color"):
        RoutePlan(colors=COLORS, preview_color="green")
    with pytest.raises(ValidationError, match="one of the colors"):
        RoutePlan(colors=COLORS, active_color="blue", preview_color="red")
    with pytest.raises(ValidationError, match="same version"):
        RoutePlan(colors={"blue": "1", "green": "1"}, active_color="blue", preview_color="green")


def test_preview_is_a_checked_global_parameter() -> None:
    bad = Message(command="ORDER", service="shop", parameters={"preview": "maybe"})
    (problem,) = global_parameter_problems(bad)
    assert problem.parameter == "preview"
    assert "preview=yes" in problem.reason
    good = Message(command="ORDER", service="shop", parameters={"preview": "yes"})
    assert global_parameter_problems(good) == []


versions = st.sampled_from(["0.9", "1.0", "1.1", "1.2"])
fleet = st.lists(st.tuples(versions, st.sampled_from(["s1", "s2", "s3"])), min_size=1, max_size=8)


@st.composite
def blue_green_plans(draw: st.DrawFn) -> RoutePlan:
    chosen = draw(st.lists(versions, min_size=2, max_size=3, unique=True))
    colors = dict(zip(["blue", "green", "red"], chosen, strict=False))
    active = draw(st.sampled_from(sorted(colors)))
    preview = draw(st.sampled_from([None, *sorted(set(colors) - {active})]))
    return RoutePlan(colors=colors, active_color=active, preview_color=preview)


@given(
    plan=blue_green_plans(),
    members=fleet,
    invalid=st.sets(versions, max_size=2),
    server=st.sampled_from(["", "s1", "s2", "s3"]),
    preview=st.booleans(),
)
def test_traffic_goes_where_the_plan_says(
    plan: RoutePlan,
    members: list[tuple[str, str]],
    invalid: set[str],
    server: str,
    preview: bool,
) -> None:
    """Whatever the fleet and addressing, a pick is the plan's color for that traffic, or none."""
    instances = [instance(f"c{n}", v, s) for n, (v, s) in enumerate(members)]
    d = directory(*instances, plan=plan, invalid=tuple(invalid))
    assert plan.active_color is not None
    target = plan.colors[plan.active_color]
    if preview and plan.preview_version is not None:
        target = plan.preview_version
    for _ in range(20):
        chosen = d.pick("shop", "ORDER", server=server, preview=preview)
        if isinstance(chosen, Verdict):
            reachable = [
                i for i in instances if i.version == target and i.version not in invalid
                and (not server or i.server == server)
            ]  # fmt: skip
            assert chosen is Verdict.UNAVAILABLE
            assert not reachable
        else:
            assert chosen.version == target
            assert chosen.version not in invalid
            assert not server or chosen.server == server
    live = {v: sum(1 for i in instances if i.version == v) for v in {i.version for i in instances}}
    shares = routed_weights(
        plan, {v: n for v, n in live.items() if v not in invalid}, preview=preview
    )
    assert {v for v, _ in shares} <= {target}

"""Routing decisions on the in-memory directory: plans, weights, stickiness, UNKNOWN."""

from __future__ import annotations

from collections import Counter

from communicator.registry._plans import Mirror, Pool, RoutePlan
from communicator.router._directory import Directory, Instance, Verdict


def instance(
    client_id: str,
    version: str,
    *,
    service: str = "orders",
    server: str = "s1",
    zone: str = "z1",
    commands: tuple[str, ...] = ("PLACE",),
) -> Instance:
    return Instance(service, client_id, server, zone, version, client_id, frozenset(commands))


def directory(
    *instances: Instance, plan: RoutePlan | None = None, invalid: tuple[str, ...] = ()
) -> Directory:
    d = Directory()
    d.replace_service("orders", instances=instances, invalid_versions=invalid, plan=plan)
    return d


def spread(d: Directory, n: int = 2000, **kw: str) -> Counter[str]:
    picks = Counter()
    for _ in range(n):
        chosen = d.pick("orders", "PLACE", **kw)
        assert isinstance(chosen, Instance)
        picks[chosen.version] += 1
    return picks


def test_default_plan_weights_versions_by_instances() -> None:
    """Without a plan, each valid version gets traffic in proportion to its instances."""
    d = directory(instance("a", "1"), instance("b", "1"), instance("c", "1"), instance("d", "2"))
    picks = spread(d, 4000)
    assert 0.70 < picks["1"] / 4000 < 0.80


def test_plan_weights_are_honoured() -> None:
    """A canary plan 90/10 sends about 10 % to the canary whatever the instance counts."""
    plan = RoutePlan(pools=[Pool(version="1", weight=90), Pool(version="2", weight=10)])
    d = directory(instance("a", "1"), instance("b", "2"), instance("c", "2"), plan=plan)
    picks = spread(d, 4000)
    assert 0.07 < picks["2"] / 4000 < 0.13


def test_invalid_version_never_gets_traffic() -> None:
    """An invalid version is skipped even when the plan gives it weight."""
    plan = RoutePlan(pools=[Pool(version="1", weight=50), Pool(version="2", weight=50)])
    d = directory(instance("a", "1"), instance("b", "2"), plan=plan, invalid=("2",))
    assert spread(d, 200) == Counter({"1": 200})


def test_invalidating_takes_effect_at_once() -> None:
    """Marking a version invalid changes the very next pick."""
    d = directory(instance("a", "1"), instance("b", "2"))
    d.set_invalid("orders", "1", True)
    assert spread(d, 100) == Counter({"2": 100})
    d.set_invalid("orders", "1", False)
    assert spread(d, 400)["1"] > 100


def test_blue_green_active_color() -> None:
    """With an active color, all traffic goes to that color's version."""
    plan = RoutePlan(colors={"blue": "1", "green": "2"}, active_color="green")
    d = directory(instance("a", "1"), instance("b", "2"), plan=plan)
    assert spread(d, 100) == Counter({"2": 100})


def test_sticky_parameter_keeps_a_user_on_one_instance() -> None:
    """The same sticky value always gets the same instance; different values spread."""
    plan = RoutePlan(
        pools=[Pool(version="1", weight=50), Pool(version="2", weight=50)], sticky="user"
    )
    d = directory(instance("a", "1"), instance("b", "2"), instance("c", "2"), plan=plan)
    for user in ("alice", "bob", "carol"):
        first = d.pick("orders", "PLACE", sticky=user)
        assert all(d.pick("orders", "PLACE", sticky=user) == first for _ in range(50))
    versions = Counter(d.pick("orders", "PLACE", sticky=f"u{i}").version for i in range(2000))  # type: ignore[union-attr]
    assert 0.4 < versions["1"] / 2000 < 0.6


def test_unknown_command_versus_unavailable() -> None:
    """A known service not accepting CMD gives UNKNOWN; no valid instance gives UNAVAILABLE."""
    d = directory(instance("a", "1"))
    assert d.pick("orders", "REFUND") is Verdict.UNKNOWN
    assert d.pick("payments", "PAY") is Verdict.UNAVAILABLE
    d.set_invalid("orders", "1", True)
    assert d.pick("orders", "PLACE") is Verdict.UNAVAILABLE


def test_defined_commands_answer_before_registration() -> None:
    """A service definition lets UNKNOWN be answered before any instance registers."""
    d = Directory()
    d.replace_service(
        "orders", instances=[], invalid_versions=[], plan=None, defined_commands=["PLACE"]
    )
    assert d.pick("orders", "REFUND") is Verdict.UNKNOWN
    assert d.pick("orders", "PLACE") is Verdict.UNAVAILABLE


def test_named_server() -> None:
    """server:service picks among that server's instances only."""
    d = directory(instance("a", "1", server="s1"), instance("b", "1", server="s2"))
    assert all(d.pick("orders", "PLACE", server="s2").server == "s2" for _ in range(20))  # type: ignore[union-attr]
    assert d.pick("orders", "PLACE", server="s3") is Verdict.UNAVAILABLE


def test_broadcast_filters() -> None:
    """Broadcasts reach accepting, valid instances, by zone or server, never the sender."""
    d = directory(
        instance("a", "1", server="s1", zone="z1", commands=("PLACE", "RELOAD")),
        instance("b", "1", server="s2", zone="z2", commands=("RELOAD",)),
        instance("c", "2", server="s1", zone="z2", commands=("RELOAD",)),
        instance("d", "1", server="s1", zone="z1", commands=("PLACE",)),
        invalid=("2",),
    )
    ids = lambda found: sorted(i.client_id for i in found)  # noqa: E731
    assert ids(d.every("RELOAD")) == ["a", "b"]
    assert ids(d.every("RELOAD", zone="z2")) == ["b"]
    assert ids(d.every("RELOAD", server="s1")) == ["a"]
    assert ids(d.every("PLACE", exclude="a")) == ["d"]


def test_a_shadow_version_never_gets_primary_traffic() -> None:
    """A version named as a mirror gets copies only: the default plan leaves it out."""
    plan = RoutePlan(mirrors=[Mirror(version="2")])
    d = directory(instance("a", "1"), instance("b", "2"), plan=plan)
    assert spread(d, 200) == Counter({"1": 200})


def test_a_slow_re_read_does_not_undo_newer_local_changes() -> None:
    """Changes made while a re-read was in flight survive the older read (the demo's race).

    A canary that registered while a plan change was being re-read used to
    vanish from the directory until the next change: no traffic at 20 %.
    """
    d = directory(instance("a1", "1.0"), instance("gone", "1.0"))
    since = d.mark()  # the re-read starts: it reads Redis as it was here
    d.add(instance("c1", "1.1"))  # ...meanwhile a canary registers
    d.remove("gone")  # ...an instance leaves
    d.remove("peer_1", service="orders")  # ...one we never had leaves (a peer's)
    d.set_invalid("orders", "0.9", True)  # ...and a version is cut off
    stale = [instance("a1", "1.0"), instance("gone", "1.0"), instance("peer_1", "1.0")]
    d.replace_service("orders", instances=stale, invalid_versions=[], plan=None, since=since)
    assert {i.client_id for i in d.instances("orders")} == {"a1", "c1"}
    assert d.sender("gone") is None
    assert d.sender("peer_1") is None
    assert d.sender("c1") is not None
    assert d.is_invalid("orders", "0.9")
    assert spread(d)["1.1"] > 0


def test_a_re_read_without_since_replaces_everything() -> None:
    """At start (and after missed announcements) the read is the whole truth."""
    d = directory(instance("a1", "1.0"))
    d.add(instance("c1", "1.1"))
    d.replace_service("orders", instances=[instance("a1", "1.0")], invalid_versions=[], plan=None)
    assert [i.client_id for i in d.instances("orders")] == ["a1"]


def test_changes_before_the_mark_and_to_other_services_are_not_replayed() -> None:
    """Only this service's changes after the mark are applied again."""
    d = directory(instance("a1", "1.0"))
    d.add(instance("old", "1.0"))
    since = d.mark()
    d.add(instance("x1", "1.0", service="billing"))
    d.replace_service(
        "orders", instances=[instance("a1", "1.0")], invalid_versions=[], plan=None, since=since
    )
    assert [i.client_id for i in d.instances("orders")] == ["a1"]
    assert [i.client_id for i in d.instances("billing")] == ["x1"]


def test_weights_are_exact_over_any_run() -> None:
    """Random order, exact shares: every prefix of the picks is within two of its share."""
    plan = RoutePlan(pools=[Pool(version="1", weight=83), Pool(version="2", weight=17)])
    d = directory(instance("a", "1"), instance("b", "2"), instance("c", "2"), plan=plan)
    canary = 0
    for n in range(1, 1001):
        chosen = d.pick("orders", "PLACE")
        assert isinstance(chosen, Instance)
        canary += chosen.version == "2"
        assert abs(canary - n * 0.17) <= 2, (n, canary)


def test_a_pool_with_no_live_instance_is_renormalised_as_routed_weights_says() -> None:
    """The router and `routed_weights` agree when the plan names a version with no instance."""
    from communicator.registry._plans import traffic_shares

    plan = RoutePlan(pools=[Pool(version="1.0", weight=90), Pool(version="1.4", weight=10)])
    d = directory(instance("a", "1.1"), instance("b", "1.4"), plan=plan)
    picks = spread(d, 1000)
    assert picks == Counter({"1.4": 1000})
    assert traffic_shares(plan, {"1.1": 1, "1.4": 1}) == {"1.4": 1.0}

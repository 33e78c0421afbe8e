"""Model-based test of the rollout invariants (docs/operations.md, "What deployctl promises").

Hypothesis drives starts, promotes, aborts, retries, canary failures, time and
instances coming and going against the real engine, strategy, registry Lua and
router directory (on fakeredis, which runs the same Lua), and after every step
checks:

(a) traffic goes where ``canary status`` says: the router's picks over 1,000
    messages match the effective weights within 2 points, and while the stable
    is live the canary gets exactly the weight the rollout shows;
(b) a rollback or abort never invalidates the version that served production,
    and never leaves the service without a valid version that has instances
    when it had one before;
(c) every operator request is answered: done, or refused with a reason,
    and a refused request changes nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from communicator import InstanceInfo, Keys, Measurements, PlanStore, Registry
from communicator.router._directory import Directory, Instance
from controller.engine._admission import choose_stable
from controller.engine._engine import RolloutEngine
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase, Rollout, RolloutError, RolloutStore, start_rollout
from controller.playbook._playbook import parse_playbook
from strategies import CanaryStrategy, Fleet

pytest.importorskip("lupa", reason="fakeredis needs its lua extra for EVALSHA")
# 500 examples take about 30 s alone and over 60 s beside the rest of the suite on 2 cores.
pytestmark = pytest.mark.timeout(300)

SERVICE = "shop"
VERSIONS = ("1.0", "1.1", "1.2")
PLAYBOOK = parse_playbook(
    """name: model
description: Every kind of step an operator may promote past.
strategy: canary
steps:
  - mirror: {percent: 50, duration: 20s}
  - set_weight: 20
  - pause: {duration: 30s}
  - analysis: {window: 20s, min_sample: 10}
  - set_weight: 50
  - pause: {}
  - set_weight: 100
rollback: {progress_deadline: 5m, on_inconclusive: pause, invalidate_version: true}
""",
    "model.yaml",
).model_dump(mode="json")
MESSAGES = 1000


class RolloutModel(RuleBasedStateMachine):
    """One service, its instances, and at most one rollout at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = time.time()
        self.serial = itertools.count()
        self.instances: dict[str, str] = {}  # instance name -> version
        self.run(self._setup())

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def _setup(self) -> None:
        self.redis = FakeAsyncRedis(protocol=2)
        keys = Keys(prefix="model:")
        self.registry = Registry(redis=self.redis, keys=keys)
        self.plans = PlanStore(redis=self.redis, keys=keys)
        self.measurements = Measurements(redis=self.redis, keys=keys)
        self.strategy = CanaryStrategy(plans=self.plans, registry=self.registry)
        self.store = RolloutStore(redis=self.redis, keys=ControllerKeys("model:"))
        self.engine = RolloutEngine(
            store=self.store,
            strategy=self.strategy,
            measurements=self.measurements,
            clock=lambda: self.now,
        )

    def teardown(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()

    # -- helpers ------------------------------------------------------------------------------

    def fleet(self) -> Fleet:
        return self.run(self.strategy.fleet(SERVICE))

    def rollout(self) -> Rollout | None:
        return self.run(self.store.get(SERVICE))

    def active(self) -> bool:
        rollout = self.rollout()
        return rollout is not None and rollout.phase.active

    def advance(self, requests: list[str] = ()) -> list[tuple[str, str]]:  # type: ignore[assignment]
        """Queue ``requests``, let the leader advance, check (b) and (c); return (action, id)."""
        before = self.fleet()
        rollout_before = self.rollout()
        queued = [(action, self.run(self.store.request(SERVICE, action)).id) for action in requests]
        rollout = self.rollout()
        if rollout is None:
            return queued
        taken = self.run(self.store.take_requests(SERVICE))
        self.run(self.engine.advance(rollout, taken))
        after = self.rollout()
        assert after is not None
        for action, request_id in queued:
            answer = self.run(self.store.answer(SERVICE, request_id))
            assert answer is not None, f"{action} was never answered"
        was_active = rollout_before is not None and rollout_before.phase.active
        if was_active and after.phase is Phase.ABORTED:
            self.check_rollback(before, after)
        return queued

    def check_rollback(self, before: Fleet, rollout: Rollout) -> None:
        fleet = self.fleet()
        production = rollout.origin_production
        if production is not None and production in before.live:
            assert production in fleet.live, f"the rollback invalidated production {production}"
        if before.live:
            assert fleet.live, "the rollback left no valid version with a live instance"

    # -- rules --------------------------------------------------------------------------------

    @initialize(stable=st.integers(1, 3), canary=st.integers(0, 2))
    def fleet_of_two_versions(self, stable: int, canary: int) -> None:
        for version, count in (("1.0", stable), ("1.1", canary)):
            for _ in range(count):
                self.add_instance_of(version)

    def add_instance_of(self, version: str) -> None:
        name = f"i{next(self.serial)}"
        info = InstanceInfo(
            service=SERVICE,
            instance=name,
            server="s1",
            version=version,
            client_id=name,
            commands=["ORDER"],
        )
        state = self.run(self.registry.register_instance(info))
        if state.valid:
            self.instances[name] = version

    @rule(version=st.sampled_from(VERSIONS))
    def instance_starts(self, version: str) -> None:
        self.add_instance_of(version)

    @precondition(lambda self: self.instances)
    @rule(data=st.data())
    def instance_stops(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.instances)))
        self.run(self.registry.unregister_instance(SERVICE, name))
        del self.instances[name]

    @rule(version=st.sampled_from(VERSIONS))
    def every_instance_of_a_version_stops(self, version: str) -> None:
        for name, running in sorted(self.instances.items()):
            if running == version:
                self.run(self.registry.unregister_instance(SERVICE, name))
                del self.instances[name]

    @rule(canary=st.sampled_from(VERSIONS[1:]))
    def deploy_then_canary_start(self, canary: str) -> None:
        """What a site does most: start an instance of the new version, then its rollout."""
        self.add_instance_of(canary)
        self.canary_start(canary, None)

    @rule(canary=st.sampled_from(VERSIONS), stable=st.sampled_from((None, *VERSIONS)))
    def canary_start(self, canary: str, stable: str | None) -> None:
        fleet = self.fleet()
        before = self.rollout()
        try:
            chosen = choose_stable(fleet, canary=canary, stable=stable)
            self.run(
                start_rollout(
                    self.store,
                    self.measurements,
                    service=SERVICE,
                    stable=chosen,
                    canary=canary,
                    playbook=PLAYBOOK,
                    reason="model",
                    production=fleet.production,
                )
            )
        except RolloutError:
            after = self.rollout()
            assert (after is None) == (before is None)
            if before is not None and after is not None:
                assert after.id == before.id, "a refused start replaced the rollout"
            return
        # Admitted: the canary runs, and it is not what serves production.
        assert canary in fleet.live
        assert fleet.shares.get(canary, 0) <= max(
            (fleet.shares.get(v, 0) for v in fleet.live if v != canary), default=0
        )
        self.advance()

    @rule(action=st.sampled_from(("promote", "promote_full", "abort", "retry", "bogus")))
    def operator(self, action: str) -> None:
        before = self.rollout()
        if before is None:
            return
        [(_, request_id)] = self.advance([action])
        answer = self.run(self.store.answer(SERVICE, request_id))
        assert answer is not None
        after = self.rollout()
        assert after is not None
        if answer.evidence.get("refused"):
            unchanged = (after.phase, after.step) == (before.phase, before.step)
            # The leader's tick that refuses it may end an analysis step as inconclusive
            # (on_inconclusive: pause) all by itself: the request did not move anything.
            judged = (
                after.step == before.step
                and after.phase is Phase.PAUSED
                and "analysis" in PLAYBOOK["steps"][before.step]
            )
            assert unchanged or judged or before.phase is Phase.PENDING, (
                "a refused request changed the rollout"
            )
        elif action == "promote" and before.phase.active and before.phase is not Phase.PENDING:
            assert after.step > before.step or not after.phase.active

    @precondition(lambda self: self.active())
    @rule()
    def communicator_cuts_the_canary_off(self) -> None:
        rollout = self.rollout()
        assert rollout is not None
        self.run(self.registry.invalidate(SERVICE, rollout.canary, "model: failures"))
        self.advance()

    @rule(seconds=st.sampled_from((1.0, 15.0, 40.0, 400.0)))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.advance()

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def traffic_goes_where_status_says(self) -> None:
        fleet = self.fleet()
        shares = fleet.shares
        picks = Counter(self.route(MESSAGES))
        if not shares:
            assert not picks
            return
        for version in set(shares) | set(picks):
            assert abs(picks[version] / MESSAGES - shares.get(version, 0)) <= 0.02, (
                version,
                picks,
                shares,
            )
        rollout = self.rollout()
        if (
            rollout is not None
            and rollout.phase in (Phase.PROGRESSING, Phase.PAUSED)
            and rollout.stable in shares
            and rollout.canary in fleet.live
            and rollout.weight > 0
        ):
            assert shares.get(rollout.canary, 0) == pytest.approx(rollout.weight / 100), (
                "the canary gets another share than the rollout shows"
            )

    def route(self, count: int) -> list[str]:
        """Where the router sends ``count`` messages, from what is in Redis now."""
        directory = Directory()
        infos = self.run(self.registry.instances(SERVICE))
        invalid = [
            v
            for v in {i.version for i in infos}
            if not self.run(self.registry.is_valid(SERVICE, v))
        ]
        directory.replace_service(
            SERVICE,
            instances=[
                Instance(
                    SERVICE,
                    i.instance,
                    i.server,
                    i.zone,
                    i.version,
                    i.client_id,
                    frozenset(i.commands),
                )
                for i in infos
            ],
            invalid_versions=invalid,
            plan=self.run(self.plans.get(SERVICE)),
        )
        picked = []
        for _ in range(count):
            chosen = directory.pick(SERVICE, "ORDER")
            if not isinstance(chosen, Instance):
                return []
            picked.append(chosen.version)
        return picked


RolloutModel.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_rollout_invariants = RolloutModel.TestCase


def test_an_abort_after_the_stable_vanished_keeps_the_canary_serving() -> None:
    """The scenario the search must not miss: stable gone, abort, canary left valid and live."""
    model = RolloutModel()
    try:
        model.fleet_of_two_versions(stable=2, canary=1)
        model.canary_start("1.1", None)
        model.time_passes(1.0)
        model.every_instance_of_a_version_stops("1.0")
        model.operator("abort")  # check_rollback asserts the invariants
        rollout = model.rollout()
        assert rollout is not None
        assert rollout.phase is Phase.ABORTED
        assert "left valid" in rollout.reason
        assert "1.1" in model.fleet().live
    finally:
        model.teardown()


def test_a_canary_of_the_version_serving_everything_is_refused() -> None:
    """After a promotion, a 'canary' of the production version is refused; nothing changes."""
    model = RolloutModel()
    try:
        model.fleet_of_two_versions(stable=2, canary=1)
        model.canary_start("1.1", None)
        model.operator("promote_full")
        assert model.rollout().phase is Phase.SUCCEEDED  # type: ignore[union-attr]
        fleet = model.fleet()
        with pytest.raises(RolloutError, match="already serves 100%"):
            choose_stable(fleet, canary="1.1")
    finally:
        model.teardown()

"""The rollout engine: advance one rollout through its playbook's steps, or roll it back.

Each call to :meth:`RolloutEngine.advance` looks at one rollout and does what
is due now: operator requests, automatic rollback triggers (the communicator
cut the canary off, an analysis failed, the progress deadline passed), then as
many steps as can be done without waiting. Every change is recorded with its
reason and evidence, so ``deployctl rollout history`` can say why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from controller.engine._guards import LatencyGuard, why_keep_valid
from controller.engine._rollout import Phase, Request, Rollout, RolloutStore
from controller.engine._steps import StepRunner
from controller.playbook._playbook import Playbook
from controller.playbook._steps import Step, SwitchStep
from strategies import MetricSource, Strategy

logger = logging.getLogger(__name__)


class RolloutEngine:
    """Advances rollouts; owned by the leading controller.

    Args:
        store: Where rollouts and their history live.
        strategy: Turns steps into route plans and policies (the canary strategy).
        strategies: The others, by the ``strategy`` their playbooks name (``bluegreen``).
        measurements: Outcome totals and reply times, for analysis and latency limits.
        clock: The time, in epoch seconds (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        store: RolloutStore,
        strategy: Strategy,
        strategies: Sequence[Strategy] = (),
        measurements: MetricSource,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._strategies = {s.kind: s for s in (strategy, *strategies)}
        self._measurements = measurements
        self._clock = clock
        self._steps = StepRunner(
            strategy_for=self._strategy_for,
            measurements=measurements,
            transition=self._transition,
            abort=self._abort,
        )
        self._latency = LatencyGuard(measurements)
        self._stable_missing: dict[str, bool] = {}  # rollout id -> last announced

    def _strategy_for(self, rollout: Rollout) -> Strategy:
        """The strategy the rollout's playbook names."""
        kind = rollout.strategy
        try:
            return self._strategies[kind]
        except KeyError:
            known = ", ".join(sorted(self._strategies))
            raise ValueError(f"no {kind} strategy in this controller (it has {known})") from None

    async def advance(self, rollout: Rollout, requests: Sequence[Request] = ()) -> None:
        """Do what is due for ``rollout`` now (answering every request), and save it."""
        playbook = Playbook.model_validate(rollout.playbook)
        now = self._clock()
        later: list[Request] = []
        for request in requests:
            if request.action == "abort":
                await self._on_abort(rollout, playbook, request)
            elif request.action == "retry":
                await self._on_retry(rollout, request)
            elif request.action in ("promote", "promote_full"):
                later.append(request)
            else:
                await self._refuse(rollout, request, f"unknown request {request.action!r}")
        if rollout.phase is Phase.PENDING:
            await self._start(rollout, playbook, now)
        if rollout.phase.active and not await self._rolled_back(rollout, playbook, now):
            for request in later:
                await self._on_promote(rollout, playbook, request, now)
            if rollout.phase.active and rollout.phase is not Phase.PAUSED:
                await self._run_steps(rollout, playbook, now)
            if rollout.phase.active:
                await self._watch_stable(rollout)
        else:
            for request in later:
                await self._refuse(rollout, request, f"the rollout has ended ({rollout.phase})")
        await self._store.save(rollout)

    # -- operator requests --------------------------------------------------------------------

    async def _refuse(self, rollout: Rollout, request: Request, why: str) -> None:
        await self._transition(
            rollout,
            rollout.phase,
            f"{request.action} not done: {why}",
            {"request": request.id, "refused": True},
        )

    async def _on_abort(self, rollout: Rollout, playbook: Playbook, request: Request) -> None:
        if not rollout.phase.active:
            await self._refuse(rollout, request, f"the rollout already ended ({rollout.phase})")
            return
        await self._abort(rollout, playbook, "aborted by an operator", {"request": request.id})

    async def _on_retry(self, rollout: Rollout, request: Request) -> None:
        if rollout.phase.active:
            await self._refuse(rollout, request, f"the rollout is still {rollout.phase}")
            return
        await self._retry(rollout, request)

    async def _on_promote(
        self, rollout: Rollout, playbook: Playbook, request: Request, now: float
    ) -> None:
        """Skip the current step, whatever it is (as Argo's promote), or every step (--full)."""
        total = len(playbook.steps)
        evidence = {"request": request.id}
        if rollout.step >= total:
            await self._refuse(rollout, request, "every step is done; it is being promoted")
            return
        step = playbook.steps[rollout.step]
        await self._end_step(rollout, step)
        if request.action == "promote_full":
            first = rollout.step + 1
            rollout.step = total
            rollout.step_started_at = rollout.progressed_at = now
            rollout.step_data = _scratch(rollout)
            await self._transition(
                rollout,
                Phase.PROGRESSING,
                f"fully promoted by an operator: steps {first}-{total} skipped",
                evidence,
            )
            return
        skipped = rollout.step + 1
        await self._next_step(rollout, now)
        await self._transition(
            rollout,
            Phase.PROGRESSING,
            f"promoted by an operator: step {skipped}/{total} ({step.kind}) skipped",
            evidence,
        )

    async def _end_step(self, rollout: Rollout, step: Step | None) -> None:
        """Undo what a step left running (an exec, a mirror) before leaving it early."""
        await self._steps.leave(rollout, step)

    async def _watch_stable(self, rollout: Rollout) -> None:
        """Say so in history when the stable has no live instance (the canary takes its share)."""
        if rollout.weight >= 100:
            return
        fleet = await self._strategy_for(rollout).fleet(rollout.service)
        missing = rollout.stable not in fleet.live
        if missing == self._stable_missing.get(rollout.id, False):
            return
        self._stable_missing[rollout.id] = missing
        shares = {v: round(share * 100, 1) for v, share in fleet.shares.items()}
        if missing and fleet.plan.active_color is not None:  # blue-green: no fallback
            await self._transition(
                rollout,
                rollout.phase,
                f"the active {rollout.stable} has no live instance: its messages wait (cached) "
                f"for it, none go to {rollout.canary}; start instances of {rollout.stable}",
                {"effective_weights": shares},
            )
        elif missing:
            await self._transition(
                rollout,
                rollout.phase,
                f"the stable {rollout.stable} has no live instance: {rollout.canary} takes "
                f"{shares.get(rollout.canary, 0):g}% of the traffic, not {rollout.weight}%; "
                f"start instances of {rollout.stable}, or abort",
                {"effective_weights": shares},
            )
        else:
            await self._transition(
                rollout,
                rollout.phase,
                f"the stable {rollout.stable} is live again: traffic follows the plan",
                {"effective_weights": shares},
            )

    # -- phases -------------------------------------------------------------------------------

    async def _start(self, rollout: Rollout, playbook: Playbook, now: float) -> None:
        policy = playbook.rollback.to_invalidation_policy()
        await self._strategy_for(rollout).protect(rollout.service, rollout.canary, policy)
        # Until the first step says otherwise, the canary gets nothing, even if it is up already.
        await self._strategy_for(rollout).set_weight(
            rollout.service,
            stable=rollout.stable,
            canary=rollout.canary,
            weight=0,
            sticky=playbook.sticky,
            reason=f"rollout {rollout.id} starting",
        )
        rollout.started_at = rollout.step_started_at = rollout.progressed_at = now
        self._stable_missing.pop(rollout.id, None)
        await self._transition(
            rollout,
            Phase.PROGRESSING,
            f"rollout of {rollout.canary} started (stable {rollout.stable}, playbook "
            f"{playbook.name}); the communicator cuts the canary off at "
            f"{policy.max_failure_rate:.0%} failures",
            {"policy": policy.model_dump(mode="json")},
        )

    async def _rolled_back(self, rollout: Rollout, playbook: Playbook, now: float) -> bool:
        """Check the automatic rollback triggers; roll back and say True if one fired."""
        invalid, reason, evidence = await self._strategy_for(rollout).canary_invalid(
            rollout.service, rollout.canary
        )
        if invalid:
            await self._abort(
                rollout,
                playbook,
                f"the communicator invalidated {rollout.canary}: {reason}",
                {"invalidation": evidence},
            )
            return True
        slow = await self._latency.too_slow(rollout, playbook, now)
        if slow is not None:
            await self._abort(rollout, playbook, *slow)
            return True
        deadline = playbook.rollback.progress_deadline
        waiting = rollout.phase in (Phase.PAUSED, Phase.PROMOTING)  # for a person, or a delay
        if not waiting and now - rollout.progressed_at > deadline:
            await self._abort(
                rollout,
                playbook,
                f"no progress for {now - rollout.progressed_at:.0f}s "
                f"(progress deadline {deadline:g}s)",
            )
            return True
        return False

    async def _abort(
        self,
        rollout: Rollout,
        playbook: Playbook,
        reason: str,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Roll back: the canary's weight to 0, and invalidate it, unless production needs it.

        A rollback never invalidates the version that served production when
        the rollout started, nor one without which no valid version of the
        service would have a live instance; it says so in the history instead.
        """
        await self._end_step(rollout, None)
        self._latency.forget(rollout.id)
        self._stable_missing.pop(rollout.id, None)
        strategy = self._strategy_for(rollout)
        await strategy.clear_mirror(rollout.service, canary=rollout.canary)
        fleet = await strategy.fleet(rollout.service)
        keep = why_keep_valid(rollout, fleet)
        invalidate = playbook.rollback.invalidate_version and keep is None
        await strategy.rollback(
            rollout.service,
            stable=rollout.stable,
            canary=rollout.canary,
            reason=reason,
            invalidate=invalidate,
            evidence=evidence,
        )
        if keep is not None and rollout.canary in fleet.barred:
            # Cut off by the communicator, but nothing else can serve: serve on with it.
            await strategy.reinstate(rollout.service, rollout.canary, keep)
            reason = f"{reason}; {rollout.canary} reinstated: {keep}"
        elif keep is not None and playbook.rollback.invalidate_version:
            reason = f"{reason}; {rollout.canary} left valid: {keep}"
        if (await strategy.fleet(rollout.service)).production == rollout.canary:
            reason = f"{reason}; every message still goes to {rollout.canary}"
        rollout.weight = 0
        await self._transition(rollout, Phase.ABORTED, f"rolled back: {reason}", evidence)

    async def _retry(self, rollout: Rollout, request: Request | None = None) -> None:
        invalid, _, _ = await self._strategy_for(rollout).canary_invalid(
            rollout.service, rollout.canary
        )
        if invalid:
            await self._strategy_for(rollout).reinstate(
                rollout.service, rollout.canary, "rollout retried"
            )
        rollout.step, rollout.weight = 0, 0
        rollout.step_data = _scratch(rollout, keep=("origin",))
        rollout.retries += 1
        await self._transition(
            rollout,
            Phase.PENDING,
            f"retry #{rollout.retries} requested",
            {"request": request.id} if request else None,
        )

    async def _promote(self, rollout: Rollout, playbook: Playbook, now: float) -> None:
        if playbook.strategy == "bluegreen" and not await self._scaled_down(rollout, playbook, now):
            return
        if rollout.phase is not Phase.PROMOTING:
            await self._transition(rollout, Phase.PROMOTING, "every step passed; promoting")
        await self._strategy_for(rollout).promote(rollout.service, canary=rollout.canary)
        rollout.weight = 100
        await self._transition(
            rollout, Phase.SUCCEEDED, f"{rollout.canary} promoted: it gets all traffic now"
        )

    async def _scaled_down(self, rollout: Rollout, playbook: Playbook, now: float) -> bool:
        """Blue-green: keep the old color registered ``scale_down_delay``, then retire it.

        The failure rules still apply meanwhile (a rollback switches back at
        once). The ``scale_down`` hook runs at the end; its failure is recorded
        and retires nothing by itself, but never rolls production back.
        """
        data = rollout.step_data
        if "switched" not in data:  # promoted past the switch: it is never skipped
            await self._steps.run(rollout, playbook, SwitchStep(), now)
        if "hold_from" not in data:
            data["hold_from"] = now
            await self._transition(
                rollout,
                Phase.PROMOTING,
                f"every step passed; {rollout.stable} stays registered "
                f"{playbook.scale_down_delay:g}s for an instant rollback, then retires",
            )
        if now - data["hold_from"] < playbook.scale_down_delay:
            return False
        if playbook.scale_down is None or data.get("scaled_down"):
            return True
        result = await self._steps.hook(rollout, playbook, playbook.scale_down)
        if result is None:
            return False
        data["scaled_down"] = True
        ok = result["returncode"] == 0
        reason = "scale-down hook succeeded" if ok else f"scale-down hook failed: {result['error']}"
        await self._transition(rollout, rollout.phase, reason, result)
        return True

    # -- steps --------------------------------------------------------------------------------

    async def _run_steps(self, rollout: Rollout, playbook: Playbook, now: float) -> None:
        while rollout.phase.active and rollout.phase is not Phase.PAUSED:
            if rollout.step >= len(playbook.steps):
                await self._promote(rollout, playbook, now)
                return
            step = playbook.steps[rollout.step]
            if not await self._steps.run(rollout, playbook, step, now):
                return
            await self._next_step(rollout, now)

    async def _next_step(self, rollout: Rollout, now: float) -> None:
        rollout.step += 1
        rollout.step_started_at = rollout.progressed_at = now
        rollout.step_data = _scratch(rollout)

    async def _transition(
        self, rollout: Rollout, phase: Phase, reason: str, evidence: dict[str, Any] | None = None
    ) -> None:
        rollout.phase = phase
        rollout.reason = reason
        await self._store.record(rollout, reason, evidence)
        logger.info("%s %s: %s: %s", rollout.service, rollout.canary, phase, reason)


def _scratch(rollout: Rollout, keep: tuple[str, ...] = ("origin", "switched")) -> dict[str, Any]:
    """A fresh step scratch pad, keeping what the whole rollout needs (origin, switch)."""
    return {k: v for k, v in rollout.step_data.items() if k in keep}

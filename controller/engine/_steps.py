"""The steps of a playbook, done: each typed step is matched to what it means now.

:class:`StepRunner` runs the current step of a rollout once per tick and says
whether it is done (the engine then moves to the next). A step that waits
(a pause, an analysis window, an exec, a mirror) keeps what it needs in the
rollout's ``step_data``, so a standby controller that takes over goes on
where the last leader stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, assert_never

from communicator import OutcomeKind
from controller.analysis._analysis import VersionSample, judge
from controller.engine._exec import run_command
from controller.engine._rollout import Phase, Rollout
from controller.playbook._playbook import Playbook
from controller.playbook._steps import (
    AnalysisStep,
    ExecStep,
    MirrorStep,
    PauseStep,
    SetWeightStep,
    Step,
    SwitchStep,
)
from strategies import MetricSource, Strategy

_FAILURES = [kind.value for kind in OutcomeKind if kind is not OutcomeKind.SUCCESS]


class Transition(Protocol):
    """Records a change of a rollout (its phase, and why) in its history."""

    def __call__(
        self, rollout: Rollout, phase: Phase, reason: str, evidence: dict[str, Any] | None = None
    ) -> Awaitable[None]:
        """Set the phase and reason, and append them (with evidence) to the history."""
        ...


class Abort(Protocol):
    """Rolls a rollout back, for a reason shown in its history."""

    def __call__(
        self,
        rollout: Rollout,
        playbook: Playbook,
        reason: str,
        evidence: dict[str, Any] | None = None,
    ) -> Awaitable[None]:
        """Roll back (see ``RolloutEngine``'s rules about what stays valid)."""
        ...


class StepRunner:
    """Does the current step of a rollout; one per engine.

    Args:
        strategy_for: What a step means for the traffic: the strategy of a rollout.
        measurements: The numbers analyses judge by.
        transition: Records history.
        abort: Rolls back (an analysis that fails, an exec that fails).
    """

    def __init__(
        self,
        *,
        strategy_for: Callable[[Rollout], Strategy],
        measurements: MetricSource,
        transition: Transition,
        abort: Abort,
    ) -> None:
        self._strategy_for = strategy_for
        self._measurements = measurements
        self._transition = transition
        self._abort = abort
        self._execs: dict[str, asyncio.Task[dict[str, Any]]] = {}

    async def run(self, rollout: Rollout, playbook: Playbook, step: Step, now: float) -> bool:
        """Do what ``step`` needs now; whether it is done (the rollout may then go on)."""
        match step:
            case SetWeightStep():
                return await self._set_weight(rollout, playbook, step)
            case PauseStep():
                return await self._pause(rollout, step, now)
            case AnalysisStep():
                return await self._analysis(rollout, playbook, step, now)
            case ExecStep():
                return await self._exec(rollout, playbook, step)
            case MirrorStep():
                return await self._mirror(rollout, step, now)
            case SwitchStep():
                return await self._switch(rollout, playbook)
            case _:
                assert_never(step)

    async def leave(self, rollout: Rollout, step: Step | None) -> None:
        """Undo what a step left running (an exec, a mirror) before leaving it early."""
        task = self._execs.pop(rollout.id, None)
        if task is not None:
            task.cancel()
        if isinstance(step, MirrorStep) and rollout.step_data.get("mirroring"):
            await self._strategy_for(rollout).clear_mirror(rollout.service, canary=rollout.canary)

    async def _set_weight(self, rollout: Rollout, playbook: Playbook, step: SetWeightStep) -> bool:
        await self._strategy_for(rollout).set_weight(
            rollout.service,
            stable=rollout.stable,
            canary=rollout.canary,
            weight=step.weight,
            sticky=playbook.sticky,
            reason=f"rollout {rollout.id} step {rollout.step + 1}",
        )
        rollout.weight = step.weight
        await self._transition(rollout, rollout.phase, f"weight set to {step.weight}%")
        return True

    async def _switch(self, rollout: Rollout, playbook: Playbook) -> bool:
        """Blue-green: every message to the new version; the old stays registered for rollback.

        What the old version did until now is kept (``switched``): analyses after
        the switch judge the new version against it, since it gets no traffic.
        """
        before = await self._measurements.totals(rollout.service, rollout.stable)
        rollout.step_data["switched"] = {"at": before.at, "stable": dict(before.counts)}
        await self._strategy_for(rollout).set_weight(
            rollout.service,
            stable=rollout.stable,
            canary=rollout.canary,
            weight=100,
            reason=f"rollout {rollout.id} step {rollout.step + 1}: switch",
        )
        rollout.weight = 100
        await self._transition(
            rollout,
            rollout.phase,
            f"switched: every message goes to {rollout.canary}; {rollout.stable} stays "
            f"registered for an instant rollback until the rollout ends",
        )
        return True

    async def _pause(self, rollout: Rollout, step: PauseStep, now: float) -> bool:
        if step.duration is None:
            await self._transition(
                rollout,
                Phase.PAUSED,
                f"paused until promoted: run "
                f"`deployctl {rollout.command_group} promote {rollout.service}`",
            )
            return False
        if not rollout.step_data.get("announced"):
            rollout.step_data["announced"] = True
            await self._transition(rollout, rollout.phase, f"pausing {step.duration:g}s")
        return bool(now - rollout.step_started_at >= step.duration)

    async def _analysis(
        self, rollout: Rollout, playbook: Playbook, step: AnalysisStep, now: float
    ) -> bool:
        data = rollout.step_data
        if "since" not in data:
            before_stable = await self._measurements.totals(rollout.service, rollout.stable)
            before_canary = await self._measurements.totals(rollout.service, rollout.canary)
            data.update(
                since=before_canary.at,
                stable=dict(before_stable.counts),
                canary=dict(before_canary.counts),
            )
            await self._transition(
                rollout, rollout.phase, f"analysis started: judging the next {step.window:g}s"
            )
            return False
        if now - data["since"] < step.window:
            return False
        canary = await self._sample(rollout, rollout.canary, data["canary"], data["since"])
        if "switched" in data:  # blue-green, after the switch: the old version's last days
            baseline = await self._before_switch(rollout, data)
        else:
            baseline = await self._sample(rollout, rollout.stable, data["stable"], data["since"])
        verdict = judge(canary, baseline, step.criteria)
        record = {
            "step": rollout.step,
            "outcome": verdict.outcome,
            "reasons": verdict.reasons,
            "evidence": verdict.evidence,
        }
        rollout.verdicts.append(record)
        summary = "; ".join(verdict.reasons)
        if verdict.outcome == "pass":
            await self._transition(rollout, rollout.phase, f"analysis passed: {summary}", record)
            return True
        if verdict.outcome == "fail":
            await self._abort(rollout, playbook, f"analysis failed: {summary}", record)
            return False
        return await self._inconclusive(rollout, playbook, summary, record)

    async def _inconclusive(
        self, rollout: Rollout, playbook: Playbook, summary: str, record: dict[str, Any]
    ) -> bool:
        """What the playbook's ``on_inconclusive`` says: abort, pause, or go on."""
        action = playbook.rollback.on_inconclusive
        if action == "abort":
            await self._abort(rollout, playbook, f"analysis inconclusive: {summary}", record)
            return False
        if action == "pause":
            await self._transition(
                rollout,
                Phase.PAUSED,
                f"analysis inconclusive: {summary}; promote to go on, or abort",
                record,
            )
            return False
        await self._transition(
            rollout, rollout.phase, f"analysis inconclusive, going on: {summary}", record
        )
        return True

    async def _before_switch(self, rollout: Rollout, data: dict[str, Any]) -> VersionSample:
        """What the old version did from the rollout's start to the switch, as a baseline."""
        switched = data["switched"]
        origin = data.get("origin", {}).get(rollout.stable, {})
        counts = switched["stable"]
        delta = {kind: n - origin.get(kind, 0) for kind, n in counts.items()}
        since = rollout.started_at or rollout.created_at
        latencies = await self._measurements.latencies(
            rollout.service, rollout.stable, since=since, until=switched["at"]
        )
        return VersionSample(
            version=rollout.stable,
            successes=delta.get("success", 0),
            failures=sum(delta.get(kind, 0) for kind in _FAILURES),
            latencies=latencies,
        )

    async def _sample(
        self, rollout: Rollout, version: str, before: dict[str, int], since: float
    ) -> VersionSample:
        totals = await self._measurements.totals(rollout.service, version)
        delta = {kind: n - before.get(kind, 0) for kind, n in totals.counts.items()}
        latencies = await self._measurements.latencies(rollout.service, version, since=since)
        return VersionSample(
            version=version,
            successes=delta.get("success", 0),
            failures=sum(delta.get(kind, 0) for kind in _FAILURES),
            latencies=latencies,
        )

    async def hook(
        self, rollout: Rollout, playbook: Playbook, step: ExecStep
    ) -> dict[str, Any] | None:
        """Run ``step`` as a hook (its failure aborts nothing): its result once it ended."""
        task = self._execs.get(rollout.id)
        if task is None:
            variables = _variables(rollout, playbook)
            self._execs[rollout.id] = asyncio.create_task(
                run_command(step.render(variables), step.timeout, step.render_env(variables)),
                name=f"hook-{rollout.id}",
            )
            return None
        if not task.done():
            return None
        del self._execs[rollout.id]
        return task.result()

    async def _exec(self, rollout: Rollout, playbook: Playbook, step: ExecStep) -> bool:
        task = self._execs.get(rollout.id)
        if task is None:
            variables = _variables(rollout, playbook)
            command = step.render(variables)
            task = asyncio.create_task(
                run_command(command, step.timeout, step.render_env(variables)),
                name=f"exec-{rollout.id}",
            )
            self._execs[rollout.id] = task
            await self._transition(rollout, rollout.phase, f"running {' '.join(command)}")
            return False
        if not task.done():
            return False
        del self._execs[rollout.id]
        result = task.result()
        if result["returncode"] != 0:
            await self._abort(rollout, playbook, f"exec failed: {result['error']}", result)
            return False
        await self._transition(rollout, rollout.phase, "exec succeeded", result)
        return True

    async def _mirror(self, rollout: Rollout, step: MirrorStep, now: float) -> bool:
        """Shadow the canary: copies of the traffic for ``duration``, its replies swallowed.

        Its failures count against it like any other, so a bad canary can be
        invalidated (and the rollout rolled back) before it serves anyone.
        """
        if not rollout.step_data.get("mirroring"):
            await self._strategy_for(rollout).set_mirror(
                rollout.service,
                canary=rollout.canary,
                percent=step.percent,
                max_inflight=step.max_inflight,
                compare=step.compare,
            )
            rollout.step_data["mirroring"] = True
            await self._transition(
                rollout,
                rollout.phase,
                f"mirroring {step.percent:g}% of the traffic to {rollout.canary} "
                f"for {step.duration:g}s",
            )
            return False
        if now - rollout.step_started_at < step.duration:
            return False
        await self._strategy_for(rollout).clear_mirror(rollout.service, canary=rollout.canary)
        await self._transition(rollout, rollout.phase, "shadow step ended")
        return True


def _variables(rollout: Rollout, playbook: Playbook) -> dict[str, str]:
    """The values an exec step's placeholders take."""
    return {
        **playbook.variables,
        "service": rollout.service,
        "version": rollout.canary,
        "stable": rollout.stable,
        "weight": str(rollout.weight),
        "rollout": rollout.id,
    }

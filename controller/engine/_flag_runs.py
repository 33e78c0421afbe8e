"""Flag rollouts from playbooks, run by the leading controller.

``deployctl flag rollout KEY --playbook P --service SVC`` records a
:class:`FlagRun` in Redis and returns; the leader advances it on its tick, so
the rollout survives the terminal that started it, and a standby finishes it
if the leader dies. A run first measures the service's failure rate
(``Baseline``), then serves the "on" variant to each step's percentage for the
step's time while watching the service: past the baseline plus the playbook's
``max_failure_rate`` it switches the flag off (``SwitchedOff``). Someone
else's change to the flag stops it and leaves the flag as it is (``Stopped``),
and so does ``deployctl flag abort``, which switches the flag off.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator import DeployctlError
from controller.engine._keys import ControllerKeys
from controller.playbook._playbook import Playbook
from controller.playbook._steps import PauseStep, SetWeightStep
from flags import FlagConflict
from strategies import MIN_OUTCOMES, FlagRollout, ServiceReading, failure_rate

logger = logging.getLogger(__name__)

#: Seconds between two looks at a step's failure rate (each reads every version's totals).
CHECK_EVERY = 1.0
#: Seconds a percentage is watched when no pause with a duration follows it.
DEFAULT_STEP_SECONDS = 60.0


class FlagRunPhase(StrEnum):
    """Where a flag run is."""

    BASELINE = "Baseline"
    PROGRESSING = "Progressing"
    SUCCEEDED = "Succeeded"
    SWITCHED_OFF = "SwitchedOff"
    STOPPED = "Stopped"

    @property
    def active(self) -> bool:
        """Whether the controller still has work to do on it."""
        return self in (FlagRunPhase.BASELINE, FlagRunPhase.PROGRESSING)


class FlagStep(BaseModel):
    """Serve the "on" variant to ``percentage`` % of users, and watch for ``seconds``."""

    percentage: int = Field(ge=0, le=100)
    seconds: float = Field(ge=0)


class FlagRun(BaseModel):
    """One flag rollout by steps, as the controller advances it."""

    key: str
    service: str
    playbook: str
    steps: list[FlagStep]
    threshold: float  # how far over the baseline the failure rate may go
    baseline_seconds: float = 60.0
    min_outcomes: int = MIN_OUTCOMES
    who: str
    phase: FlagRunPhase = FlagRunPhase.BASELINE
    percentage: int = 0  # the share this run serves the "on" variant to now
    step: int = 0  # the current step (len(steps) once done)
    step_started: bool = False  # its percentage is written and watched
    baseline_rate: float | None = None
    reading: dict[str, int] = Field(default_factory=dict)  # totals the phase counts from
    revision: int | None = None  # the flag's revision as this run last wrote it
    phase_started_at: float = Field(default_factory=time.time)
    checked_at: float = 0.0
    reason: str = "created"
    abort_requested: bool = False
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


def flag_steps(playbook: Playbook) -> list[FlagStep]:
    """A ``strategy: flag`` playbook as steps: each set_weight, watched for the pause after it.

    A set_weight without a pause after it is watched 60 s; so is one followed by
    a pause without a duration, since a flag run has no one to promote it. The
    playbook's validation already refused every other kind of step.
    """
    steps: list[FlagStep] = []
    for step in playbook.steps:
        match step:
            case SetWeightStep(weight=weight):
                steps.append(FlagStep(percentage=weight, seconds=DEFAULT_STEP_SECONDS))
            case PauseStep(duration=duration) if steps:
                seconds = duration or DEFAULT_STEP_SECONDS
                steps[-1] = FlagStep(percentage=steps[-1].percentage, seconds=seconds)
            case _:
                pass  # a pause before any weight: nothing is served yet, nothing to watch
    return steps


class FlagRunStore:
    """Flag runs in Redis: one JSON string per flag, and the set of flags that have one."""

    def __init__(self, *, redis: Redis, keys: ControllerKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, key: str) -> FlagRun | None:
        """The flag's current (or last) run."""
        raw = await self._redis.get(self._keys.flag_run(key))
        return None if raw is None else FlagRun.model_validate_json(raw)

    async def all(self) -> list[FlagRun]:
        """Every flag's last run, by key."""
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in
                      await self._redis.smembers(self._keys.flag_runs()))  # fmt: skip
        runs = [await self.get(key) for key in keys]
        return [run for run in runs if run is not None]

    async def save(self, run: FlagRun) -> None:
        """Write the run (and list its flag)."""
        run.updated_at = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.flag_run(run.key), run.model_dump_json())
            pipe.sadd(self._keys.flag_runs(), run.key)
            await pipe.execute()

    async def start(self, run: FlagRun) -> None:
        """Record a new run and wake the leader; refused while the flag has an active one."""
        current = await self.get(run.key)
        if current is not None and current.phase.active:
            raise FlagRunError(
                f"flag {run.key} is already being rolled out ({current.phase}, step "
                f"{current.step + 1}/{len(current.steps)}); run `deployctl flag abort {run.key}` "
                "first, or wait for it to end"
            )
        await self.save(run)
        await self._redis.publish(self._keys.wakeup(), f"flag:{run.key}")

    async def request_abort(self, key: str) -> FlagRun:
        """Ask the leader to switch the flag off and end its run."""
        run = await self.get(key)
        if run is None or not run.phase.active:
            raise FlagRunError(f"flag {key} has no rollout running (`deployctl flag runs`)")
        run.abort_requested = True
        await self.save(run)
        await self._redis.publish(self._keys.wakeup(), f"flag:{key}")
        return run


class FlagRunError(DeployctlError):
    """A flag run cannot be started or changed as asked; the message says what to do."""


class FlagRunEngine:
    """Advances flag runs; owned by the leading controller."""

    def __init__(self, *, store: FlagRunStore, strategy: FlagRollout) -> None:
        self._store = store
        self._strategy = strategy

    async def advance_all(self) -> None:
        """Advance every active run (one run's bug never stops the others)."""
        for run in await self._store.all():
            if not run.phase.active:
                continue
            try:
                await self.advance(run)
            except (RedisError, OSError):
                raise  # the controller's loop waits for Redis
            except Exception:
                logger.exception("failed to advance the rollout of flag %s", run.key)

    async def advance(self, run: FlagRun, now: float | None = None) -> None:
        """Do what is due for ``run`` now, and save it."""
        now = time.time() if now is None else now
        if run.abort_requested:
            await self._strategy.switch_off(run.key, "rollout aborted by an operator", who=run.who)
            run.percentage = 0
            self._end(run, FlagRunPhase.STOPPED, "aborted by an operator: switched off", now)
        elif run.phase is FlagRunPhase.BASELINE:
            await self._baseline(run, now)
        elif run.phase is FlagRunPhase.PROGRESSING:
            await self._progress(run, now)
        await self._store.save(run)

    async def _baseline(self, run: FlagRun, now: float) -> None:
        reading = await self._strategy.reading(run.service)
        if not run.reading:  # the window starts now
            run.reading, run.phase_started_at = dict(reading.counts), now
            if run.baseline_seconds > 0:
                return
        if now - run.phase_started_at < run.baseline_seconds:
            return
        rate = reading.since(ServiceReading(0.0, run.reading)).rate
        if rate is None:  # nothing happened in the window: the service's rate since ever
            rate = failure_rate(reading.counts).rate
        run.baseline_rate = rate or 0.0
        run.phase, run.phase_started_at = FlagRunPhase.PROGRESSING, now
        run.reason = f"baseline failure rate of {run.service}: {run.baseline_rate:.1%}"
        await self._progress(run, now)

    async def _progress(self, run: FlagRun, now: float) -> None:
        if not run.step_started:
            await self._start_step(run, now)
            return
        current = await self._strategy.current(run.key)
        if current is None or current.revision != run.revision:
            self._end(run, FlagRunPhase.STOPPED, "someone else changed the flag: left as is", now)
            return
        step = run.steps[run.step]
        if now - run.checked_at >= CHECK_EVERY or now - run.phase_started_at >= step.seconds:
            run.checked_at = now
            failing = await self._strategy.failing(
                run.key,
                run.service,
                since=ServiceReading(0.0, run.reading),
                baseline_rate=run.baseline_rate or 0.0,
                threshold=run.threshold,
                min_outcomes=run.min_outcomes,
            )
            if failing is not None:
                reason = f"{failing} at {step.percentage}%"
                await self._strategy.switch_off(run.key, reason, who=run.who)
                run.percentage = 0
                self._end(run, FlagRunPhase.SWITCHED_OFF, f"switched off: {reason}", now)
                return
        if now - run.phase_started_at >= step.seconds:
            run.step += 1
            run.step_started = False
            if run.step == len(run.steps):
                done = ", ".join(f"{s.percentage}%" for s in run.steps)
                self._end(run, FlagRunPhase.SUCCEEDED, f"every step passed: {done}", now)
            else:
                await self._start_step(run, now)

    async def _start_step(self, run: FlagRun, now: float) -> None:
        step = run.steps[run.step]
        why = f"playbook {run.playbook}: step {run.step + 1}/{len(run.steps)}, {step.percentage}%"
        try:
            stored = await self._strategy.set_percentage(
                run.key, step.percentage, who=run.who, why=why, revision=run.revision
            )
        except FlagConflict:
            self._end(run, FlagRunPhase.STOPPED, "someone else changed the flag: left as is", now)
            return
        run.revision, run.step_started, run.percentage = stored.revision, True, step.percentage
        run.reading = dict((await self._strategy.reading(run.service)).counts)
        run.phase_started_at, run.checked_at = now, now
        run.reason = why
        logger.info("flag %s: %s", run.key, why, extra={"flag": run.key})

    @staticmethod
    def _end(run: FlagRun, phase: FlagRunPhase, reason: str, now: float) -> None:
        run.phase, run.reason, run.phase_started_at = phase, reason, now
        logger.info("flag %s rollout %s: %s", run.key, phase, reason, extra={"flag": run.key})

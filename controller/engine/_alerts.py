"""Status flags raised by the system: what the registry and the rollouts report, for people.

:class:`StatusFlagRaiser` listens to the registry's events (a version
invalidated or reinstated, bad passwords) and to the rollout events, and
raises or lowers the matching status flag, with help that says what to do:

=================================  ==========================================  =================
flag                               raised when                                 lowered when
=================================  ==========================================  =================
``versions/SVC/invalid-VER``       the registry invalidates VER                VER is reinstated
``passwords/SVC/bad-passwords``    throttling starts for bad passwords         quiet time, hand
``rollouts/SVC/aborted``           a rollout of SVC is rolled back             hand, new rollout
``rollouts/SVC/failed``            a rollout of SVC fails                      hand, new rollout
=================================  ==========================================  =================

Rollout flags are ``manual_down``: an administrator acknowledges them with
``deployctl alerts down``; starting a new rollout of the service (or retrying
it), or one succeeding, is an administrator's act too, so it lowers them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from communicator import EventType, Keys, keep_trying
from communicator.backends import being_cancelled, cancel_and_wait
from controller.engine._keys import ControllerKeys
from controller.engine._rollout import Phase
from flags import FlagKeys, StatusFlag, StatusFlags

logger = logging.getLogger(__name__)


def _redis_down(exc: BaseException) -> bool:
    return isinstance(exc, (RedisError, OSError))


#: Where the help pages are (docs/operations.md, published).
DOCS = "https://deployctl.dev/docs/operations"
SOURCE = "deployctl controller"

_NOT_IN_PART = re.compile(r"[^a-z0-9_-]")
_PART_LENGTH = 64


def slug(text: str, *, limit: int = _PART_LENGTH) -> str:
    """``text`` as a flag id part: lowercase, other characters as ``_``, at most ``limit``."""
    return _NOT_IN_PART.sub("_", text.lower())[:limit] or "_"


def shadow_flag_id(service: str, version: str) -> str:
    """The status flag of a shadow version dropping most of its copies."""
    return f"shadows/{slug(service)}/dropping-{slug(version, limit=_PART_LENGTH - 9)}"


def version_flag_id(service: str, version: str) -> str:
    """The id of the flag raised while ``version`` of ``service`` is invalid."""
    return f"versions/{slug(service)}/invalid-{slug(version, limit=_PART_LENGTH - 8)}"


def passwords_flag_id(service: str) -> str:
    """The id of the flag raised while bad passwords keep coming for ``service``."""
    return f"passwords/{slug(service)}/bad-passwords"


def rollout_flag_id(service: str, phase: Phase) -> str:
    """The id of the flag raised when a rollout of ``service`` ends ``Aborted`` or ``Failed``."""
    return f"rollouts/{slug(service)}/{phase.value.lower()}"


def _event(payload: bytes | str) -> dict[str, Any]:
    """A JSON event object naming its service.

    Raises:
        ValueError: The payload is not JSON.
        TypeError: It is JSON, but not an object with a service.
    """
    event = json.loads(payload)
    if not isinstance(event, dict) or not isinstance(event.get("service"), str):
        raise TypeError("not a JSON object with a service")
    return event


class StatusFlagRaiser:
    """Raise and lower status flags from the registry's and the rollouts' events.

    Run it in the controller that leads (:meth:`run`); :meth:`handle` is the
    whole logic for one event, so tests call it directly.

    Args:
        redis: The installation's Redis.
        key_prefix: The installation's key prefix (``Settings.key_prefix``).
        bad_password_quiet: Seconds without bad passwords after which their flag goes down.
        sweep_every: Seconds between looks for flags whose quiet time has passed.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        key_prefix: str,
        bad_password_quiet: float = 900.0,
        sweep_every: float = 30.0,
    ) -> None:
        self._redis = redis
        self.flags = StatusFlags(redis=redis, keys=FlagKeys(key_prefix))
        self.registry_channel = Keys(key_prefix).events()
        self.rollout_channel = ControllerKeys(key_prefix).events()
        self._quiet = bad_password_quiet
        self._sweep_every = sweep_every
        #: Set while subscribed to both channels (tests wait on it before publishing).
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Listen and raise flags until cancelled; Redis failures are retried with backoff."""
        async with asyncio.TaskGroup() as tasks:
            sweep = tasks.create_task(self._sweep_loop(), name="status-flags-sweep")
            try:
                await self._listen_loop()
            finally:  # a TaskGroup cancels its tasks once; the sweep may need more
                await cancel_and_wait([sweep])

    async def handle(self, channel: str, payload: bytes | str) -> None:
        """Raise or lower the flag one event calls for; other events are ignored.

        A payload that is not a JSON event is logged and dropped: a stranger
        publishing on our channels must not stop the raiser.

        Raises:
            RedisError: Redis failed (the caller retries).
        """
        try:
            event = _event(payload)
            if channel == self.registry_channel:
                await self._on_registry_event(event)
            elif channel == self.rollout_channel:
                await self._on_rollout_event(event)
        except (ValueError, TypeError, KeyError, ValidationError) as exc:
            logger.warning(
                "status flags: ignoring an event on %s (%s): %.200r", channel, exc, payload
            )

    # -- the events ------------------------------------------------------------------------

    async def _on_registry_event(self, event: dict[str, Any]) -> None:
        service = event["service"]
        kind = event.get("type")
        if kind == EventType.VERSION_INVALIDATED:
            await self.flags.raise_flag(self._version_invalidated(service, event))
        elif kind == EventType.VERSION_REINSTATED:
            if await self.flags.lower(version_flag_id(service, str(event["version"]))):
                logger.info("status flag lowered: %s %s reinstated", service, event["version"])
        elif kind == EventType.BAD_PASSWORDS:
            await self.flags.raise_flag(self._bad_passwords(service, event))
        elif kind == "shadow_dropping":
            await self.flags.raise_flag(self._shadow_dropping(service, event))
        elif kind == "shadow_recovered":
            await self.flags.lower(shadow_flag_id(service, str(event["version"])))

    async def _on_rollout_event(self, event: dict[str, Any]) -> None:
        service = event["service"]
        phase = Phase(event["phase"])
        if phase in (Phase.ABORTED, Phase.FAILED):
            await self.flags.raise_flag(self._rollout_ended(service, phase, event))
        elif phase in (Phase.PENDING, Phase.SUCCEEDED):
            # A new rollout (or a retry) is someone's decision to go on: it acknowledges.
            for ended in (Phase.ABORTED, Phase.FAILED):
                await self.flags.lower(rollout_flag_id(service, ended), by_hand=True)

    # -- the flags -------------------------------------------------------------------------

    def _version_invalidated(self, service: str, event: dict[str, Any]) -> StatusFlag:
        version = str(event["version"])
        reason = str(event.get("reason") or "no reason given")
        return StatusFlag.from_id(
            version_flag_id(service, version),
            priority=80,
            message=f"{service} {version} is invalid: {reason}",
            help=(
                f"Version {version} of {service} was marked invalid ({reason}): the "
                "communicators send it no traffic, the valid versions take its load, and its "
                "instances are refused when they register. See what failed with "
                f"`deployctl versions {service} --failures 20`, then fix or replace the "
                "version. If it was a false alarm, run "
                f"`deployctl version reinstate {service} {version} --reason TEXT`; "
                "this flag goes down when the version is reinstated."
            ),
            help_uri=f"{DOCS}#version-invalidated",
            source=SOURCE,
            tags=(f"service:{service}", f"version:{version}", "event:version_invalidated"),
        )

    def _shadow_dropping(self, service: str, event: dict[str, Any]) -> StatusFlag:
        version = str(event["version"])
        share = float(event.get("drop_share") or 0)
        return StatusFlag.from_id(
            shadow_flag_id(service, version),
            priority=40,
            message=f"shadow {version} of {service} drops {share:.0%} of its copies",
            help=(
                f"The shadow {version} of {service} is too busy or too slow for the traffic "
                "mirrored to it, so most copies are dropped (the primary is not affected). "
                "Its report then says little: lower the share with `deployctl shadow start "
                f"{service} --version {version} --percent P`, raise --max-inflight, or give the "
                f"shadow more instances. `deployctl shadow report {service}` shows the counts. "
                "The flag goes down when it drops less than a quarter of its copies."
            ),
            help_uri=f"{DOCS}#shadow-dropping",
            source=SOURCE,
            tags=(f"service:{service}", f"version:{version}", "event:shadow_dropping"),
        )

    def _bad_passwords(self, service: str, event: dict[str, Any]) -> StatusFlag:
        source = str(event.get("source") or "unknown source")
        scope = "the service" if event.get("scope") == "service" else source
        retry_after = float(event.get("retry_after") or 0)
        minutes = f"{self._quiet / 60:g} minutes"
        return StatusFlag.from_id(
            passwords_flag_id(service),
            priority=60,
            message=(
                f"{event.get('count', '?')} bad passwords for {service} from {source}; "
                f"{scope} throttled for {retry_after:g} s"
            ),
            help=(
                f"Connections keep giving a wrong password for {service}, so the communicators "
                "throttle them. If the source is one of your instances, its password is out of "
                f"date: set it again (`deployctl service password {service}`) and restart the "
                "instance. If you do not know the source, someone may be guessing: block it at "
                f"the firewall. The flag goes down after {minutes} without bad passwords, or "
                f"with `deployctl alerts down {passwords_flag_id(service)}`."
            ),
            help_uri=f"{DOCS}#bad-passwords",
            source=SOURCE,
            lower_after=self._quiet,
            tags=(f"service:{service}", f"source:{source}", "event:bad_passwords"),
        )

    def _rollout_ended(self, service: str, phase: Phase, event: dict[str, Any]) -> StatusFlag:
        reason = str(event.get("reason") or "no reason given")
        flag_id = rollout_flag_id(service, phase)
        if phase is Phase.FAILED:
            what = (
                f"The rollout of {service} failed and could not roll itself back: traffic may "
                "still be split between the versions. Check the weights with "
                f"`deployctl canary status {service}` and put things right by hand"
            )
        else:
            what = (
                f"The rollout of {service} was rolled back: the stable version has all the "
                "traffic again, and the canary may be marked invalid"
            )
        return StatusFlag.from_id(
            flag_id,
            priority=90 if phase is Phase.FAILED else 70,
            message=f"rollout of {service} {phase.value.lower()}: {reason}",
            help=(
                f"{what}. Read why with `deployctl rollout history {service}`, fix the "
                f"version, then `deployctl canary retry {service}` or start a new rollout. "
                "This flag stays up until someone acknowledges it with "
                f"`deployctl alerts down {flag_id}` (or a new rollout starts)."
            ),
            help_uri=f"{DOCS}#rollout-{phase.value.lower()}",
            source=SOURCE,
            manual_down=True,
            tags=(f"service:{service}", f"rollout:{event.get('rollout', '')}"),
        )

    # -- the loops -------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        # keep_trying starts again from the shortest wait after a healthy spell: the
        # loop it replaces never did, so after a few outages each reconnect took ~30 s.
        await keep_trying(self._listen, what="status flags: Redis listener", transient=_redis_down)

    async def _listen(self) -> None:
        self.subscribed.clear()  # set again once Redis confirms the subscriptions
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(self.registry_channel, self.rollout_channel)
            async for item in pubsub.listen():
                if item["type"] == "subscribe" and item["data"] == 2:
                    self.subscribed.set()  # Redis confirmed both: no event is missed from now
                if item["type"] != "message":
                    continue
                channel = item["channel"]
                await self.handle(
                    channel.decode() if isinstance(channel, bytes) else channel, item["data"]
                )

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            try:
                for flag_id in await self.flags.lower_quiet():
                    logger.info("status flag lowered after its quiet time: %s", flag_id)
            except (RedisError, OSError) as exc:  # the next sweep tries again
                if being_cancelled():  # redis-py can turn our cancellation into its error
                    raise asyncio.CancelledError from exc
                logger.warning("status flags: cannot lower quiet flags now (%s)", exc)

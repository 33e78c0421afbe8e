"""Whether a canary may start: checked against what runs now, never against old plans.

A rollout that compares a canary with a version nobody runs, or that calls
"canary" the version serving production, would send traffic elsewhere than it
shows and could roll production back. These checks refuse both, saying what
to do instead.
"""

from __future__ import annotations

from controller.engine._rollout import RolloutError
from strategies import Fleet


def _percent(share: float) -> str:
    return f"{share * 100:.0f}%"


def choose_stable(fleet: Fleet, *, canary: str, stable: str | None = None) -> str:
    """The stable version to compare ``canary`` with (``stable`` if given, checked).

    Rules: the canary must have a live, valid instance; it must not be the
    version serving production (a larger share of the traffic now than any
    other); another valid version must have live instances, to compare with
    and to roll back to; the stable is the one of those serving most now, or
    the one named, which must have a live, valid instance.

    Raises:
        RolloutError: A rule is broken; the message says which, and what to do.
    """
    service = fleet.service
    if canary in fleet.barred:
        raise RolloutError(
            f"{service} {canary} is invalid, so its instances get no traffic; reinstate it "
            f"(`deployctl version reinstate {service} {canary}`) or roll out another version"
        )
    if canary not in fleet.live:
        running = ", ".join(f"{v} ({n})" for v, n in fleet.live.items()) or "none"
        raise RolloutError(
            f"no instance of {service} runs {canary} (running: {running}); start one first, "
            "or pass --wait-for-instances 5m to wait for it"
        )
    shares = fleet.shares
    others = [v for v in fleet.live if v != canary]
    serving = max(others, key=lambda v: (shares.get(v, 0.0), fleet.live[v], v), default=None)
    if shares.get(canary, 0.0) > (shares.get(serving, 0.0) if serving else 0.0):
        raise RolloutError(
            f"{service} {canary} already serves {_percent(shares[canary])} of the traffic: it "
            "is production, not a canary, and aborting such a rollout would cut production "
            "off; to go back to an older version, start a canary of that version instead"
        )
    if stable is not None:
        if stable == canary:
            raise RolloutError(f"--stable and --version are both {canary}; name two versions")
        if stable not in fleet.live:
            state = "is invalid" if stable in fleet.barred else "has no live instance"
            raise RolloutError(
                f"{service} {stable} {state}, so it cannot be the stable version; omit "
                f"--stable to use the one serving now ({serving or 'none'})"
            )
        return stable
    if serving is None:
        raise RolloutError(
            f"{service} runs only {canary}: there is no stable version to compare it with "
            "or to roll back to; start instances of the version it replaces first"
        )
    return serving

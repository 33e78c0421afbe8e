"""What serves a service right now: its live versions and the share of traffic each gets.

The shares come from :func:`communicator.traffic_shares`, the function the
router routes by, so what a strategy or the CLI reads here is where the
traffic goes, not merely what the plan asks for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from communicator import PlanStore, Registry, RoutePlan, traffic_shares


@dataclass(frozen=True, slots=True)
class Fleet:
    """The instances of one service by version, its plan, and the traffic shares it yields."""

    service: str
    live: dict[str, int]
    """Valid versions with at least one registered instance -> number of instances."""
    barred: dict[str, int] = field(default_factory=dict)
    """Invalid versions that still have registered instances -> number of instances."""
    plan: RoutePlan = field(default_factory=RoutePlan)

    @property
    def shares(self) -> dict[str, float]:
        """Each version's share of ordinary traffic (0-1), as the router applies the plan.

        Mirrors and the preview color get none (``RoutePlan.primary_excluded``).
        """
        return traffic_shares(self.plan, self.live)

    @property
    def plan_mirrors(self) -> frozenset[str]:
        """Versions that get copies only (shadow), never primary traffic."""
        return frozenset(mirror.version for mirror in self.plan.mirrors)

    @property
    def production(self) -> str | None:
        """The version taking the largest share (ties: more instances, then the higher name)."""
        shares = self.shares
        if not shares:
            return None
        return max(shares, key=lambda v: (shares[v], self.live.get(v, 0), v))

    def serves_without(self, version: str) -> bool:
        """Whether another valid version than ``version`` has live instances."""
        return any(other != version for other in self.live)


async def fleet_of(service: str, *, registry: Registry, plans: PlanStore) -> Fleet:
    """Read the service's registered instances, their versions' validity and its plan."""
    counts = Counter(info.version for info in await registry.instances(service))
    live: dict[str, int] = {}
    barred: dict[str, int] = {}
    for version, count in sorted(counts.items()):
        (live if await registry.is_valid(service, version) else barred)[version] = count
    plan = await plans.get(service)
    return Fleet(service=service, live=live, barred=barred, plan=plan or RoutePlan())

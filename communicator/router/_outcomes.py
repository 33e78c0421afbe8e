"""Recording the failures of versions, and cutting a version off here when one crosses its policy.

Successes are counted in memory (:mod:`communicator.router._tracking`) and
written in batches; each failure goes to the registry at once, since it may
invalidate the version.
"""

from __future__ import annotations

from communicator.registry._outcomes import OutcomeKind
from communicator.registry._registry import Registry
from communicator.router._directory import Directory


class Outcomes:
    """Writes failures to the registry; marks a version invalid in the directory when it must."""

    def __init__(self, *, registry: Registry, directory: Directory) -> None:
        self._registry = registry
        self._directory = directory

    async def record(
        self,
        service: str,
        version: str,
        kind: str,
        *,
        reason: str = "",
        instance: str = "",
        server: str = "",
        reporter: str = "",
    ) -> None:
        """Record a failure; cut the version off here at once if it crossed its policy.

        ``reporter`` is the client id whose evidence this is (see the policy's
        ``min_reporters``).
        """
        result = await self._registry.record_outcome(
            service,
            version,
            OutcomeKind(kind),
            reason=reason,
            instance=instance,
            server=server,
            reporter=reporter,
        )
        if not result.valid:
            self._directory.set_invalid(service, version, True)

"""Every Redis key the controller uses, in one place (the communicator's are in its own)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ControllerKeys:
    """The controller's Redis key space under the installation's key prefix."""

    prefix: str = "deployctl:"

    def rollout(self, service: str) -> str:
        """String: the service's current (or last) rollout as JSON."""
        return f"{self.prefix}rollout:{service}"

    def rollouts(self) -> str:
        """Set: services with a rollout record."""
        return f"{self.prefix}rollouts"

    def history(self, service: str) -> str:
        """Stream (bounded): every transition of the service's rollouts (field ``t``: JSON)."""
        return f"{self.prefix}rollout:{service}:history"

    def requests(self, service: str) -> str:
        """List: operator requests (promote, promote_full, abort) waiting for the leader."""
        return f"{self.prefix}rollout:{service}:requests"

    def wakeup(self) -> str:
        """Pub/sub channel: a service name whenever its rollout needs the leader's attention."""
        return f"{self.prefix}rollout:wakeup"

    def flag_run(self, key: str) -> str:
        """String: the flag's current (or last) rollout by steps, as JSON."""
        return f"{self.prefix}flag_run:{key}"

    def flag_runs(self) -> str:
        """Set: flags with a rollout record."""
        return f"{self.prefix}flag_runs"

    def leader(self) -> str:
        """String with a TTL: the id of the controller that leads (renewed while it lives)."""
        return f"{self.prefix}controller:leader"

    def events(self) -> str:
        """Pub/sub channel: rollout events as JSON (rollout_aborted, rollout_succeeded ...)."""
        return f"{self.prefix}rollout:events"

    def health(self, controller_id: str) -> str:
        """String with a TTL: one controller's last health record as JSON (``--check``)."""
        return f"{self.prefix}health:controller:{controller_id}"

    def controllers_health(self) -> str:
        """Sorted set: controller id -> time of its last health record, for ``--check``."""
        return f"{self.prefix}health:controllers"

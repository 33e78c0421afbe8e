"""The controller: the ``deployctl`` CLI, rollouts, playbooks and rollback policy (top layer)."""

__all__: list[str] = []

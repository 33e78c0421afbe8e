"""Every Redis key the flags use, in one place (the communicator's are in its own).

Keys are built from the installation's key prefix (``Settings.key_prefix``),
so several installations, or several tests, share one Redis. Nothing outside
this module builds a key string: the Lua scripts get every key from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FlagKeys:
    """The flags' Redis key space under the installation's key prefix."""

    prefix: str = "deployctl:"

    # -- status flags (problems raised for an administrator) -------------------

    def status_flag(self, flag_id: str) -> str:
        """Hash: one raised status flag's fields (``unit/section/name`` holds no ``:``)."""
        return f"{self.prefix}status:flag:{flag_id}"

    def status_flags(self) -> str:
        """Set: the id of every raised status flag."""
        return f"{self.prefix}status:flags"

    def status_events(self) -> str:
        """Pub/sub channel: a JSON announcement each time a status flag is raised or lowered."""
        return f"{self.prefix}status:events"

    # -- feature flags ---------------------------------------------------------

    def feature_flag(self, key: str) -> str:
        """String: JSON {key, revision, flag (flagd form, help in its metadata)}."""
        return f"{self.prefix}flag:{key}"

    def feature_flags(self) -> str:
        """Set: the key of every feature flag."""
        return f"{self.prefix}flags"

    def flag_history(self) -> str:
        """Stream (bounded): every flag change (key, action, revision, who, why, changes)."""
        return f"{self.prefix}flags:history"

    def flag_changes(self) -> str:
        """Pub/sub channel: JSON {key, revision} after each change (the publisher relays it)."""
        return f"{self.prefix}flags:changes"

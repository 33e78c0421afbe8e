"""Every Redis key the communicator uses, in one place.

Keys are built from a prefix (``Settings.key_prefix``, ``deployctl:`` by
default) so that several installations, or several tests, share one Redis.
Nothing outside this module builds a key string.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """The communicator's Redis key space under one prefix."""

    prefix: str = "deployctl:"

    def service_commands(self, service: str) -> str:
        """Set: the commands a service accepts, kept current from each COMMANDS message."""
        return f"{self.prefix}svc:{service}:commands"

    def services(self) -> str:
        """Set: every service name ever registered or defined."""
        return f"{self.prefix}services"

    def health(self, process: str) -> str:
        """String with a TTL: a daemon's last health record (``--check`` reads it)."""
        return f"{self.prefix}health:{process}"

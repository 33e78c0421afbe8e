"""Every MQTT topic the flags use, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FlagTopics:
    """Where flags are pushed to services: one retained message per flag."""

    prefix: str = "deployctl/"

    def flag(self, key: str) -> str:
        """Retained: the flag's JSON (flagd form plus revision); empty once deleted."""
        return f"{self.prefix}flags/{key}"

    def all_flags(self) -> str:
        """Subscription to every flag's topic (an SDK gets all retained flags at once)."""
        return f"{self.prefix}flags/+"

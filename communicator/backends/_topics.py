"""Every MQTT topic the communicator uses, in one place.

Each instance is one MQTT client. It publishes on a topic that names its client
id and receives on another, so a broker ACL pattern on ``%c`` (the client id)
keeps instances from reading or forging each other's traffic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """The communicator's MQTT topics under one prefix (``Settings.topic_prefix``)."""

    prefix: str = "deployctl/"

    def inbound(self, client_id: str) -> str:
        """Where an instance publishes every message it sends (read by the routers)."""
        return f"{self.prefix}in/{client_id}"

    def inbound_all(self) -> str:
        """Subscription of a router to every instance's inbound topic."""
        return f"{self.prefix}in/+"

    def outbound(self, client_id: str) -> str:
        """Where an instance receives every message routed to it."""
        return f"{self.prefix}out/{client_id}"

    def outbound_all(self) -> str:
        """Every instance's outbound topic (what a communicator's broker user may write)."""
        return f"{self.prefix}out/+"

    def tracking(self, partition: int) -> str:
        """Where communicators hand each other the requests whose reply the other will see."""
        return f"{self.prefix}track/{partition}"

    def tracking_all(self) -> str:
        """Every partition's tracking topic (read and written by communicators only)."""
        return f"{self.prefix}track/+"

    def acl_patterns(self) -> tuple[str, str]:
        """Mosquitto ``pattern`` lines confining each client to its own two topics."""
        return (f"pattern write {self.prefix}in/%c", f"pattern read {self.prefix}out/%c")

"""Every Redis key the communicator uses, in one place.

Keys are built from a prefix (``Settings.key_prefix``, ``deployctl:`` by
default) so that several installations, or several tests, share one Redis.
Nothing outside this module builds a key string: the Lua scripts receive every
key they touch from here, through ``KEYS``.

Service names and versions never hold ``:`` (their message definitions forbid
it), so a service's keys and a version's keys cannot collide.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """The communicator's Redis key space under one prefix."""

    prefix: str = "deployctl:"

    # -- services and instances ------------------------------------------------

    def service_commands(self, service: str) -> str:
        """Set: the commands a service accepts, kept current from each COMMANDS message."""
        return f"{self.prefix}svc:{service}:commands"

    def services(self) -> str:
        """Set: every service name ever registered or defined."""
        return f"{self.prefix}services"

    def service_instances(self, service: str) -> str:
        """Hash: instance name -> InstanceInfo JSON, for each registered instance of a service."""
        return f"{self.prefix}svc:{service}:instances"

    def clients(self) -> str:
        """Hash: MQTT client id -> InstanceInfo JSON, to resolve a will message to its instance."""
        return f"{self.prefix}clients"

    # -- versions, outcomes, invalidation --------------------------------------

    def service_versions(self, service: str) -> str:
        """Sorted set: every version of a service ever seen, scored by when it was first known."""
        return f"{self.prefix}svc:{service}:versions"

    def version(self, service: str, version: str) -> str:
        """Hash: state, reason, changed_at, invalidated_at, evidence, first_seen, last_seen."""
        return f"{self.prefix}svc:{service}:ver:{version}"

    def version_window(self, service: str, version: str) -> str:
        """Hash with a TTL: a version's outcome counts, ``<bucket start>:<kind>`` -> count."""
        return f"{self.prefix}svc:{service}:ver:{version}:window"

    def version_latencies(self, service: str, version: str) -> str:
        """Stream (bounded): a version's reply latencies (field ``l``, seconds); ids give time."""
        return f"{self.prefix}svc:{service}:ver:{version}:latency"

    def service_policy(self, service: str) -> str:
        """String: the service's InvalidationPolicy as JSON, written by strategies."""
        return f"{self.prefix}svc:{service}:policy"

    def version_policy(self, service: str, version: str) -> str:
        """String: one version's InvalidationPolicy as JSON; replaces the service's policy."""
        return f"{self.prefix}svc:{service}:ver:{version}:policy"

    def service_failures(self, service: str) -> str:
        """Stream (bounded): failures (version, kind, count, reason, instance, server), by time."""
        return f"{self.prefix}svc:{service}:failures"

    # -- events ----------------------------------------------------------------

    def events(self) -> str:
        """Pub/sub channel: registry events as JSON (version_invalidated, bad_passwords, ...)."""
        return f"{self.prefix}events"

    def events_stream(self) -> str:
        """Stream (bounded): the same events (field ``event``: the JSON), for late readers."""
        return f"{self.prefix}events:stream"

    # -- passwords -------------------------------------------------------------

    def service_password(self, service: str) -> str:
        """String: the service's password as a pwdlib argon2id hash (never the password)."""
        return f"{self.prefix}svc:{service}:password"

    def auth_failures_by_source(self, source: str) -> str:
        """String with a TTL (the throttle window): count of bad passwords from one source."""
        return f"{self.prefix}auth:failures:source:{source}"

    def auth_failures_by_service(self, service: str) -> str:
        """String with a TTL (the throttle window): count of bad passwords for one service."""
        return f"{self.prefix}auth:failures:service:{service}"

    def auth_block_by_source(self, source: str) -> str:
        """String with a TTL: present while a source is throttled; the TTL is its retry_after."""
        return f"{self.prefix}auth:block:source:{source}"

    def auth_block_by_service(self, service: str) -> str:
        """String with a TTL: present while a service is throttled; the TTL is its retry_after."""
        return f"{self.prefix}auth:block:service:{service}"

    # -- routing ---------------------------------------------------------------

    def plan(self, service: str) -> str:
        """String: the service's RoutePlan as JSON, written by strategies."""
        return f"{self.prefix}svc:{service}:plan"

    def shadow_report(self, service: str) -> str:
        """Hash: ``<shadow version>|<router id>`` -> JSON counts and comparisons of a mirror."""
        return f"{self.prefix}svc:{service}:shadow"

    def changes(self) -> str:
        """Pub/sub channel: a service name, whenever its instances, commands or plan changed."""
        return f"{self.prefix}changes"

    def cache(self, partition: int) -> str:
        """List: messages waiting for a destination, from the senders of one partition (JSON)."""
        return f"{self.prefix}cache:{partition}"

    def router_lease(self, partition: int) -> str:
        """String with a TTL: the id of the communicator routing a partition."""
        return f"{self.prefix}router:lease:{partition}"

    def router_checkpoint(self, partition: int) -> str:
        """String: JSON {router, prints}: fingerprints of the last messages routed there."""
        return f"{self.prefix}router:ckpt:{partition}"

    def plan_applied(self, service: str) -> str:
        """Hash: communicator id -> the revision of the service's plan it routes by now."""
        return f"{self.prefix}plan:{service}:applied"

    def routers(self) -> str:
        """Sorted set: communicator id -> time of its last heartbeat."""
        return f"{self.prefix}routers"

    def router_secret(self) -> str:
        """String: the key communicators sign their request hand-offs with (hex)."""
        return f"{self.prefix}router:secret"

    # -- daemons ---------------------------------------------------------------

    def health(self, process: str) -> str:
        """String with a TTL: a daemon's last health record as JSON (``--check`` reads it).

        ``process`` is ``communicator:<router id>`` for a communicator; the
        controller's records are named in ``controller.engine._keys``.
        """
        return f"{self.prefix}health:{process}"

    def communicators_health(self) -> str:
        """Sorted set: router id -> time of its last health record, for ``--check`` to find."""
        return f"{self.prefix}health:communicators"

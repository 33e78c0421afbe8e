"""Comparison of shadow replies with the primary's, net of noise (as Diffy does).

For a mirrored request with comparison on, the router collects three replies:
the primary's, the shadow's, and a second primary instance's (the *noise*
copy). Each field (the command, and every parameter but the correlation ones)
is compared: primary against shadow, and primary against the second primary.
A field that differs between two instances of the same version is noise (a
timestamp, a random id). This module only counts; which differences are real
is the shadow strategy's judgement (``strategies.shadow_report``), made from
the raw reports the routers write. Everything here is pure and synchronous.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Parameters that differ by construction between two replies: never compared.
IGNORED = frozenset({"in_reply_to", "message_id"})
#: Differing (primary, shadow) pairs kept for inspection, per mirror.
SAMPLE_SIZE = 20


def fields(reply: Mapping[str, Any]) -> dict[str, str]:
    """The comparable fields of a reply (a ``Message.model_dump()``): command and parameters."""
    out = {"command": str(reply.get("command", ""))}
    for name, value in (reply.get("parameters") or {}).items():
        if name not in IGNORED:
            out[f"parameters.{name}"] = value
    return out


def differing(a: Mapping[str, str], b: Mapping[str, str]) -> set[str]:
    """The fields whose values differ (a field missing on one side differs)."""
    return {name for name in a.keys() | b.keys() if a.get(name) != b.get(name)}


@dataclass(slots=True)
class FieldStats:
    """How often one field differed, primary vs shadow and primary vs primary."""

    compared: int = 0
    shadow_diffs: int = 0
    noise_compared: int = 0
    noise_diffs: int = 0


@dataclass(slots=True)
class Comparison:
    """Comparison results of one mirror (service, shadow version)."""

    compared: int = 0
    incomplete: int = 0  # replies that did not all come in time
    fields: dict[str, FieldStats] = field(default_factory=dict)
    examples: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=SAMPLE_SIZE))

    def add(
        self,
        primary: Mapping[str, Any],
        shadow: Mapping[str, Any],
        noise: Mapping[str, Any] | None,
    ) -> None:
        """Compare one triple of replies (``noise`` is ``None`` without a second primary)."""
        p, s = fields(primary), fields(shadow)
        n = fields(noise) if noise is not None else None
        shadow_diff = differing(p, s)
        noise_diff = differing(p, n) if n is not None else set()
        self.compared += 1
        for name in p.keys() | s.keys() | (n.keys() if n is not None else set()):
            stats = self.fields.setdefault(name, FieldStats())
            stats.compared += 1
            stats.shadow_diffs += name in shadow_diff
            if n is not None:
                stats.noise_compared += 1
                stats.noise_diffs += name in noise_diff
        beyond_noise = sorted(shadow_diff - noise_diff)
        if beyond_noise:
            self.examples.append(
                {"fields": beyond_noise, "primary": dict(primary), "shadow": dict(shadow)}
            )

    def data(self) -> dict[str, Any]:
        """A JSON-ready form (what the router writes to Redis)."""
        return {
            "compared": self.compared,
            "incomplete": self.incomplete,
            "fields": {
                name: {
                    "compared": s.compared,
                    "shadow_diffs": s.shadow_diffs,
                    "noise_compared": s.noise_compared,
                    "noise_diffs": s.noise_diffs,
                }
                for name, s in sorted(self.fields.items())
            },
            "examples": list(self.examples),
        }


#: What a router counts of each mirror (its raw report's "counts" and "outcomes").
COUNTS = ("candidates", "sent", "dropped_busy", "dropped_bound", "failed")
OUTCOMES = ("replied", "error_reply", "timeout", "one_way")

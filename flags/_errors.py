"""Errors of the flags package, rooted in :class:`communicator.DeployctlError`."""

from __future__ import annotations

from communicator import DeployctlError

EXAMPLE_FLAG = """\
{
  "state": "ENABLED",
  "variants": {"on": true, "off": false},
  "defaultVariant": "off",
  "metadata": {
    "help": "Shows the new checkout page. If checkout errors rise, set defaultVariant to off.",
    "help_uri": "https://wiki.example.com/flags/new-checkout",
    "owner": "team-payments",
    "tags": "checkout,ui",
    "expires": "2027-03-31"
  }
}"""
"""A valid flag in flagd's JSON shape, shown by every :class:`FlagError`."""


class FlagError(DeployctlError, ValueError):
    """A flag definition is invalid.

    The message lists every problem found and shows a valid flag to copy.

    Attributes:
        key: The flag's key, when known.
        problems: What is wrong with the definition, one sentence each.
    """

    def __init__(self, key: str | None, problems: list[str]) -> None:
        self.key = key
        self.problems = problems
        subject = f"flag {key!r}" if key is not None else "flag document"
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"{subject} is invalid:\n{listed}\n"
            "Every flag needs `help` (what it does and what to do when it misbehaves) and "
            "`help_uri` (an absolute http(s) URL); in flagd JSON they go in the flag's "
            f"`metadata`, for example:\n{EXAMPLE_FLAG}"
        )

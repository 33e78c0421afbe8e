"""The ``deployctl`` command line: one module per command group, each parsing and calling.

A command reads its options, calls the engine, the playbooks or the stores,
and prints with ``_output`` (rich for people, ``--json`` for scripts, exit
codes that scripts can trust). No rollout logic lives here.
"""

from controller.cli._app import app, main

__all__ = ["app", "main"]

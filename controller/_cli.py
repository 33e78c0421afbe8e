"""The ``deployctl`` command line. It only parses options and calls the libraries."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from communicator import __version__, communicatord
from controller import (
    _cli_alerts,
    _cli_broker,
    _cli_canary,
    _cli_flag_runs,
    _cli_messages,
    _cli_playbook,
    _cli_rollouts,
    _cli_services,
    _cli_shadow,
    _cli_up,
    _cli_versions,
)
from controller._output import console

app = typer.Typer(
    name="deployctl",
    help="Canary, blue-green, shadow and feature-flag rollouts for services on bare metal and VMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(_cli_messages.app, name="messages")
app.command("services")(_cli_services.list_services)
app.add_typer(_cli_services.service_app, name="service")
app.command("versions")(_cli_versions.list_versions)
app.add_typer(_cli_versions.version_app, name="version")
app.command("broker-config")(_cli_broker.broker_config)
communicator_app = typer.Typer(help="The message router.", no_args_is_help=True)
communicator_app.command("run", help="Run a communicator (the same as `communicatord`).")(
    communicatord
)
app.add_typer(communicator_app, name="communicator")
app.add_typer(_cli_playbook.playbook_app, name="playbook")
app.add_typer(_cli_canary.app, name="canary")
app.command("rollouts")(_cli_rollouts.list_rollouts)
app.add_typer(_cli_rollouts.rollout_app, name="rollout")
app.command("status")(_cli_rollouts.status)
app.add_typer(_cli_rollouts.controller_app, name="controller")
# The flag commands: _cli_flags' app, with the rollout commands _cli_flag_runs adds to it.
app.add_typer(_cli_flag_runs.app, name="flag")
app.command("up")(_cli_up.up)
app.command("demo")(_cli_up.demo)
app.add_typer(_cli_alerts.alerts_app, name="alerts")
app.add_typer(_cli_shadow.shadow_app, name="shadow")


def _show_version(value: bool) -> None:
    if value:
        console.print(f"deployctl {__version__}")
        raise typer.Exit


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
) -> None:
    """deployctl: deployment strategies over MQTT and Redis."""
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Entry point of the ``deployctl`` console script."""
    app()

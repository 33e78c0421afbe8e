"""The ``deployctl`` command line. It only parses options and calls the libraries."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from communicator import __version__, communicatord
from controller.cli import (
    _alerts,
    _bluegreen,
    _broker,
    _canary,
    _clock,
    _flag_runs,
    _messages,
    _playbook,
    _rollouts,
    _services,
    _shadow,
    _up,
    _versions,
)
from controller.cli._output import console

app = typer.Typer(
    name="deployctl",
    help="Canary, blue-green, shadow and feature-flag rollouts for services on bare metal and VMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(_messages.app, name="messages")
app.command("services")(_services.list_services)
app.add_typer(_services.service_app, name="service")
app.command("versions")(_versions.list_versions)
app.add_typer(_versions.version_app, name="version")
app.command("broker-config")(_broker.broker_config)
communicator_app = typer.Typer(help="The message router.", no_args_is_help=True)
communicator_app.command("run", help="Run a communicator (the same as `communicatord`).")(
    communicatord
)
app.add_typer(communicator_app, name="communicator")
app.add_typer(_playbook.playbook_app, name="playbook")
app.add_typer(_canary.app, name="canary")
app.add_typer(_bluegreen.app, name="bluegreen")
app.command("rollouts")(_rollouts.list_rollouts)
app.add_typer(_rollouts.rollout_app, name="rollout")
app.command("status")(_rollouts.status)
app.add_typer(_rollouts.controller_app, name="controller")
# The flag commands: _flags' app, with the rollout commands _flag_runs adds to it.
app.add_typer(_flag_runs.app, name="flag")
app.command("up")(_up.up)
app.command("demo")(_up.demo)
app.add_typer(_alerts.alerts_app, name="alerts")
app.add_typer(_shadow.shadow_app, name="shadow")
app.add_typer(_clock.clock_app, name="clock")


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

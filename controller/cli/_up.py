"""``deployctl up`` and ``deployctl demo``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from communicator import BackendError, ConfigError
from controller.cli._output import JSON_OPTION, Exit, console, emit, err_console, fail
from controller.cli._registry import load_settings
from controller.engine._rollout import Phase
from controller.engine._views import rollout_data
from controller.local._demo import run_demo
from controller.local._demo_bluegreen import run_bluegreen_demo
from controller.local._demo_shadow import run_shadow_demo
from controller.local._discovery import announce_up, running_up, withdraw_up
from controller.local._up import Stack


def up(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True)] = 0) -> None:
    """Run everything on this machine: embedded broker and Redis, a communicator, a controller."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings(as_json=False)
    already = running_up(settings)
    if already is not None:
        fail(
            f"deployctl up already runs here (pid {already['pid']}); the CLI uses it from any "
            "folder: stop it first to start another (or set DEPLOYCTL_HOME to another folder)",
            code=Exit.NO,
        )

    async def serve() -> None:
        async with Stack(settings) as stack:
            stopped = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stopped.set)
            environment = stack.environment()
            env_file = settings.home / "env"
            env_file.write_text("".join(f"export {k}={v}\n" for k, v in environment.items()))
            announce_up(settings, environment)
            try:
                console.print(
                    "[bold green]deployctl is up[/]: broker, Redis, communicator and controller."
                )
                console.print("`deployctl` finds it from any folder; services need:")
                for name, value in environment.items():
                    console.print(f"  export {name}={value}", markup=False)
                console.print(f"(saved in {env_file}) Ctrl-C stops everything.", markup=False)
                await _until_stopped(stack, stopped)
            finally:
                withdraw_up(settings)

    try:
        asyncio.run(serve())
    except RuntimeError as exc:
        fail(f"{exc}; see the log above, then run `deployctl up` again", code=Exit.BACKEND)
    except (BackendError, ConfigError) as exc:
        fail(str(exc), code=Exit.BACKEND if isinstance(exc, BackendError) else Exit.USAGE)


async def _until_stopped(stack: Stack, stopped: asyncio.Event) -> None:
    """Wait for a signal; raise RuntimeError if the communicator or controller ends first."""
    waiting = asyncio.create_task(stopped.wait(), name="up-signals")
    ended = asyncio.create_task(stack.ended(), name="up-ended")
    done, pending = await asyncio.wait({waiting, ended}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if ended in done:
        raise RuntimeError(ended.result())


def demo(
    scenario: Annotated[
        str,
        typer.Argument(
            help="canary (a rollout rolled back or promoted), bluegreen (a preview, then a "
            "switch) or shadow."
        ),
    ] = "canary",
    healthy: Annotated[
        bool, typer.Option(help="Roll out a healthy canary: it gets promoted.")
    ] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """A real rollout (or shadow) on a simulated fleet, shown live, with the story of why."""
    for name in ("", "communicator", "controller", "strategies", "amqtt"):
        logging.getLogger(name).setLevel(logging.ERROR)  # the live view tells the story
    view = err_console if as_json else console
    if scenario == "shadow":
        try:
            report = asyncio.run(run_shadow_demo(view))
        except (BackendError, ConfigError) as exc:
            fail(str(exc), code=Exit.BACKEND, as_json=as_json)
        emit(report, as_json=as_json, render=lambda: None)
        return
    if scenario == "bluegreen":
        _demo_bluegreen(view, as_json=as_json)
    if scenario != "canary":
        fail(f"unknown scenario {scenario!r}: use canary, bluegreen or shadow", as_json=as_json)
    try:
        rollout = asyncio.run(run_demo(view, healthy=healthy))
    except (BackendError, ConfigError) as exc:
        fail(str(exc), code=Exit.BACKEND, as_json=as_json)
    emit(rollout_data(rollout), as_json=as_json, render=lambda: None)
    expected = Phase.SUCCEEDED if healthy else Phase.ABORTED
    raise typer.Exit(int(Exit.OK if rollout.phase is expected else Exit.NO))


def _demo_bluegreen(view: Console, *, as_json: bool) -> NoReturn:
    """Run the blue-green demo; exit 0 only if every order went to the color it should."""
    try:
        report = asyncio.run(run_bluegreen_demo(view))
    except (BackendError, ConfigError) as exc:
        fail(str(exc), code=Exit.BACKEND, as_json=as_json)
    emit(report, as_json=as_json, render=lambda: None)
    raise typer.Exit(int(Exit.OK if report["ok"] else Exit.NO))

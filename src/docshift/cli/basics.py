"""``docshift emulator`` and ``docshift doctor``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType

import click

from docshift.cli.context import AppContext, pass_app
from docshift.commands.doctor import doctor
from docshift.emulator import Emulator, find_emulator
from docshift.errors import EmulatorError, ExitCode

__all__ = ["doctor_command", "emulator_command", "in_foreground", "stop_hint"]


@click.command("emulator")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on (default: a free one).")
def emulator_command(port: int | None) -> None:
    """Run the Firestore emulator until Ctrl-C (or `kill PID`, which it prints).

    Prints the `export FIRESTORE_EMULATOR_HOST=...` line to use it from another shell. Started in
    the background (`docshift emulator &`) or without a terminal, Ctrl-C does not reach it: it says
    so, and prints the `kill PID` that stops it (it stops the emulator cleanly on SIGTERM too).
    """
    env = {k: v for k, v in os.environ.items() if k != "FIRESTORE_EMULATOR_HOST"}
    location = find_emulator(env)
    # SIGTERM stops it like Ctrl-C does: as KeyboardInterrupt, so `with Emulator` stops the JVM even
    # while it is still starting. (Setting an Event from a signal handler can deadlock on its lock.)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Emulator(location, port=port) as emulator:
            click.echo(f"Firestore emulator ({location.source}) is running.")
            click.echo(f"export FIRESTORE_EMULATOR_HOST={emulator.host}")
            click.echo(stop_hint(os.getpid(), in_foreground()), err=True)
            with contextlib.suppress(KeyboardInterrupt):
                _wait_while_running(emulator)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("emulator stopped", err=True)


def in_foreground() -> bool:
    """Whether this process is in the foreground of the terminal it reads from: only then does a
    Ctrl-C typed there reach it (not under `&`, nor without a terminal, nor with SIGINT ignored,
    as a shell without job control starts a background job)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return False
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal, or stdin closed or replaced
        return False


def stop_hint(pid: int, foreground: bool) -> str:
    """How to stop the emulator command ``pid``: Ctrl-C where it reaches it, else ``kill``."""
    if foreground:
        return f"Press Ctrl-C to stop it (or, from another shell: kill {pid})."
    return f"Running in the background (pid {pid}); Ctrl-C does not reach it. Stop it with: kill {pid}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _wait_while_running(emulator: Emulator) -> None:
    process = emulator.process
    while process is not None and process.poll() is None:
        time.sleep(0.2)
    raise EmulatorError(
        "the Firestore emulator stopped by itself",
        hint="rerun `docshift emulator`; if it keeps stopping, check Java and free memory",
    )


@click.command("doctor")
@pass_app
def doctor_command(app: AppContext) -> None:
    """Check config, credentials, reachability and permissions, with a fix for each failure."""
    checks = doctor(app.config_file, app.flags)
    worst = ExitCode.OK
    for check in checks:
        mark = click.style(" ok ", fg="green") if check.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark}  {check.name:<12} {check.detail}")
        if not check.ok:
            if check.fix:
                click.echo(f"      {'':<12} fix: {check.fix}")
            worst = max(worst, check.exit_code)
    if worst:
        raise click.exceptions.Exit(int(worst))

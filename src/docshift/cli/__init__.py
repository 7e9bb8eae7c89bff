"""The ``docshift`` command line: a thin layer over :mod:`docshift.commands`.

Every error is caught once in :func:`main`, printed as one line with what to do next, and turned into
its documented exit code; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import click

from docshift.cli.backup import backup_command, restore_command
from docshift.cli.basics import doctor_command, emulator_command
from docshift.cli.context import AppContext
from docshift.cli.history import history_command, repair_command, stamp_command
from docshift.cli.migrations import init_command, new_command, status_command, unlock_command
from docshift.cli.operate import (
    monitor_command,
    pause_command,
    report_command,
    resume_command,
    runs_command,
    show_command,
    stop_command,
    throttle_command,
)
from docshift.cli.rollback import rollback_command
from docshift.cli.run import run_command
from docshift.cli.validate import validate_command, verify_command
from docshift.errors import DocshiftError, ExitCode

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="docshift", prog_name="docshift")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Config file (default: nearest docshift.toml or pyproject.toml [tool.docshift]).",
)
@click.option("--project", envvar=None, help="Google Cloud project id.")
@click.option("--database", help="Firestore database id (default: (default)).")
@click.option("--emulator-host", help="host:port of a Firestore emulator.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: Path | None,
    project: str | None,
    database: str | None,
    emulator_host: str | None,
    debug: bool,
) -> None:
    """docshift: safe, fast, resumable data migrations for Cloud Firestore.

    \b
    Exit codes: 0 ok, 1 failed, 2 usage or config, 3 bad data, 4 bad migration file,
    5 store error, 6 locked, 7 drift, 8 confirmation required, 9 pending migrations,
    10 interrupted (resumable), 11 memory limit, 12 emergency stop (circuit breaker, lost lease,
    store failing, run folder not writable), 13 too many failures, 14 validation below threshold,
    15 emulator missing.
    """
    flags = {"project": project, "database": database, "emulator_host": emulator_host}
    ctx.obj = AppContext(
        flags=flags,
        config_file=config_file,
        debug=debug,
        runs_dir_use=_RUNS_DIR_USE.get(ctx.invoked_subcommand or ""),
    )


_RUNS_DIR_USE = {
    "run": "write",
    "rollback": "write",
    "validate": "write",
    "verify": "write",
    "report": "write",
    "runs": "read",
    "show": "read",
    "monitor": "read",
    "pause": "read",
    "resume": "read",
    "throttle": "read",
    "stop": "read",
}
"""How each command uses runs_dir; checked before it reads or writes anything (exit 2 with a hint)."""


cli.add_command(emulator_command)
cli.add_command(doctor_command)
cli.add_command(init_command)
cli.add_command(new_command)
cli.add_command(status_command)
cli.add_command(unlock_command)
cli.add_command(history_command)
cli.add_command(stamp_command)
cli.add_command(repair_command)
cli.add_command(run_command)
cli.add_command(validate_command)
cli.add_command(verify_command)
cli.add_command(backup_command)
cli.add_command(restore_command)
cli.add_command(rollback_command)
cli.add_command(runs_command)
cli.add_command(show_command)
cli.add_command(report_command)
cli.add_command(monitor_command)
cli.add_command(pause_command)
cli.add_command(resume_command)
cli.add_command(throttle_command)
cli.add_command(stop_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map every failure to one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        returned = cli.main(args=argv, prog_name="docshift", standalone_mode=False)
        if isinstance(returned, int):  # click returns ctx.exit(code) instead of raising
            _exit(returned)
    except click.exceptions.Abort:
        _say("aborted at the prompt", "run the command again to answer it, or pass --yes")
        _exit(ExitCode.INTERRUPTED)
    except click.exceptions.Exit as exc:
        _exit(exc.exit_code)
    except click.ClickException as exc:
        _say(exc.format_message(), _usage_hint(exc))
        _exit(ExitCode.USAGE)
    except DocshiftError as exc:
        if debug:
            raise
        _say(exc.message, exc.hint or "rerun with --debug for the traceback")
        _exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("interrupted", _UNFINISHED)
        _exit(ExitCode.INTERRUPTED)
    except Exception as exc:
        if debug:
            raise
        _say(
            f"unexpected {type(exc).__name__}: {exc}",
            f"rerun with --debug for the traceback and report it; {_UNFINISHED}",
        )
        _exit(ExitCode.FAILED)
    _exit(ExitCode.OK)


_UNFINISHED = "`docshift runs` shows whether a run was left unfinished (it can be resumed or rolled back)"


def _say(message: str, hint: str) -> None:
    """An error as docshift prints every one: what happened, then what to do next."""
    click.echo(f"error: {message}\n  hint: {hint}", err=True)


def _usage_hint(exc: click.ClickException) -> str:
    """Where a mistyped command line is explained: the command's own --help."""
    context = exc.ctx if isinstance(exc, click.UsageError) else None
    if context is None or context.parent is None:
        return "see `docshift --help` for the commands and the global options"
    return f"see `{context.command_path} --help` for its arguments and options"


def _exit(code: int) -> NoReturn:
    """Exit with ``code``, whatever signal arrives from now on. The command is over and its exit
    code decided; while the interpreter shuts down Python restores the default handlers, and a
    SIGTERM or SIGINT would then kill the process with the signal instead of that exit code."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)

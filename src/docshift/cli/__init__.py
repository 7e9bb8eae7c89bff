"""The ``docshift`` command line: a thin layer over :mod:`docshift.commands`.

Every error is caught once in :func:`main`, printed as one line with what to do next, and turned into
its documented exit code; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import click

from docshift import __version__
from docshift.errors import DocshiftError, ExitCode, RunStopped

__all__ = ["cli", "main"]


class _LazyGroup(click.Group):
    """The command group, importing a command's module only when that command runs (or its own
    ``--help`` is asked for): ``docshift --version`` and ``docshift --help`` then import none of the
    engine, rich or the store, and ``docshift run`` none of the other commands' modules."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            module, attribute, short_help = _COMMANDS[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attribute)
            command.short_help = short_help
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`_COMMANDS`, without importing any command."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)])


@click.group(
    cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="docshift")
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
    from docshift.cli.context import AppContext  # deferred: it imports the config module

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
    "retry": "write",
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


_COMMANDS: dict[str, tuple[str, str, str]] = {
    "backup": (
        "docshift.cli.backup",
        "backup_command",
        "Back up collections into checksummed files in --out.",
    ),
    "doctor": (
        "docshift.cli.basics",
        "doctor_command",
        "Check config, credentials and access; a fix for each failure.",
    ),
    "emulator": (
        "docshift.cli.basics",
        "emulator_command",
        "Run the Firestore emulator in the foreground until Ctrl-C.",
    ),
    "history": (
        "docshift.cli.history",
        "history_command",
        "Every event of each migration, from the stored history.",
    ),
    "init": ("docshift.cli.migrations", "init_command", "Create docshift.toml and a migrations/ folder."),
    "monitor": ("docshift.cli.operate", "monitor_command", "Show the live view of a run in another process."),
    "new": ("docshift.cli.migrations", "new_command", "Write the next migration file from the template."),
    "pause": ("docshift.cli.operate", "pause_command", "Pause a running run: no new reads or commits."),
    "repair": (
        "docshift.cli.history",
        "repair_command",
        "Accept an applied migration's edited file (Flyway repair).",
    ),
    "report": ("docshift.cli.operate", "report_command", "(Re)build a run's report.json and report.html."),
    "restore": ("docshift.cli.backup", "restore_command", "Restore a backup into a project and database."),
    "resume": (
        "docshift.cli.operate",
        "resume_command",
        "Resume a paused run (a stopped one: run --resume).",
    ),
    "rollback": (
        "docshift.cli.rollback",
        "rollback_command",
        "Undo a run, or the migrations after --to or the last --steps.",
    ),
    "run": ("docshift.cli.run", "run_command", "Dry-run or execute the pending migrations, in order."),
    "retry": (
        "docshift.cli.retry",
        "retry_command",
        "Re-process the documents a run left in its dead-letter files.",
    ),
    "runs": ("docshift.cli.operate", "runs_command", "List runs, newest first, with their state and counts."),
    "show": ("docshift.cli.operate", "show_command", "Show one run: outcome, counts, health, next commands."),
    "stamp": (
        "docshift.cli.history",
        "stamp_command",
        "Mark a migration applied without running it (Alembic stamp).",
    ),
    "status": (
        "docshift.cli.migrations",
        "status_command",
        "Show the state of every migration (exit 9: some would run).",
    ),
    "stop": ("docshift.cli.operate", "stop_command", "Stop a running run gracefully (resumable)."),
    "test": (
        "docshift.cli.test",
        "test_command",
        "Check migrations on fixture pairs: result, idempotent, rules.",
    ),
    "throttle": ("docshift.cli.operate", "throttle_command", "Set a running run's write limit."),
    "unlock": ("docshift.cli.migrations", "unlock_command", "Remove the lease a run that died left behind."),
    "validate": (
        "docshift.cli.validate",
        "validate_command",
        "Check a migration's rules on its target; save a report.",
    ),
    "verify": (
        "docshift.cli.validate",
        "verify_command",
        "Compare a copy migration's source and target documents.",
    ),
}
"""Each command: the module and name of its click command (imported when it is used), and its line
in ``docshift --help``, whole at 80 columns (click would cut the first sentence of its help there);
the command's own ``--help`` gives all of it."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map every failure to one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        returned = cli.main(args=argv, prog_name="docshift", standalone_mode=False)
        if isinstance(returned, int):  # click returns ctx.exit(code) instead of raising
            _exit(returned)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click's own wrapping of a Ctrl-C
            _say("interrupted", _UNFINISHED)  # before the command's own handlers were in place
        else:
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
        _say(exc.message, _hint_of(exc))
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


def _hint_of(error: DocshiftError) -> str:
    """What to do next; for a run that stopped and can be resumed, that always includes the
    command resuming it by its run id, so that it is the last thing the command prints."""
    hint = error.hint or "rerun with --debug for the traceback"
    resume = error.resume_command if isinstance(error, RunStopped) else None
    if resume and resume not in hint:
        hint += f"; then resume with `{resume}`"
    return hint


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

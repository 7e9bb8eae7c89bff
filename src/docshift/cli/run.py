"""``docshift run``: a dry run with diffs by default; ``--execute`` applies."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from docshift.cli.confirm import confirm_destructive
from docshift.cli.context import AppContext, collect_flags, pass_app
from docshift.cli.display import (
    StatusFlags,
    close_display,
    display_hooks,
    print_run_end,
    status_options,
    watch_options,
)
from docshift.cli.output import console, err_console, print_change, summary_table
from docshift.cli.validate import print_run_validation
from docshift.commands.run import RunOptions, RunReport, RunResult, rate_limiter, result_of, resume_run, run
from docshift.commands.stages import parse_stages
from docshift.engine.controls import Controls
from docshift.errors import ExitCode, RunStopped, UsageError, ValidationFailed
from docshift.store import open_store

__all__ = ["run_command"]


class SignalHandlers:
    """First Ctrl-C/SIGTERM: stop gracefully. Second: stop at once (safe: the checkpoint never
    claims an unacknowledged write, and before-images precede every write).

    Once the run has finished (``controls.finished``, set by the command, or :meth:`finished`), a
    signal changes nothing any more: the data is migrated and recorded, so it is noted and ignored,
    and the process exits with the run's result (:func:`docshift.cli.main` keeps them ignored while
    the interpreter shuts down)."""

    def __init__(self, controls: Controls) -> None:
        self.controls = controls
        self.hits = 0

    def finished(self) -> None:
        self.controls.finished.set()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.hits += 1
        if self.controls.finished.is_set():
            if self.hits == 1:
                err_console.print(f"[dim]{name}: the run has already finished; exiting with its result[/]")
            return
        if self.hits == 1:
            err_console.print(
                f"[yellow]{name}: stopping after in-flight commits; Ctrl-C again to stop at once[/]"
            )
            self.controls.request_stop(f"interrupted by {name}")
        else:
            err_console.print("[red]stopping at once[/]; resume with docshift run --execute --resume")
            os._exit(int(ExitCode.INTERRUPTED))


def install_signal_handlers(controls: Controls) -> SignalHandlers:
    """Route SIGINT and SIGTERM to a :class:`SignalHandlers` (from the main thread only)."""
    handlers = SignalHandlers(controls)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handlers)
        signal.signal(signal.SIGTERM, handlers)
    return handlers


def _print_dry_run(report: RunReport) -> None:
    for outcome in report.outcomes:
        recorder = outcome.plan
        console.print(f"\n[bold]{outcome.migration.label}[/] - {outcome.migration.description}")
        console.print(f"  target: {outcome.migration.target.describe()}")
        if recorder is None:
            continue
        for sample in recorder.samples:
            print_change(sample["path"], sample["kind"], sample["changes"], sample.get("data"))
        for failure in recorder.failures:
            console.print(f"  [red]fail[/] {failure['path']}: {failure['stage']}: {failure['error']}")
        if recorder.not_idempotent:
            console.print(
                f"  [yellow]warning: up() is not idempotent on {len(recorder.not_idempotent)} sampled "
                f"document(s), e.g. {recorder.not_idempotent[0]}: running it twice changes them again[/]"
            )
        console.print(f"  full plan: {recorder.path}")


def _print_summary(report: RunReport, resumed: bool) -> None:
    if not report.outcomes:
        if resumed:  # its migrations had all finished what the run was asked to do
            console.print(f"run {report.run_id} has nothing left to do (see `docshift status`)")
        else:
            console.print("nothing to do: no pending migrations (see `docshift status`)")
        return
    rows = [(o.migration.label, o.result.counters, o.state) for o in report.outcomes]
    title = f"{'dry run' if not report.execute else 'run'} {report.run_id} on {report.target}"
    console.print(summary_table(title, rows, dry_run=not report.execute))
    for outcome in report.outcomes:
        if outcome.note:
            console.print(f"[yellow]{outcome.note}[/]")


@dataclass(frozen=True)
class RunFlags:
    """``docshift run``'s flags: the config they override, the run's options, and how it is shown."""

    execute: bool
    to: str | None
    only: str | None
    limit: int | None
    sample: float | None
    stages: str | None
    pause_between_stages: bool
    resume: str | None
    allow_drift: bool
    force: bool
    no_backup: bool
    batch_size: int | None
    concurrency: int | None
    shards: int | None
    max_writes_per_second: float | None
    max_failures: str | None
    scans: bool
    auto_rollback: bool
    as_json: bool
    quiet: bool
    yes: bool
    status: StatusFlags

    def config_flags(self) -> dict[str, Any]:
        flags: dict[str, Any] = {
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "shards": self.shards,
            "max_writes_per_second": self.max_writes_per_second,
            "max_failures": self.max_failures,
        }
        if self.no_backup:
            flags["backup"] = False
        return flags

    def options(self) -> RunOptions:
        if self.stages and (self.limit is not None or self.sample is not None):
            raise UsageError(
                "--stages chooses its own documents; it cannot be combined with --limit or --sample",
                hint="drop --limit and --sample (a stage of 1% is a sample), or drop --stages",
            )
        return RunOptions(
            execute=self.execute,
            to=self.to,
            only=self.only,
            limit=self.limit,
            sample_percent=self.sample,
            resume=self.resume,
            allow_drift=self.allow_drift,
            force=self.force,
            shards=self.shards,
            stages=parse_stages(self.stages) if self.stages else None,
            pause_between_stages=self.pause_between_stages,
            scans=self.scans,
            auto_rollback=self.auto_rollback,
        )


@click.command("run")
@click.option("--execute", is_flag=True, help="Apply the changes (default: dry run, writes nothing).")
@click.option("--to", "to", metavar="ID", help="Run pending migrations up to and including ID.")
@click.option("--only", metavar="ID", help="Run only migration ID.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Only the first N documents. With --execute the migration is recorded as partial "
    "(pending) and the next `run --execute` processes the rest.",
)
@click.option(
    "--sample",
    type=click.FloatRange(0, 100, min_open=True),
    metavar="PERCENT",
    help="Only a deterministic sample of documents (by path hash); with --execute recorded as "
    "partial, like --limit. To apply a percentage safely use --stages.",
)
@click.option(
    "--stages",
    metavar="1%,10%,50%,100%",
    help="Canary rollout: apply to growing deterministic subsets, checking a gate after each; "
    "a failed gate or trigger rolls every stage back.",
)
@click.option(
    "--pause-between-stages",
    is_flag=True,
    help="After each passed stage, wait for `docshift resume RUN_ID` (or deleting RUN/pause).",
)
@click.option(
    "--resume",
    "resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[RUN_ID]",
    help="Continue a stopped run (default: the latest unfinished one) on the project and "
    "database it was made on, with its own settings (write limit, batch size, concurrency, "
    "shards, max failures, backup, stages, --validate, --limit/--sample); a flag given "
    "here overrides one, and is recorded.",
)
@click.option("--allow-drift", is_flag=True, help="Run even though an applied migration file changed.")
@click.option(
    "--force", is_flag=True, help="Resume even though a migration file changed since its checkpoint."
)
@click.option("--no-backup", is_flag=True, help="Do not save before-images (rollback by restore impossible).")
@click.option("--batch-size", type=int, help="Documents per commit to start with.")
@click.option("--concurrency", type=int, help="Commits in flight.")
@click.option("--shards", type=int, help="Key ranges read concurrently.")
@click.option("--max-writes-per-second", type=float, help="Cap on write operations per second.")
@click.option(
    "--max-failures",
    help="Failed documents tolerated: a count (e.g. 100) or a percentage up to 100% (e.g. 0.5%).",
)
@click.option(
    "--validate",
    "scans",
    is_flag=True,
    help="Scan each migration's target against its rules before and after it runs.",
)
@click.option("--auto-rollback", is_flag=True, help="Roll the run back when the integrity gate stops it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON-lines events instead of text.")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (Cloud Firestore only asks).")
@status_options
@pass_app
@collect_flags(RunFlags)
def run_command(app: AppContext, flags: RunFlags) -> None:
    """Dry-run or execute the pending migrations, in order.

    Without --execute nothing is written: docshift reads and transforms the targets and prints what
    would change, with field-level diffs, and saves the full plan in the run folder. With --execute
    every update is guarded by the document's update time (application writes are never lost),
    before-images are on disk before each write is sent (for rollback), and progress is
    checkpointed: stop at any time (Ctrl-C) and continue with --resume. If the run folder cannot be
    written (disk full, read-only), the run stops at once with exit 12, saying what it wrote.
    """
    config = app.config(**flags.config_flags())
    options = flags.options()
    if options.resume:
        # The run's own project, database and settings, before anything uses them (the confirmation,
        # the write limit, the scans).
        resumed = resume_run(config, options)
        config, options = resumed.config, resumed.options
        if not flags.as_json:
            for line in resumed.describe():
                err_console.print(line)
    if options.execute or options.resume:
        confirm_destructive(config, "migrate data", flags.yes)
    if flags.no_backup and options.execute:
        err_console.print(
            "[yellow]warning: --no-backup: no before-images; this run cannot be rolled back by restore[/]"
        )
    store = open_store(config)
    error: BaseException | None = None
    try:
        controls = Controls(rate_limiter(config, store))
        display = display_hooks(flags.as_json, flags.quiet, controls)
        install_signal_handlers(controls)
        limit_text = f"{controls.limiter.limit:,.0f} ops/s" if controls.limiter.limit else "none"
        ramp = " with 500/50/5 ramp" if controls.limiter.ramp else ""
        if not flags.as_json:
            err_console.print(f"target: {store.info.describe()}; write limit: {limit_text}{ramp}")
        watch = watch_options(
            config, store, display, flags.status, as_json=flags.as_json, limit=options.limit
        )
        try:
            result = run(config, options, store=store, hooks=display, controls=controls, observe=watch)
        except BaseException as raised:
            found = result_of(raised)
            if found is None:
                raise
            error, result = raised, found
        finally:
            close_display(display)
    finally:
        store.close()
    _print_result(result, error, flags)


def _print_result(result: RunResult, error: BaseException | None, flags: RunFlags) -> None:
    """What the run did; then the error it ended with, raised (its exit code)."""
    if error is not None and not isinstance(error, ValidationFailed):  # the run did not finish
        if isinstance(error, RunStopped):
            if result.validation is not None and not flags.as_json:
                print_run_validation(result.validation, to_stderr=True)
            if error.resume_command:  # on stderr, so --json output on stdout stays pure JSON lines
                err_console.print(f"resume with: [bold]{error.resume_command}[/]")
        print_run_end("run", result.report_paths, result.report_error, flags.as_json)
        raise error
    print_run_end("run", result.report_paths, result.report_error, flags.as_json)
    if not flags.as_json:
        if not result.execute and not flags.quiet:
            _print_dry_run(result.run)
        _print_summary(result.run, resumed=bool(flags.resume))
        if result.validation is not None:
            print_run_validation(result.validation)
        if not result.execute and result.outcomes:
            console.print(f"dry run: nothing was written. Run folder: {Path(result.folder)}")
    if error is not None:
        raise error

"""``docshift run``: a dry run with diffs by default; ``--execute`` applies."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from docshift.cli.confirm import confirm_destructive
from docshift.cli.context import AppContext, pass_app
from docshift.cli.display import StatusFlags, display_hooks, observe_run, status_options
from docshift.cli.output import console, err_console, print_change, summary_table
from docshift.cli.validate import (
    finish_run_validation,
    print_run_validation,
    run_validation_failure,
    start_run_validation,
    stop_run_validation,
)
from docshift.commands.run import RunOptions, RunReport, rate_limiter, resume_run, run
from docshift.commands.stages import parse_stages
from docshift.engine.controls import Controls
from docshift.engine.hooks import FanOutHooks
from docshift.errors import ExitCode, RunStopped, UsageError
from docshift.store import open_store

__all__ = ["run_command"]


class SignalHandlers:
    """First Ctrl-C/SIGTERM: stop gracefully. Second: stop at once (safe: the checkpoint never
    claims an unacknowledged write, and before-images precede every write).

    Once the run has finished (:meth:`finished`), a signal changes nothing any more: the data is
    migrated and recorded, so it is noted and ignored, and the process exits with the run's result
    (:func:`docshift.cli.main` keeps them ignored while the interpreter shuts down)."""

    def __init__(self, controls: Controls) -> None:
        self.controls = controls
        self.hits = 0
        self.done = False

    def finished(self) -> None:
        self.done = True

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.hits += 1
        if self.done:
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
def run_command(
    app: AppContext,
    execute: bool,
    to: str | None,
    only: str | None,
    limit: int | None,
    sample: float | None,
    stages: str | None,
    pause_between_stages: bool,
    resume: str | None,
    allow_drift: bool,
    force: bool,
    no_backup: bool,
    batch_size: int | None,
    concurrency: int | None,
    shards: int | None,
    max_writes_per_second: float | None,
    max_failures: str | None,
    scans: bool,
    auto_rollback: bool,
    as_json: bool,
    quiet: bool,
    yes: bool,
    status: StatusFlags,
) -> None:
    """Dry-run or execute the pending migrations, in order.

    Without --execute nothing is written: docshift reads and transforms the targets and prints what
    would change, with field-level diffs, and saves the full plan in the run folder. With --execute
    every update is guarded by the document's update time (application writes are never lost),
    before-images are on disk before each write is sent (for rollback), and progress is
    checkpointed: stop at any time (Ctrl-C) and continue with --resume. If the run folder cannot be
    written (disk full, read-only), the run stops at once with exit 12, saying what it wrote.
    """
    flags: dict[str, Any] = {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "shards": shards,
        "max_writes_per_second": max_writes_per_second,
        "max_failures": max_failures,
    }
    if no_backup:
        flags["backup"] = False
    config = app.config(**flags)
    if stages and (limit is not None or sample is not None):
        raise UsageError(
            "--stages chooses its own documents; it cannot be combined with --limit or --sample",
            hint="drop --limit and --sample (a stage of 1% is a sample), or drop --stages",
        )
    options = RunOptions(
        execute=execute,
        to=to,
        only=only,
        limit=limit,
        sample_percent=sample,
        resume=resume,
        allow_drift=allow_drift,
        force=force,
        shards=shards,
        stages=parse_stages(stages) if stages else None,
        pause_between_stages=pause_between_stages,
        scans=scans,
        auto_rollback=auto_rollback,
    )
    if resume:
        # The run's own project, database and settings, before anything uses them (the confirmation,
        # the write limit, the scans).
        resumed = resume_run(config, options)
        config, options = resumed.config, resumed.options
        execute, scans, auto_rollback = options.execute, options.scans, options.auto_rollback
        if not as_json:
            for line in resumed.describe():
                err_console.print(line)
    if execute or resume:
        confirm_destructive(config, "migrate data", yes)
    if no_backup and execute:
        err_console.print(
            "[yellow]warning: --no-backup: no before-images; this run cannot be rolled back by restore[/]"
        )
    store = open_store(config)
    controls = Controls(rate_limiter(config, store))
    display = display_hooks(as_json, quiet, controls)
    signals = install_signal_handlers(controls)
    limit_text = f"{controls.limiter.limit:,.0f} ops/s" if controls.limiter.limit else "none"
    ramp = " with 500/50/5 ramp" if controls.limiter.ramp else ""
    if not as_json:
        err_console.print(f"target: {store.info.describe()}; write limit: {limit_text}{ramp}")
    try:
        with observe_run(
            config, store, controls, display, status, resume=resume, as_json=as_json, limit=options.limit
        ) as seen:
            if not resume:
                options = dataclasses.replace(options, run_id=seen.run_id)
            validation = start_run_validation(
                config, store, seen.hooks, controls, execute=execute, scans=scans, resume=resume
            )
            try:
                hooks = FanOutHooks(validation, seen.hooks)
                report = run(config, options, store=store, hooks=hooks, controls=controls)
                checked = finish_run_validation(validation, report.folder)
                failure = seen.ended_by = run_validation_failure(checked)
                signals.finished()  # from here on, only the report and the summary are left to write
            except RunStopped as stop:
                stop_run_validation(
                    validation,
                    stop,
                    config,
                    store,
                    folder=seen.folder,
                    auto_rollback=auto_rollback,
                    quiet=as_json,
                )
                if stop.resume_command:  # on stderr, so --json output on stdout stays pure JSON lines
                    err_console.print(f"resume with: [bold]{stop.resume_command}[/]")
                raise
    finally:
        store.close()
    if as_json:
        if failure is not None:
            raise failure
        return
    if not execute and not quiet:
        _print_dry_run(report)
    _print_summary(report, resumed=bool(resume))
    print_run_validation(checked)
    if not report.execute and report.outcomes:
        console.print(f"dry run: nothing was written. Run folder: {Path(report.folder)}")
    if failure is not None:
        raise failure

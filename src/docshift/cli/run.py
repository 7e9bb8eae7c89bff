"""``docshift run``: a dry run with diffs by default; ``--execute`` applies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
from docshift.cli.estimate import estimate_option, print_estimate
from docshift.cli.output import console, err_console, print_change, summary_table
from docshift.cli.read_time import note_read_time, read_time_option
from docshift.cli.signals import install_signal_handlers
from docshift.commands.observe import ObserveOptions
from docshift.commands.run import RunOptions, RunReport, RunResult, rate_limiter, result_of, resume_run, run
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.hooks import RunHooks
from docshift.errors import RunStopped, UsageError, ValidationFailed
from docshift.store import Store, open_store
from docshift.store.read_time import ReadTime, reads_text

__all__ = ["Shown", "install_signal_handlers", "observed_command", "run_command", "write_settings"]


def _print_dry_run(report: RunReport) -> None:
    for outcome in report.outcomes:
        recorder = outcome.plan
        console.print(f"\n[bold]{outcome.migration.label}[/] - {outcome.migration.description}")
        console.print(f"  target: {outcome.migration.target.describe()}")
        if recorder is None:
            continue
        for sample in recorder.samples:
            print_change(sample["path"], sample["kind"], sample["changes"], sample.get("data"))
        writes = sum(outcome.result.counters.get(k, 0) for k in ("updated", "created", "deleted"))
        if outcome.migration.is_script and writes > len(recorder.samples):
            more = writes - len(recorder.samples)
            console.print(f"  … and {more:,} more write(s), listed in the full plan")
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
    console.print(reads_text(report.read_time), markup=False)
    for outcome in report.outcomes:
        if outcome.note:
            console.print(f"[yellow]{outcome.note}[/]")


class WriteFlags(Protocol):
    """The flags every writing run command (``run``, ``retry``) has, over the config's settings."""

    @property
    def batch_size(self) -> int | None: ...
    @property
    def concurrency(self) -> int | None: ...
    @property
    def max_writes_per_second(self) -> float | None: ...
    @property
    def max_failures(self) -> str | None: ...
    @property
    def no_backup(self) -> bool: ...


def write_settings(flags: WriteFlags, **more: Any) -> dict[str, Any]:
    """The config settings ``flags`` override (a flag not given overrides nothing)."""
    settings: dict[str, Any] = {
        "batch_size": flags.batch_size,
        "concurrency": flags.concurrency,
        "max_writes_per_second": flags.max_writes_per_second,
        "max_failures": flags.max_failures,
        **more,
    }
    if flags.no_backup:
        settings["backup"] = False
    return settings


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
    runner: str
    beam_options: tuple[str, ...]
    read_time: ReadTime | None
    as_json: bool
    quiet: bool
    yes: bool
    status: StatusFlags
    estimate: bool = False

    def config_flags(self) -> dict[str, Any]:
        return write_settings(self, shards=self.shards)

    def refuse_contradictions(self) -> None:
        """Flags that contradict each other, or mean nothing without another, are refused before
        anything runs (rather than one of them silently ignored)."""
        resume = self.resume is not None
        refused = [
            (
                self.only is not None and self.to is not None,
                "--only runs one migration and --to every pending one up to an id: give one of them",
                "--only ID for that migration alone, --to ID for every pending one up to it",
            ),
            (
                resume and (self.only is not None or self.to is not None),
                f"--resume continues a run's own migrations; {'--only' if self.only else '--to'} "
                "cannot choose others",
                "drop it to resume the run, or start a new run with it (docshift run --execute …)",
            ),
            (
                bool(self.stages) and (self.limit is not None or self.sample is not None),
                "--stages chooses its own documents; it cannot be combined with --limit or --sample",
                "drop --limit and --sample (a stage of 1% is a sample), or drop --stages",
            ),
            (
                self.force and not resume,
                "--force only applies to --resume (a migration file changed since the run's checkpoint)",
                "drop --force; to run despite an applied migration's changed file use --allow-drift",
            ),
            (
                self.pause_between_stages and not self.stages and not resume,
                "--pause-between-stages needs --stages (there are no stages to pause between)",
                "add --stages, e.g. --stages 1%,10%,100%, or drop --pause-between-stages",
            ),
            (
                self.auto_rollback and not self.execute and not resume,
                "--auto-rollback rolls back what a run wrote; a dry run writes nothing",
                "add --execute, or drop --auto-rollback",
            ),
        ]
        for contradicted, message, hint in refused:
            if contradicted:
                raise UsageError(message, hint=hint)

    def options(self) -> RunOptions:
        self.refuse_contradictions()
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
            stages=_stages(self.stages),
            pause_between_stages=self.pause_between_stages,
            scans=self.scans,
            auto_rollback=self.auto_rollback,
            runner=self.runner,
            beam_options=tuple(self.beam_options),
            read_time=self.read_time.at if self.read_time is not None else None,
        )


def _stages(given: str | None) -> tuple[float, ...] | None:
    """``--stages`` parsed; canary stages (and the rollback they may end with) are imported only
    for a run that has them."""
    if not given:
        return None
    from docshift.commands.stages import parse_stages

    return parse_stages(given)


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
@click.option(
    "--concurrency",
    type=int,
    help="Commits in flight, a fixed figure (default 0: auto, from the commit latency; docs/latency.md).",
)
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
@click.option(
    "--runner",
    type=click.Choice(["engine", "beam"]),
    default="engine",
    show_default=True,
    help="Where --execute runs: this process, or each migration as an Apache Beam pipeline over "
    "--shards partitions, on the DirectRunner unless --beam-option runner=... says otherwise "
    "(pip install 'docshift[beam]'; docs/beam.md). A resume keeps the run's runner.",
)
@click.option(
    "--beam-option",
    "beam_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A Beam pipeline option for --runner beam (repeat it), e.g. direct_num_workers=2, "
    "runner=DataflowRunner, max_num_workers=32 (divides the write limit); run_files=URL puts the "
    "workers' journals and records under URL (gs://...) through Beam's FileSystems.",
)
@read_time_option("the dry run's targets (an execute always reads live data)")
@estimate_option("the run with --execute")
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
    A script migration (apply(ctx), see docs/script-migrations.md) runs the same way: its dry run
    lists its writes, and its resume continues from its last ctx.checkpoint.
    """
    config = app.config(**flags.config_flags())
    options = flags.options()
    if flags.estimate:
        from docshift.commands.estimate import estimate_run  # only an estimate needs it

        print_estimate(estimate_run(config, options), flags.as_json)
        return
    note_read_time(flags.read_time)
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
    shown = Shown(flags.as_json, flags.quiet, flags.status, execute=options.execute, limit=options.limit)
    result, error = observed_command(
        config,
        shown,
        lambda store, display, controls, watch: run(
            config, options, store=store, hooks=display, controls=controls, observe=watch
        ),
    )
    _print_result(result, error, flags, config)


@dataclass(frozen=True)
class Shown:
    """How a run-like command (``run``, ``retry``) is shown, and what its signal handlers say."""

    as_json: bool
    quiet: bool
    status: StatusFlags
    kind: str = "run"
    execute: bool = True
    limit: int | None = None


def observed_command(
    config: Config,
    shown: Shown,
    work: Callable[[Store, RunHooks, Controls, ObserveOptions], RunResult],
) -> tuple[RunResult, BaseException | None]:
    """Run ``work`` (the library's whole command) on the store, with the write limit, the display,
    the signal handlers (which learn the run id) and the status endpoint; what it did and the
    error it ended with (a stop's result is found from the error)."""
    store = open_store(config)
    error: BaseException | None = None
    try:
        controls = Controls(rate_limiter(config, store))
        display = display_hooks(shown.as_json, shown.quiet, controls)
        signals = install_signal_handlers(controls, kind=shown.kind, execute=shown.execute)
        limit_text = f"{controls.limiter.limit:,.0f} ops/s" if controls.limiter.limit else "none"
        ramp = " with 500/50/5 ramp" if controls.limiter.ramp else ""
        if not shown.as_json:
            err_console.print(f"target: {store.info.describe()}; write limit: {limit_text}{ramp}")
        watch = watch_options(
            config, store, display, shown.status, as_json=shown.as_json, limit=shown.limit, signals=signals
        )
        try:
            result = work(store, display, controls, watch)
        except BaseException as raised:
            found = result_of(raised)
            if found is None:
                raise
            error, result = raised, found
        finally:
            close_display(display)
    finally:
        store.close()
    return result, error


def _print_result(result: RunResult, error: BaseException | None, flags: RunFlags, config: Config) -> None:
    """What the run did; then the error it ended with, raised (its exit code)."""
    # Deferred: the validation's printing (and the validate and verify commands it lives with) is
    # needed only now, after the run.
    from docshift.cli.validate import print_run_validation

    if error is not None and not isinstance(error, ValidationFailed):  # the run did not finish
        if isinstance(error, RunStopped) and result.validation is not None and not flags.as_json:
            print_run_validation(result.validation, to_stderr=True)
        # The resume command is said last, in the error's hint (docshift.cli.main), on stderr.
        print_run_end("run", result.report_paths, result.report_error, flags.as_json)
        raise error
    print_run_end("run", result.report_paths, result.report_error, flags.as_json)
    if flags.as_json and not result.execute and result.outcomes:
        # The summary's estimate line, as the last JSON line: what executing this dry run will bill.
        import orjson

        from docshift.commands.estimate import dry_run_estimate

        estimate = dry_run_estimate(config, result.run)
        click.echo(orjson.dumps({"event": "estimate", **estimate.to_json()}).decode())
    if not flags.as_json:
        if not result.execute and not flags.quiet:
            _print_dry_run(result.run)
        _print_summary(result.run, resumed=bool(flags.resume))
        if not result.execute and result.outcomes:
            from docshift.commands.estimate import dry_run_estimate

            console.print(dry_run_estimate(config, result.run).summary(), markup=False)
        if result.validation is not None:
            print_run_validation(result.validation)
        if not result.execute and result.outcomes:
            console.print(f"dry run: nothing was written. Run folder: {Path(result.folder)}")
    if error is not None:
        raise error

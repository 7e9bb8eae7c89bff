"""``docshift rollback``: undo a run (dry run by default)."""

from __future__ import annotations

from dataclasses import dataclass

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
from docshift.cli.output import CountsTable, console, err_console, print_change
from docshift.cli.signals import install_signal_handlers
from docshift.commands.rollback import (
    RollbackOptions,
    RollbackReport,
    result_of,
    rollback,
    rollback_target,
)
from docshift.commands.session import rate_limiter
from docshift.engine.controls import Controls
from docshift.errors import RollbackConflicts, UsageError
from docshift.runfolder.layout import MigrationFolder
from docshift.store import open_store

__all__ = ["rollback_command"]

_RESTORE_COLUMNS = ("restored", "recreated", "deleted", "unchanged", "conflicts", "verified", "mismatched")
_DOWN_COLUMNS = ("updated", "deleted", "created", "unchanged", "failed", "conflicts")


def _print(report: RollbackReport, *, quiet: bool = False) -> None:
    """Each migration undone: how, its sample diffs (not with --quiet), its counts and files."""
    if not report.items:
        console.print("nothing to roll back")
        return
    verb = "would be " if not report.execute else ""
    for item in report.items:
        runs = item.source_runs
        if len(runs) > 1:  # a migration applied over several runs: all of them are undone
            every = "both" if len(runs) == 2 else f"all {len(runs)}"
            applied = f"applied by runs {', '.join(reversed(runs))}: undoing {every}, newest first"
        else:
            applied = f"applied by run {runs[0]}"
        if not item.runs_known:
            applied += " and earlier runs its history no longer names"
        console.print(
            f"\n[bold]{item.migration.label}[/]: {verb}undone by [bold]{item.strategy}[/] ({applied})"
        )
        samples = item.restore.samples if item.restore else (item.plan.samples if item.plan else [])
        for sample in [] if quiet else samples:
            if isinstance(sample, tuple):
                path, kind, changes = sample
                print_change(
                    path,
                    {"restore": "update", "check": "update", "recreate": "create"}.get(kind, kind),
                    changes,
                )
            else:
                print_change(sample["path"], sample["kind"], sample["changes"], sample.get("data"))
        columns = _RESTORE_COLUMNS if item.restore else _DOWN_COLUMNS
        by_run = item.by_run if len(item.by_run) > 1 else []
        rows = [[run, *(f"{counters.get(c, 0):,}" for c in columns)] for run, counters in by_run]
        rows.append([*(["total"] if by_run else []), *(f"{item.counters.get(c, 0):,}" for c in columns)])
        console.print(CountsTable([*(["run"] if by_run else []), *columns], rows, labelled=bool(by_run)))
        conflicts = MigrationFolder(item.folder).conflicts
        if conflicts.exists():
            console.print(f"  [yellow]conflicts (left alone): {conflicts}[/]")
        mismatches = MigrationFolder(item.folder).mismatches
        if mismatches.exists():
            console.print(
                f"  [red]not equal to their before-images{' after it' if report.execute else ''}: "
                f"{mismatches}[/]"
            )
        if item.note:
            console.print(f"  [yellow]{item.note}[/]")
    if not report.execute:
        console.print("\ndry run: nothing was written; add --execute to apply")


@dataclass(frozen=True)
class RollbackFlags:
    """``docshift rollback``'s flags: the rollback's options, and how it is shown."""

    run_id: str | None
    to: str | None
    steps: int | None
    strategy: str
    execute: bool
    force: bool
    resume: str | None
    runner: str
    beam_options: tuple[str, ...]
    as_json: bool
    quiet: bool
    yes: bool
    status: StatusFlags
    estimate: bool = False

    def options(self) -> RollbackOptions:
        named = [
            name
            for name, given in (("RUN_ID", self.run_id), ("--to", self.to), ("--steps", self.steps))
            if given is not None
        ]
        if self.resume is not None and named:
            raise UsageError(
                f"--resume continues a stopped rollback; {' and '.join(named)} would choose a new one",
                hint="`docshift rollback --resume [ROLLBACK_ID] --execute` resumes one (`docshift runs` "
                f"lists them); drop --resume to roll back what {' and '.join(named)} names",
            )
        return RollbackOptions(
            run_id=self.run_id,
            to=self.to,
            steps=self.steps,
            strategy=self.strategy,
            execute=self.execute,
            force=self.force,
            resume=self.resume,
            runner=self.runner,
            beam_options=tuple(self.beam_options),
        )


@click.command("rollback")
@click.argument("run_id", required=False)
@click.option(
    "--to",
    "to",
    metavar="MIGRATION_ID",
    help="Undo every migration applied after MIGRATION_ID, newest first, each from every "
    "run that applied it.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    metavar="N",
    help="Undo the N newest migrations applied here, newest first (like --to the one below them).",
)
@click.option(
    "--strategy",
    type=click.Choice(["auto", "down", "restore"]),
    default="auto",
    show_default=True,
    help="restore: put back the saved before-images; down: apply the migration's down() to "
    "each document the run changed; auto: down when the migration has one. Either way "
    "the result is checked against the before-images.",
)
@click.option("--execute", is_flag=True, help="Apply (default: dry run, writes nothing).")
@click.option(
    "--force",
    is_flag=True,
    help="Also overwrite documents changed after the migration wrote them (default: leave "
    "them and list them as conflicts).",
)
@click.option(
    "--resume",
    "resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[ROLLBACK_ID]",
    help="Continue a stopped rollback (default: the latest unfinished one).",
)
@estimate_option("the rollback with --execute")
@click.option(
    "--runner",
    type=click.Choice(["engine", "beam"]),
    default="engine",
    show_default=True,
    help="Where --execute undoes a --runner beam run: this process, or as an Apache Beam pipeline "
    "over the run's partitions (pip install 'docshift[beam]'; docs/beam.md). A resume keeps the "
    "rollback's runner.",
)
@click.option(
    "--beam-option",
    "beam_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A Beam pipeline option for --runner beam (repeat it), e.g. direct_num_workers=2, "
    "runner=DataflowRunner, run_files=gs://BUCKET/runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON-lines events.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (Cloud Firestore only asks).")
@status_options
@pass_app
@collect_flags(RollbackFlags)
def rollback_command(app: AppContext, flags: RollbackFlags) -> None:
    """Undo run RUN_ID, everything applied after --to MIGRATION_ID, or the --steps N newest.

    Works on the project and database the run was made on (a different --project/--database is
    refused). A migration applied over several runs since it was last rolled back (a --limit run,
    then a full one; an interrupted or failed run, then a new one) is undone from every one of
    them, newest first, whichever is named. Only the documents the runs changed are touched, each
    only while it still holds what the run wrote: a document the application changed since is a
    conflict, left alone and listed in conflicts.jsonl, unless --force. Afterwards every undone
    document is compared with its before-image; one that differs (a down() that does not undo
    up()) is listed in mismatches.jsonl and the command exits 1. Only a migration undone without
    conflicts or mismatches is recorded as rolled back. Dry run by default: it simulates the whole
    rollback, newest first, and prints the counts, conflicts and mismatches the execute would
    have. Checkpointed and resumable like any run.
    """
    options = flags.options()
    config = rollback_target(app.config(), options)  # the project and database the run was made on
    if flags.estimate:
        from docshift.commands.estimate import estimate_rollback  # only an estimate needs it

        print_estimate(estimate_rollback(config, options), flags.as_json)
        return
    if options.execute or options.resume:
        confirm_destructive(config, "roll back migrations", flags.yes)
    store = open_store(config)
    try:
        if not flags.as_json:
            err_console.print(f"target: {store.info.describe()}")
        controls = Controls(rate_limiter(config, store))
        signals = install_signal_handlers(controls, kind="rollback", execute=options.execute)
        display = display_hooks(flags.as_json, flags.quiet, controls)
        watch = watch_options(config, store, display, flags.status, as_json=flags.as_json, signals=signals)
        try:
            report = rollback(config, options, store=store, hooks=display, controls=controls, observe=watch)
        except BaseException as error:
            close_display(display)
            done = result_of(error)
            if done is not None:  # the resume command, if any, is said last (docshift.cli.main)
                print_run_end("rollback", done.report_paths, done.report_error, flags.as_json)
                if isinstance(error, RollbackConflicts) and not flags.as_json:
                    _print(done, quiet=flags.quiet)  # what was undone, and where the conflicts are listed
            raise
        close_display(display)
    finally:
        store.close()
    print_run_end("rollback", report.report_paths, report.report_error, flags.as_json)
    if not flags.as_json:
        _print(report, quiet=flags.quiet)

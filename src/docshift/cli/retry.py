"""``docshift retry RUN_ID``: re-process a run's dead letters; a dry run with diffs by default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from docshift.cli.confirm import confirm_destructive
from docshift.cli.context import AppContext, collect_flags, pass_app
from docshift.cli.display import (
    StatusFlags,
    print_run_end,
    status_options,
)
from docshift.cli.output import console, err_console, print_change, summary_table
from docshift.cli.run import Shown, observed_command, write_settings
from docshift.cli.validate import print_run_validation
from docshift.commands.retry import RetryOptions, RetryOutcome, retry, retry_target
from docshift.commands.run import RunOptions, RunResult, load_run_info, resume_run
from docshift.errors import RunStopped, ValidationFailed
from docshift.runfolder.layout import MigrationFolder

__all__ = ["retry_command"]


@dataclass(frozen=True)
class RetryFlags:
    """``docshift retry``'s flags."""

    run_id: str | None
    execute: bool
    resume: str | None
    allow_drift: bool
    force: bool
    no_backup: bool
    batch_size: int | None
    concurrency: int | None
    max_writes_per_second: float | None
    max_failures: str | None
    as_json: bool
    quiet: bool
    yes: bool
    status: StatusFlags

    def config_flags(self) -> dict[str, Any]:
        return write_settings(self)

    def options(self) -> RetryOptions:
        return RetryOptions(
            run_id=self.run_id,
            execute=self.execute,
            resume=self.resume,
            allow_drift=self.allow_drift,
            force=self.force,
        )


@click.command("retry")
@click.argument("run_id", required=False)
@click.option("--execute", is_flag=True, help="Apply the changes (default: dry run, writes nothing).")
@click.option(
    "--resume",
    "resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[RETRY_ID]",
    help="Continue a stopped retry (default: the latest unfinished one) with its own settings.",
)
@click.option(
    "--allow-drift",
    is_flag=True,
    help="Retry although an applied migration file changed (a fixed migration did): its new "
    "checksum is adopted and recorded.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Resume although a migration file changed since its checkpoint; retry a run's dead "
    "letters again although a finished retry took them up.",
)
@click.option("--no-backup", is_flag=True, help="Do not save before-images (rollback by restore impossible).")
@click.option("--batch-size", type=int, help="Documents per commit to start with.")
@click.option("--concurrency", type=int, help="Commits in flight.")
@click.option("--max-writes-per-second", type=float, help="Cap on write operations per second.")
@click.option(
    "--max-failures",
    help="Failed documents tolerated: a count (e.g. 100) or a percentage up to 100% (e.g. 0.5%).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON-lines events instead of text.")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (Cloud Firestore only asks).")
@status_options
@pass_app
@collect_flags(RetryFlags)
def retry_command(app: AppContext, flags: RetryFlags) -> None:
    """Re-process the documents a run left in its dead-letter files.

    After fixing the migration (or the data), retry the documents that failed in run RUN_ID
    (`docshift status` names the runs that left some). A retry is a run: a dry run with diffs
    unless --execute; guarded writes, before-images, checkpoints (--resume), the lock and the
    history, in a run folder of its own; `docshift rollback RETRY_ID` undoes it with the runs it
    completes. Documents deleted since, or no longer in the migration's target, are counted and
    left alone; documents that fail again are listed in the retry's dead-letter file, for a
    `docshift retry RETRY_ID`.
    """
    config = app.config(**flags.config_flags())
    options = flags.options()
    if options.resume:
        resumed = resume_run(config, RunOptions(resume=options.resume), "retry")
        config = resumed.config
        if not flags.as_json:
            for line in resumed.describe():
                err_console.print(line)
        execute = resumed.options.execute
    else:
        config = retry_target(config, options)
        execute = options.execute
    if execute:
        confirm_destructive(config, "retry failed documents", flags.yes)
    shown = Shown(flags.as_json, flags.quiet, flags.status, kind="retry", execute=execute)
    result, error = observed_command(
        config,
        shown,
        lambda store, display, controls, watch: retry(
            config, options, store=store, hooks=display, controls=controls, observe=watch
        ),
    )
    _print_result(result, error, flags)


def _print_outcomes(result: RunResult, flags: RetryFlags) -> None:
    for outcome in result.outcomes:
        if not isinstance(outcome, RetryOutcome):
            continue
        if not result.execute and not flags.quiet and outcome.plan is not None:
            console.print(f"\n[bold]{outcome.migration.label}[/] - {outcome.migration.description}")
            for sample in outcome.plan.samples:
                print_change(sample["path"], sample["kind"], sample["changes"], sample.get("data"))
            for failure in outcome.plan.failures:
                console.print(f"  [red]fail[/] {failure['path']}: {failure['stage']}: {failure['error']}")
            console.print(f"  full plan: {outcome.plan.path}")
    rows = [(o.migration.label, o.result.counters, o.result.state) for o in result.outcomes]
    if rows:
        title = (
            f"{'dry run of retry' if not result.execute else 'retry'} {result.run_id} on {result.run.target}"
        )
        console.print(summary_table(title, rows, dry_run=not result.execute))
    for outcome in result.outcomes:
        if isinstance(outcome, RetryOutcome):
            console.print(outcome.describe())
            failed = outcome.result.counters.get("failed", 0)
            if failed and result.execute:
                letters = MigrationFolder(Path(outcome.result.folder)).dead_letters
                console.print(
                    f"[yellow]{failed:,} document(s) failed again (listed in {letters}): fix them, then "
                    f"docshift retry {result.run_id}[/]"
                )


def _print_result(result: RunResult, error: BaseException | None, flags: RetryFlags) -> None:
    """What the retry did; then the error it ended with, raised (its exit code)."""
    if error is not None and not isinstance(error, ValidationFailed):
        if isinstance(error, RunStopped) and result.validation is not None and not flags.as_json:
            print_run_validation(result.validation, to_stderr=True)
        # The resume command is said last, in the error's hint (docshift.cli.main), on stderr.
        print_run_end("retry", result.report_paths, result.report_error, flags.as_json)
        raise error
    print_run_end("retry", result.report_paths, result.report_error, flags.as_json)
    if not flags.as_json:
        _print_outcomes(result, flags)
        if result.validation is not None:
            print_run_validation(result.validation)
        if not result.execute and result.outcomes:
            of_run = (load_run_info(result.folder).get("retry") or {}).get("of_run")
            drift = (" --allow-drift" if flags.allow_drift else "") + (" --force" if flags.force else "")
            console.print(f"dry run: nothing was written. Run folder: {Path(result.folder)}")
            console.print(f"to apply it: docshift retry {of_run} --execute{drift}", soft_wrap=True)
    if error is not None:
        raise error

"""``docshift history``, ``stamp`` and ``repair``: read the history, and change it without running."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

import click
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from docshift.cli.confirm import confirm_destructive
from docshift.cli.context import AppContext, pass_app
from docshift.cli.output import CountsTable
from docshift.commands.history import HistoryReport, MigrationHistory, history
from docshift.commands.repair import RepairOptions, RepairPlan, repair
from docshift.commands.stamp import StampOptions, StampPlan, stamp
from docshift.config import Config
from docshift.history import EventKind, HistoryEvent
from docshift.values import Timestamp

__all__ = ["history_command", "history_table", "repair_command", "stamp_command"]

_COUNT_ORDER = ("read", "updated", "created", "deleted", "unchanged", "failed", "conflicts")
_STYLES = {
    EventKind.STARTED: "cyan",
    EventKind.APPLIED: "green",
    EventKind.PARTIAL: "yellow",
    EventKind.INTERRUPTED: "cyan",
    EventKind.FAILED: "red",
    EventKind.ROLLED_BACK: "magenta",
    EventKind.STAMPED: "green",
    EventKind.REPAIRED: "yellow",
    EventKind.DRIFT_ACCEPTED: "yellow",
    EventKind.RETRY_STARTED: "cyan",
    EventKind.RETRIED: "green",
}


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _when(stamp: Timestamp) -> str:
    return stamp.to_datetime().strftime("%Y-%m-%d %H:%M:%S")


def counts_text(counts: Mapping[str, int]) -> str:
    """Non-zero counters, the usual ones first: "read 5, updated 5"."""
    order = {key: index for index, key in enumerate(_COUNT_ORDER)}
    keys = sorted((k for k, v in counts.items() if v), key=lambda k: (order.get(k, len(order)), k))
    return ", ".join(f"{key} {counts[key]:,}" for key in keys)


def _details(event: HistoryEvent) -> str:
    parts = []
    if event.counts:
        parts.append(counts_text(event.counts))
    if event.previous_checksum:
        parts.append(f"checksum was {event.previous_checksum[:12]}")
    if event.reason:
        parts.append(f"reason: {event.reason}")
    if event.landed:
        parts.append(f"landed after the cursor: {counts_text(event.landed)}")
    if event.error:
        parts.append(f"error: {event.error}")
    return "; ".join(parts)


@click.command("history", short_help="Show every event of each migration (Alembic history, Flyway info).")
@click.argument("migration", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@pass_app
def history_command(app: AppContext, migration: str | None, as_json: bool) -> None:
    """Show every event of each migration: started, applied, partial, failed,
    interrupted, rolled back, stamped, repaired, drift accepted; when, by whom, in which run,
    with which file checksum and counts.

    MIGRATION (an id such as 0003, or 0003_add_tier) shows that one alone. Read from the
    database's history only; each record keeps its latest 50 events.
    """
    report = history(app.config(), migration)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _print_history(report)


def _print_history(report: HistoryReport) -> None:
    console = _console()
    console.print(f"[bold]{escape(report.where)}[/bold]")
    if not report.migrations:
        console.print("no history yet: nothing was run or stamped on this database")
        return
    for item in report.migrations:
        _print_migration(console, item)


def _print_migration(console: Console, item: MigrationHistory) -> None:
    record = item.record
    console.print()
    about = f" ({escape(record.description)})" if record is not None and record.description else ""
    kind = " [dim]\\[script][/dim]" if item.kind == "script" else ""
    console.print(f"[bold]{escape(item.label)}[/bold]{kind}: {escape(item.state)}{about}")
    if record is None:
        console.print("  no history here: never run or stamped on this database")
        return
    if item.earlier_dropped:
        console.print(f"  (the latest {len(item.events)} events; earlier ones are no longer kept)")
    console.print(Padding(history_table(item), (0, 0, 0, 2)))


def history_table(item: MigrationHistory) -> CountsTable:
    """One row per event; narrower than the table (80 columns), each event stacks: its time and
    kind, then who, run and checksum, and its details wrapped, never cutting one."""
    rows: list[list[str | Text]] = [
        [
            _when(event.at),
            Text(event.kind.value.replace("_", " "), style=_STYLES[event.kind]),
            event.user,
            event.run_id,
            event.checksum[:12],
            _details(event),
        ]
        for event in item.events
    ]
    columns = ["when (UTC)", "event", "by", "run", "checksum", "details"]
    return CountsTable(
        columns, rows, state_column=1, wrapped=("details",), text=("by", "run", "checksum"), plain=True
    )


def _yes_option(function: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--yes", is_flag=True, help="Do not ask for confirmation (Cloud Firestore only asks)."
    )(function)


def _reason_option(function: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--reason", required=True, help="Why (required): recorded in the history with who and when."
    )(function)


@click.command("stamp", short_help="Mark migration ID applied without running it (Alembic stamp).")
@click.argument("migration_id", metavar="ID")
@_reason_option
@click.option(
    "--include-older",
    is_flag=True,
    help="Also stamp every older migration still pending or rolled back (without it, stamp "
    "refuses to leave them behind).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be recorded; record nothing.")
@_yes_option
@pass_app
def stamp_command(
    app: AppContext, migration_id: str, reason: str, include_older: bool, dry_run: bool, yes: bool
) -> None:
    """Mark migration ID applied without running it (Alembic stamp, Flyway baseline).

    \b
    For a database whose data already has the migration's shape, e.g. when adopting
    docshift. Writes no data: it records a `stamped` event (who, when, --reason, the
    file's checksum) and `status` and `run` then take ID as applied. A stamped
    migration cannot be rolled back (docshift wrote nothing to undo).
    \b
    Refused when an older migration is still pending or rolled back, unless
    --include-older stamps those too; refused for a migration a run wrote part of
    (partial, failed, interrupted): finish or roll back that run instead. Takes the
    lease like a run; on Cloud Firestore it prints what it will record and asks first.
    """
    config = app.config()
    options = StampOptions(migration_id, reason, include_older=include_older, dry_run=dry_run)
    result = stamp(config, options, confirm=lambda plan: _confirm_stamp(config, plan, yes))
    plan = result.plan
    if plan.empty:
        click.echo(f"nothing to stamp: {plan.target.label} is {plan.target_state.value.replace('_', ' ')}")
    elif dry_run:
        _print_stamp_plan(plan)
        click.echo("dry run: nothing recorded (run it without --dry-run to record this)")
    elif result.recorded:
        labels = ", ".join(record.label for record in result.records)
        click.echo(f"stamped {labels} (stamp {result.edit_id}); `docshift history` shows it")


def _print_stamp_plan(plan: StampPlan) -> None:
    click.echo(f"stamp on {plan.where}: record as applied without running them (no data is written):")
    width = max(len(item.migration.label) for item in plan.items)
    for item in plan.items:
        was = item.was.value.replace("_", " ")
        click.echo(f"  {item.migration.label:<{width}}  {was:<11}  checksum {item.migration.checksum[:12]}")
    click.echo(f"  by {plan.user}, reason: {plan.reason}")


def _confirm_stamp(config: Config, plan: StampPlan, yes: bool) -> bool:
    _print_stamp_plan(plan)
    count = len(plan.items)
    confirm_destructive(config, f"record {count} migration(s) as stamped in the history", yes)
    return True


@click.command("repair", short_help="Accept applied migration ID's edited file without running it.")
@click.argument("migration_id", metavar="ID")
@_reason_option
@click.option("--dry-run", is_flag=True, help="Print what would be recorded; record nothing.")
@_yes_option
@pass_app
def repair_command(app: AppContext, migration_id: str, reason: str, dry_run: bool, yes: bool) -> None:
    """Accept the edited file of applied migration ID without running it (Flyway repair).

    \b
    For an edit that changes nothing this database's data needs (a comment, a
    rename, a fix for databases it has not reached yet). Writes no data: the history
    takes the file's new checksum, keeps the applied one in previous_checksums and
    records a `repaired` event with both, who, when and --reason; the drift is gone.
    \b
    Refused when ID is not applied (or stamped), or its file did not change. Takes
    the lease like a run; on Cloud Firestore it prints what it will record and asks first.
    """
    config = app.config()
    options = RepairOptions(migration_id, reason, dry_run=dry_run)
    result = repair(config, options, confirm=lambda plan: _confirm_repair(config, plan, yes))
    plan = result.plan
    if dry_run:
        _print_repair_plan(plan)
        click.echo("dry run: nothing recorded (run it without --dry-run to record this)")
    elif result.recorded:
        click.echo(
            f"repaired {plan.migration.label}: the history now has checksum {plan.file_checksum[:12]} "
            f"(repair {result.edit_id}); `docshift history {plan.migration.id}` shows it"
        )


def _print_repair_plan(plan: RepairPlan) -> None:
    record = plan.record
    click.echo(
        f"repair on {plan.where}: accept the edited file of {plan.migration.label} without running it "
        "(no data is written):"
    )
    click.echo(
        f"  {record.status.value} with checksum {plan.applied_checksum[:12]} (run {record.run_id}); "
        f"the file now has {plan.file_checksum[:12]}"
    )
    click.echo(f"  by {plan.user}, reason: {plan.reason}")


def _confirm_repair(config: Config, plan: RepairPlan, yes: bool) -> bool:
    _print_repair_plan(plan)
    confirm_destructive(config, f"record the new checksum of {plan.migration.label} in the history", yes)
    return True

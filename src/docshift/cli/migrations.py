"""``docshift init``, ``new``, ``status`` and ``unlock``: the commands around migration files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from docshift.cli.context import AppContext, pass_app
from docshift.cli.output import CountsTable
from docshift.commands.project import init_project, new_migration
from docshift.commands.status import StatusReport, state_label, status
from docshift.commands.unlock import unlock
from docshift.errors import ConfirmationRequired, UsageError
from docshift.loader import describe_file
from docshift.lock import Lease
from docshift.planning import MigrationState, StateKind
from docshift.values import Timestamp

_TARGET_HINT = (
    "--collection reads one collection path, --collection-group every collection with that id: keep "
    "the one you mean"
)

__all__ = ["init_command", "new_command", "status_command", "status_table", "unlock_command"]

_STYLES = {
    StateKind.APPLIED: "green",
    StateKind.PENDING: "yellow",
    StateKind.RUNNING: "cyan",
    StateKind.FAILED: "red",
    StateKind.PARTIAL: "yellow",
    StateKind.INTERRUPTED: "cyan",
    StateKind.ROLLED_BACK: "magenta",
    StateKind.STAMPED: "green",
    StateKind.DRIFTED: "bold red",
    StateKind.MISSING_FILE: "bold red",
}


@click.command("init")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False), default=".")
@pass_app
def init_command(app: AppContext, folder: Path) -> None:
    """Create docshift.toml and a migrations/ folder in FOLDER (default: here); never overwrites.

    Also makes FOLDER's .gitignore ignore the run state (.docshift/: checkpoints, before-images,
    reports): creates it, or adds the line once to an existing one.
    """
    result = init_project(folder, project=app.flags.get("project"))
    click.echo(f"created {describe_file(result.config_file)}")
    if result.created_migrations_dir:
        click.echo(f"created {describe_file(result.migrations_dir)}/")
    else:
        click.echo(f"kept the existing {describe_file(result.migrations_dir)}/")
    ignored = {
        "created": f"created {describe_file(result.gitignore)} (ignores .docshift/, the run state)",
        "added": f"added .docshift/ (the run state) to {describe_file(result.gitignore)}",
        "kept": f"kept {describe_file(result.gitignore)} (it already ignores .docshift/)",
    }
    click.echo(ignored[result.gitignore_change])
    click.echo('next: docshift new "what the change does" --collection COLLECTION')


@click.command("new")
@click.argument("description")
@click.option("--collection", help="Collection path the migration reads, e.g. users or users/a/orders.")
@click.option("--collection-group", help="Collection id to read at every depth, e.g. orders.")
@click.option(
    "--script",
    is_flag=True,
    help="Write a script migration (apply(ctx): seed, fan out, merge; see docs/script-migrations.md).",
)
@pass_app
def new_command(
    app: AppContext, description: str, collection: str | None, collection_group: str | None, script: bool
) -> None:
    """Write the next migration file (NNNN_slug.py) from the template, with every option shown."""
    if collection and collection_group:
        raise UsageError("give --collection or --collection-group, not both", hint=_TARGET_HINT)
    path = new_migration(
        app.config().migrations_dir,
        description,
        collection=collection,
        collection_group=collection_group,
        script=script,
    )
    click.echo(f"created {describe_file(path)}")
    if not (collection or collection_group or script):
        click.echo("set `collection` (or `collection_group`) in it before running", err=True)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@pass_app
def status_command(app: AppContext, as_json: bool) -> None:
    """Show every migration: applied, pending, failed, rolled back, drifted or missing its file.

    \b
    Exit code: 0 everything applied, 9 something would run (pending, failed,
    interrupted or rolled back), 7 drift (an applied file was edited or deleted;
    wins over 9), 4 a migration file cannot be loaded.
    """
    report = status(app.config())
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    raise click.exceptions.Exit(int(report.exit_code))


def _when(stamp: Timestamp | None) -> str:
    return stamp.to_datetime().strftime("%Y-%m-%d %H:%M:%S") if stamp else ""


def _counts(state: MigrationState) -> str:
    """Non-zero counters, the usual ones first: "read 5, updated 5"."""
    if state.record is None:
        return ""
    counts = state.record.counts
    order = {key: index for index, key in enumerate(("read", "updated", "created", "deleted", "unchanged"))}
    keys = sorted((k for k, v in counts.items() if v), key=lambda k: (order.get(k, len(order)), k))
    return ", ".join(f"{key} {counts[key]}" for key in keys)


def _print_report(report: StatusReport) -> None:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]{report.where}[/bold], migrations in {describe_file(report.migrations_dir)}")
    if not report.states:
        console.print('no migrations yet; create one with docshift new "what it does" --collection NAME')
    else:
        console.print(status_table(report))
    lease = report.lease
    if lease is not None:
        note = " (expired: the next run takes it over)" if lease.expired() else ""
        console.print(f"lease: {lease.describe()}{note}")
    labels = {state.migration_id: state.label for state in report.states}
    for migration_id, left in report.dead_letters.items():
        for letters in left:
            console.print(f"[yellow]{labels.get(migration_id, migration_id)}: {letters.describe()}[/]")
    for line in _next_steps(report):
        console.print(line)


def status_table(report: StatusReport) -> CountsTable:
    """One row per migration; narrower than the table (80 columns), each one stacks: its id and
    state, its description and counts wrapped, its time and user, never cutting one."""
    rows: list[list[str | Text]] = []
    for state in report.states:
        record = state.record
        label = state_label(state, report.lease)
        if state.kind is StateKind.DRIFTED and record is not None and state.migration is not None:
            label += f" ({record.checksum[:8]} -> {state.migration.checksum[:8]})"
        when = _when(record.finished_at or record.started_at) if record else ""
        about = Text(
            state.migration.description if state.migration else (record.description if record else "")
        )
        if state.migration is not None and state.migration.is_script:
            about.append(" [script]", style="dim")
        rows.append(
            [
                state.migration_id,
                about,
                Text(label, style=_STYLES[state.kind]),
                when,
                record.user if record else "",
                _counts(state),
            ]
        )
    columns = ["id", "migration", "state", "when (UTC)", "by", "counts"]
    return CountsTable(
        columns, rows, state_column=2, wrapped=("migration", "counts"), text=("when (UTC)", "by"), plain=True
    )


def _next_steps(report: StatusReport) -> list[str]:
    drifted = [s for s in report.states if s.drift]
    if drifted:
        edited = [s.migration_id for s in drifted if s.kind is StateKind.DRIFTED]
        accept = f'`docshift repair {edited[0] if len(edited) == 1 else "ID"} --reason "..."`'
        return [
            f"drift: {', '.join(s.file for s in drifted)} changed after being applied; runs refuse "
            f"until restored (or accepted with {accept}, or --allow-drift)"
        ]
    runnable = [s for s in report.states if s.runnable]
    if runnable:
        return [f"{len(runnable)} to run: preview with `docshift run`, apply with `docshift run --execute`"]
    if report.dead_letters:
        return ["applied, with documents that failed (above): fix them, then retry them to finish"]
    return ["up to date"] if report.states else []


@click.command("unlock")
@click.option("--force", is_flag=True, help="Required: removing a lease can let two runs overlap.")
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask for confirmation (also DOCSHIFT_ASSUME_YES=1).",
)
@pass_app
def unlock_command(app: AppContext, force: bool, yes: bool) -> None:
    """Remove the run lease left by a run that died, after showing whose it is.

    Only needed when a run was killed hard and you cannot wait for its lease
    to expire; a live run whose lease is removed notices and stops.
    """
    if not force:
        raise UsageError(
            "unlock removes another run's lease and needs --force",
            hint="check `docshift status` first; an expired lease is taken over by the next run anyway",
        )

    config = app.config()

    def confirm(lease: Lease) -> bool:
        click.echo(lease.describe() + (" (expired)" if lease.expired() else " (NOT expired)"))
        if yes or config.assume_yes:
            return True
        if not sys.stdin.isatty():
            raise ConfirmationRequired(
                "removing the lease needs confirmation and there is no terminal to ask on",
                hint="rerun with --yes once you are sure that run is dead",
            )
        return click.confirm("Remove this lease?", default=False)

    result = unlock(config, confirm)
    if result.lease is None:
        click.echo("no lease is held; nothing to unlock")
    elif not result.confirmed:
        raise ConfirmationRequired(
            "not confirmed; the lease was kept",
            hint="answer y to remove it, or pass --yes; an expired lease is taken over by the next run "
            "anyway",
        )
    elif result.removed:
        click.echo(f"removed the lease of run {result.lease.run_id}")
    else:
        click.echo("the lease was already gone (its run ended)")

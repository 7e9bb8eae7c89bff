"""``docshift test``: the built-in checks of the migrations (:mod:`docshift.commands.test` does them)."""

from __future__ import annotations

import json

import click

from docshift.cli.context import AppContext, pass_app
from docshift.cli.output import console
from docshift.commands.checks import CheckResult
from docshift.commands.test import CheckReport, RecordReport, check_live, record_pairs, run_checks
from docshift.errors import DocshiftError, UsageError
from docshift.loader import describe_file

__all__ = ["test_command"]

_DEFAULT_SAMPLE = 20


def _print_result(result: CheckResult) -> None:
    if result.skipped is not None:
        console.print(f"[yellow]skip[/] {result.summary()}")
        return
    if result.passed:
        console.print(f"[green]ok[/]   {result.summary()}")
        return
    console.print(f"[red]FAIL[/] {result.summary()}")
    for finding in result.findings:
        console.print(f"  {finding.describe()}", markup=False)


def _print_report(report: CheckReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for result in report.results:
            _print_result(result)
        colour = "green" if report.passed else "red"
        console.print(f"[{colour}]{report.summary()}[/]")
    if not report.passed:
        failed = report.failed
        names = ", ".join(f"{result.migration} {result.check}" for result in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise DocshiftError(
            f"{len(failed)} check(s) failed: {names}{more}",
            hint="each failing document and its diff is listed above: fix up()/down() or the fixture pair",
        )


def _print_recorded(report: RecordReport) -> None:
    folder = describe_file(report.folder)
    console.print(
        f"read {report.read} document(s) of {report.migration.target.describe()} (nothing was written to it)"
    )
    console.print(
        f"wrote {len(report.written)} fixture pair(s) to {folder}: review each 'after' before keeping it"
    )
    if report.kept:
        console.print(f"kept {len(report.kept)} pair(s) already there (delete one to record it again)")
    for path, error in report.failed:
        console.print(f"  [red]{path}[/]: {error}", highlight=False)
    if report.failed:
        raise DocshiftError(
            f"up() failed on {len(report.failed)} of {report.read} documents read; no pair was written "
            "for them",
            hint="fix up() for the documents listed above, then record again",
        )


@click.command("test")
@click.argument("migration_ids", metavar="[MIGRATION]...", nargs=-1)
@click.option(
    "--emulator", is_flag=True, help="Run the fixture pairs on the Firestore emulator instead of in memory."
)
@click.option(
    "--record",
    "record_id",
    metavar="ID",
    help="Read --sample documents of ID's real target (read-only), apply up(), write them as fixture pairs.",
)
@click.option(
    "--against-store",
    is_flag=True,
    help="Check idempotency, round trip, rules and values on --sample live documents, writing nothing.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    metavar="N",
    help=f"How many documents --record or --against-store reads per migration (default {_DEFAULT_SAMPLE}).",
)
@click.option("--mask", is_flag=True, help="With --record: mask string values (letters x, digits 9).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_app
def test_command(
    app: AppContext,
    migration_ids: tuple[str, ...],
    emulator: bool,
    record_id: str | None,
    against_store: bool,
    sample: int | None,
    mask: bool,
    as_json: bool,
) -> None:
    """Check the migrations: up() on each fixture pair gives the document expected, is idempotent,
    down() undoes it, the rules hold and Firestore can store the result.

    \b
    Fixture pairs are migrations/tests/<id>/*.json, each {"path", "before", "after"}
    (see docs/testing.md). Exits 1 when a check fails, printing each document and its diff.
    \b
      docshift test                      every migration, in memory
      docshift test 0002 --emulator      one migration, on the Firestore emulator
      docshift test --record 0002 --sample 20 --mask   pairs from real data, to review
      docshift test --against-store --sample 200       live documents, read-only
    """
    _check_flags(migration_ids, emulator, record_id, against_store, sample, mask)
    config = app.config()
    if record_id is not None:
        _print_recorded(record_pairs(config, record_id, sample=sample or _DEFAULT_SAMPLE, mask=mask))
    elif against_store:
        _print_report(check_live(config, migration_ids, sample=sample or _DEFAULT_SAMPLE), as_json)
    else:
        _print_report(run_checks(config, migration_ids, emulator=emulator), as_json)


def _check_flags(
    migration_ids: tuple[str, ...],
    emulator: bool,
    record_id: str | None,
    against_store: bool,
    sample: int | None,
    mask: bool,
) -> None:
    """Which flags go together, said before anything is read."""
    if record_id is not None and (against_store or emulator or migration_ids):
        raise UsageError(
            "--record reads one migration's target: it takes no MIGRATION, --against-store or --emulator",
            hint="run `docshift test --record ID --sample N` on its own",
        )
    if against_store and emulator:
        raise UsageError(
            "--against-store reads the configured target; --emulator runs the fixture pairs",
            hint="give one of them",
        )
    if sample is not None and record_id is None and not against_store:
        raise UsageError(
            "--sample is for --record or --against-store", hint="the fixture pairs are always checked whole"
        )
    if mask and record_id is None:
        raise UsageError("--mask is for --record", hint="run `docshift test --record ID --sample N --mask`")

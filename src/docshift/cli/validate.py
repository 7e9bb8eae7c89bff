"""``docshift validate`` and ``docshift verify``, and how the validation a ``docshift run`` carries
is shown (its scans and the health line; :func:`docshift.commands.run.run` does the validating)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from docshift.cli.context import AppContext, pass_app
from docshift.cli.estimate import estimate_option, print_estimate
from docshift.cli.output import console, err_console
from docshift.cli.read_time import note_read_time, read_time_option
from docshift.commands.validate import validate
from docshift.commands.verify import VerifyReport, verify
from docshift.errors import ValidationFailed
from docshift.store.read_time import ReadTime, reads_text
from docshift.validators import HealthStatus, Level, RunOutcome, ValidationReport

__all__ = ["print_run_validation", "validate_command", "verify_command"]

_STATUS_STYLE = {HealthStatus.HEALTHY: "green", HealthStatus.DEGRADED: "yellow", HealthStatus.CRITICAL: "red"}


def _rule_table(report: ValidationReport) -> Table:
    table = Table(title=f"{report.label}: {report.phase}-scan of {report.target}", title_justify="left")
    for name, justify in (
        ("rule", "left"),
        ("failed", "right"),
        ("examples", "left"),
        ("first failure", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rule in report.rules:
        ids = ", ".join(path.rsplit("/", 1)[-1] for path, _ in rule.examples[:3])
        first = rule.examples[0][1] if rule.examples else ""
        if rule.collection_failures:
            first = "; ".join(rule.collection_failures)
        elif rule.note:
            first = f"[dim]{rule.note}[/]"
        style = "red" if rule.failures or rule.collection_failures else "green"
        table.add_row(rule.name, f"[{style}]{rule.failures:,}[/]", ids, first)
    return table


@click.command("validate")
@click.argument("migration_id")
@click.option(
    "--before", "phase", flag_value="before", help="Scan what the migration reads (before it runs)."
)
@click.option(
    "--after",
    "phase",
    flag_value="after",
    default=True,
    help="Scan what it produced (the default; the copy_to collection of a copy).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    metavar="N",
    help="Check N documents spread over the key space instead of all.",
)
@click.option("--full", is_flag=True, help="Check every document (the default).")
@click.option("--strict", is_flag=True, help="Exit 14 below integrity_warning too (not only critical).")
@read_time_option("the target")
@estimate_option("the scan")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def validate_command(
    app: AppContext,
    migration_id: str,
    phase: str,
    sample: int | None,
    full: bool,
    strict: bool,
    read_time: ReadTime | None,
    estimate: bool,
    as_json: bool,
) -> None:
    """Check MIGRATION_ID's rules on its target and save a report.

    Streams the target in constant memory, prints a table of failures per rule with example
    document ids, and exits 14 when the integrity score is below integrity_critical (or below
    integrity_warning with --strict) or a count expectation is missed.
    """
    if estimate:
        from docshift.commands.estimate import estimate_validate  # only an estimate needs it

        print_estimate(estimate_validate(app.config(), migration_id, phase=phase, sample=sample), as_json)
        return
    note_read_time(read_time)
    report = validate(
        app.config(),
        migration_id,
        phase=phase,
        sample=sample,
        full=full,
        read_time=read_time.at if read_time is not None else None,
    )
    if as_json:
        click.echo(json.dumps({**report.to_json(), "file": str(report.path)}, indent=2))
    else:
        console.print(_rule_table(report))
        colour = {Level.OK: "green", Level.WARNING: "yellow", Level.CRITICAL: "red"}[report.level]
        console.print(f"[{colour}]{report.summary()}[/]")
        console.print(reads_text(report.read_time), markup=False)
        console.print(f"report: {report.path}")
    failing = not report.passed or (strict and report.level == Level.WARNING)
    if failing:
        kind = "critical" if report.level == Level.CRITICAL else "warning"
        raise ValidationFailed(
            f"{report.summary()} (below integrity_{kind})",
            hint=f"the failing documents are listed in {report.path}",
        )
    if report.level == Level.WARNING and not as_json:
        err_console.print(f"[yellow]warning:[/] integrity is below integrity_warning {report.warning:g}%")


def _print_verify(report: VerifyReport) -> None:
    table = Table(title=f"{report.label}: {report.source} -> {report.target}", title_justify="left")
    for name in ("problem", "target document", "source", "detail (target -> expected)"):
        table.add_column(name)
    for difference in report.examples:
        table.add_row(difference.kind, difference.path, difference.source or "", difference.detail)
    if report.examples:
        console.print(table)
    colour = "green" if report.passed else "red"
    console.print(f"[{colour}]{report.summary()}[/]")
    console.print(reads_text(report.read_time), markup=False)
    console.print(f"report: {report.path}")


@click.command("verify")
@click.argument("migration_id")
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Examples kept per kind of problem.",
)
@read_time_option("the source and the target")
@estimate_option("the comparison")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def verify_command(
    app: AppContext,
    migration_id: str,
    examples: int,
    read_time: ReadTime | None,
    estimate: bool,
    as_json: bool,
) -> None:
    """Compare a copy migration's source and target document by document.

    Counts both sides and checks that each target document equals up(source): reports missing,
    extra and different documents with field diffs; exits 14 when any is found. Both sides are
    read at one moment (when verify starts, or --read-time).
    """
    if estimate:
        from docshift.commands.estimate import estimate_verify  # only an estimate needs it

        print_estimate(estimate_verify(app.config(), migration_id), as_json)
        return
    note_read_time(read_time)
    report = verify(
        app.config(),
        migration_id,
        examples=examples,
        read_time=read_time.at if read_time is not None else None,
    )
    if as_json:
        click.echo(json.dumps({**report.to_json(), "file": str(report.path)}, indent=2))
    else:
        _print_verify(report)
    if not report.passed:
        raise ValidationFailed(report.summary(), hint=f"the differences are listed in {report.path}")


# --------------------------------------------------------------------------- docshift run


def print_run_validation(outcome: RunOutcome, *, to_stderr: bool = False) -> None:
    """Scan summaries and the health line, after the run's summary table."""
    out = err_console if to_stderr else console
    for report in outcome.reports:
        if report.phase != "inline":
            out.print(f"{report.phase}-scan {report.summary()} (report: {report.path})")
    health = outcome.health
    if outcome.migrations:
        out.print(
            f"[{_STATUS_STYLE[health.status]}]{health.describe()}[/]"
            + (f"; report: {outcome.path}" if outcome.path else "")
        )

"""``docshift validate``: scan a migration's target against its rules and save the report.

``--before`` reads what the migration reads; ``--after`` (the default) reads what it produced (the
``copy_to`` collection of a copy). The scan reads one snapshot: the store as it was when the scan
started (or at ``read_time``), recorded in the report. An after-scan compares count expectations
with the before-scan of the migration's latest run (or the newest ``validate --before`` taken before
that run), and with what that run deleted and created, as recorded in the history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docshift.config import Config
from docshift.errors import DocshiftError, UsageError
from docshift.history import History, MigrationStatus
from docshift.loader import load_migrations
from docshift.migration import Migration
from docshift.runfolder.layout import ReportFolder, RunFolder
from docshift.store import Store, store_for
from docshift.store.read_time import pin
from docshift.validators.scan import Baseline, ValidationReport, load_report, save_report, scan
from docshift.values import Timestamp

__all__ = ["PHASES", "find_migration", "report_folder", "validate"]

PHASES = ("before", "after")


def find_migration(config: Config, migration_id: str) -> Migration:
    """The migration with this id (``7``, ``0007`` and ``0007_slug`` all name it)."""
    wanted = migration_id.split("_", 1)[0]
    migrations = load_migrations(config.migrations_dir)
    for migration in migrations:
        if wanted.isdigit() and int(wanted) == int(migration.id):
            return migration
    known = ", ".join(m.id for m in migrations) or "none"
    raise UsageError(
        f"no migration with id {migration_id!r} in {config.migrations_dir}",
        hint=f"known ids: {known} (see `docshift status`)",
    )


def report_folder(config: Config, kind: str, migration: Migration) -> ReportFolder:
    """``runs_dir/<kind>-<id>-<UTC time>``: one folder per report, sorted by time."""
    return ReportFolder.new(config.runs_dir, kind, migration.id)


def validate(
    config: Config,
    migration_id: str,
    *,
    phase: str = "after",
    sample: int | None = None,
    full: bool = False,
    store: Store | None = None,
    read_time: Timestamp | None = None,
) -> ValidationReport:
    """Scan every document (or ``sample`` of them, spread over the key space) and save the report
    as ``runs_dir/validate-<id>-<time>/report.json``. The caller decides what a failing report
    means (the CLI exits 14 below the critical threshold)."""
    if phase not in PHASES:
        raise UsageError(f"unknown phase {phase!r}", hint="use before or after")
    if sample is not None and full:
        raise UsageError(
            "give --sample N or --full, not both",
            hint="--sample N checks N documents spread over the collection; --full (the default) all",
        )
    if sample is not None and sample <= 0:
        raise UsageError(f"--sample must be above 0, got {sample}", hint="pass --sample 1 or more, or --full")
    migration = find_migration(config, migration_id)
    if not migration.rules:
        raise UsageError(
            f"migration {migration.label} declares no rules",
            hint='add rules = [required("email"), ...] from docshift.validators (see docs/validation.md)',
        )
    with store_for(config, store) as active:
        baseline = _baseline(config, active, migration) if phase == "after" else None
        snapshot = pin(active, read_time)
        report = scan(
            snapshot,
            migration,
            phase=phase,
            sample=sample,
            baseline=baseline,
            warning=config.limits.integrity_warning,
            critical=config.limits.integrity_critical,
        )
        report.read_time = snapshot.read_time.isoformat()
    save_report(report, report_folder(config, "validate", migration).report)
    return report


def _baseline(config: Config, store: Store, migration: Migration) -> Baseline:
    """What the latest applied run of ``migration`` started from, and what it deleted and created."""
    record = History(store, config.store.state_prefix).get(migration.id)
    applied = record is not None and record.status == MigrationStatus.APPLIED
    deleted = created = None
    before: dict[str, Any] | None = None
    if record is not None and applied:
        deleted, created = record.counts.get("deleted"), record.counts.get("created")
        before = _read(
            RunFolder.of(config.runs_dir, record.run_id).migration(migration.label).validation("before")
        )
    if before is None:
        latest = record.started_at.isoformat() if record is not None and applied else None
        before = _latest_before(config.runs_dir, migration, latest)
    if before is None:
        return Baseline(deleted=deleted, created=created)
    return Baseline(_int(before.get("total")), deleted, created, _int(before.get("target_total")))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return load_report(path)
    except DocshiftError:
        return None


def _latest_before(runs_dir: Path, migration: Migration, not_after: str | None) -> dict[str, Any] | None:
    """The newest ``validate --before`` report, taken no later than ``not_after``."""
    for folder in ReportFolder.every(runs_dir, "validate", migration.id):
        report = _read(folder.report)
        if report is None or report.get("phase") != "before":
            continue
        if not_after is not None and str(report.get("at", "")) > not_after:
            continue
        return report
    return None

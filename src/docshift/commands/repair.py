"""``docshift repair ID --reason "..."``: accept an applied migration's edited file without running it.

Flyway's ``repair``: the file was edited after it was applied (a comment, a rename, a fix for the
next database) and the edit changes nothing this database's data needs. The history takes the
file's new checksum, keeps the applied one in ``previous_checksums`` and records a ``repaired``
event with both and the reason; the drift is gone for that migration. ``run --allow-drift`` does
the same for every drifted file on its way to running others, without a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from docshift.commands.history_edit import HistoryEdit, edit_history, find_migration_id, require_reason
from docshift.config import Config
from docshift.errors import UsageError
from docshift.history import History, HistoryRecord, MigrationStatus, current_user
from docshift.loader import load_migrations
from docshift.migration import Migration
from docshift.store import Store

__all__ = ["RepairOptions", "RepairPlan", "plan_repair", "repair"]


@dataclass(frozen=True)
class RepairOptions:
    migration_id: str
    reason: str
    dry_run: bool = False


@dataclass(frozen=True)
class RepairPlan:
    where: str
    migration: Migration
    record: HistoryRecord
    reason: str
    user: str

    @property
    def applied_checksum(self) -> str:
        return self.record.checksum

    @property
    def file_checksum(self) -> str:
        return self.migration.checksum

    @property
    def empty(self) -> bool:
        return False  # a plan is made only for a file that changed: anything else is refused

    def key(self) -> tuple[Any, ...]:
        return (self.migration.id, self.record.status, self.record.checksum, self.migration.checksum)


def plan_repair(
    migrations: Sequence[Migration],
    records: Mapping[str, HistoryRecord],
    options: RepairOptions,
    where: str = "",
) -> RepairPlan:
    """What ``repair`` would record, or the refusal (:class:`UsageError` with a hint)."""
    reason = require_reason(options.reason, "repair")
    wanted = find_migration_id(options.migration_id, migrations, records)
    if wanted is None:
        raise UsageError(
            f"no migration {options.migration_id!r} in the folder or the history",
            hint="`docshift status` lists the migrations and their ids",
        )
    migration = next((m for m in migrations if m.id == wanted), None)
    record = records.get(wanted)
    if record is None:
        assert migration is not None
        raise UsageError(
            f"{migration.label} never ran here: there is no applied file to repair",
            hint=f'`docshift run --execute` runs it; `docshift stamp {wanted} --reason "..."` marks it '
            "applied without running it",
        )
    if migration is None:
        raise UsageError(
            f"{record.label} was applied but its file is gone: repair accepts an edited file, not a "
            "missing one",
            hint="restore the migration file from version control",
        )
    if not record.status.counts_as_applied:
        shown = record.status.value.replace("_", " ")
        nothing = (
            "the next `docshift run --execute` runs it with the file as it is now"
            if record.status is not MigrationStatus.RUNNING
            else "wait for its run to end, or resume it: it then runs with the file as it is now"
        )
        raise UsageError(
            f"{record.label} is {shown}, not applied: only an applied migration's file can be repaired",
            hint=nothing,
        )
    if record.checksum == migration.checksum:
        raise UsageError(
            f"{migration.label}: the file did not change since it was applied (checksum "
            f"{record.checksum[:12]}); nothing to repair",
            hint="`docshift status` shows which migrations drifted",
        )
    return RepairPlan(where, migration, record, reason, current_user())


def repair(
    config: Config,
    options: RepairOptions,
    *,
    confirm: Callable[[RepairPlan], bool] | None = None,
    store: Store | None = None,
) -> HistoryEdit[RepairPlan]:
    """Record the edited file of ``options.migration_id`` as the applied one, after ``confirm``
    saw the plan; ``dry_run``: plan only. Loads the folder strictly (an edited file that no longer
    loads is not accepted), changes only the history, under the lease."""
    migrations = load_migrations(config.migrations_dir)

    def plan(history: History, where: str) -> RepairPlan:
        return plan_repair(migrations, history.all(), options, where)

    def record(history: History, plan: RepairPlan, repair_id: str) -> list[HistoryRecord]:
        return [history.repair(plan.migration, repair_id, plan.reason)]

    return edit_history(config, store, plan, record, confirm=confirm, dry_run=options.dry_run)

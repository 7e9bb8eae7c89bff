"""What ``docshift run`` would do next: each migration file set beside its history record.

The stored records are :mod:`docshift.history`; this module only compares them with the folder:
pending, applied, drifted (an applied file edited or deleted), out of order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from docshift.errors import DriftError, MigrationFileError
from docshift.history import HistoryRecord, MigrationStatus, id_key
from docshift.loader import describe_file
from docshift.migration import Migration

__all__ = ["MigrationState", "StateKind", "check_drift", "check_order", "migration_states"]


class StateKind(enum.StrEnum):
    """Where a migration stands, comparing its file with the history."""

    APPLIED = "applied"
    PENDING = "pending"
    RUNNING = "running"
    PARTIAL = "partial"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    STAMPED = "stamped"
    """Marked applied without running (``docshift stamp``): taken as applied."""
    DRIFTED = "drifted"
    MISSING_FILE = "missing_file"


@dataclass(frozen=True)
class MigrationState:
    """One row of ``docshift status``: a file, its history record, or both."""

    migration_id: str
    kind: StateKind
    migration: Migration | None
    record: HistoryRecord | None
    ran_after: str | None = None
    """For a pending file: the higher id that already ran here, making this one out of order."""

    @property
    def out_of_order(self) -> bool:
        return self.ran_after is not None

    @property
    def label(self) -> str:
        if self.migration is not None:
            return self.migration.label
        return self.record.label if self.record else self.migration_id

    @property
    def file(self) -> str:
        if self.migration is not None and self.migration.path is not None:
            return describe_file(self.migration.path)
        return self.record.file if self.record and self.record.file else f"{self.label}.py"

    @property
    def runnable(self) -> bool:
        """Whether ``docshift run`` would (re)run it: pending, partial, failed, interrupted or rolled
        back."""
        return self.migration is not None and self.kind in (
            StateKind.PENDING,
            StateKind.PARTIAL,
            StateKind.FAILED,
            StateKind.RUNNING,
            StateKind.INTERRUPTED,
            StateKind.ROLLED_BACK,
        )

    @property
    def drift(self) -> bool:
        """The folder no longer matches what was applied: an applied file was edited, or an
        applied (or partly applied) migration's file is gone."""
        if self.kind is StateKind.DRIFTED:
            return True
        return (
            self.kind is StateKind.MISSING_FILE
            and self.record is not None
            and self.record.status is not MigrationStatus.ROLLED_BACK
        )


_KIND_OF = {
    MigrationStatus.APPLIED: StateKind.APPLIED,
    MigrationStatus.RUNNING: StateKind.RUNNING,
    MigrationStatus.PARTIAL: StateKind.PARTIAL,
    MigrationStatus.INTERRUPTED: StateKind.INTERRUPTED,
    MigrationStatus.FAILED: StateKind.FAILED,
    MigrationStatus.ROLLED_BACK: StateKind.ROLLED_BACK,
    MigrationStatus.STAMPED: StateKind.STAMPED,
}


def migration_states(
    migrations: Sequence[Migration], history_records: Mapping[str, HistoryRecord] | Iterable[HistoryRecord]
) -> list[MigrationState]:
    """Compare the folder with the history: one state per id found in either, in id order.

    A pending file is ``out_of_order`` when a higher id has already been run here (applied, failed
    or running): running it now would apply changes in a different order than elsewhere.
    """
    records = (
        dict(history_records)
        if isinstance(history_records, Mapping)
        else {r.migration_id: r for r in history_records}
    )
    files = {m.id: m for m in migrations}
    reached = [i for i, r in records.items() if r.status is not MigrationStatus.ROLLED_BACK]
    highest = max(reached, key=id_key) if reached else None
    states: list[MigrationState] = []
    for migration_id in sorted(files.keys() | records.keys(), key=id_key):
        migration, record = files.get(migration_id), records.get(migration_id)
        if migration is None:
            states.append(MigrationState(migration_id, StateKind.MISSING_FILE, None, record))
        elif record is None:
            late = highest if highest and id_key(migration_id) < id_key(highest) else None
            states.append(MigrationState(migration_id, StateKind.PENDING, migration, None, late))
        elif record.status.counts_as_applied and record.checksum != migration.checksum:
            states.append(MigrationState(migration_id, StateKind.DRIFTED, migration, record))
        else:
            states.append(MigrationState(migration_id, _KIND_OF[record.status], migration, record))
    return states


def check_drift(states: Sequence[MigrationState], allow_drift: bool) -> list[MigrationState]:
    """Refuse to run when the folder has drifted from the history, naming the first file.

    With ``allow_drift`` nothing is raised; the drifted states are returned so the run can record the
    new checksums with :meth:`History.accept_drift`.
    """
    drifted = [state for state in states if state.drift]
    if drifted and not allow_drift:
        first = drifted[0]
        more = f" (and {len(drifted) - 1} more)" if len(drifted) > 1 else ""
        if first.kind is StateKind.DRIFTED:
            assert first.record is not None and first.migration is not None
            message = (
                f"{first.file} was edited after it was applied{more}: applied checksum "
                f"{first.record.checksum[:12]}, file now {first.migration.checksum[:12]}"
            )
            hint = (
                "restore the file as applied and put further changes in a new migration "
                f"(docshift new); if the edit changes nothing the data needs, accept it with "
                f'`docshift repair {first.migration_id} --reason "..."` (or rerun with --allow-drift)'
            )
        else:
            message = f"{first.file} was run on this database but the file is gone{more}"
            hint = "restore the file from version control, or rerun with --allow-drift"
        raise DriftError(message, hint=hint)
    return drifted


def check_order(states: Sequence[MigrationState]) -> None:
    """Refuse to run a pending migration whose id is below one already run on this database."""
    for state in states:
        if state.ran_after is not None and state.migration is not None:
            raise MigrationFileError(
                f"{state.file}: id {state.migration_id} is out of order: migration {state.ran_after} "
                "has already run on this database",
                hint=f"rename it to the next free id above {state.ran_after}, keeping its slug",
            )

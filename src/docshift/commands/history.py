"""``docshift history [MIGRATION]``: every event of each migration, from the stored history.

Alembic's ``history`` and Flyway's ``info``: who started, finished, rolled back, stamped or repaired
which migration, when, in which run, with which file and counts. Read from the store only, so it
works whatever state the migration files are in (a file that no longer loads, a deleted one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.commands.history_edit import find_migration_id
from docshift.commands.status import run_alive
from docshift.config import Config
from docshift.errors import DocshiftError, UsageError
from docshift.history import MAX_EVENTS, History, HistoryEvent, HistoryRecord, MigrationStatus
from docshift.loader import file_kind, migration_files
from docshift.lock import Lease, read_lease
from docshift.store import Store, store_for
from docshift.values import Timestamp

__all__ = ["HistoryReport", "MigrationHistory", "history"]


@dataclass(frozen=True)
class MigrationHistory:
    """One migration's events, oldest first; ``record`` ``None``: it has none (a pending file)."""

    migration_id: str
    label: str
    record: HistoryRecord | None
    state: str
    """The record's status as ``status`` shows it (``running`` whose run is gone: ``interrupted``),
    or ``pending`` for a file with no record."""
    kind: str | None = None
    """``document`` (up) or ``script`` (apply), told from its file; None: no file here to tell."""

    @property
    def events(self) -> tuple[HistoryEvent, ...]:
        return self.record.events if self.record is not None else ()

    @property
    def earlier_dropped(self) -> bool:
        """Only the latest :data:`MAX_EVENTS` events are kept: earlier ones may have dropped out."""
        return len(self.events) >= MAX_EVENTS

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "id": self.migration_id,
            "label": self.label,
            "kind": self.kind,
            "name": record.name if record else "",
            "description": record.description if record else "",
            "state": self.state,
            "status": record.status.value if record else None,
            "checksum": record.checksum if record else None,
            "previous_checksums": list(record.previous_checksums) if record else [],
            "earlier_events_dropped": self.earlier_dropped,
            "events": [_event_json(e) for e in self.events],
        }


@dataclass(frozen=True)
class HistoryReport:
    where: str
    migrations: list[MigrationHistory]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document; its keys are part of docshift's interface (docs/migrations.md)."""
        return {"where": self.where, "migrations": [m.to_json() for m in self.migrations]}


def _iso(stamp: Timestamp | None) -> str | None:
    return stamp.isoformat() if stamp is not None else None


def _event_json(event: HistoryEvent) -> dict[str, Any]:
    return {
        "event": event.kind.value,
        "status": event.status.value,
        "at": _iso(event.at),
        "user": event.user,
        "run_id": event.run_id,
        "checksum": event.checksum,
        "previous_checksum": event.previous_checksum or None,
        "counts": dict(event.counts) if event.counts is not None else None,
        "reason": event.reason or None,
        "error": event.error,
    }


def _state(record: HistoryRecord, lease: Lease | None) -> str:
    if record.status is MigrationStatus.RUNNING and not run_alive(record, lease):
        return "interrupted"
    return record.status.value.replace("_", " ")


def _file_labels(folder: Path) -> dict[str, str]:
    """id -> label of the files in the folder, by name alone (nothing is imported): the history is
    read even when a file does not load. A folder that cannot be listed has none."""
    try:
        paths = migration_files(folder)
    except DocshiftError:
        return {}
    return {path.name.split("_", 1)[0]: path.stem for path in paths}


def history(config: Config, migration_id: str | None = None, store: Store | None = None) -> HistoryReport:
    """Every migration with a history record (``migration_id``: that one alone, which may also be a
    file with no record yet), each with its events."""
    with store_for(config, store) as active:
        records = History(active, config.store.state_prefix).all()
        lease = read_lease(active, config.store.state_prefix)
        where = active.info.describe()
    files = _file_labels(config.migrations_dir)
    kinds = _file_kinds(config.migrations_dir, files)
    if migration_id is None:
        return HistoryReport(
            where,
            [MigrationHistory(i, r.label, r, _state(r, lease), kinds.get(i)) for i, r in records.items()],
        )
    wanted = _resolve(migration_id, records, files)
    record = records.get(wanted)
    if record is not None:
        item = MigrationHistory(wanted, record.label, record, _state(record, lease), kinds.get(wanted))
        return HistoryReport(where, [item])
    return HistoryReport(where, [MigrationHistory(wanted, files[wanted], None, "pending", kinds.get(wanted))])


def _file_kinds(folder: Path, labels: dict[str, str]) -> dict[str, str]:
    """id -> the kind of its file (``document`` or ``script``), told without importing it."""
    kinds: dict[str, str] = {}
    for migration_id, label in labels.items():
        kind = file_kind(folder / f"{label}.py")
        if kind is not None:
            kinds[migration_id] = kind.value
    return kinds


def _resolve(wanted: str, records: dict[str, HistoryRecord], files: dict[str, str]) -> str:
    labels = {**{i: r.label for i, r in records.items()}, **files}
    by_label = {label: i for i, label in labels.items()}
    if wanted in by_label:
        return by_label[wanted]
    found = find_migration_id(wanted, [], labels)
    if found is None:
        raise UsageError(
            f"no migration {wanted!r} in the history or the migrations folder",
            hint="`docshift history` lists every migration with a history; `docshift status` shows the ids",
        )
    return found

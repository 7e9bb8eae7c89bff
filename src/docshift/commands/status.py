"""``docshift status``: every migration, in the folder or the history, and what CI should make of it;
and the dead letters its runs left that no retry took up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.commands.retry import DeadLettersLeft, dead_letters_left
from docshift.config import Config
from docshift.errors import ExitCode
from docshift.history import History, HistoryRecord
from docshift.loader import describe_file, load_migrations
from docshift.lock import Lease, read_lease
from docshift.planning import MigrationState, StateKind, migration_states
from docshift.store import Store, store_for
from docshift.values import Timestamp

__all__ = ["StatusReport", "run_alive", "state_label", "status", "status_exit_code"]


def status_exit_code(states: list[MigrationState]) -> ExitCode:
    """7 (DRIFT) if any applied file was edited or is gone; else 9 (PENDING) if ``docshift run``
    would run anything (pending, partial, failed, interrupted, rolled back); else 0."""
    if any(state.drift for state in states):
        return ExitCode.DRIFT
    if any(state.runnable for state in states):
        return ExitCode.PENDING
    return ExitCode.OK


def state_label(state: MigrationState, lease: Lease | None) -> str:
    """The state as shown: a "running" record whose run no longer holds the lease was interrupted
    (killed); a run stopped by a signal or ``docshift stop`` recorded ``interrupted`` itself."""
    if state.kind is StateKind.RUNNING and not run_alive(state.record, lease):
        return "interrupted"
    if state.kind is StateKind.PENDING and state.out_of_order:
        return "pending (out of order)"
    return state.kind.value.replace("_", " ")


def run_alive(record: HistoryRecord | None, lease: Lease | None) -> bool:
    """Whether the run a record names still holds the lease (so a ``running`` record is running)."""
    run_id = record.run_id if record else None
    return lease is not None and not lease.expired() and lease.run_id == run_id


@dataclass(frozen=True)
class StatusReport:
    where: str
    migrations_dir: Path
    states: list[MigrationState]
    lease: Lease | None
    dead_letters: dict[str, list[DeadLettersLeft]] = field(default_factory=dict)
    """Per migration id: documents its runs left in dead-letter files that no retry took up
    (:func:`~docshift.commands.retry.dead_letters_left`)."""

    @property
    def exit_code(self) -> ExitCode:
        return status_exit_code(self.states)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.states:
            counts[state.kind.value] = counts.get(state.kind.value, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document; its keys are part of docshift's interface (docs/migrations.md)."""
        return {
            "where": self.where,
            "migrations_dir": describe_file(self.migrations_dir),
            "exit_code": int(self.exit_code),
            "summary": self.summary(),
            "lease": _lease_json(self.lease),
            "migrations": [
                {
                    **_state_json(state, self.lease),
                    "dead_letters": [
                        left.to_json() for left in self.dead_letters.get(state.migration_id, [])
                    ],
                }
                for state in self.states
            ],
        }


def _iso(stamp: Timestamp | None) -> str | None:
    return stamp.isoformat() if stamp is not None else None


def _lease_json(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "owner": lease.owner,
        "pid": lease.pid,
        "run_id": lease.run_id,
        "acquired_at": _iso(lease.acquired_at),
        "expires_at": _iso(lease.expires_at),
        "expired": lease.expired(),
    }


def _state_json(state: MigrationState, lease: Lease | None) -> dict[str, Any]:
    migration, record = state.migration, state.record
    return {
        "id": state.migration_id,
        "name": migration.name if migration else (record.name if record else ""),
        "kind": migration.kind.value if migration else None,
        "description": migration.description if migration else (record.description if record else ""),
        "state": state.kind.value,
        "label": state_label(state, lease),
        "file": state.file if migration else None,
        "out_of_order": state.out_of_order,
        "drift": state.drift,
        "checksum": migration.checksum if migration else None,
        "applied_checksum": record.checksum if record else None,
        "previous_checksums": list(record.previous_checksums) if record else [],
        "status": record.status.value if record else None,
        "started_at": _iso(record.started_at) if record else None,
        "finished_at": _iso(record.finished_at) if record else None,
        "user": record.user if record else None,
        "run_id": record.run_id if record else None,
        "docshift_version": record.docshift_version if record else None,
        "counts": dict(record.counts) if record else {},
        "error": record.error if record else None,
        "overrides": dict(record.overrides) if record else {},
    }


def status(config: Config, store: Store | None = None) -> StatusReport:
    """Load the folder strictly (a bad file fails the command), read history and lease, compare."""
    migrations = load_migrations(config.migrations_dir)
    with store_for(config, store) as active:
        records = History(active, config.store.state_prefix).all()
        lease = read_lease(active, config.store.state_prefix)
        return StatusReport(
            active.info.describe(),
            config.migrations_dir,
            migration_states(migrations, records),
            lease,
            dead_letters_left(config.runs_dir, records),
        )

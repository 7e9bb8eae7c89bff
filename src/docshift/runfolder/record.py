"""What a run folder says happened: the run's state, how it ended, and each migration's counts.

Every view of a run reads these functions (the summary tables, ``docshift runs`` and ``show``,
``report.json``/``report.html``, ``docshift monitor`` after the end), so no two of them can tell a
different story. The sources are the run's own files: ``run.json`` (the run's state and, once it
ended, its outcome) and each migration's checkpoint (its counters) and dead-letter file.

States of a run (``run.json`` ``state``):

=============== ===================================================================================
``running``     a process runs it now (shown as ``interrupted`` when no process does)
``finished``    everything it set out to do was done
``stopped``     stopped early but safely (Ctrl-C, ``docshift stop``, a limit, a trigger); resumable
``failed``      an error ended it; its checkpoints are kept
``interrupted`` recorded as running, but its process is gone (killed); resumable
``rolled_back`` everything it wrote was undone (a canary stage gate, ``--auto-rollback``); closed
``partly_rolled_back``
                a later migration's canary stages were undone, while the migrations the run
                finished before it stay applied; closed (``docshift rollback RUN_ID`` undoes those)
``conflicts``   a rollback (or a canary's rollback of its stages) that undid everything it could
                and left documents changed after the migration wrote them (or not restored
                exactly) alone; ``docshift rollback RUN_ID --force`` overwrites them
=============== ===================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.errors import DataError
from docshift.runfolder.checkpoint import Checkpoint
from docshift.runfolder.layout import RUN_FORMAT, MigrationFolder, RunFolder
from docshift.runfolder.presence import read_presence

__all__ = [
    "CLOSED_STATES",
    "COUNT_COLUMNS",
    "ENDED_STATES",
    "PARTLY_ROLLED_BACK",
    "MigrationRecord",
    "RunRecord",
    "display_counts",
    "force_command",
    "live_state",
    "migration_counters",
    "read_info",
    "read_migration",
    "read_run",
    "record_outcome",
    "write_info",
]

RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
INTERRUPTED, ROLLED_BACK, CONFLICTS = "interrupted", "rolled_back", "conflicts"
PARTLY_ROLLED_BACK = "partly_rolled_back"
ENDED_STATES = (FINISHED, STOPPED, FAILED, INTERRUPTED, ROLLED_BACK, PARTLY_ROLLED_BACK, CONFLICTS)
CLOSED_STATES = (FINISHED, ROLLED_BACK, PARTLY_ROLLED_BACK, CONFLICTS)
"""A run in one of these has nothing left to resume."""

COUNT_COLUMNS = ("updated", "created", "deleted", "unchanged", "failed", "conflicts", "skipped")
"""The counts every table shows, whatever did the work (the engine or a restore)."""
_RESTORE_NAMES = {"restored": "updated", "recreated": "created"}
"""A restore's counters in the columns' words: a document put back is an update, one created
again a create (its ``deleted``, ``unchanged`` and ``conflicts`` mean what they say)."""
_HANDLED = ("updated", "created", "deleted", "unchanged", "failed", "conflicts", "rejected", "checked")


def display_counts(counters: Mapping[str, int]) -> dict[str, int]:
    """``counters`` (a migration's or a restore's) under the table columns' names, plus any
    other counter as it is (``rejected``, ``verified``, ``mismatched``…)."""
    counts = dict.fromkeys(COUNT_COLUMNS, 0)
    for name, value in counters.items():
        if isinstance(value, int) and not isinstance(value, bool):
            key = _RESTORE_NAMES.get(name, name)
            counts[key] = counts.get(key, 0) + value
    return counts


def migration_counters(checkpoint: Checkpoint) -> tuple[dict[str, int], float]:
    """The counters and working time of the whole migration, from its checkpoint.

    A canary stage's checkpoint holds that stage's counters, and in ``stages`` the totals (and
    seconds) of the stages before it (``earlier``, ``earlier_seconds``); once a stage passed its
    gate (checkpoint finished), ``earlier`` includes it. Documents read outside a stage's window are
    not counted as skipped: every stage reads the whole target again.
    """
    counters = dict(checkpoint.counters)
    stages = checkpoint.stages
    if stages is None:
        return counters, checkpoint.elapsed_seconds
    earlier = dict(stages.earlier)
    if checkpoint.finished:
        totals, seconds = earlier, stages.earlier_seconds
    else:
        totals = {name: earlier.get(name, 0) + counters.get(name, 0) for name in _HANDLED}
        seconds = stages.earlier_seconds + checkpoint.elapsed_seconds
    totals = {name: totals.get(name, 0) for name in _HANDLED} | {
        "read": counters.get("read", 0),
        "skipped": 0,
    }
    return totals, seconds


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip() and line.endswith(b"\n"))


@dataclass(frozen=True)
class MigrationRecord:
    """One migration of a run, as its folder records it."""

    label: str
    state: str
    """The checkpoint's (``running``, ``finished``, ``stopped``, ``failed``), or ``rolled_back``."""
    counters: dict[str, int]
    """Raw counters, for the whole migration (every canary stage; a restore's own names)."""
    elapsed_seconds: float
    dead_letters: int
    folder: Path
    checkpoint: Checkpoint | None = None
    rollback: dict[str, int] | None = None
    """What a canary stage gate's rollback did (restored, recreated, deleted, conflicts…)."""
    error: str | None = None
    """Why the checkpoint could not be read."""

    @property
    def counts(self) -> dict[str, int]:
        return display_counts(self.counters)

    @property
    def landed(self) -> dict[str, int]:
        """What a stopped run wrote past the cursor, besides ``counters`` (the checkpoint's
        ``beyond_cursor``: a resume counts it, once)."""
        return dict(self.checkpoint.beyond_cursor) if self.checkpoint is not None else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "migration": self.label,
            "state": self.state,
            "counters": self.counters,
            "counts": self.counts,
            "landed_after_cursor": self.landed,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "dead_letters": self.dead_letters,
            "rollback": self.rollback,
        }


def read_migration(folder: Path) -> MigrationRecord:
    """The record of the migration whose folder (``RUN/NNNN_label``) holds a checkpoint."""
    files = MigrationFolder(folder)
    letters = _count_lines(files.dead_letters)
    try:
        checkpoint = Checkpoint.load(files.checkpoint)
    except DataError as exc:
        return MigrationRecord(folder.name, "unreadable", {}, 0.0, letters, folder, error=exc.message)
    counters, seconds = migration_counters(checkpoint)
    rollback = checkpoint.stage_rollback
    undone = rollback.counters if rollback is not None else None
    return MigrationRecord(
        folder.name,
        ROLLED_BACK if rollback is not None and rollback.complete else checkpoint.state,
        counters,
        seconds,
        letters,
        folder,
        checkpoint,
        dict(undone) if undone is not None else None,
    )


def read_migrations(run_folder: Path, order: list[str]) -> list[MigrationRecord]:
    """Every migration of the run that has a checkpoint, in the run's order."""
    found = [migration.path for migration in RunFolder(run_folder).migrations()]
    rank = {migration_id: index for index, migration_id in enumerate(order)}
    found.sort(key=lambda p: (rank.get(p.name.split("_", 1)[0], len(rank)), p.name))
    return [read_migration(path) for path in found]


def live_state(folder: Path, recorded: str) -> str:
    """The state to show: ``running`` only while a process runs it; a run recorded as running whose
    process is gone was killed (``interrupted``: resumable)."""
    presence = read_presence(folder)
    if presence is not None and presence.alive:
        return RUNNING
    return INTERRUPTED if recorded == RUNNING else recorded


@dataclass(frozen=True)
class RunRecord:
    """A run, as its folder records it: what every view shows."""

    run_id: str
    kind: str
    execute: bool
    state: str
    """:func:`live_state` of what ``run.json`` records."""
    info: dict[str, Any]
    migrations: list[MigrationRecord] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    """How it ended (``state``, ``exit_code``, ``error``, ``hint``), once it did."""
    folder: Path = Path()

    @property
    def totals(self) -> dict[str, int]:
        """Every migration's counts, added up (under the columns' names)."""
        totals: dict[str, int] = {}
        for migration in self.migrations:
            for name, value in migration.counts.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    @property
    def duration_seconds(self) -> float:
        return sum(m.elapsed_seconds for m in self.migrations)


def read_info(folder: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder (what ran, where, and in which state it ended)."""
    return RUN_FORMAT.read(RunFolder(folder).info)


def write_info(folder: Path, info: dict[str, Any]) -> None:
    """Write a run folder's ``run.json`` (atomically, versioned)."""
    RUN_FORMAT.write(RunFolder(folder).info, info)


def read_run(folder: Path) -> RunRecord:
    """The record of the run in ``folder``; raises :class:`DataError` when run.json is damaged."""
    info = read_info(folder)
    order = [str(m) for m in info.get("migrations", [])]
    outcome = info.get("outcome") if isinstance(info.get("outcome"), dict) else None
    return RunRecord(
        str(info.get("run_id", folder.name)),
        str(info.get("kind", "run")),
        bool(info.get("execute")),
        live_state(folder, str(info.get("state", "unknown"))),
        info,
        read_migrations(folder, order),
        outcome,
        folder,
    )


def force_command(info: Mapping[str, Any]) -> str | None:
    """The command that redoes the rollback recorded in ``info`` (its run.json) with ``--force``."""
    if info.get("of_run"):
        target = str(info["of_run"])
    elif info.get("to"):
        target = f"--to {info['to']}"
    else:
        return None
    strategy = f" --strategy {info['strategy']}" if info.get("strategy") not in (None, "auto") else ""
    return f"docshift rollback {target}{strategy} --execute --force"


def record_outcome(folder: Path, outcome: Mapping[str, Any]) -> None:
    """Record how the run ended in its ``run.json``: ``state`` and the ``outcome`` (state, exit
    code, error, hint) every view shows."""
    info = read_info(folder)
    info["state"] = str(outcome.get("state"))
    info["outcome"] = {k: outcome.get(k) for k in ("state", "exit_code", "error", "hint")}
    write_info(folder, info)

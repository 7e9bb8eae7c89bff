"""``docshift rollback``: undo a run, or everything applied after a migration, newest first.

Two strategies: ``down`` runs the migration's ``down`` through the engine (guarded writes,
checkpoints, like any run); ``restore`` puts back exactly the before-images the run saved, guarded
by the update time its writes produced. ``auto`` uses ``down`` when the migration has one.
A rollback is a run like any other: dry run by default, locked, checkpointed, resumable, recorded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docshift.checkpoints.atomic import read_versioned, write_versioned
from docshift.checkpoints.checkpoint import Checkpoint, ShardCursor
from docshift.commands.run import (
    RunOptions,
    find_run,
    load_run_info,
    new_run_id,
    pipeline_options,
    rate_limiter,
)
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.pipeline import MigrationPipeline, PipelineResult, new_checkpoint
from docshift.engine.plan import PlanRecorder
from docshift.engine.progress import NullProgress, Progress
from docshift.engine.restore import Restorer, RestoreResult, plan_restore
from docshift.engine.sharding import plan_shards
from docshift.errors import DocshiftError, EmergencyStop, RunStopped, UsageError
from docshift.history import History, MigrationStatus
from docshift.loader import load_migrations
from docshift.lock import LeaseLock
from docshift.migration import Migration
from docshift.store import Document, Store, store_for
from docshift.values import Timestamp

__all__ = ["RollbackItem", "RollbackOptions", "RollbackReport", "rollback"]

_KIND = "docshift-rollback"
_VERSION = 1
_UNDONE = (MigrationStatus.APPLIED, MigrationStatus.PARTIAL, MigrationStatus.INTERRUPTED,
           MigrationStatus.FAILED, MigrationStatus.RUNNING)


@dataclass(frozen=True)
class RollbackOptions:
    run_id: str | None = None
    to: str | None = None
    strategy: str = "auto"
    execute: bool = False
    force: bool = False
    resume: str | None = None
    rollback_id: str | None = None
    """The id of a new rollback run (default: generated); lets a caller know its folder beforehand.
    (``run_id`` is the run to roll back.)"""


@dataclass
class RollbackItem:
    migration: Migration
    strategy: str
    source_run: str
    folder: Path
    restore: RestoreResult | None = None
    pipeline: PipelineResult | None = None
    plan: PlanRecorder | None = None

    @property
    def counters(self) -> dict[str, int]:
        if self.restore is not None:
            return self.restore.counters
        return self.pipeline.counters if self.pipeline else {}

    @property
    def clean(self) -> bool:
        counters = self.counters
        return counters.get("conflicts", 0) == 0 and counters.get("mismatched", 0) == 0 and (
            counters.get("failed", 0) == 0
        )


@dataclass
class RollbackReport:
    run_id: str
    folder: Path
    execute: bool
    target: str
    items: list[RollbackItem] = field(default_factory=list)

    @property
    def resume_command(self) -> str:
        return f"docshift rollback --execute --resume {self.run_id}"


class RollbackConflicts(DocshiftError):
    """Some documents were changed after the migration wrote them; they were left alone.
    ``report`` is the rollback's report (everything else was undone)."""

    report: RollbackReport | None = None


def _targets(config: Config, options: RollbackOptions, history: History,
             migrations: dict[str, Migration]) -> list[tuple[Migration, str]]:
    """(migration, run that applied it), newest first."""
    if (options.run_id is None) == (options.to is None):
        raise UsageError("name a RUN_ID or --to MIGRATION_ID (one of them)")
    if options.run_id is not None:
        run_folder = find_run(config.runs_dir, options.run_id)
        info = load_run_info(run_folder)
        if info.get("kind", "run") != "run" or not info.get("execute"):
            raise UsageError(f"run {options.run_id} was not an executed migration run; nothing to roll back")
        chosen = []
        for migration_id in reversed(info["migrations"]):
            # A run killed before its first checkpoint has written (and journalled) already.
            if not any(run_folder.glob(f"{migration_id}_*/checkpoint.json")) and not any(
                run_folder.glob(f"{migration_id}_*/before-images.jsonl.gz")
            ):
                continue  # the run stopped before this migration started
            if migration_id not in migrations:
                raise UsageError(f"migration {migration_id} of run {options.run_id} has no file here",
                                 hint="restore the migration file from version control")
            chosen.append((migrations[migration_id], str(info["run_id"])))
        return chosen
    assert options.to is not None
    records = history.all()
    later = sorted((r for r in records.values()
                    if int(r.migration_id) > int(options.to) and r.status in _UNDONE),
                   key=lambda r: int(r.migration_id), reverse=True)
    missing = [r.migration_id for r in later if r.migration_id not in migrations]
    if missing:
        raise UsageError(f"migration {missing[0]} ran here but its file is gone",
                         hint="restore the migration file from version control")
    return [(migrations[r.migration_id], r.run_id) for r in later]


def _strategy(config: Config, migration: Migration, source_run: str, wanted: str) -> str:
    journal = config.runs_dir / source_run / migration.label / "before-images.jsonl.gz"
    copy_to = migration.target.copy_to
    if wanted == "auto":
        wanted = "down" if migration.down is not None and not copy_to else "restore"
    if wanted == "down" and migration.down is None:
        raise UsageError(f"{migration.label} has no down(); use --strategy restore")
    if wanted == "down" and copy_to:
        # down() would read the source and write its result into the copy: that undoes nothing.
        raise UsageError(f"{migration.label} copies into {copy_to}: down() cannot undo a copy",
                         hint="use --strategy restore (deletes the documents the copy created)")
    if wanted == "restore" and not journal.exists():
        raise UsageError(
            f"no before-images for {migration.label} in run {source_run} ({journal})",
            hint="copy that run's folder into runs_dir, or use --strategy down if the migration has one",
        )
    return wanted


def rollback(
    config: Config,
    options: RollbackOptions,
    *,
    store: Store | None = None,
    progress: Progress | None = None,
    controls: Controls | None = None,
) -> RollbackReport:
    """Dry-run (default) or execute a rollback; raises :class:`RollbackConflicts` when documents
    changed since the migration wrote them were left alone (use ``force`` to overwrite them)."""
    migrations = {m.id: m for m in load_migrations(config.migrations_dir)}
    with store_for(config, store) as active:
        progress = progress or NullProgress()
        history = History(active, config.store.state_prefix)
        if options.resume:
            folder = find_run(config.runs_dir, options.resume, kind="rollback")
            info = read_versioned(folder / "run.json", "docshift-run", 1)
            plan = [(migrations[i], run, strategy) for i, run, strategy in info["plan"]]
            options = dataclasses.replace(options, execute=bool(info["execute"]), force=bool(info["force"]))
            run_id = str(info["run_id"])
        else:
            targets = _targets(config, options, history, migrations)
            plan = [(m, run, _strategy(config, m, run, options.strategy)) for m, run in targets]
            run_id = options.rollback_id or new_run_id()
            folder = config.runs_dir / run_id
            info = {"run_id": run_id, "kind": "rollback", "execute": options.execute, "force": options.force,
                    "state": "running", "migrations": [m.id for m, _, _ in plan],
                    "plan": [[m.id, run, strategy] for m, run, strategy in plan],
                    "created_at": datetime.now(UTC).isoformat(), "target": active.info.describe()}
            write_versioned(folder / "run.json", "docshift-run", 1, info)
        report = RollbackReport(run_id, folder, options.execute, active.info.describe())
        controls = controls or Controls(rate_limiter(config, active))
        if not options.execute:
            _undo_all(config, active, plan, options, report, history, progress, controls)
        else:
            lock = LeaseLock(active, config.store.state_prefix, run_id=run_id)
            with lock:
                controls.lease_lost = lock.lost
                try:
                    _undo_all(config, active, plan, options, report, history, progress, controls)
                except RunStopped as stop:
                    stop.resume_command = report.resume_command
                    info["state"] = "stopped"
                    write_versioned(folder / "run.json", "docshift-run", 1, info)
                    raise
        info["state"] = "finished"
        write_versioned(folder / "run.json", "docshift-run", 1, info)
        dirty = [item for item in report.items if not item.clean]
        if options.execute and dirty:
            conflicts = sum(item.counters.get("conflicts", 0) for item in dirty)
            other = sum(item.counters.get("mismatched", 0) + item.counters.get("failed", 0) for item in dirty)
            message = f"{conflicts} document(s) changed after the migration wrote them and were left alone"
            if other:  # restored but not equal to the before-image, or down() failed on them
                message += f"; {other} document(s) not undone cleanly (mismatched or failed)"
            error = RollbackConflicts(
                message, hint=f"see conflicts.jsonl in {folder}; rerun with --force to overwrite them",
            )
            error.report = report
            raise error
        return report


def _undo_all(
    config: Config, store: Store, plan: list[tuple[Migration, str, str]], options: RollbackOptions,
    report: RollbackReport, history: History, progress: Progress, controls: Controls,
) -> None:
    own_writes: dict[str, tuple[Timestamp, Timestamp | None]] = {}
    planned: dict[str, Document | None] = {}
    for migration, source_run, strategy in plan:
        folder = report.folder / migration.label
        item = RollbackItem(migration, strategy, source_run, folder)
        progress.event("start", migration=f"rollback {migration.label}", strategy=strategy, shards=1,
                       execute=options.execute, counters={})
        if strategy == "restore":
            item.restore = _restore(config, store, migration, source_run, folder, options, progress, controls,
                                    own_writes, planned)
            if item.restore.stopped:
                stopped = controls.stop_class or RunStopped
                raise stopped(controls.stop_reason or "stopped", resume_command=report.resume_command)
        else:
            item.pipeline, item.plan = _down(config, store, migration, folder, options, report.run_id,
                                             progress, controls)
            if item.pipeline.error is not None:
                raise item.pipeline.error
        report.items.append(item)
        if options.execute and item.clean:
            history.mark_rolled_back(migration.id, report.run_id, item.counters)
        progress.event("finish", migration=f"rollback {migration.label}", **item.counters)


def _restore(
    config: Config, store: Store, migration: Migration, source_run: str, folder: Path,
    options: RollbackOptions, progress: Progress, controls: Controls,
    own_writes: dict[str, tuple[Timestamp, Timestamp | None]], planned: dict[str, Document | None],
) -> RestoreResult:
    checkpoint_path = folder / "checkpoint.json"
    result = RestoreResult()
    if checkpoint_path.exists():
        saved = Checkpoint.load(checkpoint_path)
        if saved.finished:
            result.counters.update(saved.counters)
            return result
        result.position = int(saved.extra.get("position", -1))
        result.counters.update(saved.counters)
    checkpoint = Checkpoint(run_id=folder.parent.name, migration_id=migration.id, checksum=migration.checksum,
                            shards=[ShardCursor()], extra={"kind": "restore", "of_run": source_run})

    def save(current: RestoreResult, state: str = "running") -> None:
        lost = controls.lease_lost
        if lost is not None and lost.is_set():
            controls.request_stop("the lease was lost to another run", EmergencyStop)
        if not options.execute:
            return
        checkpoint.counters = dict(current.counters)
        checkpoint.extra["position"] = current.position
        checkpoint.state = state
        checkpoint.save(checkpoint_path)

    journal = config.runs_dir / source_run / migration.label / "before-images.jsonl.gz"
    # redo recognises our own writes by value; a copy's before-images are of its targets, which
    # up() does not take.
    redo = None if migration.target.copy_to else migration.up
    restorer = Restorer(store, execute=options.execute, force=options.force,
                        conflicts_file=folder / "conflicts.jsonl", redo=redo,
                        limiter=controls.limiter, stop=controls.stop, progress=progress, on_batch=save,
                        batch_size=config.engine.batch_size, own_writes=own_writes, planned=planned)
    restorer.run(plan_restore(journal, result.position), result)
    save(result, "stopped" if result.stopped else "finished")
    return result


def _down(
    config: Config, store: Store, migration: Migration, folder: Path, options: RollbackOptions,
    run_id: str, progress: Progress, controls: Controls,
) -> tuple[PipelineResult, PlanRecorder | None]:
    assert migration.down is not None
    checkpoint_path = folder / "checkpoint.json"
    if checkpoint_path.exists():
        checkpoint = Checkpoint.load(checkpoint_path)
    else:
        settings: dict[str, Any] = {"rollback": True, "strategy": "down"}
        checkpoint = new_checkpoint(run_id, migration, plan_shards(store, migration.target, 1), settings)
    recorder = None if options.execute else PlanRecorder(folder / "plan.jsonl.gz", migration.down)
    base = pipeline_options(config, RunOptions(execute=options.execute))
    pipeline = MigrationPipeline(store, migration, base, folder, checkpoint, controls=controls,
                                 progress=progress, transform=migration.down, on_decision=recorder)
    try:
        return pipeline.run(), recorder
    finally:
        if recorder is not None:
            recorder.close()


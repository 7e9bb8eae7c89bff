"""``docshift rollback``: undo a run, or everything applied after a migration, newest first.

The run's journal (its before-images) names exactly the documents it changed; a rollback visits
those and no others. Two strategies say what to write for each document that still holds what the
run wrote: ``restore`` puts its before-image back, ``down`` applies the migration's ``down``.
Either way the result is checked against the before-images: a document that does not equal its
before-image is ``mismatched``, listed, and keeps the migration from being recorded as rolled back.
``auto`` uses ``down`` when the migration has one. Only a run made without before-images
(``--no-backup``) is undone by ``down`` over its whole target, through the engine, unverified.

A rollback is a run like any other: dry run by default, locked, checkpointed, resumable, recorded,
on the project and database its run was made on. Its dry run executes the same code against a
simulated copy of the database (newest migration first), so it predicts what the execute will do.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docshift.checkpoints.atomic import read_versioned, write_versioned
from docshift.checkpoints.checkpoint import Checkpoint, ShardCursor
from docshift.checkpoints.record import force_command
from docshift.commands.run import (
    RunOptions,
    find_run,
    load_run_info,
    new_run_id,
    pipeline_options,
    rate_limiter,
)
from docshift.commands.target import check_store, target_config
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.pipeline import MigrationPipeline, PipelineResult, new_checkpoint
from docshift.engine.plan import PlanRecorder
from docshift.engine.progress import NullProgress, Progress
from docshift.engine.restore import Restorer, RestoreResult, plan_restore
from docshift.engine.sharding import plan_shards
from docshift.errors import DocshiftError, EmergencyStop, RunStopped, UsageError
from docshift.history import History, MigrationStatus, current_user
from docshift.loader import load_migrations
from docshift.lock import LeaseLock
from docshift.migration import Migration
from docshift.store import Store, store_for
from docshift.store.simulated import SimulatedStore
from docshift.values import Timestamp

__all__ = ["RollbackItem", "RollbackOptions", "RollbackReport", "rollback", "rollback_target"]

_JOURNAL = "before-images.jsonl.gz"

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
    note: str | None = None
    """Said with the summary: a rollback that could not be verified, and why."""

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

    run_state = "conflicts"
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
    journal = config.runs_dir / source_run / migration.label / _JOURNAL
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


def rollback_target(config: Config, options: RollbackOptions) -> Config:
    """``config`` pointed at the project and database the rollback works on: those recorded by the
    run it undoes (or by the rollback it resumes). Unchanged for ``--to`` (the history read is the
    database's), or when the run is not found (``rollback`` then says so)."""
    wanted = options.resume or options.run_id
    if not wanted:
        return config
    try:
        folder = find_run(config.runs_dir, wanted, kind="rollback" if options.resume else "run")
    except UsageError:
        return config
    return target_config(config, folder)


def rollback(
    config: Config,
    options: RollbackOptions,
    *,
    store: Store | None = None,
    progress: Progress | None = None,
    controls: Controls | None = None,
) -> RollbackReport:
    """Dry-run (default) or execute a rollback; raises :class:`RollbackConflicts` when documents
    changed since the migration wrote them were left alone (use ``force`` to overwrite them), or
    when documents do not equal their before-images afterwards."""
    migrations = {m.id: m for m in load_migrations(config.migrations_dir)}
    config = rollback_target(config, options)
    with store_for(config, store) as active:
        progress = progress or NullProgress()
        history = History(active, config.store.state_prefix)
        if options.resume:
            folder = find_run(config.runs_dir, options.resume, kind="rollback")
            info = read_versioned(folder / "run.json", "docshift-run", 1)
            check_store(active, info, str(info["run_id"]))
            plan = [(migrations[i], run, strategy) for i, run, strategy in info["plan"]]
            options = dataclasses.replace(options, execute=bool(info["execute"]), force=bool(info["force"]))
            run_id = str(info["run_id"])
        else:
            targets = _targets(config, options, history, migrations)
            for source_run in dict.fromkeys(run for _, run in targets):
                if (config.runs_dir / source_run / "run.json").is_file():
                    check_store(active, load_run_info(config.runs_dir / source_run), source_run)
            plan = [(m, run, _strategy(config, m, run, options.strategy)) for m, run in targets]
            run_id = options.rollback_id or new_run_id()
            folder = config.runs_dir / run_id
            info = {"run_id": run_id, "kind": "rollback", "execute": options.execute, "force": options.force,
                    "state": "running", "migrations": [m.id for m, _, _ in plan],
                    "plan": [[m.id, run, strategy] for m, run, strategy in plan],
                    "of_run": plan[0][1] if options.run_id and plan else options.run_id, "to": options.to,
                    "strategy": options.strategy,
                    "created_at": datetime.now(UTC).isoformat(), "user": current_user(),
                    "target": active.info.describe(),
                    "project": active.info.project, "database": active.info.database}
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
                    info["state"] = stop.run_state
                    write_versioned(folder / "run.json", "docshift-run", 1, info)
                    raise
        dirty = [item for item in report.items if not item.clean] if options.execute else []
        info["state"] = RollbackConflicts.run_state if dirty else "finished"
        write_versioned(folder / "run.json", "docshift-run", 1, info)
        if dirty:
            message, hint = _not_undone(dirty, info)
            error = RollbackConflicts(message, hint=hint)
            error.report = report
            raise error
        return report


def _not_undone(dirty: list[RollbackItem], info: dict[str, Any]) -> tuple[str, str]:
    """The error (and its hint) of a rollback that left documents unlike their before-images."""
    conflicts = sum(item.counters.get("conflicts", 0) for item in dirty)
    mismatched = sum(item.counters.get("mismatched", 0) for item in dirty)
    failed = sum(item.counters.get("failed", 0) for item in dirty)

    def listed(name: str) -> str:
        files = [str(item.folder / name) for item in dirty if (item.folder / name).is_file()]
        return f"they are listed in {', '.join(files)}" if files else "see the rollback's report"

    parts, hints = [], []
    if conflicts:
        parts.append(f"{conflicts} document(s) changed after the migration wrote them and were left alone")
        command = force_command(info)
        again = f"run `{command}`" if command else "rerun the rollback with --force"
        hints.append(f"{listed('conflicts.jsonl')}; to undo them over those later changes too (the "
                     f"changes are lost), {again}")
    if mismatched:
        parts.append(f"{mismatched} document(s) do not equal their before-image after the rollback")
        hints.append(f"{listed('mismatches.jsonl')}; if down() does not undo up(), fix it or roll back "
                     "with --strategy restore")
    if failed:
        parts.append(f"{failed} document(s) failed in down()")
        hints.append(listed("dead-letters.jsonl"))
    return "; ".join(parts), "; ".join(hints)


def _undo_all(
    config: Config, store: Store, plan: list[tuple[Migration, str, str]], options: RollbackOptions,
    report: RollbackReport, history: History, progress: Progress, controls: Controls,
) -> None:
    """Undo each migration of the plan, newest first. A dry run does the same against a simulated
    copy of the store, so an older migration sees what undoing the newer ones would leave."""
    own_writes: dict[str, tuple[Timestamp, Timestamp | None]] = {}
    view = store if options.execute else SimulatedStore(store)
    for index, (migration, source_run, strategy) in enumerate(plan):
        if isinstance(view, SimulatedStore) and index == len(plan) - 1:
            view.retain_writes = False  # the oldest: nothing reads what its undo would leave
        folder = report.folder / migration.label
        item = RollbackItem(migration, strategy, source_run, folder)
        progress.event("start", migration=f"rollback {migration.label}", strategy=strategy, shards=1,
                       execute=options.execute, counters={})
        journal = config.runs_dir / source_run / migration.label / _JOURNAL
        if strategy == "restore" or journal.exists():
            item.restore = _from_journal(config, view, migration, strategy, journal, folder, options,
                                         progress, controls, own_writes)
            if item.restore.stopped:
                stopped = controls.stop_class or RunStopped
                raise stopped(controls.stop_reason or "stopped", resume_command=report.resume_command)
        else:
            item.note = (f"run {source_run} kept no before-images (--no-backup): down() "
                         f"{'ran' if options.execute else 'would run'} over every document of the target, "
                         "also those the run did not change, and the result cannot be verified")
            progress.event("warning", message=f"{migration.label}: {item.note}")
            item.pipeline, item.plan = _down_over_target(config, view, migration, folder, options,
                                                         report.run_id, progress, controls)
            if item.pipeline.error is not None:
                raise item.pipeline.error
        report.items.append(item)
        if options.execute and item.clean:
            history.mark_rolled_back(migration.id, report.run_id, item.counters)
        progress.event("finish", migration=f"rollback {migration.label}", **item.counters)


def _from_journal(
    config: Config, store: Store, migration: Migration, strategy: str, journal: Path, folder: Path,
    options: RollbackOptions, progress: Progress, controls: Controls,
    own_writes: dict[str, tuple[Timestamp, Timestamp | None]],
) -> RestoreResult:
    """Undo the documents of the run's journal, by their before-images or by down()."""
    checkpoint_path = folder / "checkpoint.json"
    result = RestoreResult()
    started, elapsed_before = time.monotonic(), 0.0
    if checkpoint_path.exists():
        saved = Checkpoint.load(checkpoint_path)
        if saved.extra.get("kind") not in ("restore", "down"):
            raise UsageError(f"the checkpoint {checkpoint_path} is not one of a rollback from before-images",
                             hint="it was written by an older docshift; start a new rollback")
        if saved.finished:
            result.counters.update(saved.counters)
            return result
        result.position = int(saved.extra.get("position", -1))
        result.counters.update(saved.counters)
        elapsed_before = saved.elapsed_seconds
    checkpoint = Checkpoint(run_id=folder.parent.name, migration_id=migration.id, checksum=migration.checksum,
                            shards=[ShardCursor()],
                            extra={"kind": strategy, "of_run": journal.parent.parent.name})

    def save(current: RestoreResult, state: str = "running") -> None:
        lost = controls.lease_lost
        if lost is not None and lost.is_set():
            controls.request_stop("the lease was lost to another run", EmergencyStop)
        if not options.execute:
            return
        checkpoint.counters = dict(current.counters)
        checkpoint.elapsed_seconds = elapsed_before + time.monotonic() - started  # the report's working time
        checkpoint.extra["position"] = current.position
        checkpoint.state = state
        checkpoint.save(checkpoint_path)

    # redo recognises our own writes by value; a copy's before-images are of its targets, which
    # up() does not take.
    redo = None if migration.target.copy_to else migration.up
    restorer = Restorer(store, execute=options.execute, force=options.force,
                        conflicts_file=folder / "conflicts.jsonl", redo=redo,
                        undo=migration.down if strategy == "down" else None,
                        limiter=controls.limiter, stop=controls.stop, progress=progress, on_batch=save,
                        batch_size=config.engine.batch_size, own_writes=own_writes)
    restorer.run(plan_restore(journal, result.position), result)
    save(result, "stopped" if result.stopped else "finished")
    return result


def _down_over_target(
    config: Config, store: Store, migration: Migration, folder: Path, options: RollbackOptions,
    run_id: str, progress: Progress, controls: Controls,
) -> tuple[PipelineResult, PlanRecorder | None]:
    """down() over the migration's whole target, through the engine: the only way without a
    journal. A dry run executes against the simulated store (``store``), without before-images."""
    assert migration.down is not None
    checkpoint_path = folder / "checkpoint.json"
    if checkpoint_path.exists():
        checkpoint = Checkpoint.load(checkpoint_path)
    else:
        settings: dict[str, Any] = {"rollback": True, "strategy": "down"}
        checkpoint = new_checkpoint(run_id, migration, plan_shards(store, migration.target, 1), settings)
    recorder = None if options.execute else PlanRecorder(folder / "plan.jsonl.gz", migration.down)
    base = pipeline_options(config if options.execute else config.with_engine(backup=False),
                            RunOptions(execute=True))
    pipeline = MigrationPipeline(store, migration, base, folder, checkpoint, controls=controls,
                                 progress=progress, transform=migration.down, on_decision=recorder)
    try:
        return pipeline.run(), recorder
    finally:
        if recorder is not None:
            recorder.close()

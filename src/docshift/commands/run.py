"""``docshift run``: dry-run or execute the pending migrations, in order, resumably.

Each migration gets its own folder in the run folder (checkpoint, before-images, dead letters,
plan), so a run of several migrations resumes exactly where it stopped, migration by migration.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docshift.checkpoints.atomic import read_versioned, write_versioned
from docshift.checkpoints.checkpoint import Checkpoint
from docshift.commands.stages import StageFailed, StagePlan, run_stages
from docshift.config import Config
from docshift.engine.batch import DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.limits import RateLimiter
from docshift.engine.pipeline import MigrationPipeline, PipelineOptions, PipelineResult, new_checkpoint
from docshift.engine.plan import PlanRecorder
from docshift.engine.progress import NullProgress, Progress
from docshift.engine.sharding import plan_shards
from docshift.errors import DriftError, LockedError, RunFileError, RunStopped, UsageError
from docshift.history import (
    History,
    MigrationState,
    MigrationStatus,
    check_drift,
    check_order,
    current_user,
    plan,
)
from docshift.loader import load_migrations
from docshift.lock import LeaseLock, process_exists, read_lease
from docshift.migration import Migration
from docshift.store import Store, store_for

__all__ = ["RunOptions", "RunReport", "find_run", "load_run_info", "run"]

RUN_FILE_VERSION = 1
_RUN_KIND = "docshift-run"


@dataclass(frozen=True)
class RunOptions:
    execute: bool = False
    to: str | None = None
    only: str | None = None
    limit: int | None = None
    sample_percent: float | None = None
    resume: str | None = None
    """A run id, or ``"latest"`` for the newest unfinished run."""
    allow_drift: bool = False
    force: bool = False
    """Resume even though a migration file changed since its checkpoint."""
    shards: int | None = None
    stages: tuple[float, ...] | None = None
    """Canary stages in percent (e.g. 1, 10, 50, 100); see ``commands/stages.py``."""
    pause_between_stages: bool = False
    run_id: str | None = None
    """The id of a new run (default: generated); lets a caller know the run folder beforehand."""


@dataclass
class MigrationOutcome:
    migration: Migration
    result: PipelineResult
    plan: PlanRecorder | None = None


@dataclass
class RunReport:
    run_id: str
    folder: Path
    execute: bool
    outcomes: list[MigrationOutcome] = field(default_factory=list)
    target: str = ""

    @property
    def resume_command(self) -> str:
        return f"docshift run --execute --resume {self.run_id}"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def pipeline_options(config: Config, options: RunOptions) -> PipelineOptions:
    return PipelineOptions(
        execute=options.execute, engine=config.engine, limits=config.limits, limit=options.limit,
        sample_percent=options.sample_percent,
    )


def rate_limiter(config: Config, store: Store) -> RateLimiter:
    ramp = config.limits.ramp == "on" or (config.limits.ramp == "auto" and not store.info.is_emulator)
    return RateLimiter(config.limits.max_writes_per_second, ramp=ramp)


def _select(
    migrations: list[Migration], history: History, options: RunOptions
) -> tuple[list[Migration], list[MigrationState]]:
    """The migrations to run, and the drifted ones ``--allow-drift`` lets through."""
    states = plan(migrations, history.all())
    drifted = check_drift(states, options.allow_drift)
    known = {m.id for m in migrations}
    for wanted in (options.to, options.only):
        if wanted is not None and wanted not in known:
            raise UsageError(f"no migration with id {wanted!r}", hint="see `docshift status` for the ids")
    if options.only is not None:
        return [m for m in migrations if m.id == options.only], drifted
    check_order(states)
    chosen = [s.migration for s in states if s.runnable and s.migration is not None]
    if options.to is not None:
        chosen = [m for m in chosen if int(m.id) <= int(options.to)]
    return chosen, drifted


def find_run(runs_dir: Path, run_id: str, kind: str = "run") -> Path:
    """The folder of ``run_id``, or of the newest unfinished ``kind`` run for ``"latest"``."""
    if run_id != "latest":
        folder = runs_dir / run_id
        if not (folder / "run.json").is_file():
            raise UsageError(f"no run {run_id!r} in {runs_dir}", hint="see `docshift runs` for run ids")
        return folder
    candidates = sorted((p for p in runs_dir.glob("*/run.json")), reverse=True)
    for path in candidates:
        info = read_versioned(path, _RUN_KIND, RUN_FILE_VERSION)
        if info.get("kind", "run") == kind and info.get("execute") and info.get("state") != "finished":
            return path.parent
    raise UsageError(f"no unfinished {kind} in {runs_dir} to resume")


def _write_run_file(folder: Path, info: dict[str, Any]) -> None:
    write_versioned(folder / "run.json", _RUN_KIND, RUN_FILE_VERSION, info)


def _record_state(folder: Path, info: dict[str, Any], state: str) -> RunFileError | None:
    """Write ``state`` into run.json; a failure is returned for the caller to say what it means."""
    info["state"] = state
    try:
        _write_run_file(folder, info)
    except RunFileError as error:
        return error
    return None


def _unrecorded(error: RunFileError, done: str, then: str, resume: str | None = None) -> RunFileError:
    """``error`` (run.json could not be written) with what the run had done and what to do next."""
    return RunFileError(f"{error.message}; {done}", path=error.path, resume_command=resume,
                        hint=f"free space or fix the runs folder (permissions, mount), then {then}")


def run(
    config: Config,
    options: RunOptions,
    *,
    store: Store | None = None,
    progress: Progress | None = None,
    controls: Controls | None = None,
    checks: Callable[[Migration], DocumentCheck | None] | None = None,
) -> RunReport:
    """Dry-run (default) or execute the pending migrations. Raises :class:`RunStopped` subclasses
    when a run stops early; its checkpoint is kept and ``resume_command`` continues it."""
    migrations = load_migrations(config.migrations_dir)
    with store_for(config, store) as active:
        progress = progress or NullProgress()
        history = History(active, config.store.state_prefix)
        drifted: list[MigrationState] = []
        if options.resume:
            folder = find_run(config.runs_dir, options.resume)
            info = read_versioned(folder / "run.json", _RUN_KIND, RUN_FILE_VERSION)
            by_id = {m.id: m for m in migrations}
            missing = [i for i in info["migrations"] if i not in by_id]
            if missing:
                raise DriftError(f"run {info['run_id']} needs migration {missing[0]}, whose file is gone")
            selected = [by_id[i] for i in info["migrations"]]
            run_id, options = info["run_id"], dataclasses.replace(options, execute=bool(info["execute"]))
        else:
            selected, drifted = _select(migrations, history, options)
            run_id = options.run_id or new_run_id()
            if not selected:
                return RunReport(run_id, config.runs_dir / run_id, options.execute,
                                 target=active.info.describe())
            folder = config.runs_dir / run_id
            info = {
                "run_id": run_id, "kind": "run", "execute": options.execute, "state": "running",
                "migrations": [m.id for m in selected], "created_at": datetime.now(UTC).isoformat(),
                "user": f"{getpass.getuser()}@{socket.gethostname()}",
                "target": active.info.describe(), "project": active.info.project,
                "database": active.info.database, "limit": options.limit, "sample": options.sample_percent,
            }
            if (unwritten := _record_state(folder, info, "running")) is not None:
                raise _unrecorded(unwritten, f"run {run_id} did not start: nothing was written to the store",
                                  "run again")
        report = RunReport(run_id, folder, options.execute, target=active.info.describe())
        controls = controls or Controls(rate_limiter(config, active))
        if not options.execute:
            _run_all(config, active, selected, options, report, history, progress, controls, checks)
            info["state"] = "finished"
            _write_run_file(folder, info)
            return report
        if options.resume:
            _refuse_if_still_running(active, config.store.state_prefix, run_id)
        lock = LeaseLock(active, config.store.state_prefix, run_id=run_id)
        with lock:
            controls.lease_lost = lock.lost
            for state in drifted:  # --allow-drift: adopt the new checksum, keeping the old one
                if state.migration is not None:
                    history.accept_drift(state.migration_id, state.migration.checksum, run_id)
            try:
                _run_all(config, active, selected, options, report, history, progress, controls, checks)
            except RunStopped as stop:
                rolled_back = isinstance(stop, StageFailed)  # nothing to resume: start a new run
                stop.resume_command = None if rolled_back else report.resume_command
                unwritten = _record_state(folder, info, "rolled_back" if rolled_back else "stopped")
                if isinstance(stop, RunFileError):
                    stop.hint = _unrecorded(stop, "", f"resume with `{report.resume_command}`, or undo what "
                                            f"was written with `docshift rollback {run_id} --execute`").hint
                elif unwritten is not None:  # a folder that cannot be written must not hide the stop
                    stop.message += f"; {unwritten.message}"
                raise
        if (unwritten := _record_state(folder, info, "finished")) is not None:
            done = "; ".join(f"{o.migration.label}: " + ", ".join(
                f"{o.result.counters.get(k, 0):,} {k}" for k in ("updated", "created", "deleted"))
                for o in report.outcomes)
            raise _unrecorded(unwritten, f"run {run_id} finished ({done}); only its run.json still says "
                              "running", f"`{report.resume_command}` records it as finished (it migrates "
                              f"nothing again); `docshift rollback {run_id} --execute` undoes it",
                              report.resume_command)
        return report


def _run_all(
    config: Config, store: Store, selected: Sequence[Migration], options: RunOptions, report: RunReport,
    history: History, progress: Progress, controls: Controls,
    checks: Callable[[Migration], DocumentCheck | None] | None,
) -> None:
    base = pipeline_options(config, options)
    for migration in selected:
        folder = report.folder / migration.label
        checkpoint_path = folder / "checkpoint.json"
        if checkpoint_path.exists():
            checkpoint = Checkpoint.load(checkpoint_path)
            if checkpoint.extra.get("rolled_back"):
                raise UsageError(f"{migration.label} was rolled back by its canary stage gate in run "
                                 f"{report.run_id}", hint="fix the migration and start a new run")
            stages_left = options.stages is not None and int(checkpoint.extra.get("stage", 0)) < len(
                options.stages) - 1
            if checkpoint.finished and not stages_left:
                if options.execute:
                    _finish_history(history, migration, report.run_id, checkpoint)
                continue
            if checkpoint.checksum != migration.checksum and not options.force:
                raise DriftError(
                    f"{migration.label}.py changed since run {report.run_id} checkpointed it",
                    hint="restore the file, or resume with --force to continue with the new code",
                )
        else:
            # --limit means the first N documents in name order: one reader, one shard.
            count = 1 if options.limit is not None else options.shards or config.engine.shards
            shards = plan_shards(store, migration.target, count)
            checkpoint = new_checkpoint(report.run_id, migration, shards, _settings(config, options))
        recorder = None if options.execute else PlanRecorder(folder / "plan.jsonl.gz", migration.up)
        on_checkpoint = None
        if options.execute:
            history.start(migration, report.run_id)

            def on_checkpoint(saved: Checkpoint, migration_id: str = migration.id) -> None:
                summary = {"run_id": saved.run_id, "state": saved.state,
                           "cursors": [s.cursor for s in saved.shards]}
                history.progress(migration_id, saved.counters, summary)

        pipeline = MigrationPipeline(
            store, migration, base, folder, checkpoint, controls=controls, progress=progress,
            check=checks(migration) if checks else None, on_decision=recorder, on_checkpoint=on_checkpoint,
        )
        try:
            if options.execute and options.stages:
                result = _staged(config, store, migration, base, folder, checkpoint, options, controls,
                                 progress, checks, report.run_id)
            else:
                result = pipeline.run()
        finally:
            if recorder is not None:
                recorder.close()
        report.outcomes.append(MigrationOutcome(migration, result, recorder))
        if options.execute:
            status = MigrationStatus.APPLIED if result.error is None else MigrationStatus.FAILED
            error = None if result.error is None else f"{result.error} (resume: {report.resume_command})"
            if isinstance(result.error, StageFailed):
                error = str(result.error)
            history.finish(migration.id, status, result.counters, error)
            if isinstance(result.error, StageFailed):
                history.mark_rolled_back(migration.id, report.run_id, result.counters)
        if result.error is not None:
            raise result.error


def _staged(
    config: Config, store: Store, migration: Migration, base: PipelineOptions, folder: Path,
    checkpoint: Checkpoint, options: RunOptions, controls: Controls, progress: Progress,
    checks: Callable[[Migration], DocumentCheck | None] | None, run_id: str,
) -> PipelineResult:
    assert options.stages is not None
    plan = StagePlan(options.stages, options.pause_between_stages)
    try:
        return run_stages(config, store, migration, base, folder, checkpoint, plan, controls=controls,
                          progress=progress, check=checks(migration) if checks else None, run_id=run_id)
    except RunStopped as error:
        return PipelineResult(migration.id, "stopped", dict(checkpoint.counters), 0.0, folder, error)


def _refuse_if_still_running(store: Store, prefix: str, run_id: str) -> None:
    """Resuming takes over the lease of the run being resumed (its process was killed, say), but
    not while that process is alive: two processes would run the same migration side by side.
    Alive means: the lease has not expired and its process exists on this machine (a lease from
    another machine counts as alive until it expires)."""
    lease = read_lease(store, prefix)
    if lease is None or lease.run_id != run_id or lease.expired():
        return
    if lease.owner == current_user() and (lease.pid == os.getpid() or not process_exists(lease.pid)):
        return
    raise LockedError(
        f"run {run_id} is still running: {lease.describe()}",
        hint="stop that process first (Ctrl-C); if it is gone, wait for its lease to expire or "
        "remove it with `docshift unlock --force`",
    )


def _finish_history(history: History, migration: Migration, run_id: str, checkpoint: Checkpoint) -> None:
    """A resumed run whose migration had already finished: if the process died before recording
    that in the history, record it now (otherwise the history says running for ever)."""
    record = history.get(migration.id)
    if record is not None and record.run_id == run_id and record.status is MigrationStatus.RUNNING:
        history.finish(migration.id, MigrationStatus.APPLIED, checkpoint.counters)


def _settings(config: Config, options: RunOptions) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "engine": dataclasses.asdict(config.engine),
        "limits": dataclasses.asdict(config.limits),
        "store": {"project": config.store.project, "database": config.store.database,
                  "emulator": config.store.emulator_host is not None},
        "options": dataclasses.asdict(options),
    }
    return settings


def load_run_info(folder: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder (what ran, where, and in which state it ended)."""
    return read_versioned(folder / "run.json", _RUN_KIND, RUN_FILE_VERSION)

"""``docshift run``: dry-run or execute the pending migrations, in order, resumably.

Each migration gets its own folder in the run folder (checkpoint, before-images, dead letters,
plan), so a run of several migrations resumes exactly where it stopped, migration by migration.
A resume continues with the run's own settings (``run.json``), a flag given on it overriding one.

What the history records for a migration is derived in one place, :func:`outcome_status`, from
what was processed: ``applied`` only when every document of its target was (every shard to its
end, no ``--limit`` cut, no ``--sample``, every canary stage passed), otherwise ``partial``.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docshift.commands.stages import CanaryStages, run_stages
from docshift.commands.target import check_store, target_config
from docshift.config import Config, with_values
from docshift.engine.batch import DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.dry_run import DryRunRecorder
from docshift.engine.hooks import (
    MigrationEnded,
    MigrationStarted,
    RunHooks,
    RunResumed,
    RunStarted,
    Warned,
    run_lifecycle,
)
from docshift.engine.limits import RateLimiter
from docshift.engine.pipeline import MigrationPipeline, PipelineOptions, PipelineResult, new_checkpoint
from docshift.engine.sharding import plan_shards
from docshift.errors import (
    DocshiftError,
    DriftError,
    ExitCode,
    LockedError,
    RunFileError,
    RunStopped,
    StageFailed,
    UsageError,
)
from docshift.history import History, MigrationStatus, current_user
from docshift.loader import load_migrations
from docshift.lock import LeaseLock, process_exists, read_lease
from docshift.migration import Migration
from docshift.planning import MigrationState, check_drift, check_order, migration_states
from docshift.runfolder.checkpoint import Checkpoint, Scope
from docshift.runfolder.layout import RunFolder, run_folders
from docshift.runfolder.record import CLOSED_STATES, read_info, read_migration, write_info
from docshift.store import Store, store_for

__all__ = [
    "ResumedRun",
    "RunOptions",
    "RunReport",
    "find_run",
    "load_run_info",
    "outcome_status",
    "resume_run",
    "run",
    "run_settings",
]


@dataclass(frozen=True)
class RunOptions:
    execute: bool = False
    to: str | None = None
    only: str | None = None
    limit: int | None = None
    sample_percent: float | None = None
    resume: str | None = None
    """A run id, or ``"latest"`` for the newest unfinished run. It continues with the run's own
    settings; a config key given as a flag (``Config.sources`` says ``--…``) overrides one (see
    :func:`resume_run`)."""
    allow_drift: bool = False
    force: bool = False
    """Resume even though a migration file changed since its checkpoint."""
    shards: int | None = None
    stages: tuple[float, ...] | None = None
    """Canary stages in percent (e.g. 1, 10, 50, 100); see ``commands/stages.py``."""
    pause_between_stages: bool = False
    run_id: str | None = None
    """The id of a new run (default: generated); lets a caller know the run folder beforehand."""
    scans: bool = False
    """``--validate``; recorded with the run so that a resume scans too (the CLI runs the scans)."""
    auto_rollback: bool = False
    """``--auto-rollback``; recorded with the run so that a resume keeps it (the CLI rolls back)."""


@dataclass
class MigrationOutcome:
    migration: Migration
    result: PipelineResult
    plan: DryRunRecorder | None = None
    status: MigrationStatus | None = None
    """What the history recorded (None in a dry run): see :func:`outcome_status`."""
    note: str | None = None
    """Why it is not applied although it finished (a partial run), for the output."""

    @property
    def state(self) -> str:
        return self.status.value if self.status is not None else self.result.state


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
        execute=options.execute,
        engine=config.engine,
        limits=config.limits,
        limit=options.limit,
        sample_percent=options.sample_percent,
    )


def rate_limiter(config: Config, store: Store) -> RateLimiter:
    ramp = config.limits.ramp == "on" or (config.limits.ramp == "auto" and not store.info.is_emulator)
    return RateLimiter(config.limits.max_writes_per_second, ramp=ramp)


def _select(
    migrations: list[Migration], history: History, options: RunOptions
) -> tuple[list[Migration], list[MigrationState]]:
    """The migrations to run, and the drifted ones ``--allow-drift`` lets through."""
    states = migration_states(migrations, history.all())
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


_RUN_KEYS = ("max_writes_per_second", "batch_size", "concurrency", "shards", "max_failures", "backup")
"""The config keys ``docshift run`` takes as flags: a run's own settings, which a resume keeps."""
_SCOPE = ("limit", "sample_percent", "stages")
"""Which documents a run processes; a resume cannot change them (that would be another run)."""
_SWITCHES = ("pause_between_stages", "scans", "auto_rollback")
_FLAGS = {
    "limit": "--limit",
    "sample_percent": "--sample",
    "stages": "--stages",
    "pause_between_stages": "--pause-between-stages",
    "scans": "--validate",
    "auto_rollback": "--auto-rollback",
    "backup": "--no-backup",
}


def _config_value(config: Config, name: str) -> Any:
    return getattr(config.limits if hasattr(config.limits, name) else config.engine, name)


def run_settings(config: Config, options: RunOptions) -> dict[str, Any]:
    """What a run continues with when it is resumed (``settings`` in ``run.json``)."""
    return {
        "config": {name: _config_value(config, name) for name in _RUN_KEYS},
        "options": {
            "limit": options.limit,
            "sample_percent": options.sample_percent,
            "stages": list(options.stages) if options.stages else None,
            "pause_between_stages": options.pause_between_stages,
            "scans": options.scans,
            "auto_rollback": options.auto_rollback,
        },
    }


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag_text(name: str, value: Any) -> str:
    if name in _SWITCHES or name == "backup":
        return _FLAGS[name]
    return f"--{name.replace('_', '-')} {_shown(value)}"


@dataclass(frozen=True)
class ResumedRun:
    """A run being resumed: its folder and ``run.json``, and the config and options it continues
    with (its own settings, with the flags given on the resume over them)."""

    run_id: str
    folder: Path
    info: dict[str, Any]
    config: Config
    options: RunOptions
    overrides: dict[str, dict[str, Any]]
    """Settings a flag of this resume changed: name -> {"was": the run's, "now": the flag's}."""

    def describe(self) -> list[str]:
        """What the resume continues with, and each override, one line each."""
        settings = run_settings(self.config, self.options)
        values, options = settings["config"], settings["options"]
        rate = values["max_writes_per_second"]
        parts = [
            f"write limit {_shown(rate) + ' ops/s' if rate else 'none'}",
            f"batch size {values['batch_size']}",
            f"concurrency {values['concurrency']}",
            f"shards {values['shards']}",
            f"max failures {values['max_failures']}",
            f"backup {_shown(values['backup'])}",
        ]
        if options["limit"] is not None:
            parts.append(f"--limit {options['limit']}")
        if options["sample_percent"] is not None:
            parts.append(f"--sample {_scope_text(float(options['sample_percent']))}")
        if options["stages"]:
            parts.append(f"--stages {_scope_text(tuple(options['stages']))}")
        parts += [_FLAGS[name] for name in _SWITCHES if options[name]]
        lines = [f"resuming run {self.run_id} with its own settings: " + ", ".join(parts)]
        for name, change in self.overrides.items():
            lines.append(
                f"{_flag_text(name, change['now'])} overrides the run's {name.replace('_', ' ')} "
                f"{_shown(change['was'])} (recorded in run.json, the report and the history)"
            )
        return lines


def _recorded_settings(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The run's settings; for a run folder from before they were kept in ``run.json``, those of
    its first checkpoint."""
    saved = info.get("settings")
    if isinstance(saved, dict):
        return saved
    for migration in RunFolder(folder).migrations():
        settings = Checkpoint.load(migration.checkpoint).settings
        flat = {**settings.get("engine", {}), **settings.get("limits", {})}
        options = settings.get("options", {})
        return {
            "config": {k: flat[k] for k in _RUN_KEYS if k in flat},
            "options": {k: options.get(k) for k in (*_SCOPE, *_SWITCHES)},
        }
    return {"config": {}, "options": {"limit": info.get("limit"), "sample_percent": info.get("sample")}}


def resume_run(config: Config, options: RunOptions) -> ResumedRun:
    """The run ``options.resume`` names, with what it continues with: its own settings (as it
    started, or as an earlier resume changed them), except where this command was given a flag
    (``config.sources`` says ``--…``), which overrides the run's. Its scope (``--limit``,
    ``--sample``, ``--stages``) stays as it was: a different one is refused."""
    assert options.resume is not None
    folder = find_run(config.runs_dir, options.resume)
    config = target_config(config, folder)  # where the run was made, not where the defaults point today
    info = load_run_info(folder)
    run_id = str(info["run_id"])
    recorded = _recorded_settings(folder, info)
    values: dict[str, Any] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for name, was in recorded.get("config", {}).items():
        if name not in _RUN_KEYS:
            continue
        now = _config_value(config, name)
        if str(config.sources.get(name, "default")).startswith("--"):
            if name == "backup" and was and not now:
                raise UsageError(
                    f"run {run_id} saves before-images; a resume cannot stop saving them: a rollback of the "
                    "run would then leave what the resume writes migrated",
                    hint="resume without --no-backup, or start a new run with it (docshift run --execute "
                    "--no-backup)",
                )
            if now != was:
                overrides[name] = {"was": was, "now": now}
        else:
            values[name] = was
    if values:
        config = with_values(config, values, f"run {run_id}")
    given = recorded.get("options", {})
    stages = tuple(float(s) for s in given["stages"]) if given.get("stages") else None
    theirs = {"limit": given.get("limit"), "sample_percent": given.get("sample_percent"), "stages": stages}
    for name in _SCOPE:
        mine = getattr(options, name)
        if mine is not None and mine != theirs[name]:
            was = "without it" if theirs[name] is None else f"with {_FLAGS[name]} {_scope_text(theirs[name])}"
            raise UsageError(
                f"run {run_id} was started {was}; a resume continues it as it started and cannot "
                f"change {_FLAGS[name]}",
                hint=f"drop {_FLAGS[name]} to resume it, or start a new run with it (docshift run --execute "
                f"{_FLAGS[name]} …); the migration stays pending until a run processes all of it",
            )
    switches: dict[str, bool] = {}
    for name in _SWITCHES:
        was_on, now_on = bool(given.get(name)), bool(getattr(options, name))
        if now_on and not was_on:
            overrides[name] = {"was": False, "now": True}
        switches[name] = was_on or now_on
    options = dataclasses.replace(
        options,
        execute=bool(info["execute"]),
        resume=run_id,
        run_id=run_id,
        limit=theirs["limit"],
        sample_percent=theirs["sample_percent"],
        stages=stages,
        pause_between_stages=switches["pause_between_stages"],
        scans=switches["scans"],
        auto_rollback=switches["auto_rollback"],
    )
    return ResumedRun(run_id, folder, info, config, options, overrides)


def _scope_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{_shown(float(s))}%" for s in value)
    return f"{_shown(value)}%" if isinstance(value, float) else str(value)


def _record_resume(resumed: ResumedRun, hooks: RunHooks) -> None:
    """Write into ``run.json`` the settings the resume continues with, the resume and what it
    overrode, and ``overrides``: every setting the run's resumes changed, from the run's first
    value to the latest (what the report and the history show)."""
    info = resumed.info
    info["settings"] = run_settings(resumed.config, resumed.options)
    info.setdefault("resumes", []).append(
        {"at": datetime.now(UTC).isoformat(), "user": current_user(), "overrides": resumed.overrides}
    )
    merged: dict[str, dict[str, Any]] = dict(info.get("overrides") or {})
    for name, change in resumed.overrides.items():
        was = merged[name]["was"] if name in merged else change["was"]
        merged[name] = {"was": was, "now": change["now"]}
    info["overrides"] = merged
    _write_run_file(resumed.folder, info)
    hooks.run_resumed(RunResumed(resumed.run_id, info["settings"], resumed.overrides))


def find_run(runs_dir: Path, run_id: str, kind: str = "run") -> Path:
    """The folder of ``run_id``, or of the newest unfinished ``kind`` run for ``"latest"``."""
    if run_id != "latest":
        folder = RunFolder.of(runs_dir, run_id)
        if not folder.exists:
            raise UsageError(f"no run {run_id!r} in {runs_dir}", hint="see `docshift runs` for run ids")
        return folder.path
    for candidate in run_folders(runs_dir):
        info = read_info(candidate.path)
        if info.get("kind", "run") == kind and info.get("execute") and info.get("state") not in CLOSED_STATES:
            return candidate.path
    command = "docshift run --execute" if kind == "run" else "docshift rollback RUN_ID --execute"
    raise UsageError(
        f"no unfinished {kind} in {runs_dir} to resume",
        hint=f"finished and rolled-back runs are closed (see `docshift runs`); start a new run: {command}",
    )


def _write_run_file(folder: Path, info: dict[str, Any]) -> None:
    write_info(folder, info)


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
    return RunFileError(
        f"{error.message}; {done}",
        path=error.path,
        resume_command=resume,
        hint=f"free space or fix the runs folder (permissions, mount), then {then}",
    )


def run(
    config: Config,
    options: RunOptions,
    *,
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
) -> RunReport:
    """Dry-run (default) or execute the pending migrations. Raises :class:`RunStopped` subclasses
    when a run stops early; its checkpoint is kept and ``resume_command`` continues it.

    ``hooks`` hear of each step of the run (:mod:`docshift.engine.hooks`); the document check a
    migration's start returns (validation's rules, say) is applied to every document it writes."""
    migrations = load_migrations(config.migrations_dir)
    resumed = resume_run(config, options) if options.resume else None
    if resumed is not None:
        config, options = resumed.config, resumed.options
    with store_for(config, store) as active:
        hooks = hooks or RunHooks()
        history = History(active, config.store.state_prefix)
        drifted: list[MigrationState] = []
        if resumed is not None:
            folder, info, run_id = resumed.folder, resumed.info, resumed.run_id
            check_store(active, info, run_id)
            by_id = {m.id: m for m in migrations}
            missing = [i for i in info["migrations"] if i not in by_id]
            if missing:
                raise DriftError(
                    f"run {run_id} needs migration {missing[0]}, whose file is gone",
                    hint="put the file back (from version control) to resume, or start a new run",
                )
            selected = [by_id[i] for i in info["migrations"]]
        else:
            selected, drifted = _select(migrations, history, options)
            run_id = options.run_id or new_run_id()
            if not selected:
                return RunReport(
                    run_id, config.runs_dir / run_id, options.execute, target=active.info.describe()
                )
            folder = config.runs_dir / run_id
            info = {
                "run_id": run_id,
                "kind": "run",
                "execute": options.execute,
                "state": "running",
                "migrations": [m.id for m in selected],
                "created_at": datetime.now(UTC).isoformat(),
                "user": current_user(),
                "target": active.info.describe(),
                "project": active.info.project,
                "database": active.info.database,
                "limit": options.limit,
                "sample": options.sample_percent,
                "settings": run_settings(config, options),
            }
            if (unwritten := _record_state(folder, info, "running")) is not None:
                raise _unrecorded(
                    unwritten, f"run {run_id} did not start: nothing was written to the store", "run again"
                )
        report = RunReport(run_id, folder, options.execute, target=active.info.describe())
        controls = controls or Controls(rate_limiter(config, active))
        if not options.execute:
            with run_lifecycle(hooks) as start:
                start(RunStarted(run_id, folder, "run", execute=False))
                if resumed is not None:
                    _record_resume(resumed, hooks)
                _run_all(config, active, selected, options, report, history, hooks, controls)
                info["state"] = "finished"
                _write_run_file(folder, info)
            return report
        if resumed is not None:
            _refuse_if_still_running(active, config.store.state_prefix, run_id)
        lock = LeaseLock(active, config.store.state_prefix, run_id=run_id)
        with run_lifecycle(hooks) as start:
            with lock:
                controls.lease_lost = lock.lost
                if resumed is not None:
                    _refuse_if_rolled_back(history, run_id, info["migrations"])
                start(RunStarted(run_id, folder, "run", execute=True))
                if resumed is not None:
                    _record_resume(resumed, hooks)
                for state in drifted:  # --allow-drift: adopt the new checksum, keeping the old one
                    if state.migration is not None:
                        history.accept_drift(state.migration_id, state.migration.checksum, run_id)
                try:
                    _run_all(
                        config,
                        active,
                        selected,
                        options,
                        report,
                        history,
                        hooks,
                        controls,
                        overrides=dict(info.get("overrides") or {}),
                    )
                except RunStopped as stop:
                    rolled_back = isinstance(stop, StageFailed)  # nothing to resume: start a new run
                    stop.resume_command = None if rolled_back else report.resume_command
                    if stop.hint is None and stop.resume_command:
                        stop.hint = f"the checkpoint is kept: resume with `{stop.resume_command}`"
                    unwritten = _record_state(folder, info, stop.run_state)
                    if isinstance(stop, RunFileError):
                        stop.hint = _unrecorded(
                            stop,
                            "",
                            f"resume with `{report.resume_command}`, or undo what "
                            f"was written with `docshift rollback {run_id} --execute`",
                        ).hint
                    elif unwritten is not None:  # a folder that cannot be written must not hide the stop
                        stop.message += f"; {unwritten.message}"
                    raise
            if (unwritten := _record_state(folder, info, "finished")) is not None:
                done = "; ".join(
                    f"{o.migration.label}: "
                    + ", ".join(
                        f"{o.result.counters.get(k, 0):,} {k}" for k in ("updated", "created", "deleted")
                    )
                    for o in report.outcomes
                )
                raise _unrecorded(
                    unwritten,
                    f"run {run_id} finished ({done}); only its run.json still says running",
                    f"`{report.resume_command}` records it as finished (it migrates "
                    f"nothing again); `docshift rollback {run_id} --execute` undoes it",
                    report.resume_command,
                )
        return report


def _refuse_if_rolled_back(history: History, run_id: str, migration_ids: Sequence[str]) -> None:
    """A run whose writes were rolled back is closed: continuing it from its checkpoint would leave
    the documents before that checkpoint undone while the rest gets migrated (and, at the end,
    recorded as applied). ``--force`` does not change that."""
    for migration_id in migration_ids:
        record = history.get(migration_id)
        if record is not None and record.rolled_back_after(run_id):
            raise UsageError(
                f"run {run_id} was rolled back ({record.label} is rolled back since then); a rolled-back "
                "run is closed and cannot be resumed",
                hint="fix the data or the migration, then start a new run: docshift run --execute",
            )


def outcome_status(checkpoint: Checkpoint | None, error: DocshiftError | None) -> MigrationStatus:
    """What the history records for a migration after a run of it: the one place that decides.
    ``applied`` only when the run's checkpoint covers every document of the target (see
    :attr:`Checkpoint.covers_target`); a run that finished a smaller scope is ``partial``; a run
    stopped by a signal or ``docshift stop`` is ``interrupted``; any other stop ``failed``."""
    if error is not None:
        stopped = error.exit_code is ExitCode.INTERRUPTED
        return MigrationStatus.INTERRUPTED if stopped else MigrationStatus.FAILED
    if checkpoint is None or not checkpoint.finished:
        return MigrationStatus.INTERRUPTED
    return MigrationStatus.APPLIED if checkpoint.covers_target else MigrationStatus.PARTIAL


def _run_all(
    config: Config,
    store: Store,
    selected: Sequence[Migration],
    options: RunOptions,
    report: RunReport,
    history: History,
    hooks: RunHooks,
    controls: Controls,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> None:
    base = pipeline_options(config, options)
    settings = _settings(config, options)
    for migration in selected:
        files = RunFolder(report.folder).migration(migration.label)
        folder, checkpoint_path = files.path, files.checkpoint
        if checkpoint_path.exists():
            checkpoint = Checkpoint.load(checkpoint_path)
            undoing = checkpoint.stage_rollback
            if undoing is not None and undoing.done:
                raise UsageError(
                    f"{migration.label} was rolled back by its canary stage gate in run {report.run_id}",
                    hint="fix the migration and start a new run",
                )
            stages_left = bool(options.stages) and not checkpoint.covers_target
            if checkpoint.finished and not stages_left and undoing is None:
                if options.execute:
                    _finish_history(store, history, migration, report.run_id, checkpoint, checkpoint_path)
                continue
            if checkpoint.checksum != migration.checksum and not options.force:
                raise DriftError(
                    f"{migration.label}.py changed since run {report.run_id} checkpointed it",
                    hint="restore the file, or resume with --force to continue with the new code",
                )
            checkpoint.settings = settings  # a resume may have overridden some
        else:
            # --limit means the first N documents in name order: one reader, one shard.
            count = 1 if options.limit is not None else options.shards or config.engine.shards
            shards = plan_shards(store, migration.target, count)
            checkpoint = new_checkpoint(report.run_id, migration, shards, settings)
            # Whether documents remain past a --limit is known once the run has read up to it.
            checkpoint.scope = Scope(limited=options.limit is not None, sample_percent=options.sample_percent)
        recorder = None if options.execute else DryRunRecorder(files.plan, migration.up)
        on_checkpoint = None
        if options.execute:
            history.start(migration, report.run_id, overrides)

            def on_checkpoint(saved: Checkpoint, migration_id: str = migration.id) -> None:
                summary = {
                    "run_id": saved.run_id,
                    "state": saved.state,
                    "cursors": [s.cursor for s in saved.shards],
                }
                history.progress(migration_id, saved.counters, summary)

        check = hooks.migration_started(MigrationStarted(migration, report.run_id, options.execute))
        pipeline = MigrationPipeline(
            store,
            migration,
            base,
            folder,
            checkpoint,
            controls=controls,
            hooks=hooks,
            check=check,
            on_decision=recorder,
            on_checkpoint=on_checkpoint,
        )
        try:
            if options.execute and options.stages:
                result = _staged(
                    config,
                    store,
                    migration,
                    base,
                    folder,
                    checkpoint,
                    options,
                    controls,
                    hooks,
                    check,
                    report.run_id,
                )
            else:
                result = pipeline.run()
        finally:
            if recorder is not None:
                recorder.close()
        outcome = MigrationOutcome(migration, result, recorder)
        report.outcomes.append(outcome)
        if options.execute:
            final = None
            if result.error is None:
                final = Checkpoint.load(checkpoint_path)  # what the run saved: the stages' last one
                _note_limit(store, migration, final, checkpoint_path)
            outcome.status = status = outcome_status(final, result.error)
            error = None if result.error is None else f"{result.error} (resume: {report.resume_command})"
            if isinstance(result.error, StageFailed):
                error = str(result.error)
            history.finish(migration.id, status, result.counters, error)
            if isinstance(result.error, StageFailed):  # its own stages: earlier runs' writes may remain
                record = history.mark_rolled_back(
                    migration.id, report.run_id, result.counters, undone=(report.run_id,)
                )
                if record.status is not MigrationStatus.ROLLED_BACK:
                    earlier = ", ".join(record.runs) if record.runs else "earlier runs"
                    command = f"docshift rollback {record.runs[-1] if record.runs else 'RUN_ID'} --execute"
                    hooks.warning(
                        Warned(
                            f"{migration.label}: the stages of this run were rolled back, but what {earlier} "
                            f"migrated before stays migrated: it is recorded {record.status.value}, "
                            f"not rolled back; to undo that too: {command}"
                        )
                    )
            if status is MigrationStatus.PARTIAL:
                outcome.note = _partial_note(migration, options, result.counters)
                hooks.warning(Warned(outcome.note))
        recorded = None if outcome.status is None else outcome.status.value
        hooks.migration_ended(MigrationEnded(migration, result, recorded))
        if result.error is not None:
            raise result.error


def _note_limit(store: Store, migration: Migration, checkpoint: Checkpoint, path: Path) -> None:
    """After a ``--limit`` run read up to its limit: whether the target has documents past it.
    A limit the target does not exceed processed everything; one it does leaves the run partial."""
    if not checkpoint.scope.limited or checkpoint.scope.limit_reached is not None:
        return
    target = migration.target
    remaining = False
    if target.limit is None or checkpoint.counters.get("read", 0) < target.limit:
        for shard in checkpoint.shards:
            query = dataclasses.replace(
                target.query(start_after=shard.resume_after, end_at=shard.end_at), limit=1
            )
            if any(True for _ in store.stream(query)):
                remaining = True
                break
    checkpoint.scope.limit_reached = remaining
    checkpoint.save(path)


def _partial_note(migration: Migration, options: RunOptions, counters: dict[str, int]) -> str:
    scope = (
        f"--limit {options.limit}"
        if options.limit is not None
        else f"--sample {_shown(float(options.sample_percent or 0))}%"
    )
    handled = sum(counters.get(k, 0) for k in ("updated", "created", "deleted", "unchanged", "failed"))
    return (
        f"{migration.label}: partial: {scope} processed {handled:,} document(s) and left the rest of "
        f"{migration.target.describe()} untouched; it is recorded as partial, not applied (pending in "
        "`docshift status`), and the next `docshift run --execute` processes the rest"
    )


def _staged(
    config: Config,
    store: Store,
    migration: Migration,
    base: PipelineOptions,
    folder: Path,
    checkpoint: Checkpoint,
    options: RunOptions,
    controls: Controls,
    hooks: RunHooks,
    check: DocumentCheck | None,
    run_id: str,
) -> PipelineResult:
    assert options.stages is not None
    plan = CanaryStages(options.stages, options.pause_between_stages)
    try:
        return run_stages(
            config,
            store,
            migration,
            base,
            folder,
            checkpoint,
            plan,
            controls=controls,
            hooks=hooks,
            check=check,
            run_id=run_id,
        )
    except RunStopped as error:
        # The stages' checkpoint speaks for the whole migration (every stage so far), as it does
        # for the report and `docshift runs`.
        record = read_migration(folder)
        return PipelineResult(migration.id, "stopped", record.counters, record.elapsed_seconds, folder, error)


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


def _finish_history(
    store: Store, history: History, migration: Migration, run_id: str, checkpoint: Checkpoint, path: Path
) -> None:
    """A resumed run whose migration had already finished: if the process died before recording
    that in the history, record it now (otherwise the history says running for ever)."""
    record = history.get(migration.id)
    if record is not None and record.run_id == run_id and record.status is MigrationStatus.RUNNING:
        _note_limit(store, migration, checkpoint, path)
        history.finish(migration.id, outcome_status(checkpoint, None), checkpoint.counters)


def _settings(config: Config, options: RunOptions) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "engine": dataclasses.asdict(config.engine),
        "limits": dataclasses.asdict(config.limits),
        "store": {
            "project": config.store.project,
            "database": config.store.database,
            "emulator": config.store.emulator_host is not None,
        },
        "options": dataclasses.asdict(options),
    }
    return settings


def load_run_info(folder: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder (what ran, where, and in which state it ended)."""
    return read_info(folder)

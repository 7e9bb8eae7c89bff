"""``docshift run``: dry-run or execute the pending migrations, in order, resumably.

:func:`run` is the whole command, the one the command line calls: it opens the store (unless
given one), observes the run (event log, status endpoint, control files, report), checks every
document against its migration's rules with the integrity gate, scans before and after each
migration (``scans``), runs the migrations in one run session (:func:`run_migrations`), rolls the
run back when the gate stops it (``auto_rollback``), and returns what it did (:class:`RunResult`).

Each migration gets its own folder in the run folder (checkpoint, before-images, dead letters,
plan), so a run of several migrations resumes exactly where it stopped, migration by migration.
A resume continues with the run's own settings (``run.json``), a flag given on it overriding one.

What the history records for a migration is derived in one place, :func:`outcome_status`, from
what was processed: ``applied`` only when every document of its target was (every shard to its
end, no ``--limit`` cut, no ``--sample``, every canary stage passed), otherwise ``partial``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docshift.commands.observe import Observation, ObserveOptions, outcome_of
from docshift.commands.session import (
    ErrorResults,
    RunSession,
    find_run,
    lease_ahead,
    load_run_info,
    new_run_id,
    rate_limiter,
)
from docshift.commands.target import target_config
from docshift.config import Config, with_values
from docshift.engine.batch import DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.dry_run import DryRunRecorder
from docshift.engine.hooks import (
    FanOutHooks,
    MigrationEnded,
    MigrationStarted,
    RunHooks,
    RunResumed,
    RunStarted,
    Warned,
    run_lifecycle,
)
from docshift.engine.pipeline import (
    MigrationPipeline,
    PassSteps,
    PipelineOptions,
    PipelineResult,
    new_checkpoint,
)
from docshift.engine.sharding import plan_shards
from docshift.engine.stats import handled
from docshift.errors import (
    DocshiftError,
    DriftError,
    ExitCode,
    RunStopped,
    StageFailed,
    UsageError,
    ValidationFailed,
)
from docshift.history import History, HistoryRead, MigrationStatus, current_user
from docshift.loader import load_migrations
from docshift.migration import Migration
from docshift.planning import MigrationState, check_drift, check_order, migration_states
from docshift.reports.report import ReportPaths
from docshift.runfolder.checkpoint import Checkpoint, Scope, ShardCursor
from docshift.runfolder.layout import MigrationFolder, RunFolder
from docshift.runfolder.record import PARTLY_ROLLED_BACK, ROLLED_BACK, read_migration
from docshift.store import SnapshotStore, Store, store_for
from docshift.store.read_time import check_resumable, parse_timestamp, pin, reads_text
from docshift.validators import RunOutcome, RunValidation
from docshift.values import Timestamp

__all__ = [
    "MigrationOutcome",
    "ResumedRun",
    "RunOptions",
    "RunReport",
    "RunResult",
    "SessionWork",
    "find_run",
    "load_run_info",
    "observed_run",
    "outcome_status",
    "rate_limiter",
    "record_resume",
    "result_of",
    "resume_run",
    "run",
    "run_migrations",
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
    """``--validate``: scan each migration's target against its rules before and after it runs;
    recorded with the run so that a resume scans too."""
    auto_rollback: bool = False
    """``--auto-rollback``: roll the run back when the integrity gate stops it; recorded with the
    run so that a resume keeps it."""
    runner: str = "engine"
    """``--runner``: ``engine`` (this process) or ``beam`` (each migration an Apache Beam pipeline,
    :mod:`docshift.beam`); recorded with the run so that a resume keeps it."""
    beam_options: tuple[str, ...] = ()
    """``--beam-option KEY=VALUE``: Beam's pipeline options (a resume keeps the run's unless given)."""
    read_time: Timestamp | None = None
    """``--read-time``: the moment a dry run reads the store at (default: when it starts); an
    execute reads live data (its update-time guards make that safe)."""


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
    """The migrations a run worked on, each with its outcome (so far, when the run stopped)."""

    run_id: str
    folder: Path
    execute: bool
    outcomes: list[MigrationOutcome] = field(default_factory=list)
    target: str = ""
    kind: str = "run"
    """``run``, or ``retry`` (``docshift retry``: a run over a run's dead letters)."""
    read_time: Timestamp | None = None
    """The snapshot a dry run read; None: the run read live data (an execute)."""

    @property
    def resume_command(self) -> str:
        return f"docshift {self.kind} --execute --resume {self.run_id}"


@dataclass
class RunResult:
    """What the whole ``docshift run`` (:func:`run`) did: the run (its id, folder and each
    migration's outcome), how it ended (as run.json, the report and ``docshift runs`` say), the
    report's paths and the validation's outcome (health, scans)."""

    run: RunReport
    state: str
    exit_code: int
    error: str | None = None
    hint: str | None = None
    resume_command: str | None = None
    """What continues the run, when it stopped and can be resumed."""
    report_paths: ReportPaths | None = None
    """The report's files and content; None when nothing ran (nothing to do), or when it could not
    be written (``report_error`` says why)."""
    report_error: BaseException | None = None
    validation: RunOutcome | None = None
    """None when nothing was validated (the run was refused before it started)."""
    status_url: str | None = None

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def folder(self) -> Path:
        return self.run.folder

    @property
    def execute(self) -> bool:
        return self.run.execute

    @property
    def outcomes(self) -> list[MigrationOutcome]:
        return self.run.outcomes


_RESULTS: ErrorResults[RunResult] = ErrorResults()


def result_of(error: BaseException) -> RunResult | None:
    """The result of the run that :func:`run` raised ``error`` for (a stop, an after-scan below the
    threshold: recorded, reported and validated before it was raised); None when ``error`` came
    before the run was set up."""
    return _RESULTS.get(error)


def pipeline_options(config: Config, options: RunOptions) -> PipelineOptions:
    return PipelineOptions(
        execute=options.execute,
        engine=config.engine,
        limits=config.limits,
        limit=options.limit,
        sample_percent=options.sample_percent,
    )


def _select(
    migrations: list[Migration], seen: HistoryRead, options: RunOptions
) -> tuple[list[Migration], list[MigrationState]]:
    """The migrations to run, and the drifted ones ``--allow-drift`` lets through, as the history
    ``seen`` has them (which the run checks again once it holds the lease: RunSession.steps)."""
    states = migration_states(migrations, seen.records)
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
            "runner": options.runner,
            "beam_options": list(options.beam_options),
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
            f"concurrency {values['concurrency'] or 'auto'}",
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


def resume_run(config: Config, options: RunOptions, kind: str = "run") -> ResumedRun:
    """The run ``options.resume`` names (``latest``: the newest unfinished ``kind`` run), with what
    it continues with: its own settings (as it started, or as an earlier resume changed them),
    except where this command was given a flag (``config.sources`` says ``--…``), which overrides
    the run's. Its scope (``--limit``, ``--sample``, ``--stages``) stays as it was: a different one
    is refused."""
    assert options.resume is not None
    folder = find_run(config.runs_dir, options.resume, kind)
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
    options = _resumed_runner(options, given, run_id)
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


def _resumed_runner(options: RunOptions, given: dict[str, Any], run_id: str) -> RunOptions:
    """A resume runs where the run ran: its runner, and its Beam options unless others are given."""
    theirs = str(given.get("runner") or "engine")
    if options.runner not in ("engine", theirs):
        raise UsageError(
            f"run {run_id} runs on the {theirs} runner; a resume cannot move it to {options.runner}",
            hint="resume without --runner, or start a new run with it",
        )
    beam_options = options.beam_options or tuple(str(o) for o in given.get("beam_options") or ())
    return dataclasses.replace(options, runner=theirs, beam_options=beam_options)


def _check_runner(options: RunOptions) -> None:
    """What the Beam runner does: an executed run over whole targets, one pipeline per migration."""
    if options.runner == "engine":
        if options.beam_options:
            raise UsageError(
                "--beam-option needs --runner beam", hint="add --runner beam, or drop --beam-option"
            )
        return
    if options.runner != "beam":
        raise UsageError(
            f"no runner {options.runner!r}", hint="use --runner engine (default) or --runner beam"
        )
    if not options.execute:
        raise UsageError(
            "--runner beam executes a run; a dry run runs in this process",
            hint="drop --runner beam for the dry run, then run --execute --runner beam",
        )
    for name in ("limit", "sample_percent", "stages"):
        if getattr(options, name):
            raise UsageError(
                f"--runner beam migrates whole targets; {_FLAGS[name]} runs in this process",
                hint=f"drop {_FLAGS[name]}, or drop --runner beam",
            )
    _require_beam()
    from docshift.beam import BeamSettings, beam_pipeline_options

    beam_pipeline_options(BeamSettings(options.beam_options))  # refused before the run starts


def _require_beam() -> None:
    """``docshift.beam`` needs the ``docshift[beam]`` extra; it is imported only for ``--runner beam``."""
    try:
        import docshift.beam  # noqa: F401 - imports apache_beam
    except ImportError as missing:
        raise UsageError(
            f"--runner beam needs Apache Beam, which is not installed ({missing})",
            hint="pip install 'docshift[beam]'",
        ) from None


def _scope_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{_shown(float(s))}%" for s in value)
    return f"{_shown(value)}%" if isinstance(value, float) else str(value)


def record_resume(resumed: ResumedRun, session: RunSession, hooks: RunHooks) -> None:
    """Write into ``run.json`` the settings the resume continues with, the resume and what it
    overrode, and ``overrides``: every setting the run's resumes changed, from the run's first
    value to the latest (what the report and the history show)."""
    info = session.info
    info["settings"] = run_settings(resumed.config, resumed.options)
    info.setdefault("resumes", []).append(
        {"at": datetime.now(UTC).isoformat(), "user": current_user(), "overrides": resumed.overrides}
    )
    merged: dict[str, dict[str, Any]] = dict(info.get("overrides") or {})
    for name, change in resumed.overrides.items():
        was = merged[name]["was"] if name in merged else change["was"]
        merged[name] = {"was": was, "now": change["now"]}
    info["overrides"] = merged
    session.save()
    hooks.run_resumed(RunResumed(resumed.run_id, info["settings"], resumed.overrides))


def run(
    config: Config,
    options: RunOptions,
    *,
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
    observe: ObserveOptions | None = None,
) -> RunResult:
    """The whole ``docshift run`` (see the module docstring): dry-run (default) or execute the
    pending migrations, or resume a run (``options.resume``). ``hooks`` are the display: they hear
    of every step (:mod:`docshift.engine.hooks`), and of the run's end once, when the whole command
    ends. ``controls`` steer the run (signal handlers, say); ``observe`` says how the run is watched
    (status endpoint, ETA).

    Raises the error the run ended with (a stop, whose ``resume_command`` continues it; an
    after-scan below integrity_critical) once the run, its validation and its report are recorded:
    :func:`result_of` gives that error's :class:`RunResult`. The caller confirms first (the
    command line does)."""
    return observed_run(
        config, options, run_migrations, store=store, hooks=hooks, controls=controls, observe=observe
    )


SessionWork = Callable[..., RunReport]
"""A run session's work: ``(config, options, *, store, hooks, controls, into) -> RunReport``, as
:func:`run_migrations` (a retry's: :func:`docshift.commands.retry.retry_migrations`)."""


def observed_run(
    config: Config,
    options: RunOptions,
    work: SessionWork,
    *,
    kind: str = "run",
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
    observe: ObserveOptions | None = None,
) -> RunResult:
    """A ``kind`` run's session (``work``) observed, validated (and rolled back by the gate with
    ``auto_rollback``) and reported, as :func:`run` says."""
    resumed = resume_run(config, options, kind) if options.resume else None
    if resumed is not None:
        config, options = resumed.config, resumed.options
    else:
        options = dataclasses.replace(options, run_id=options.run_id or new_run_id())
    run_id = str(options.run_id)
    with store_for(config, store) as active:
        controls = controls or Controls(rate_limiter(config, active))
        folder = RunFolder.of(config.runs_dir, run_id)
        report = RunReport(run_id, folder.path, options.execute, target=active.info.describe(), kind=kind)
        observation = Observation(
            config,
            active,
            controls,
            kind=kind,
            resume=options.resume,
            run_id=run_id,
            display=hooks,
            options=observe,
        )
        validation: RunValidation | None = None
        checked: RunOutcome | None = None
        try:
            with observation as seen:
                validation = RunValidation(
                    config,
                    active,
                    hooks=seen.hooks,
                    controls=controls,
                    execute=options.execute,  # a resume continues with the run's own (resume_run)
                    scans=options.scans,
                    previous=resumed.folder if resumed is not None else None,
                )
                try:
                    work(
                        config,
                        options,
                        store=active,
                        hooks=FanOutHooks(validation, seen.hooks),
                        controls=controls,
                        into=report,
                    )
                except RunStopped as stop:
                    checked = _validate_stopped(config, active, validation, stop, report, options)
                    raise
                checked = validation.finish(report.folder if report.folder.is_dir() else None)
                seen.ended_by = after_scan_failure(checked)
                controls.finished.set()  # from here on, only the report is left to write
        except BaseException as error:
            if checked is None and validation is not None:
                checked = validation.outcome  # the run's end validated what it had done
            _RESULTS[error] = _result(report, observation, checked, error)
            raise
    result = _result(report, observation, checked, observation.ended_by)
    if observation.ended_by is not None:
        _RESULTS[observation.ended_by] = result
        raise observation.ended_by
    return result


def _result(
    report: RunReport, observation: Observation, checked: RunOutcome | None, error: BaseException | None
) -> RunResult:
    ended = outcome_of(error)
    return RunResult(
        report,
        state=str(ended["state"]),
        exit_code=int(ended["exit_code"]),
        error=ended["error"],
        hint=ended["hint"],
        resume_command=ended.get("resume_command"),
        report_paths=observation.report,
        report_error=observation.report_error,
        validation=checked,
        status_url=observation.url,
    )


def after_scan_failure(outcome: RunOutcome) -> ValidationFailed | None:
    """Exit 14 when an after-scan (``scans``) found the data below integrity_critical: the run's
    outcome (recorded as such before the command raises it)."""
    failed = outcome.after_failed
    if not failed:
        return None
    return ValidationFailed(
        f"after-scan {failed[0].summary()}", hint=f"the failing documents are listed in {failed[0].path}"
    )


def _validate_stopped(
    config: Config,
    store: Store,
    validation: RunValidation,
    stop: RunStopped,
    report: RunReport,
    options: RunOptions,
) -> RunOutcome:
    """A stopped run (with its folder, when it has one): save the validation report; after an
    integrity-gate stop with ``auto_rollback``, roll the run back (the run is then closed: it is
    recorded as ``rolled_back`` and a resume is refused). A canary run's gate stop has rolled its
    stages back already."""
    started = RunFolder(report.folder).exists
    # The run's end finished the validation (a run refused before it started has none: finish it here).
    outcome = validation.finish(report.folder if started else None, stop)
    if options.auto_rollback and validation.gate and started and stop.run_state != ROLLED_BACK:
        _auto_rollback(config, store, validation.hooks, stop, report.run_id)
    return outcome


def _auto_rollback(config: Config, store: Store, hooks: RunHooks, stop: RunStopped, run_id: str) -> None:
    # Restoring the before-images undoes exactly what the run wrote (a down() may not be an exact
    # inverse, and would also visit the documents the run never reached).
    from docshift.commands.rollback import RollbackOptions, run_rollback  # deferred: only for a gate stop

    strategy = "restore" if config.engine.backup else "auto"
    hooks.warning(Warned(f"integrity gate: rolling back run {run_id} ({strategy}, --auto-rollback)"))
    try:
        run_rollback(
            config,
            RollbackOptions(run_id=run_id, strategy=strategy, execute=True),
            store=store,
            hooks=hooks,
        )
    except DocshiftError as exc:
        hooks.warning(Warned(f"auto-rollback failed: {exc.message}"))
        stop.hint = f"roll back by hand: docshift rollback {run_id} --strategy {strategy} --execute"
    else:
        stop.resume_command = None
        stop.run_state = ROLLED_BACK  # what run.json, the report, `runs` and `show` then say
        stop.hint = (
            f"run {run_id} was rolled back and is closed; fix the data or the migration, then "
            "start a new run: docshift run --execute"
        )


def run_migrations(
    config: Config,
    options: RunOptions,
    *,
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
    into: RunReport | None = None,
) -> RunReport:
    """The run session over the pending migrations (or over those of the run being resumed):
    :func:`run` without the observation, the validation and the auto-rollback. ``hooks`` hear of
    each step of the run (:mod:`docshift.engine.hooks`); the document check a migration's start
    returns (validation's rules: :class:`~docshift.validators.RunValidation`) is applied to every
    document it writes. ``into`` is filled in as the migrations run (so a caller has what was done
    when it raises).

    Raises :class:`RunStopped` subclasses when a run stops early; its checkpoint is kept and
    ``resume_command`` continues it."""
    migrations = load_migrations(config.migrations_dir)
    resumed = resume_run(config, options) if options.resume else None
    if resumed is not None:
        config, options = resumed.config, resumed.options
    _check_runner(options)
    run_id = str(resumed.info["run_id"]) if resumed is not None else options.run_id or new_run_id()
    # A new execute takes the lease while it reads the history (LeaseAhead); a resume first checks
    # that the run's own process is gone (RunSession.steps).
    ahead = options.execute and resumed is None
    with (
        store_for(config, store) as active,
        lease_ahead(active, config.store.state_prefix, run_id, execute=ahead) as lease,
    ):
        hooks = hooks or RunHooks()
        drifted: list[MigrationState] = []
        seen: HistoryRead | None = None  # what a new run chose from, checked again under the lease
        # A dry run's read time is asked while the history is read: one round trip, not two.
        pinning = _snapshot(active, options, resumed.info if resumed is not None else None)
        if resumed is not None:
            reads = pinning()
            session = RunSession.resume(config, active, resumed.folder, resumed.info)
            by_id = {m.id: m for m in migrations}
            missing = [i for i in session.info["migrations"] if i not in by_id]
            if missing:
                raise DriftError(
                    f"run {session.run_id} needs migration {missing[0]}, whose file is gone",
                    hint="put the file back (from version control) to resume, or start a new run",
                )
            selected = [by_id[i] for i in session.info["migrations"]]
        else:
            seen = History(active, config.store.state_prefix).read()
            reads = pinning()
            selected, drifted = _select(migrations, seen, options)
            _refuse_script_scope(selected, options)
            if not selected:
                return into or RunReport(
                    run_id,
                    RunFolder.of(config.runs_dir, run_id).path,
                    options.execute,
                    target=active.info.describe(),
                )
            session = RunSession.create(
                config,
                active,
                {
                    "run_id": run_id,
                    "kind": "run",
                    "execute": options.execute,
                    "migrations": [m.id for m in selected],
                    "limit": options.limit,
                    "sample": options.sample_percent,
                    "settings": run_settings(config, options),
                    "read_time": reads.read_time.isoformat() if reads is not None else None,
                    "reads": reads_text(reads.read_time if reads is not None else None),
                },
            )
        report = into or RunReport(session.run_id, session.folder, options.execute)
        report.target = active.info.describe()
        report.read_time = reads.read_time if reads is not None else None
        controls = controls or Controls(rate_limiter(config, active))
        history = session.history
        with run_lifecycle(hooks) as start:
            with session.steps(controls, lease, seen):
                if resumed is not None and options.execute:
                    _refuse_if_rolled_back(history, session.run_id, session.info["migrations"])
                start(RunStarted(session.run_id, session.folder, "run", execute=options.execute))
                if resumed is not None:
                    record_resume(resumed, session, hooks)
                if options.execute:
                    for state in drifted:  # --allow-drift: adopt the new checksum, keeping the old one
                        if state.migration is not None:
                            history.accept_drift(state.migration_id, state.migration.checksum, session.run_id)
                overrides = dict(session.info.get("overrides") or {})
                data = reads or active  # a dry run reads its snapshot, an execute live data
                work = _Migrating(config, data, options, report, history, hooks, controls, overrides)
                for migration in selected:
                    _run_one(work, migration)
            done = "; ".join(
                f"{o.migration.label}: "
                + ", ".join(f"{o.result.counters.get(k, 0):,} {k}" for k in ("updated", "created", "deleted"))
                for o in report.outcomes
            )
            session.finish(done=f"finished ({done})", again="it migrates nothing again")
        return report


def _snapshot(
    store: Store, options: RunOptions, resumed: dict[str, Any] | None
) -> Callable[[], SnapshotStore | None]:
    """What a dry run reads: the store at one read time (``--read-time``, the one a resumed dry run
    recorded, or now); None for an execute, which reads live data. The flags are checked here; the
    store's time is asked in the background (a round trip, while the history is read) and the
    callable returned waits for it."""
    if options.execute:
        if options.read_time is not None:
            raise UsageError(
                "--read-time is for dry runs: an execute reads the live data",
                hint="drop --read-time; every write is guarded by the document's update time, so "
                "reading live data is safe",
            )
        return lambda: None
    recorded = resumed.get("read_time") if resumed is not None else None
    if resumed is not None and options.read_time is not None:
        raise UsageError(
            "a resumed dry run reads at the read time it started with: --read-time cannot change it",
            hint="drop --read-time, or start a new dry run with it",
        )
    if isinstance(recorded, str):
        what = f"dry run {resumed.get('run_id') if resumed else ''}"
        at = parse_timestamp(recorded)
        return _background(lambda: pin(store, check_resumable(at, store.snapshot_time(), what).at))
    if options.read_time is not None:
        return lambda: pin(store, options.read_time)  # no round trip: the time is given
    return _background(lambda: pin(store, None))


def _background(call: Callable[[], SnapshotStore]) -> Callable[[], SnapshotStore]:
    """``call`` started on a thread; the callable returned waits for its value (or raises its error)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docshift-read-time")
    future = executor.submit(call)
    executor.shutdown(wait=False)  # takes nothing more; its thread ends with the call
    return future.result


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


@dataclass
class _Migrating:
    """What each migration of a run runs with."""

    config: Config
    store: Store
    options: RunOptions
    report: RunReport
    history: History
    hooks: RunHooks
    controls: Controls
    overrides: dict[str, dict[str, Any]]


def _checkpoint(work: _Migrating, migration: Migration, files: MigrationFolder) -> Checkpoint | None:
    """The checkpoint ``migration`` continues from (a new one for a migration this run has not
    started); None: it had finished what the run was asked to do."""
    options, report = work.options, work.report
    settings = _settings(work.config, options)
    path = files.checkpoint
    if not path.exists() and migration.is_script:  # no target to shard: one cursor, the script's marks
        return new_checkpoint(report.run_id, migration, [ShardCursor()], settings)
    if not path.exists():
        # --limit means the first N documents in name order: one reader, one shard.
        count = 1 if options.limit is not None else options.shards or work.config.engine.shards
        shards = plan_shards(work.store, migration.target, count)
        checkpoint = new_checkpoint(report.run_id, migration, shards, settings)
        # Whether documents remain past a --limit is known once the run has read up to it.
        checkpoint.scope = Scope(limited=options.limit is not None, sample_percent=options.sample_percent)
        return checkpoint
    checkpoint = Checkpoint.load(path)
    undoing = checkpoint.stage_rollback
    if undoing is not None and undoing.done:
        if not undoing.complete:
            from docshift.commands.rollback import undo_listings  # deferred: only for this refusal

            raise UsageError(
                f"{migration.label}: the rollback of its canary stages in run {report.run_id} left "
                f"documents alone (listed in {', '.join(str(p) for p in undo_listings(path.parent))})",
                hint=f"to undo them over the later changes too: docshift rollback {report.run_id} "
                "--strategy restore --execute --force; or fix the migration and start a new run",
            )
        raise UsageError(
            f"{migration.label} was rolled back by its canary stage gate in run {report.run_id}",
            hint="fix the migration and start a new run",
        )
    stages_left = bool(options.stages) and not checkpoint.covers_target
    if checkpoint.finished and not stages_left and undoing is None:
        if options.execute:
            _finish_history(work.store, work.history, migration, report.run_id, checkpoint, path)
        return None
    if checkpoint.checksum != migration.checksum and not options.force:
        raise DriftError(
            f"{migration.label}.py changed since run {report.run_id} checkpointed it",
            hint="restore the file, or resume with --force to continue with the new code",
        )
    checkpoint.settings = settings  # a resume may have overridden some
    return checkpoint


def _run_one(work: _Migrating, migration: Migration) -> None:
    """Run ``migration`` (its stages, with ``--stages``) and record its outcome."""
    options, report, history = work.options, work.report, work.history
    files = RunFolder(report.folder).migration(migration.label)
    checkpoint = _checkpoint(work, migration, files)
    if checkpoint is None:
        return
    base = pipeline_options(work.config, options)
    if options.execute:
        history.start(migration, report.run_id, work.overrides)
    check = work.hooks.migration_started(MigrationStarted(migration, report.run_id, options.execute))
    recorder = None
    if options.execute and options.stages:
        result = _staged(work, migration, base, checkpoint, check)
    else:
        # Only here: a pipeline opens its journal and dead-letter file when it is made.
        recorder = None if options.execute else _recorder(migration, files)
        on_checkpoint = None
        if options.execute:

            def on_checkpoint(saved: Checkpoint, migration_id: str = migration.id) -> None:
                summary = {
                    "run_id": saved.run_id,
                    "state": saved.state,
                    "cursors": [s.cursor for s in saved.shards],
                }
                history.progress(migration_id, saved.counters, summary)

        steps = PassSteps(check=check, on_decision=recorder, on_checkpoint=on_checkpoint)
        try:
            if migration.is_script:  # apply(ctx): the script runner, beside the per-document pipeline
                if options.runner == "beam":
                    work.hooks.warning(
                        Warned(
                            f"{migration.label} is a script migration (apply(ctx)): it runs in this process"
                        )
                    )
                from docshift.engine.script import ScriptOptions, ScriptRunner  # deferred: scripts only

                result = ScriptRunner(
                    work.store,
                    migration,
                    ScriptOptions(options.execute, work.config.engine, work.config.limits),
                    files.path,
                    checkpoint,
                    controls=work.controls,
                    hooks=work.hooks,
                    on_decision=recorder,
                    on_checkpoint=on_checkpoint,
                ).run()
            elif options.runner == "beam":
                result = _beam_pass(work, migration, base, files.path, checkpoint, steps)
            else:
                result = MigrationPipeline(
                    work.store,
                    migration,
                    base,
                    files.path,
                    checkpoint,
                    controls=work.controls,
                    hooks=work.hooks,
                    steps=steps,
                ).run()
        finally:
            if recorder is not None:
                recorder.close()
    outcome = MigrationOutcome(migration, result, recorder)
    report.outcomes.append(outcome)
    if options.execute:
        _record(work, outcome, files.checkpoint)
    recorded = None if outcome.status is None else outcome.status.value
    work.hooks.migration_ended(MigrationEnded(migration, result, recorded))
    if result.error is not None:
        raise result.error


def _beam_pass(
    work: _Migrating,
    migration: Migration,
    base: PipelineOptions,
    folder: Path,
    checkpoint: Checkpoint,
    steps: PassSteps,
) -> PipelineResult:
    """The migration as an Apache Beam pipeline (``--runner beam``: the ``docshift[beam]`` extra)."""
    from docshift.beam import BeamPass, BeamSettings

    settings = BeamSettings(work.options.beam_options)
    beam = BeamPass(
        work.config,
        migration,
        base,
        folder,
        checkpoint,
        settings=settings,
        controls=work.controls,
        hooks=work.hooks,
        steps=steps,
    )
    return beam.run()


def _recorder(migration: Migration, files: MigrationFolder) -> DryRunRecorder:
    """A dry run's plan; a script's lists more of its writes on the screen (it has no idempotency
    check: it has no up() to run twice)."""
    if migration.is_script:
        return DryRunRecorder(files.plan, migration.up, samples=_SCRIPT_SAMPLES, idempotency_checks=0)
    return DryRunRecorder(files.plan, migration.up)


_SCRIPT_SAMPLES = 50


def _refuse_script_scope(selected: Sequence[Migration], options: RunOptions) -> None:
    """``--limit``, ``--sample`` and ``--stages`` choose documents of a target: a script has none."""
    scripts = [m for m in selected if m.is_script]
    given = [
        flag
        for name, flag in (("limit", "--limit"), ("sample_percent", "--sample"), ("stages", "--stages"))
        if getattr(options, name) is not None
    ]
    if scripts and given:
        raise UsageError(
            f"{scripts[0].label} is a script migration (apply): {given[0]} chooses documents of a "
            "migration's target, and a script has none",
            hint=f"run the migrations before it with {given[0]} (--to ID), then the script without it",
        )


def _record(work: _Migrating, outcome: MigrationOutcome, checkpoint_path: Path) -> None:
    """What the history records for an executed migration (see :func:`outcome_status`)."""
    migration, result, run_id = outcome.migration, outcome.result, work.report.run_id
    history, hooks = work.history, work.hooks
    final = None
    if result.error is None:
        final = Checkpoint.load(checkpoint_path)  # what the run saved: the stages' last one
        _note_limit(work.store, migration, final, checkpoint_path)
    outcome.status = status = outcome_status(final, result.error)
    error = None if result.error is None else f"{result.error} (resume: {work.report.resume_command})"
    if isinstance(result.error, StageFailed):
        error = str(result.error)
    history.finish(migration.id, status, result.counters, error, landed=result.landed)
    if isinstance(result.error, StageFailed) and result.error.undone:
        # Its own stages, undone: earlier runs' writes may remain, and so may this run's writes
        # of the migrations it finished before this one.
        record = history.mark_rolled_back(migration.id, run_id, result.counters, undone=(run_id,))
        _note_kept(work, migration, result.error)
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
        outcome.note = _partial_note(migration, work.options, result.counters)
        hooks.warning(Warned(outcome.note))


def _note_kept(work: _Migrating, migration: Migration, stop: StageFailed) -> None:
    """When migrations this run finished before ``migration`` wrote documents, the run did not undo
    everything it wrote: it ends ``partly_rolled_back`` (closed, as ``rolled_back`` is), and the
    error names what stays applied and the rollback that undoes it."""
    kept = []
    for files in RunFolder(work.report.folder).migrations():
        if files.label == migration.label:
            continue
        done = read_migration(files.path)
        written = sum(done.counts[name] for name in ("updated", "created", "deleted"))
        if done.state != ROLLED_BACK and written:
            kept.append(f"{done.label} ({written:,} document(s) written)")
    if not kept:
        return
    run_id = work.report.run_id
    stop.run_state = PARTLY_ROLLED_BACK
    stop.message += f"; what this run migrated before it stays applied: {', '.join(kept)}"
    stop.hint = f"{stop.hint}; to undo the rest of the run too: docshift rollback {run_id} --execute"


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
    return (
        f"{migration.label}: partial: {scope} processed {handled(counters):,} document(s) and left the "
        f"rest of {migration.target.describe()} untouched; it is recorded as partial, not applied "
        "(pending in `docshift status`), and the next `docshift run --execute` processes the rest"
    )


def _staged(
    work: _Migrating,
    migration: Migration,
    base: PipelineOptions,
    checkpoint: Checkpoint,
    check: DocumentCheck | None,
) -> PipelineResult:
    # Deferred: canary stages (and the rollback they may end with) only for a run with --stages.
    from docshift.commands.stages import CanaryStages, StageRun, run_stages

    options = work.options
    assert options.stages is not None
    folder = RunFolder(work.report.folder).migration(migration.label).path
    stages = StageRun(
        work.config,
        work.store,
        migration,
        base,
        folder,
        CanaryStages(options.stages, options.pause_between_stages),
        controls=work.controls,
        hooks=work.hooks,
        check=check,
        run_id=work.report.run_id,
    )
    try:
        return run_stages(stages, checkpoint)
    except RunStopped as error:
        # The stages' checkpoint speaks for the whole migration (every stage so far), as it does
        # for the report and `docshift runs`.
        record = read_migration(folder)
        return PipelineResult(
            migration.id,
            "stopped",
            record.counters,
            record.elapsed_seconds,
            folder,
            error,
            landed=record.landed,
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

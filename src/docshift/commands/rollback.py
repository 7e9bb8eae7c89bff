"""``docshift rollback``: undo a run, or everything applied after a migration, newest first.

The run's journal (its before-images) names exactly the documents it changed; a rollback visits
those and no others. Two strategies say what to write for each document that still holds what the
run wrote: ``restore`` puts its before-image back, ``down`` applies the migration's ``down``.
Either way the result is checked against the before-images: a document that does not equal its
before-image is ``mismatched``, listed, and keeps the migration from being recorded as rolled back.
``auto`` uses ``down`` when the migration has one. Only a run made without before-images
(``--no-backup``) is undone by ``down`` over its whole target, through the engine, unverified.

A migration can be applied over several runs (a ``--limit`` run and then a full one; an
interrupted or failed run and then a new one): the history names them all (``runs``), and undoing
the migration undoes every one of their journals, newest run first, in one rollback, whichever of
them was named. Recorded ``rolled_back`` only then, since otherwise the documents of the runs not
undone would stay migrated under a history that says they are not.

A rollback is a run like any other: dry run by default, locked, checkpointed, resumable, recorded,
on the project and database its run was made on. Its dry run executes the same code against a
simulated copy of the database (newest first), so it predicts what the execute will do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docshift.commands.observe import Observation, ObserveOptions
from docshift.commands.session import (
    ErrorResults,
    RunSession,
    find_run,
    load_run_info,
    new_run_id,
    rate_limiter,
)
from docshift.commands.target import check_store, target_config
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.dry_run import DryRunRecorder
from docshift.engine.hooks import PassFinished, PassStarted, RunHooks, RunStarted, Warned, run_lifecycle
from docshift.engine.pipeline import (
    MigrationPipeline,
    PassSteps,
    PipelineOptions,
    PipelineResult,
    new_checkpoint,
)
from docshift.engine.sharding import plan_shards
from docshift.engine.undo import Undoer, UndoResult, UndoRules, older_outputs, undo_actions
from docshift.engine.writer import WriteGuards
from docshift.errors import RollbackConflicts, RunStopped, UsageError
from docshift.history import History, HistoryRead, HistoryRecord, MigrationStatus
from docshift.loader import load_migrations
from docshift.migration import Migration
from docshift.reports.report import ReportPaths
from docshift.runfolder.checkpoint import Checkpoint, ShardCursor, UndoProgress, UndoStep
from docshift.runfolder.layout import MigrationFolder, RunFolder
from docshift.runfolder.record import CONFLICTS, FINISHED, force_command, read_info
from docshift.store import Store, store_for
from docshift.store.simulated import SimulatedStore
from docshift.values import Timestamp

__all__ = [
    "RollbackItem",
    "RollbackOptions",
    "RollbackReport",
    "rollback",
    "rollback_target",
    "run_rollback",
    "undo_listings",
    "undo_run_journal",
]

_UNDONE = (
    MigrationStatus.APPLIED,
    MigrationStatus.PARTIAL,
    MigrationStatus.INTERRUPTED,
    MigrationStatus.FAILED,
    MigrationStatus.RUNNING,
)


@dataclass(frozen=True)
class RollbackOptions:
    run_id: str | None = None
    to: str | None = None
    steps: int | None = None
    """Undo the ``steps`` newest migrations applied here (Alembic's ``downgrade -N``): resolved to
    the ``to`` that undoes exactly those, which run.json then records beside it."""
    strategy: str = "auto"
    execute: bool = False
    force: bool = False
    resume: str | None = None
    rollback_id: str | None = None
    """The id of a new rollback run (default: generated); lets a caller know its folder beforehand.
    (``run_id`` is the run to roll back.)"""
    runner: str = "engine"
    """``--runner beam``: a Beam run's journals are undone by a Beam pipeline, partition by partition
    (:mod:`docshift.beam.undo`); recorded with the rollback so that a resume keeps it."""
    beam_options: tuple[str, ...] = ()
    """``--beam-option KEY=VALUE``: Beam's pipeline options."""


@dataclass(frozen=True)
class _Step:
    """One migration of a rollback's plan: the runs whose writes make up its application (newest
    first), the strategy, and whether it is undone from those runs' journals (``journal``) or by
    down() over the whole target (``target``: some run kept no before-images)."""

    migration: Migration
    runs: tuple[str, ...]
    strategy: str
    by: str
    known: bool = True
    """False: the history no longer names every run (only ``runs``, the latest); undone by target."""

    def to_json(self) -> dict[str, Any]:
        return {
            "migration": self.migration.id,
            "runs": list(self.runs),
            "strategy": self.strategy,
            "by": self.by,
            "known": self.known,
        }


@dataclass
class RollbackItem:
    migration: Migration
    strategy: str
    source_runs: tuple[str, ...]
    """The runs whose writes this undoes, newest first (a migration applied over several runs)."""
    folder: Path
    runs_known: bool = True
    """False: its history no longer names every run that applied it (see ``note``)."""
    restore: UndoResult | None = None
    """From the journals: the counters of every run's, added up (``by_run`` has each)."""
    pipeline: PipelineResult | None = None
    plan: DryRunRecorder | None = None
    note: str | None = None
    """Said with the summary: a rollback that could not be verified, and why."""
    by_run: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    """Each run's journal undone, newest first, with its counters."""

    @property
    def source_run(self) -> str:
        """The newest of ``source_runs``: the run that last applied the migration."""
        return self.source_runs[0] if self.source_runs else ""

    @property
    def counters(self) -> dict[str, int]:
        if self.restore is not None:
            return self.restore.counters
        return self.pipeline.counters if self.pipeline else {}

    @property
    def clean(self) -> bool:
        counters = self.counters
        return (
            counters.get("conflicts", 0) == 0
            and counters.get("mismatched", 0) == 0
            and (counters.get("failed", 0) == 0)
        )


@dataclass
class RollbackReport:
    run_id: str
    folder: Path
    execute: bool
    target: str
    items: list[RollbackItem] = field(default_factory=list)
    report_paths: ReportPaths | None = None
    """The rollback's report (by :func:`rollback`; None when it could not be written)."""
    report_error: BaseException | None = None

    @property
    def resume_command(self) -> str:
        return f"docshift rollback --execute --resume {self.run_id}"


def _to_for_steps(records: Mapping[str, HistoryRecord], steps: int) -> str:
    """The ``--to`` that undoes the ``steps`` newest migrations recorded applied here (stamped ones
    count: rolling one back is then refused, as with ``--to``)."""
    applied = sorted(
        (r for r in records.values() if r.status in _UNDONE or r.status is MigrationStatus.STAMPED),
        key=lambda r: int(r.migration_id),
        reverse=True,
    )
    if steps < 1 or steps > len(applied):
        raise UsageError(
            f"--steps {steps}: {len(applied)} migration(s) are applied here",
            hint="`docshift status` lists them; --steps takes 1 up to that number",
        )
    return applied[steps].migration_id if steps < len(applied) else "0"


def _resolved_target(options: RollbackOptions, records: Mapping[str, HistoryRecord]) -> RollbackOptions:
    """``options`` naming exactly one of RUN_ID, ``--to`` and ``--steps``, with ``--steps``
    resolved to the ``to`` it means (run.json records both)."""
    named = [
        name
        for name, value in (("RUN_ID", options.run_id), ("--to", options.to), ("--steps", options.steps))
        if value is not None
    ]
    if len(named) != 1:
        given = f"{' and '.join(named)}: both were given" if named else "neither was given"
        raise UsageError(
            f"name a RUN_ID, --to MIGRATION_ID or --steps N, one of them ({given})",
            hint="`docshift rollback RUN_ID` undoes one run (`docshift runs` lists them); "
            "`docshift rollback --to ID` undoes every migration applied after ID; "
            "`docshift rollback --steps N` the N newest applied",
        )
    if options.steps is not None:
        return dataclasses.replace(options, to=_to_for_steps(records, options.steps))
    return options


def _targets(
    config: Config,
    options: RollbackOptions,
    records: Mapping[str, HistoryRecord],
    migrations: dict[str, Migration],
) -> list[tuple[Migration, tuple[str, ...], bool]]:
    """(migration, the runs of its application newest first, whether those are all of them), newest
    migration first, for ``options`` naming a run or a ``to`` (see :func:`_resolved_target`). Not
    all: the history cannot name them (see :meth:`HistoryRecord.application_runs`); the runs are
    then the latest one alone."""
    if options.run_id is not None:
        run_folder = find_run(config.runs_dir, options.run_id)
        info = load_run_info(run_folder)
        if info.get("kind", "run") not in ("run", "retry") or not info.get("execute"):
            raise UsageError(
                f"run {options.run_id} was not an executed migration run; nothing to roll back",
                hint="a dry run changed nothing; `docshift runs` shows which runs executed",
            )
        run_id = str(info["run_id"])
        chosen: list[tuple[Migration, tuple[str, ...], bool]] = []
        for migration_id in reversed(info["migrations"]):
            record = records.get(migration_id)
            _refuse_stamped(record)
            runs = record.application_runs() if record is not None else ()
            # A run killed before its first checkpoint has written (and journalled) already.
            if (
                not RunFolder(run_folder).migrations(migration_id)
                and not RunFolder(run_folder).journals(migration_id)
                and run_id not in (runs or ())
            ):
                continue  # the run stopped before this migration started
            if migration_id not in migrations:
                raise UsageError(
                    f"migration {migration_id} of run {options.run_id} has no file here",
                    hint="restore the migration file from version control",
                )
            undone = _with_run(record, runs, run_id)
            chosen.append((migrations[migration_id], undone or (run_id,), undone is not None))
        return chosen
    assert options.to is not None
    later = sorted(
        (r for r in records.values() if int(r.migration_id) > int(options.to) and r.status in _UNDONE),
        key=lambda r: int(r.migration_id),
        reverse=True,
    )
    for record in sorted(records.values(), key=lambda r: int(r.migration_id), reverse=True):
        if int(record.migration_id) > int(options.to):  # the newest first: its --to is the hint
            _refuse_stamped(record)
    missing = [r.migration_id for r in later if r.migration_id not in migrations]
    if missing:
        raise UsageError(
            f"migration {missing[0]} ran here but its file is gone",
            hint="restore the migration file from version control",
        )
    chosen = []
    for record in later:
        runs = record.application_runs()
        chosen.append(
            (
                migrations[record.migration_id],
                tuple(reversed(runs or ())) or (record.run_id,),
                runs is not None,
            )
        )
    return chosen


def _refuse_stamped(record: HistoryRecord | None) -> None:
    """A stamped migration was marked applied without running: docshift wrote nothing of it, so
    it has nothing to undo, and rolling back past it would leave the history claiming otherwise."""
    if record is not None and record.status is MigrationStatus.STAMPED:
        raise UsageError(
            f"{record.label} is stamped (marked applied without running, by {record.user}): docshift "
            "wrote nothing of it to undo, and cannot roll back past it",
            hint=f"`docshift rollback --to {record.migration_id}` undoes the migrations after it; to "
            "change the data it describes back, write a new migration (docshift new)",
        )


def _with_run(
    record: HistoryRecord | None, runs: tuple[str, ...] | None, run_id: str
) -> tuple[str, ...] | None:
    """The runs to undo when run ``run_id`` is named: every run of the application it is part of,
    newest first. Undoing it alone would leave the others' documents migrated while the history
    says rolled back."""
    if runs is None:
        return None
    if not runs:  # rolled back already (or no record): its journal again, found undone
        return (run_id,)
    if run_id not in runs:
        assert record is not None
        raise UsageError(
            f"run {run_id}'s changes to {record.label} were rolled back already; what is applied now was "
            f"written by run(s) {', '.join(runs)}",
            hint=f"to undo that: docshift rollback {runs[-1]} (it undoes every run of it)",
        )
    return tuple(reversed(runs))


def _strategy(config: Config, migration: Migration, runs: tuple[str, ...], known: bool, wanted: str) -> _Step:
    """How to undo ``migration``, whose application is the writes of ``runs`` (newest first; with
    ``known`` off, of those and of earlier runs the history no longer names)."""
    copy_to = migration.target.copy_to
    explicit_down = wanted == "down"
    if wanted == "auto":
        wanted = "down" if migration.down is not None and not copy_to else "restore"
    if wanted == "down" and migration.down is None:
        raise UsageError(
            f"{migration.label} has no down()",
            hint="use --strategy restore (puts back the saved before-images), or add down() to the file",
        )
    if wanted == "down" and copy_to:
        # down() would read the source and write its result into the copy: that undoes nothing.
        raise UsageError(
            f"{migration.label} copies into {copy_to}: down() cannot undo a copy",
            hint="use --strategy restore (deletes the documents the copy created)",
        )
    over_target = (
        "use --strategy down (down() over the whole target, unverified)"
        if migration.down
        else "restore the data from a backup"
    )
    if not known:
        if explicit_down:
            return _Step(migration, runs, "down", "target", known=False)
        raise UsageError(
            f"the history of {migration.label} no longer names every run that applied it (it was written "
            "by an older docshift, which kept only its latest events): their before-images cannot all "
            "be found",
            hint=f"to undo it anyway, {over_target}",
        )
    journalled, without = [], []
    for run in runs:
        folder = RunFolder.of(config.runs_dir, run)
        if folder.migration(migration.label).has_journal:
            journalled.append(run)
        elif not folder.exists:
            if not explicit_down:
                more = f" (one of the {len(runs)} runs that applied it)" if len(runs) > 1 else ""
                raise UsageError(
                    f"run {run} applied {migration.label}{more}, but its folder is not in {config.runs_dir}",
                    hint=f"copy that run's folder ({run}) into {config.runs_dir} from the machine that ran "
                    f"it, or {over_target}",
                )
            without.append(run)
        elif _wrote_without_journal(folder.path, migration):
            without.append(run)
        # else: the run stopped before it started this migration: nothing of it to undo
    if without:
        if wanted == "restore":
            journal = RunFolder.of(config.runs_dir, without[0]).migration(migration.label).journal
            raise UsageError(
                f"no before-images for {migration.label} in run {without[0]} ({journal})",
                hint="copy that run's folder into runs_dir, or use --strategy down if the migration has one",
            )
        return _Step(migration, tuple(r for r in runs if r in journalled or r in without), "down", "target")
    return _Step(migration, tuple(journalled), wanted, "journal")


def _wrote_without_journal(run_folder: Path, migration: Migration) -> bool:
    """Whether a run with no journal for ``migration`` may have written it: it checkpointed it, or
    it ran without before-images (and may have written before its first checkpoint)."""
    if RunFolder(run_folder).migration(migration.label).checkpoint.exists():
        return True
    settings = load_run_info(run_folder).get("settings") or {}
    return (settings.get("config") or {}).get("backup") is False


def _planned(config: Config, migrations: dict[str, Migration], entry: Any) -> _Step:
    """A step of a recorded plan (``run.json``); an older docshift's ``[id, run, strategy]``
    undid one run, from its journal when it had one."""
    if isinstance(entry, dict):
        migration_id, runs = str(entry["migration"]), tuple(str(r) for r in entry["runs"])
        strategy, by, known = str(entry["strategy"]), str(entry["by"]), bool(entry.get("known", True))
    else:
        migration_id, run, strategy = (str(part) for part in entry)
        runs, by, known = (run,), "", True
    if migration_id not in migrations:
        raise UsageError(
            f"migration {migration_id} of this rollback has no file here",
            hint="restore the migration file from version control",
        )
    migration = migrations[migration_id]
    if not by:
        journalled = RunFolder.of(config.runs_dir, runs[0]).migration(migration.label).has_journal
        by = "journal" if strategy == "restore" or journalled else "target"
    return _Step(migration, runs, strategy, by, known)


_Order = list[tuple[_Step, str | None]]
"""The order a rollback undoes things in: (step, the run whose journal) or (step, None): down()
over the step's whole target."""


def _order(config: Config, plan: list[_Step]) -> _Order:
    """Newest writes first: the runs' journals, newest run first, and within one run its
    migrations newest first (a run applies them oldest first). Going migration by migration instead
    would undo a run's write to a document before a later run's write to it by another migration
    (a ``--limit`` run of two migrations, then a full one), and meet that one as a conflict. A
    down() over the target goes at the place of its newest run."""
    entries: _Order = []
    for step in plan:
        if step.by == "journal":
            entries += [(step, run) for run in step.runs]
        else:
            entries.append((step, None))

    def newest_first(entry: tuple[_Step, str | None]) -> tuple[datetime, str, tuple[int, str]]:
        step, run = entry
        run = run if run is not None else (step.runs[0] if step.runs else "")
        migration_id = step.migration.id
        return (
            _started_at(config, run),
            run,
            (int(migration_id), migration_id) if migration_id.isdigit() else (1 << 62, migration_id),
        )

    return sorted(entries, key=newest_first, reverse=True)


def _recorded_order(plan: list[_Step], info: dict[str, Any]) -> _Order:
    """The order a rollback recorded in its ``run.json``; an older docshift's went migration by
    migration, each run's journal (or the target) in turn."""
    if "order" not in info:
        return [
            (step, run if step.by == "journal" else None)
            for step in plan
            for run in (step.runs if step.by == "journal" else step.runs[:1])
        ]
    steps = {step.migration.id: step for step in plan}
    return [
        (steps[str(migration_id)], None if run is None else str(run)) for migration_id, run in info["order"]
    ]


def _started_at(config: Config, run: str) -> datetime:
    """When ``run`` started: its ``run.json``'s ``created_at`` (to the microsecond), or the time its
    id begins with (a run whose folder is not here)."""
    folder = RunFolder.of(config.runs_dir, run)
    if folder.exists:
        created = load_run_info(folder.path).get("created_at")
        if isinstance(created, str):
            try:
                return datetime.fromisoformat(created)
            except ValueError:
                pass
    try:
        return datetime.strptime(run[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def rollback_target(config: Config, options: RollbackOptions) -> Config:
    """``config`` pointed at the project and database the rollback works on: those recorded by the
    run it undoes (or by the rollback it resumes). Unchanged for ``--to`` (the history read is the
    database's), or when the run is not found (``rollback`` then says so)."""
    wanted = options.resume or options.run_id
    if not wanted:
        return config
    try:
        folder = find_run(config.runs_dir, wanted, kind="rollback" if options.resume else None)
    except UsageError:
        return config
    return target_config(config, folder)


def rollback(
    config: Config,
    options: RollbackOptions,
    *,
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
    observe: ObserveOptions | None = None,
) -> RollbackReport:
    """The whole ``docshift rollback``: :func:`run_rollback` on the project and database of the run
    it undoes, observed like a run (event log, status endpoint, control files, report: ``observe``).
    ``hooks`` are the display. Raises what :func:`run_rollback` raises once the rollback and its
    report are recorded (:func:`result_of` gives a stop's report). The caller confirms first (the
    command line does)."""
    _check_runner(options)
    config = rollback_target(config, options)
    rollback_id = None if options.resume else (options.rollback_id or new_run_id())
    options = dataclasses.replace(options, rollback_id=rollback_id)
    with store_for(config, store) as active:
        controls = controls or Controls(rate_limiter(config, active))
        observation = Observation(
            config,
            active,
            controls,
            kind="rollback",
            resume=options.resume,
            run_id=rollback_id,
            display=hooks,
            options=observe,
        )
        report: RollbackReport | None = None
        try:
            with observation as seen:
                try:
                    report = run_rollback(config, options, store=active, hooks=seen.hooks, controls=controls)
                except RollbackConflicts as conflicts:
                    report = conflicts.report
                    raise
                finally:
                    controls.finished.set()  # from here on, only the report is left to write
        except BaseException as error:
            if report is None and observation.folder is not None:
                report = RollbackReport(
                    observation.folder.name, observation.folder, True, active.info.describe()
                )
            if report is not None:
                report.report_paths, report.report_error = observation.report, observation.report_error
                _RESULTS[error] = report
            raise
    assert report is not None
    report.report_paths, report.report_error = observation.report, observation.report_error
    return report


_RESULTS: ErrorResults[RollbackReport] = ErrorResults()


def _check_runner(options: RollbackOptions) -> None:
    """``--runner beam`` executes a rollback (a resume runs on the runner it recorded); its Beam
    options, and the extra being installed, are checked before anything is locked or recorded."""
    if options.runner == "engine":
        if options.beam_options and not options.resume:
            raise UsageError(
                "--beam-option needs --runner beam", hint="add --runner beam, or drop --beam-option"
            )
        return
    if options.runner != "beam":
        raise UsageError(
            f"no runner {options.runner!r}", hint="use --runner engine (default) or --runner beam"
        )
    if not options.execute and not options.resume:
        raise UsageError(
            "--runner beam executes a rollback; a dry run runs in this process",
            hint="drop --runner beam for the dry run, then roll back with --execute --runner beam",
        )
    try:
        from docshift.beam import BeamSettings, beam_pipeline_options
    except ImportError as missing:
        raise UsageError(
            f"--runner beam needs Apache Beam, which is not installed ({missing})",
            hint="pip install 'docshift[beam]'",
        ) from None
    beam_pipeline_options(BeamSettings(options.beam_options))


def result_of(error: BaseException) -> RollbackReport | None:
    """The report of the rollback that :func:`rollback` raised ``error`` for (a stop: recorded and
    reported before it was raised; conflicts, with what was undone); None when ``error`` came
    before the rollback was set up."""
    return _RESULTS.get(error)


def run_rollback(
    config: Config,
    options: RollbackOptions,
    *,
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
) -> RollbackReport:
    """Dry-run (default) or execute a rollback in one run session (:func:`rollback` without the
    observation); raises :class:`RollbackConflicts` when documents changed since the migration
    wrote them were left alone (use ``force`` to overwrite them), or when documents do not equal
    their before-images afterwards. ``hooks`` hear of each step (:mod:`docshift.engine.hooks`)."""
    _check_runner(options)
    migrations = {m.id: m for m in load_migrations(config.migrations_dir)}
    config = rollback_target(config, options)
    hooks = hooks or RunHooks()
    with store_for(config, store) as active:
        seen: HistoryRead | None = None  # a resume checks its own process instead
        if options.resume:
            folder = find_run(config.runs_dir, options.resume, kind="rollback")
            session = RunSession.resume(config, active, folder, read_info(folder))
            info = session.info
            plan = [_planned(config, migrations, entry) for entry in info["plan"]]
            order = _recorded_order(plan, info)
            options = dataclasses.replace(
                options,
                execute=bool(info["execute"]),
                force=bool(info["force"]),
                runner=str(info.get("runner") or "engine"),
                beam_options=options.beam_options or tuple(str(o) for o in info.get("beam_options") or ()),
            )
        else:
            # What the new rollback decides from, checked again once it holds the lease: another
            # run may undo (or redo) the same migrations in between.
            seen = History(active, config.store.state_prefix).read()
            plan, order, info = _new_plan(config, active, options, migrations, seen.records)
            session = RunSession.create(config, active, info)
        report = RollbackReport(session.run_id, session.folder, options.execute, active.info.describe())
        controls = controls or Controls(rate_limiter(config, active))
        with run_lifecycle(hooks) as start:
            with session.steps(controls, seen=seen):
                start(RunStarted(session.run_id, session.folder, "rollback", execute=options.execute))
                work = _Undoing(config, active, options, report, session.history, hooks, controls)
                _undo_all(work, plan, order)
            dirty = [item for item in report.items if not item.clean] if options.execute else []
            session.finish(
                state=CONFLICTS if dirty else FINISHED,
                done="finished" if not dirty else "ended with conflicts",
                again="it undoes nothing again",
            )
            if dirty:
                message, hint = _not_undone(dirty, session.info)
                error = RollbackConflicts(message, hint=hint)
                error.report = report
                raise error
        return report


def _new_plan(
    config: Config,
    store: Store,
    options: RollbackOptions,
    migrations: dict[str, Migration],
    records: Mapping[str, HistoryRecord],
) -> tuple[list[_Step], _Order, dict[str, Any]]:
    """What a new rollback undoes, in which order, and its ``run.json``, decided from ``records``
    (one read of the history)."""
    options = _resolved_target(options, records)
    targets = _targets(config, options, records, migrations)
    for source_run in dict.fromkeys(run for _, runs, _ in targets for run in runs):
        if (source := RunFolder.of(config.runs_dir, source_run)).exists:
            check_store(store, load_run_info(source.path), source_run)
    for source_run in dict.fromkeys(run for _, runs, _ in targets for run in runs):
        _mirror_beam_files(config, source_run)
    plan = [_strategy(config, m, runs, known, options.strategy) for m, runs, known in targets]
    order = _order(config, plan)
    of_run = None
    if options.run_id is not None:
        of_run = str(load_run_info(find_run(config.runs_dir, options.run_id))["run_id"])
    info = {
        "run_id": options.rollback_id or new_run_id(),
        "kind": "rollback",
        "execute": options.execute,
        "force": options.force,
        "migrations": [step.migration.id for step in plan],
        "plan": [step.to_json() for step in plan],
        "order": [[step.migration.id, run] for step, run in order],
        "of_run": of_run,
        "to": options.to,
        "steps": options.steps,
        "strategy": options.strategy,
        "runner": options.runner,
        "beam_options": list(options.beam_options),
    }
    return plan, order, info


def _mirror_beam_files(config: Config, run_id: str) -> None:
    """A ``--runner beam`` run whose workers wrote their files under a URL (``--beam-option
    run_files=URL``): copy its journals and records into its run folder first (a run killed before
    it copied them itself), through Beam's ``FileSystems``."""
    folder = RunFolder.of(config.runs_dir, run_id)
    if not folder.exists:
        return
    options = ((load_run_info(folder.path).get("settings") or {}).get("options")) or {}
    if options.get("runner") != "beam":
        return
    pairs = [str(o).partition("=") for o in options.get("beam_options") or ()]
    urls = [value for key, _, value in pairs if key.strip().removeprefix("--") == "run_files" and value]
    if not urls:
        return
    try:
        from docshift.beam.files import mirror_run
    except ImportError as missing:
        raise UsageError(
            f"run {run_id} wrote its before-images under {urls[-1]}, read through Apache Beam, which is "
            f"not installed ({missing})",
            hint="pip install 'docshift[beam]'",
        ) from None
    mirror_run(config.runs_dir, run_id, urls[-1])


def _not_undone(dirty: list[RollbackItem], info: dict[str, Any]) -> tuple[str, str]:
    """The error (and its hint) of a rollback that left documents unlike their before-images."""
    conflicts = sum(item.counters.get("conflicts", 0) for item in dirty)
    mismatched = sum(item.counters.get("mismatched", 0) for item in dirty)
    failed = sum(item.counters.get("failed", 0) for item in dirty)

    def listed(file: Callable[[MigrationFolder], Path]) -> str:
        found = [
            str(path) for path in (file(MigrationFolder(item.folder)) for item in dirty) if path.is_file()
        ]
        return f"they are listed in {', '.join(found)}" if found else "see the rollback's report"

    parts, hints = [], []
    if conflicts:
        parts.append(f"{conflicts} document(s) changed after the migration wrote them and were left alone")
        command = force_command(info)
        again = f"run `{command}`" if command else "rerun the rollback with --force"
        hints.append(
            f"{listed(lambda m: m.conflicts)}; to undo them over those later changes too (the "
            f"changes are lost), {again}"
        )
    if mismatched:
        parts.append(f"{mismatched} document(s) do not equal their before-image after the rollback")
        hints.append(
            f"{listed(lambda m: m.mismatches)}; if down() does not undo up(), fix it or roll back "
            "with --strategy restore"
        )
    if failed:
        parts.append(f"{failed} document(s) failed in down()")
        hints.append(listed(lambda m: m.dead_letters))
    return "; ".join(parts), "; ".join(hints)


@dataclass
class _Undoing:
    """What a rollback undoes its plan with."""

    config: Config
    store: Store
    options: RollbackOptions
    report: RollbackReport
    history: History
    hooks: RunHooks
    controls: Controls


def _undo_all(work: _Undoing, plan: list[_Step], order: _Order) -> None:
    """Undo the plan in ``order`` (newest writes first): each run's journal of each migration, or
    down() over a migration's target. A migration is recorded rolled back once the last of its runs
    is undone, cleanly. A dry run does the same against a simulated copy of the store, so each undo
    sees what undoing the newer writes would leave."""
    config, store, options, report = work.config, work.store, work.options, work.report
    history, hooks, controls = work.history, work.hooks, work.controls
    own_writes: dict[str, tuple[Timestamp, Timestamp | None]] = {}
    view = store if options.execute else SimulatedStore(store)
    items: dict[str, RollbackItem] = {}
    undos: dict[str, _JournalUndo] = {}
    for step in plan:
        item = RollbackItem(
            step.migration,
            step.strategy,
            step.runs,
            RunFolder(report.folder).migration(step.migration.label).path,
            runs_known=step.known,
        )
        items[step.migration.id] = item
        report.items.append(item)
        if step.by == "journal" and step.runs:
            undos[step.migration.id] = _JournalUndo(config, step, item.folder, options, controls, own_writes)
    last_of = {step.migration.id: index for index, (step, _) in enumerate(order)}
    for step in plan:
        if step.migration.id not in last_of:  # none of its runs got to write it: nothing to undo
            items[step.migration.id].restore = UndoResult()
            if options.execute:
                history.mark_rolled_back(step.migration.id, report.run_id, {})
    for index, (step, run) in enumerate(order):
        migration = step.migration
        item = items[migration.id]
        if isinstance(view, SimulatedStore) and index == len(order) - 1:
            view.retain_writes = False  # the oldest: nothing reads what its undo would leave
        hooks.pass_started(
            PassStarted(
                f"rollback {migration.label}",
                1,
                options.execute,
                dict(item.counters),
                strategy=step.strategy,
                runs=tuple(step.runs) if run is None else (run,),
            )
        )
        if run is not None:
            undo = undos[migration.id]
            stopped = undo.run(run, view, hooks)
            item.restore, item.by_run = undo.total(), undo.by_run()
            if stopped:
                stop = controls.stop_class or RunStopped
                raise stop(controls.stop_reason or "stopped", resume_command=report.resume_command)
        else:
            item.note = (
                f"{_without_journal(config, step)}: down() "
                f"{'ran' if options.execute else 'would run'} over every document of the target, "
                "also those the runs did not change, and the result cannot be verified"
            )
            hooks.warning(Warned(f"{migration.label}: {item.note}"))
            item.pipeline, item.plan = _down_over_target(
                config, view, migration, item.folder, options, report.run_id, hooks, controls
            )
            if item.pipeline.error is not None:
                raise item.pipeline.error
        if last_of[migration.id] == index:
            if migration.id in undos:
                undos[migration.id].finish()
            if options.execute and item.clean:
                history.mark_rolled_back(migration.id, report.run_id, item.counters)
        hooks.pass_ended(PassFinished(f"rollback {migration.label}", dict(item.counters)))


def _without_journal(config: Config, step: _Step) -> str:
    """Why ``step`` has no journal to go by, for its note."""
    if not step.known:
        return "its history no longer names every run that applied it"
    missing = [r for r in step.runs if not RunFolder.of(config.runs_dir, r).exists]
    without = [
        r
        for r in step.runs
        if r not in missing
        and not RunFolder.of(config.runs_dir, r).migration(step.migration.label).has_journal
    ]
    parts = []
    if without:
        parts.append(f"run {', '.join(without)} kept no before-images (--no-backup)")
    if missing:
        parts.append(f"the folder of run {', '.join(missing)} is not in runs_dir")
    return "; ".join(parts) or "no before-images"


class _JournalUndo:
    """Undoes one migration from the journals of the runs that applied it, run by run (in the
    rollback's order, newest first), by their before-images or by down(). One checkpoint, in the
    migration's folder of the rollback, holds where each run's journal stands and its counters.

    ``own_writes`` is shared by every run and migration of the rollback: an older run's journal
    meets what undoing a newer run's just wrote to a document both changed as the rollback's own
    write (not an application change), and puts back its own, older, before-image."""

    def __init__(
        self,
        config: Config,
        step: _Step,
        folder: Path,
        options: RollbackOptions,
        controls: Controls,
        own_writes: dict[str, tuple[Timestamp, Timestamp | None]],
        *,
        checkpointed: bool = True,
    ) -> None:
        self.config, self.step, self.folder, self.options = config, step, folder, options
        self.controls, self.own_writes = controls, own_writes
        self.files = MigrationFolder(folder)
        self.path: Path | None = self.files.checkpoint if checkpointed else None
        self.parts = {run: UndoResult() for run in step.runs}
        self.finished: set[str] = set()
        self.working_seconds = 0.0
        """Time spent undoing this migration (other migrations' runs may come in between)."""
        self.started: float | None = None
        if self.path is not None and self.path.exists():
            saved = Checkpoint.load(self.path)
            if saved.undo is None:
                raise UsageError(
                    f"the checkpoint {self.path} is not one of a rollback from before-images",
                    hint="it was written by an older docshift; start a new rollback",
                )
            for entry in saved.undo.steps:
                part = self.parts.get(entry.run)
                if part is None:
                    continue
                part.counters.update(entry.counters)
                part.position = entry.position
                part.landed = dict(entry.landed)
                if entry.finished:
                    self.finished.add(entry.run)
            self.working_seconds = saved.elapsed_seconds
        self.undo = UndoProgress(step.strategy, list(step.runs))
        self.checkpoint = Checkpoint(
            run_id=folder.parent.name,
            migration_id=step.migration.id,
            checksum=step.migration.checksum,
            shards=[ShardCursor()],
            undo=self.undo,
        )

    def run(self, run: str, store: Store, hooks: RunHooks) -> bool:
        """Undo run ``run``'s journal (from where it stopped); whether the rollback was stopped."""
        if run in self.finished:
            return False
        source = RunFolder.of(self.config.runs_dir, run).migration(self.step.migration.label)
        if self.options.runner == "beam" and self.options.execute:
            if not source.journal.is_file() and source.journalled_partitions():
                return self._run_beam(run, hooks)
            hooks.warning(
                Warned(
                    f"{self.step.migration.label}: run {run} was not a --runner beam run (one journal, not "
                    "one per partition): its undo runs in this process"
                )
            )
        migration, part = self.step.migration, self.parts[run]
        self.started = time.monotonic()
        # redo recognises our own writes by value; a copy's before-images are of its targets,
        # which up() does not take.
        redo = None if migration.target.copy_to else migration.up
        rules = UndoRules(
            self.options.execute,
            force=self.options.force,
            redo=redo,
            undo=migration.down if self.step.strategy == "down" else None,
            left_to_older=older_outputs(self._older_journals(run)),
        )
        restorer = Undoer(
            store,
            rules,
            listings=self.files,
            guards=WriteGuards.from_config(self.config.engine, self.config.limits, self.controls),
            hooks=hooks,
            on_batch=self.save,
            own_writes=self.own_writes,
        )
        try:
            restorer.run(undo_actions(self._journal(run), part.position), part)
        except Exception:
            # The store failed between the requests of a batch: what landed is counted (and noted
            # in ``landed``); the checkpoint keeps it for the resume.
            self.save(state="stopped")
            raise
        if not part.stopped:
            self.finished.add(run)
        self.save(state="stopped" if part.stopped else "running")
        self.working_seconds += time.monotonic() - self.started
        self.started = None
        return part.stopped

    def _run_beam(self, run: str, hooks: RunHooks) -> bool:
        """Undo a Beam run's journals as a Beam pipeline, partition by partition (``--runner beam``):
        the same rules as :meth:`run`; the counts are what the partitions' records say landed."""
        from docshift.beam import BeamSettings
        from docshift.beam.undo import BeamUndo

        migration, part = self.step.migration, self.parts[run]
        self.started = time.monotonic()
        rules = UndoRules(
            True,
            force=self.options.force,
            redo=None if migration.target.copy_to else migration.up,
            undo=migration.down if self.step.strategy == "down" else None,
        )
        undo = BeamUndo(
            self.config,
            migration,
            run,
            self.files,
            settings=BeamSettings(self.options.beam_options),
            rules=rules,
            older=[
                (other, self._journal(other)) for other in self.step.runs[self.step.runs.index(run) + 1 :]
            ],
            controls=self.controls,
            hooks=hooks,
        )
        try:
            result = undo.run()
        except Exception:
            found = undo.total()
            part.counters, part.samples = dict(found.counters), found.samples
            self.save(state="stopped")
            raise
        part.counters, part.samples, part.stopped = dict(result.counters), result.samples, result.stopped
        if not part.stopped:
            self.finished.add(run)
        self.save(state="stopped" if part.stopped else "running")
        self.working_seconds += time.monotonic() - self.started
        self.started = None
        return part.stopped

    def finish(self) -> None:
        self.save(state="finished")

    def _journal(self, run: str) -> list[Path]:
        """The run's journals of the migration: one, or a Beam run's attempt journals."""
        return RunFolder.of(self.config.runs_dir, run).migration(self.step.migration.label).journal_files()

    def _older_runs(self, run: str) -> tuple[str, ...]:
        """The runs of the migration older than ``run``: this rollback undoes them after it."""
        return self.step.runs[self.step.runs.index(run) + 1 :]

    def _older_journals(self, run: str) -> list[list[Path]]:
        """The journals of the runs of the migration older than ``run`` (see :func:`older_outputs`)."""
        return [self._journal(other) for other in self._older_runs(run)]

    def total(self) -> UndoResult:
        """Every run's counters added up (and the first samples)."""
        combined = UndoResult()
        for part in self.parts.values():
            for name, value in part.counters.items():
                combined.counters[name] = combined.counters.get(name, 0) + value
            combined.samples += part.samples[: max(0, 5 - len(combined.samples))]
            combined.stopped = combined.stopped or part.stopped
        return combined

    def by_run(self) -> list[tuple[str, dict[str, int]]]:
        return [(run, dict(part.counters)) for run, part in self.parts.items()]

    def save(self, _: UndoResult | None = None, state: str = "running") -> None:
        self.controls.check_lease()
        if not self.options.execute or self.path is None:
            return
        checkpoint = self.checkpoint
        checkpoint.counters = dict(self.total().counters)
        running = time.monotonic() - self.started if self.started is not None else 0.0
        checkpoint.elapsed_seconds = self.working_seconds + running  # the report's working time
        self.undo.steps = [
            UndoStep(run, dict(part.counters), part.position, run in self.finished, dict(part.landed))
            for run, part in self.parts.items()
        ]
        checkpoint.state = state
        checkpoint.save(self.path)


def undo_run_journal(
    config: Config, store: Store, migration: Migration, folder: Path, controls: Controls, hooks: RunHooks
) -> UndoResult:
    """Undo what run ``folder.parent.name`` wrote to ``migration`` from its journal in ``folder``
    (a canary's stages), by the rollback's own mechanism: as ``docshift rollback --strategy
    restore --execute`` does, every undone document is verified against its before-image, and
    conflicts and mismatches are listed in ``folder`` (see :func:`undo_listings`). Not
    checkpointed: done again, it finds what it restored equal to its before-image."""
    step = _Step(migration, (folder.parent.name,), "restore", "journal")
    undo = _JournalUndo(config, step, folder, RollbackOptions(execute=True), controls, {}, checkpointed=False)
    undo.run(step.runs[0], store, hooks)
    return undo.total()


def undo_listings(folder: Path) -> list[Path]:
    """The lists an undo in ``folder`` wrote: documents left alone (conflicts), and documents that
    do not equal their before-image afterwards (mismatches)."""
    files = MigrationFolder(folder)
    return [path for path in (files.conflicts, files.mismatches) if path.is_file()]


def _down_over_target(
    config: Config,
    store: Store,
    migration: Migration,
    folder: Path,
    options: RollbackOptions,
    run_id: str,
    hooks: RunHooks,
    controls: Controls,
) -> tuple[PipelineResult, DryRunRecorder | None]:
    """down() over the migration's whole target, through the engine: the only way without a
    journal. A dry run executes against the simulated store (``store``), without before-images."""
    assert migration.down is not None
    files = MigrationFolder(folder)
    checkpoint_path = files.checkpoint
    if checkpoint_path.exists():
        checkpoint = Checkpoint.load(checkpoint_path)
    else:
        settings: dict[str, Any] = {"rollback": True, "strategy": "down"}
        checkpoint = new_checkpoint(run_id, migration, plan_shards(store, migration.target, 1), settings)
    recorder = None if options.execute else DryRunRecorder(files.plan, migration.down)
    engine = config.engine if options.execute else config.with_engine(backup=False).engine
    base = PipelineOptions(execute=True, engine=engine, limits=config.limits)
    pipeline = MigrationPipeline(
        store,
        migration,
        base,
        folder,
        checkpoint,
        controls=controls,
        hooks=hooks,
        steps=PassSteps(transform=migration.down, on_decision=recorder),
    )
    try:
        return pipeline.run(), recorder
    finally:
        if recorder is not None:
            recorder.close()

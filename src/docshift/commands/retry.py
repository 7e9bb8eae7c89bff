"""``docshift retry RUN_ID``: re-process the documents a run left in its dead-letter files.

A document that failed in a run (its transform raised, a rule refused it, it kept changing during
the run) is listed in the migration's ``dead-letters.jsonl`` while the migration is recorded as
applied. Once the migration (or the data) is fixed, a retry runs the migration again over exactly
those documents. It is a run like any other, through the same session and engine: a new run id
and folder, the lease, the drift and order checks, guarded writes re-read on conflict, before-images
in the journal, checkpoints and ``--resume``, the integrity gate, the report; a dry run unless
``execute``. Only the document source differs: the listed documents, read again by path, instead
of the target's query.

Each listed document is looked at first: one deleted since is counted ``gone``, one that no
longer matches the migration's target (collection, filters) ``unmatched``; neither is an error,
and neither is retried. What is left is retried; one that fails again goes to the retry's own
dead-letter file, which a later ``docshift retry`` of the retry takes up.

The history keeps the migration's status: the retry is recorded as its own events
(``retry_started``, ``retried`` with its counts) and joins the migration's application (``runs``),
so ``docshift rollback RETRY_ID`` undoes it with the runs it completes.

What is left to retry (:func:`dead_letters_left`, shown by ``docshift status``) is derived from
the run folders and the history: the dead letters of each run of a migration's application that
no finished retry took up.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.commands.observe import ObserveOptions
from docshift.commands.run import (
    MigrationOutcome,
    RunOptions,
    RunReport,
    RunResult,
    observed_run,
    pipeline_options,
    record_resume,
    resume_run,
    run_settings,
)
from docshift.commands.session import RunSession, find_run, load_run_info, new_run_id, rate_limiter
from docshift.commands.target import check_store, target_config
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.dry_run import DryRunRecorder
from docshift.engine.hooks import (
    MigrationEnded,
    MigrationStarted,
    RunHooks,
    RunStarted,
    Warned,
    run_lifecycle,
)
from docshift.engine.pipeline import MigrationPipeline, PassSteps, new_checkpoint
from docshift.errors import DataError, DriftError, UsageError
from docshift.history import EventKind, History, HistoryRecord, MigrationStatus
from docshift.loader import load_migrations
from docshift.migration import Migration, Target
from docshift.planning import check_drift, check_order, migration_states
from docshift.runfolder.checkpoint import Checkpoint, ShardCursor
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.layout import RunFolder, run_folders
from docshift.runfolder.record import CLOSED_STATES, FINISHED, read_info
from docshift.store import Document, Store, store_for
from docshift.store.base import collection_of, split_path
from docshift.store.semantics import matches

__all__ = [
    "DeadLettersLeft",
    "RetryOptions",
    "RetryOutcome",
    "dead_letters_left",
    "listed_paths",
    "retry",
    "retry_migrations",
    "retry_target",
]

_READ_CHUNK = 100
"""Listed documents read per request."""
_RETRIED_STATUSES = (MigrationStatus.APPLIED, MigrationStatus.PARTIAL)
"""A run's dead letters are retried while its migration is recorded as one of these."""


@dataclass(frozen=True)
class RetryOptions:
    run_id: str | None = None
    """The run whose dead letters are retried (a migration run, or an earlier retry)."""
    execute: bool = False
    resume: str | None = None
    """A retry's id, or ``latest``: continue that retry instead of starting one."""
    allow_drift: bool = False
    force: bool = False
    """Resume although a migration file changed since its checkpoint; retry a run's dead letters
    again although a finished retry took them up already."""
    retry_id: str | None = None
    """The id of the new retry run (default: generated)."""


@dataclass
class RetryOutcome(MigrationOutcome):
    """A migration's outcome in a retry, with what became of its listed documents."""

    listed: int = 0
    gone: int = 0
    """Deleted since the run listed them: counted, not retried."""
    unmatched: int = 0
    """No longer in the migration's target (collection, filters): counted, not retried."""
    left_out: int = 0
    """Deleted or changed out of the target between the look at them and their retry."""

    def describe(self) -> str:
        retried = self.listed - self.gone - self.unmatched - self.left_out
        parts = [f"{retried:,} retried"]
        if self.gone:
            parts.append(f"{self.gone:,} gone (deleted since)")
        if self.unmatched:
            parts.append(f"{self.unmatched:,} no longer in the target")
        if self.left_out:
            parts.append(f"{self.left_out:,} deleted or changed out of the target while the retry ran")
        return f"{self.migration.label}: {self.listed:,} listed: " + ", ".join(parts)


def retry_target(config: Config, options: RetryOptions) -> Config:
    """``config`` pointed at the project and database of the run whose dead letters are retried
    (or of the retry being resumed)."""
    wanted = options.resume or options.run_id
    if wanted is None:
        return config
    try:
        folder = find_run(config.runs_dir, wanted, kind="retry" if options.resume else None)
    except UsageError:
        return config  # the retry itself says what is wrong
    return target_config(config, folder)


def _run_options(options: RetryOptions) -> RunOptions:
    return RunOptions(
        execute=options.execute,
        resume=options.resume,
        allow_drift=options.allow_drift,
        force=options.force,
        run_id=None if options.resume else (options.retry_id or new_run_id()),
    )


def retry(
    config: Config,
    options: RetryOptions,
    *,
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
    observe: ObserveOptions | None = None,
) -> RunResult:
    """The whole ``docshift retry``: :func:`retry_migrations` observed, validated and reported as
    :func:`docshift.commands.run.run` does a run, on the project and database of the run retried.
    Raises as ``run`` does (``docshift.commands.run.result_of`` gives a stop's result). The caller
    confirms first (the command line does)."""
    _check_named(options)
    config = retry_target(config, options)
    work = functools.partial(retry_migrations, of_run=options.run_id)
    return observed_run(
        config,
        _run_options(options),
        work,
        kind="retry",
        store=store,
        hooks=hooks,
        controls=controls,
        observe=observe,
    )


def _check_named(options: RetryOptions) -> None:
    if (options.run_id is None) == (options.resume is None):
        given = "both were given" if options.run_id else "neither was given"
        raise UsageError(
            f"name the RUN_ID whose dead letters to retry, or --resume a retry, one of them ({given})",
            hint="`docshift status` names the runs that left dead letters; `docshift retry RUN_ID` "
            "retries them; `docshift retry --execute --resume [RETRY_ID]` continues a stopped retry",
        )


# --------------------------------------------------------------------------- what is retried


def listed_paths(path: Path) -> list[str]:
    """The distinct documents a dead-letter file lists, in the order a retry reads them."""
    return sorted(DeadLetterFile(path).paths())


def in_target(target: Target, document: Document) -> bool:
    """Whether ``document`` is one the target's query reads (its collection, or a collection of its
    group, and every filter)."""
    collection = collection_of(document.path)
    if target.group:
        if split_path(collection)[-1] != target.collection:
            return False
    elif collection != target.collection.strip("/"):
        return False
    return all(matches(document.data, condition) for condition in target.filters)


def _read(store: Store, paths: Sequence[str]) -> Iterator[tuple[str, Document | None]]:
    for start in range(0, len(paths), _READ_CHUNK):
        chunk = paths[start : start + _READ_CHUNK]
        yield from zip(chunk, store.get_many(chunk), strict=True)


class ListedDocuments:
    """A retry's document source (:data:`~docshift.engine.pipeline.DocumentSource`): the listed
    documents after the shard's cursor, read again when their turn comes, those still in the target."""

    def __init__(self, store: Store, target: Target, paths: Sequence[str]) -> None:
        self.store = store
        self.target = target
        self.paths = sorted(paths)

    def __call__(self, shard: ShardCursor) -> Iterable[Document]:
        after = shard.resume_after
        todo = [p for p in self.paths if after is None or p > after]
        for _, document in _read(self.store, todo):
            if document is not None and in_target(self.target, document):
                yield document


@dataclass(frozen=True)
class _Planned:
    """One migration of a retry: what its dead letters listed, and what became of them."""

    migration: Migration
    listed: tuple[str, ...]
    gone: tuple[str, ...]
    unmatched: tuple[str, ...]

    @property
    def to_retry(self) -> list[str]:
        skipped = {*self.gone, *self.unmatched}
        return [p for p in self.listed if p not in skipped]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.migration.label,
            "listed": list(self.listed),
            "gone": list(self.gone),
            "unmatched": list(self.unmatched),
        }


def _source_run(config: Config, run_id: str) -> tuple[Path, dict[str, Any]]:
    if run_id == "latest":
        raise UsageError(
            "docshift retry takes the id of the run whose dead letters to retry, not `latest`",
            hint="`docshift status` names the runs that left dead letters; `--resume` continues a retry",
        )
    folder = find_run(config.runs_dir, run_id)
    info = load_run_info(folder)
    run_id = str(info.get("run_id", run_id))
    if info.get("kind", "run") not in ("run", "retry") or not info.get("execute"):
        what = "a dry run" if not info.get("execute") else f"a {info.get('kind')}"
        raise UsageError(
            f"run {run_id} was {what}, not an executed migration run: it has no dead letters to retry",
            hint="`docshift status` names the runs that left dead letters",
        )
    if info.get("state") != FINISHED:
        command = f"docshift {info.get('kind', 'run')} --execute --resume {run_id}"
        hint = (
            f"resume it first ({command}); what it leaves in its dead-letter files can then be retried"
            if info.get("state") not in CLOSED_STATES
            else "a run that did not finish is not retried; `docshift status` says what to do next"
        )
        raise UsageError(f"run {run_id} is {info.get('state')}, not finished", hint=hint)
    return folder, info


def _retries_of(config: Config, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The executed retries of ``run_id`` in runs_dir, newest first."""
    found = []
    for candidate in run_folders(config.runs_dir):
        try:
            info = read_info(candidate.path)
        except DataError:  # a damaged folder is not a retry of this run
            continue
        if (
            info.get("kind") == "retry"
            and info.get("execute")
            and (info.get("retry") or {}).get("of_run") == run_id
        ):
            found.append((str(info.get("run_id", candidate.run_id)), info))
    return found


def _refuse_retried(config: Config, run_id: str, force: bool) -> None:
    """A run's dead letters are taken up by one retry: an unfinished one is resumed, and after a
    finished one what is left is in that retry's own dead-letter file."""
    for retry_id, info in _retries_of(config, run_id):
        if info.get("state") not in CLOSED_STATES:
            raise UsageError(
                f"retry {retry_id} of run {run_id} did not finish ({info.get('state')})",
                hint=f"continue it: docshift retry --execute --resume {retry_id}",
            )
        if info.get("state") == FINISHED and not force:
            raise UsageError(
                f"the dead letters of run {run_id} were retried by run {retry_id} already; what failed "
                "again is in that run's dead-letter files",
                hint=f"retry those: docshift retry {retry_id} (or pass --force to retry {run_id}'s again)",
            )


def _plan(
    config: Config,
    store: Store,
    of_run: str,
    migrations: Sequence[Migration],
    records: Mapping[str, HistoryRecord],
) -> tuple[str, list[_Planned]]:
    """The run a new retry of ``of_run`` (an id, or ``latest``) takes up, and what it re-processes:
    each migration's listed documents, and which of them are gone or no longer in its target;
    decided from ``records`` (the history as read once)."""
    folder, info = _source_run(config, of_run)
    run_id = str(info["run_id"])
    check_store(store, info, run_id)
    by_label = {m.label: m for m in migrations}
    by_id = {m.id: m for m in migrations}
    planned: list[_Planned] = []
    for files in RunFolder(folder).migrations():
        listed = listed_paths(files.dead_letters)
        if not listed:
            continue
        migration = by_label.get(files.label) or by_id.get(files.label.split("_", 1)[0])
        if migration is None:
            raise UsageError(
                f"run {run_id} left dead letters for {files.label}, whose file is gone",
                hint="put the migration file back (from version control) to retry them",
            )
        _check_record(records.get(migration.id), migration, run_id)
        gone, unmatched = [], []
        for path, document in _read(store, listed):
            if document is None:
                gone.append(path)
            elif not in_target(migration.target, document):
                unmatched.append(path)
        planned.append(_Planned(migration, tuple(listed), tuple(gone), tuple(unmatched)))
    if not planned:
        raise UsageError(
            f"run {run_id} left no dead letters: nothing to retry",
            hint="`docshift status` names the runs that left dead letters",
        )
    return run_id, planned


def _check_record(record: HistoryRecord | None, migration: Migration, run_id: str) -> None:
    runs = record.application_runs() if record is not None else None
    if record is None or record.status not in _RETRIED_STATUSES or run_id not in (runs or ()):
        state = "not recorded" if record is None else record.status.value.replace("_", " ")
        raise UsageError(
            f"{migration.label} is {state} here, and run {run_id}'s writes are not part of what is "
            "applied: its dead letters are not retried",
            hint="`docshift history "
            f"{migration.id}` shows what happened; `docshift run --execute` runs a pending migration",
        )


# --------------------------------------------------------------------------- the session


def retry_migrations(
    config: Config,
    options: RunOptions,
    *,
    of_run: str | None = None,
    store: Store | None = None,
    hooks: RunHooks | None = None,
    controls: Controls | None = None,
    into: RunReport | None = None,
) -> RunReport:
    """The run session of a retry of run ``of_run`` (or of the retry ``options.resume`` names):
    :func:`retry` without the observation and validation, as
    :func:`~docshift.commands.run.run_migrations` is for a run."""
    migrations = load_migrations(config.migrations_dir)
    resumed = resume_run(config, options, "retry") if options.resume else None
    if resumed is not None:
        config, options = resumed.config, resumed.options
    with store_for(config, store) as active:
        hooks = hooks or RunHooks()
        # What a new retry decides from, checked again under the lease.
        seen = History(active, config.store.state_prefix).read()
        states = migration_states(migrations, dict(seen.records))
        drifted = check_drift(states, options.allow_drift)
        check_order(states)
        if resumed is not None:
            session = RunSession.resume(config, active, resumed.folder, resumed.info)
            planned = _recorded_plan(session, migrations)
        else:
            assert of_run is not None
            source, planned = _plan(config, active, of_run, migrations, seen.records)
            _refuse_retried(config, source, options.force)
            session = RunSession.create(
                config,
                active,
                {
                    "run_id": options.run_id or new_run_id(),
                    "kind": "retry",
                    "execute": options.execute,
                    "migrations": [p.migration.id for p in planned],
                    "limit": None,
                    "sample": None,
                    "settings": run_settings(config, options),
                    "retry": {"of_run": source, "migrations": {p.migration.id: p.to_json() for p in planned}},
                },
            )
        report = into or RunReport(session.run_id, session.folder, options.execute, kind="retry")
        report.target = active.info.describe()
        controls = controls or Controls(rate_limiter(config, active))
        with run_lifecycle(hooks) as start:
            with session.steps(controls, seen=seen if resumed is None else None):
                if resumed is not None and options.execute:
                    _refuse_if_rolled_back(session.history, session.run_id, planned)
                start(RunStarted(session.run_id, session.folder, "retry", execute=options.execute))
                if resumed is not None:
                    record_resume(resumed, session, hooks)
                if options.execute:
                    for state in drifted:
                        if state.migration is not None:
                            session.history.accept_drift(
                                state.migration_id, state.migration.checksum, session.run_id
                            )
                work = _Retrying(config, active, options, report, session.history, hooks, controls)
                for item in planned:
                    _retry_one(work, item)
            done = "; ".join(
                f"{o.migration.label}: "
                + ", ".join(f"{o.result.counters.get(k, 0):,} {k}" for k in ("updated", "created", "deleted"))
                for o in report.outcomes
            )
            session.finish(done=f"finished ({done})", again="it retries nothing again")
        return report


def _recorded_plan(session: RunSession, migrations: Sequence[Migration]) -> list[_Planned]:
    """The plan a retry being resumed recorded in its run.json."""
    by_id = {m.id: m for m in migrations}
    recorded: Mapping[str, Any] = (session.info.get("retry") or {}).get("migrations") or {}
    planned = []
    for migration_id in session.info["migrations"]:
        if migration_id not in by_id:
            raise DriftError(
                f"retry {session.run_id} needs migration {migration_id}, whose file is gone",
                hint="put the file back (from version control) to resume it",
            )
        entry = recorded[migration_id]
        planned.append(
            _Planned(
                by_id[migration_id],
                tuple(entry["listed"]),
                tuple(entry.get("gone") or ()),
                tuple(entry.get("unmatched") or ()),
            )
        )
    return planned


def _refuse_if_rolled_back(history: History, run_id: str, planned: Sequence[_Planned]) -> None:
    """A retry whose writes were rolled back (with the migration) is closed, as a run is."""
    for item in planned:
        record = history.get(item.migration.id)
        if record is None:
            continue
        started = [
            i for i, e in enumerate(record.events) if e.run_id == run_id and e.kind is EventKind.RETRY_STARTED
        ]
        if started and any(e.status is MigrationStatus.ROLLED_BACK for e in record.events[started[-1] + 1 :]):
            raise UsageError(
                f"retry {run_id} was rolled back ({record.label} is rolled back since then); a rolled-back "
                "retry is closed and cannot be resumed",
                hint="run the migration again: docshift run --execute",
            )


@dataclass
class _Retrying:
    """What each migration of a retry runs with."""

    config: Config
    store: Store
    options: RunOptions
    report: RunReport
    history: History
    hooks: RunHooks
    controls: Controls


def _checkpoint(work: _Retrying, item: _Planned, path: Path) -> Checkpoint | None:
    """The checkpoint a migration's retry continues from (a new one: one shard over the listed
    documents); None when it had finished."""
    migration = item.migration
    settings = {"options": dataclasses.asdict(work.options), "retry": True}
    if not path.exists():
        return new_checkpoint(work.report.run_id, migration, [ShardCursor()], settings)
    checkpoint = Checkpoint.load(path)
    if checkpoint.finished:
        if work.options.execute:
            _close_history(work, item, checkpoint)
        return None
    if checkpoint.checksum != migration.checksum and not work.options.force:
        raise DriftError(
            f"{migration.label}.py changed since retry {work.report.run_id} checkpointed it",
            hint="restore the file, or resume with --force to continue with the new code",
        )
    return checkpoint


def _counts(item: _Planned, counters: Mapping[str, int], finished: bool) -> dict[str, int]:
    """The history's counts of a migration's retry: the engine's, and what became of the listed."""
    left_out = max(len(item.to_retry) - counters.get("read", 0), 0) if finished else 0
    return {
        **counters,
        "listed": len(item.listed),
        "gone": len(item.gone),
        "unmatched": len(item.unmatched),
        "left_out": left_out,
    }


def _close_history(work: _Retrying, item: _Planned, checkpoint: Checkpoint) -> None:
    """A resumed retry whose migration had finished: record its end if the process died first."""
    record = work.history.get(item.migration.id)
    if record is None:
        return
    mine = [e for e in record.events if e.run_id == work.report.run_id]
    if mine and mine[-1].kind is EventKind.RETRY_STARTED:
        work.history.retried(item.migration.id, work.report.run_id, _counts(item, checkpoint.counters, True))


def _retry_one(work: _Retrying, item: _Planned) -> None:
    """Retry one migration's listed documents through the engine, and record the outcome."""
    options, report, history, migration = work.options, work.report, work.history, item.migration
    files = RunFolder(report.folder).migration(migration.label)
    checkpoint = _checkpoint(work, item, files.checkpoint)
    if checkpoint is None:
        return
    if options.execute:
        history.retry_started(migration, report.run_id)
    check = work.hooks.migration_started(MigrationStarted(migration, report.run_id, options.execute))
    recorder = None if options.execute else DryRunRecorder(files.plan, migration.up)
    try:
        result = MigrationPipeline(
            work.store,
            migration,
            pipeline_options(work.config, options),
            files.path,
            checkpoint,
            controls=work.controls,
            hooks=work.hooks,
            steps=PassSteps(
                check=check,
                on_decision=recorder,
                source=ListedDocuments(work.store, migration.target, item.to_retry),
            ),
        ).run()
    finally:
        if recorder is not None:
            recorder.close()
    finished = result.error is None
    counts = _counts(item, result.counters, finished)
    outcome = RetryOutcome(
        migration,
        result,
        recorder,
        listed=len(item.listed),
        gone=len(item.gone),
        unmatched=len(item.unmatched),
        left_out=counts["left_out"],
    )
    outcome.note = outcome.describe()
    report.outcomes.append(outcome)
    if item.gone or item.unmatched or outcome.left_out:
        work.hooks.warning(Warned(f"{outcome.note}: counted, not retried"))
    if options.execute:
        error = None if finished else f"{result.error} (resume: {report.resume_command})"
        history.retried(migration.id, report.run_id, counts, error)
    work.hooks.migration_ended(MigrationEnded(migration, result, None))
    if result.error is not None:
        raise result.error


# --------------------------------------------------------------------------- what is left


@dataclass(frozen=True)
class DeadLettersLeft:
    """Documents a run of a migration's application left in its dead-letter file that no finished
    retry took up: ``docshift retry RUN_ID`` re-processes them (``retry_run``: a retry of them that
    did not finish, to resume instead)."""

    migration_id: str
    run_id: str
    count: int
    path: Path
    retry_run: str | None = None

    @property
    def command(self) -> str:
        if self.retry_run is not None:
            return f"docshift retry --execute --resume {self.retry_run}"
        return f"docshift retry {self.run_id}"

    def describe(self) -> str:
        return f"{self.count:,} dead letter(s) (run {self.run_id}) — {self.command}"

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "count": self.count,
            "file": str(self.path),
            "retry_run": self.retry_run,
            "command": self.command,
        }


def dead_letters_left(
    runs_dir: Path, records: Mapping[str, HistoryRecord]
) -> dict[str, list[DeadLettersLeft]]:
    """Per migration id, the dead letters its application's finished runs left that no finished
    retry took up (a migration rolled back has none: its application is undone)."""
    left: dict[str, list[DeadLettersLeft]] = {}
    for migration_id, record in records.items():
        if record.status not in _RETRIED_STATUSES:
            continue
        runs = record.application_runs() or ()
        infos = {run: _info(runs_dir, run) for run in runs}
        for run in runs:
            info = infos[run]
            if info is None or not info.get("execute") or info.get("state") != FINISHED:
                continue
            folders = RunFolder.of(runs_dir, run).migrations(migration_id)
            count = sum(len(listed_paths(files.dead_letters)) for files in folders)
            if not count:
                continue
            retries = [
                (other, other_info)
                for other, other_info in infos.items()
                if other_info is not None
                and (other_info.get("retry") or {}).get("of_run") == run
                and migration_id in (other_info.get("migrations") or ())
            ]
            if any(other_info.get("state") == FINISHED for _, other_info in retries):
                continue
            unfinished = next((o for o, i in retries if i.get("state") not in CLOSED_STATES), None)
            path = folders[0].dead_letters
            left.setdefault(migration_id, []).append(
                DeadLettersLeft(migration_id, run, count, path, unfinished)
            )
    return left


def _info(runs_dir: Path, run_id: str) -> dict[str, Any] | None:
    folder = RunFolder.of(runs_dir, run_id)
    if not folder.exists:
        return None
    try:
        return read_info(folder.path)
    except DataError:  # a damaged run.json: its dead letters cannot be told apart
        return None

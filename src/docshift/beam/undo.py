"""``docshift rollback --runner beam``: a Beam run's undo as a Beam pipeline, one element per partition.

A Beam run journals each partition in its own attempt journals (``before-images/PART-ATTEMPT``); a
document lives in one partition, so the partitions undo independently. A worker undoes one
partition with the engine's own :class:`~docshift.engine.undo.Undoer` (the same actions, guards,
conflict rules and check against the before-images as the rollback in one process), reading that
partition's attempt journals oldest first: the state put back is each document's earliest
before-image that is not the run's own output, guarded by the update time the run's write
produced.

Rules this module keeps:
- a partition's progress is its record (``MigrationFolder.undo_partition``), saved after every batch
  with its counters, its position in the partition's journals and the writes of an unfinished
  batch that landed: a bundle the runner retries, or a resumed rollback, starts from it and counts
  nothing twice; the counts of the rollback are the records' sums, what landed;
- each partition lists its conflicts and mismatches in its own folder; the rollback gathers them
  into the migration's lists once every partition of the run is undone;
- the migration (for ``down()`` and for telling the run's own output) comes as its file's content
  (:class:`~docshift.beam.worker.ShippedMigration`), refused when its checksum is not the recorded one;
- the write limit is the rollback's, divided by the number of workers; a stop of the rollback reaches
  the workers through ``beam-stop`` in the rollback's migration folder, before their next batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from docshift.beam.driver import BeamSettings, beam_pipeline_options, worker_count
from docshift.beam.files import RunFiles, remove_staging, run_files_of, staging_folder
from docshift.beam.worker import ConfiguredStore, ShippedMigration, StoreFactory, WorkerShare
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.diff import FieldChange
from docshift.engine.hooks import Progressed, RunHooks
from docshift.engine.undo import Undoer, UndoResult, UndoRules, older_outputs, undo_actions
from docshift.engine.writer import WriteGuards
from docshift.errors import DocshiftError, EmergencyStop
from docshift.migration import Migration
from docshift.runfolder.atomic import run_file, write_fully
from docshift.runfolder.checkpoint import UndoStep
from docshift.runfolder.layout import UNDO_PARTITION_FORMAT, MigrationFolder, RunFolder
from docshift.runfolder.record import read_info
from docshift.store import Store

__all__ = ["BeamUndo", "UndoPartitionWorker", "UndoPlan", "undo_partitions"]

UNDO_NAMESPACE = "docshift-undo"
"""Beam metrics of undone partitions: each partition counted once."""


@dataclass(frozen=True)
class UndoPlan:
    """Everything an undo worker needs, shipped with the pipeline (picklable)."""

    config: Config
    migration: ShippedMigration
    run: str
    """The run whose journals are undone."""
    journals: dict[int, tuple[str, ...]]
    """Partition -> its attempt journals, oldest attempt first."""
    folder: str
    """The rollback's folder of the migration: the records, the lists, the stop file."""
    strategy: str = "restore"
    force: bool = False
    older: tuple[tuple[str | None, tuple[str, ...]], ...] = ()
    """The journals of the older runs of the migration, which this rollback undoes after this one:
    (the URL their run's workers wrote them under, or None, and their run folder paths)."""
    workers: int = 1
    ramp: bool = False
    store: StoreFactory | None = None
    source_files: str | None = None
    """The URL the run's workers wrote its journals under (its ``run_files``); None: its run folder."""
    run_files: str | None = None
    """The URL this rollback's workers write their records and lists under; None: ``folder``."""

    @property
    def runs_dir(self) -> Path:
        return Path(self.folder).parent.parent

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.runs_dir, self.run_files)


def _record(io: RunFiles, files: MigrationFolder, run: str, partition: int) -> UndoStep:
    body = io.read_format(UNDO_PARTITION_FORMAT, files.undo_partition(run, partition))
    return UndoStep(run) if body is None else UndoStep.from_json(body["step"])


def _save(io: RunFiles, files: MigrationFolder, partition: int, step: UndoStep, samples: list[Any]) -> None:
    body = {"partition": partition, "step": step.to_json(), "samples": samples}
    io.write_format(UNDO_PARTITION_FORMAT, files.undo_partition(step.run, partition), body)


class UndoPartitionWorker:
    """One worker's set-up: its store, the migration's rules for the undo, its share of the limit."""

    def __init__(self, plan: UndoPlan, store: Store, migration: Migration) -> None:
        self.plan = plan
        self.store = store
        self.migration = migration
        self.files = MigrationFolder(Path(plan.folder))
        self.io = plan.files
        self.source = RunFiles(plan.runs_dir, plan.source_files)
        self.staging = staging_folder()
        older = []
        for number, (url, journal) in enumerate(plan.older):
            io = RunFiles(plan.runs_dir, url)
            into = self.staging / f"older-{number}"
            older.append([io.fetch(Path(p), into / Path(p).name) or Path(p) for p in journal])
        self.left_to_older = older_outputs(older)

    @classmethod
    def open(cls, plan: UndoPlan) -> UndoPartitionWorker:
        store = (plan.store or ConfiguredStore(plan.config))()
        return cls(plan, store, plan.migration.load())

    def close(self) -> None:
        self.store.close()
        remove_staging(self.staging)

    def _journals(self, partition: int) -> list[Path]:
        """The partition's attempt journals, as local files (copied from the run's URL if there)."""
        into = self.staging / f"journals-{partition}"
        return [
            self.source.fetch(Path(p), into / Path(p).name) or Path(p) for p in self.plan.journals[partition]
        ]

    def _listings(self, partition: int) -> tuple[MigrationFolder, MigrationFolder]:
        """Where the Undoer lists the partition's conflicts and mismatches (staged on this worker
        under a URL, with what earlier attempts listed), and where they are kept."""
        kept = self.files.undo_partition_listings(self.plan.run, partition)
        if not self.io.remote:
            return kept, kept
        staged = MigrationFolder(self.staging / f"listings-{partition}")
        for path, into in ((kept.conflicts, staged.conflicts), (kept.mismatches, staged.mismatches)):
            self.io.fetch(path, into)
        return staged, kept

    def _keep(self, staged: MigrationFolder, kept: MigrationFolder) -> None:
        if staged == kept:
            return
        for path, into in ((staged.conflicts, kept.conflicts), (staged.mismatches, kept.mismatches)):
            if path.is_file():
                self.io.write(into, path.read_bytes())

    def undo(self, partition: int) -> UndoStep:
        """Undo one partition from where its record stands (a retried bundle, a resumed rollback);
        returns its record, finished unless the rollback was stopped."""
        plan, migration = self.plan, self.migration
        step = _record(self.io, self.files, plan.run, partition)
        if step.finished:
            return step
        result = UndoResult(position=step.position, landed=dict(step.landed))
        result.counters.update(step.counters)
        limits = plan.config.limits
        limiter = WorkerShare(
            limits.max_writes_per_second, ramp=plan.ramp, workers=plan.workers, adaptive=limits.adaptive_rate
        )
        controls = Controls(limiter)
        stop_file = self.files.beam_stop
        staged, kept = self._listings(partition)

        def saved(done: UndoResult) -> None:
            self._keep(staged, kept)  # the lists first: a record never counts what is not listed
            _save(self.io, self.files, partition, _step_of(plan.run, done, finished=False), _samples(done))
            if self.io.exists(stop_file):
                controls.request_stop("stopped by `docshift stop`")

        rules = UndoRules(
            True,
            force=plan.force,
            redo=None if migration.target.copy_to else migration.up,
            undo=migration.down if plan.strategy == "down" else None,
            left_to_older=self.left_to_older,
        )
        undoer = Undoer(
            self.store,
            rules,
            listings=staged,
            guards=WriteGuards.from_config(plan.config.engine, limits, controls),
            on_batch=saved,
        )
        if self.io.exists(stop_file):
            return step
        journals = self._journals(partition)
        try:
            undoer.run(undo_actions(journals, result.position), result)
        except Exception:
            saved(result)  # what landed before the store failed is counted; the retry starts there
            raise
        done = _step_of(plan.run, result, finished=not result.stopped)
        self._keep(staged, kept)
        _save(self.io, self.files, partition, done, _samples(result))
        return done


def _step_of(run: str, result: UndoResult, *, finished: bool) -> UndoStep:
    return UndoStep(run, dict(result.counters), result.position, finished, dict(result.landed))


def _samples(result: UndoResult) -> list[Any]:
    """A record's samples of undo writes (for the report), in the exact codec's terms."""
    return [
        [path, kind, [[list(c.path), c.old, c.new, c.added, c.removed] for c in changes]]
        for path, kind, changes in result.samples
    ]


def _read_samples(raw: list[Any]) -> list[tuple[str, str, list[FieldChange]]]:
    return [
        (
            str(path),
            str(kind),
            [FieldChange(tuple(p), old, new, bool(a), bool(r)) for p, old, new, a, r in changes],
        )
        for path, kind, changes in raw
    ]


class _UndoFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, plan: UndoPlan) -> None:
        super().__init__()
        self.plan = plan
        self._worker: UndoPartitionWorker | None = None

    def setup(self) -> None:
        self._worker = UndoPartitionWorker.open(self.plan)

    def teardown(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def process(self, partition: int) -> Iterator[int]:
        assert self._worker is not None
        done = self._worker.undo(partition)
        if done.finished:
            for name, value in done.counters.items():
                if value:
                    Metrics.counter(UNDO_NAMESPACE, name).inc(value)
        yield partition


def undo_partitions(plan: UndoPlan, partitions: Sequence[int], beam_options: Any) -> None:
    """Run the pipeline that undoes ``partitions`` (see the module docstring) until it ends."""
    pipeline = beam.Pipeline(options=beam_options)
    _ = (
        pipeline
        | "Partitions" >> beam.Create(list(partitions))
        | "Spread" >> beam.Reshuffle()
        | "Undo" >> beam.ParDo(_UndoFn(plan))
    )
    pipeline.run().wait_until_finish()


class BeamUndo:
    """Undo run ``run``'s journals of one migration as a Beam pipeline, from this process: the
    pipeline runs in a thread while this one passes a stop on to the workers and shows the
    records' progress; then the records give the counts and the lists are gathered."""

    def __init__(
        self,
        config: Config,
        migration: Migration,
        run: str,
        folder: MigrationFolder,
        *,
        settings: BeamSettings,
        rules: UndoRules,
        older: Sequence[tuple[str, Sequence[Path]]] = (),
        controls: Controls | None = None,
        hooks: RunHooks | None = None,
    ) -> None:
        self.config = config
        self.migration = migration
        self.run_id = run
        self.source = RunFolder.of(config.runs_dir, run).migration(migration.label)
        """The run's folder of the migration: its attempt journals."""
        self.source_files = run_files_of(_beam_options_of(self.source.run))
        self.io = RunFiles(config.runs_dir, run_files_of(settings.options))
        self.files = folder
        self.settings = settings
        self.rules = rules
        self.older = older
        self.controls = controls or Controls()
        self.hooks = hooks or RunHooks()
        self.beam_options = beam_pipeline_options(settings)
        self.partitions = self.source.journalled_partitions()
        self._error: BaseException | None = None

    def plan(self) -> UndoPlan:
        return UndoPlan(
            self.config,
            ShippedMigration.of(self.migration),
            self.run_id,
            {p: tuple(str(j) for j in self.source.attempt_journals(p)) for p in self.partitions},
            str(self.files.path),
            strategy="down" if self.rules.undo is not None else "restore",
            force=self.rules.force,
            older=tuple(
                (
                    run_files_of(_beam_options_of(RunFolder.of(self.config.runs_dir, other))),
                    tuple(str(j) for j in journal),
                )
                for other, journal in self.older
            ),
            workers=worker_count(self.beam_options),
            ramp=self.controls.limiter.ramp,
            store=self.settings.store,
            source_files=self.source_files,
            run_files=self.io.url,
        )

    def run(self) -> UndoResult:
        """The run's undo, whole or as far as a stop let it go (``stopped``); raises
        :class:`EmergencyStop` when the pipeline failed (the records kept are resumed)."""
        with run_file(self.files.path):
            self.files.path.mkdir(parents=True, exist_ok=True)
            self.files.beam_stop.unlink(missing_ok=True)
        if self.io.remote:
            self.io.delete(self.files.beam_stop)
        todo = [p for p in self.partitions if not self._finished(p)]
        if todo:
            plan = self.plan()
            thread = threading.Thread(target=self._pipeline, args=(plan, todo), name="docshift-beam-undo")
            thread.start()
            while thread.is_alive():
                thread.join(0.5)
                if self.controls.check_lease() and not self.files.beam_stop.exists():
                    with contextlib.suppress(OSError):
                        self.files.beam_stop.touch()
                    if self.io.remote:
                        self.io.write(self.files.beam_stop, b"")
                self.hooks.progressed(Progressed("rollback", dict(self.total().counters)))
        result = self.total()
        if self._error is not None and not self.controls.stop.is_set():
            raise _failed(
                self._error, sum(1 for p in self.partitions if self._finished(p)), len(self.partitions)
            )
        if not result.stopped:
            self._gather()
        return result

    def _pipeline(self, plan: UndoPlan, todo: Sequence[int]) -> None:
        try:
            undo_partitions(plan, todo, self.beam_options)
        except BaseException as error:
            self._error = error

    def _finished(self, partition: int) -> bool:
        return _record(self.io, self.files, self.run_id, partition).finished

    def total(self) -> UndoResult:
        """The partitions' records added up: what landed (``stopped``: some partition is not done)."""
        result = UndoResult()
        for partition in self.partitions:
            step = _record(self.io, self.files, self.run_id, partition)
            for name, value in step.counters.items():
                result.counters[name] = result.counters.get(name, 0) + value
            result.stopped = result.stopped or not step.finished
            if len(result.samples) < self.rules.samples:
                result.samples += self._samples(partition)[: self.rules.samples - len(result.samples)]
        return result

    def _samples(self, partition: int) -> list[tuple[str, str, list[FieldChange]]]:
        body = self.io.read_format(UNDO_PARTITION_FORMAT, self.files.undo_partition(self.run_id, partition))
        return _read_samples(body.get("samples") or []) if body is not None else []

    def _gather(self) -> None:
        """Append each partition's conflicts and mismatches to the migration's lists (once: the
        partition's own lists are removed as they are gathered)."""
        for partition in self.partitions:
            listings = self.files.undo_partition_listings(self.run_id, partition)
            for mine, theirs in (
                (listings.conflicts, self.files.conflicts),
                (listings.mismatches, self.files.mismatches),
            ):
                if not mine.is_file():
                    continue
                with run_file(theirs):
                    payload = mine.read_bytes()
                    with theirs.open("ab") as handle:
                        write_fully(handle.fileno(), payload)
                    mine.unlink()
                if self.io.remote:
                    self.io.delete(mine)


def _beam_options_of(run: RunFolder) -> list[str]:
    """The Beam options a run recorded (its ``run_files`` among them): a migration run's in its
    settings, a rollback's beside its plan."""
    if not run.exists:
        return []
    info = read_info(run.path)
    recorded = ((info.get("settings") or {}).get("options") or {}).get("beam_options")
    return [str(o) for o in (recorded or info.get("beam_options") or [])]


def _failed(error: BaseException, finished: int, total: int) -> EmergencyStop:
    if isinstance(error, DocshiftError):
        return EmergencyStop(f"the Beam rollback stopped: {error.message}", hint=error.hint)
    text = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = f"{type(error).__name__}: {text[-1] if text else ''}"
    return EmergencyStop(
        f"the Beam rollback failed ({finished} of {total} partitions undone): {reason}",
        hint="fix the cause (the runner's log has the worker's traceback), then resume the rollback: "
        "the partitions undone are kept",
    )

"""What a Beam worker does with one partition of a migration's target: the engine's own core.

One element is one partition (a key range from :func:`~docshift.engine.sharding.plan_shards`). The
worker reads it in name order, in batches of the adaptive size, and sends each batch through the
engine's per-document core (:func:`~docshift.engine.pipeline.batch_processor`: transform, inline
rules, diff, guarded write through the one :class:`~docshift.engine.writer.BatchWriter`, conflict
re-read, dead letters). Nothing about a document is decided here.

Rules this module keeps:
- every attempt at a partition journals into its own file (``MigrationFolder.attempt_journal``),
  before-images on disk before each write is sent, so a bundle the runner retries never loses, or
  appends to, the before-images of an attempt that wrote and then failed;
- an attempt first settles what earlier attempts at its partition landed
  (:func:`~docshift.engine.landed.settle`, as a resume does): those writes count once, as what they
  did, and their missing outcomes are journalled, so the counts of a retried partition are those of
  one that never failed;
- a partition is finished when its record is written (``MigrationFolder.partition_record``, after
  its dead letters and journal are closed): what a resume skips, and the only counts a run reports.
  The runner's metrics are incremented from the record, so they count each partition once;
- the migration comes as its file's content (:class:`ShippedMigration`) and is refused when its
  checksum is not the one the run recorded;
- the write limit is the run's, divided by the number of workers (as Beam's Java ``RpcQosImpl``
  does with ``hintMaxNumWorkers``), the 500/50/5 ramp included; between batches a worker follows
  the run's stop, pause and write limit (``beam-stop``, ``beam-steer.json``).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from docshift.beam.files import PublishedJournal, RunFiles, remove_staging, staging_folder
from docshift.config import Config
from docshift.engine.batch import DeadLetter, DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.landed import LandedWrites, settle
from docshift.engine.limits import Clock, RateLimiter
from docshift.engine.pipeline import PassSteps, PipelineOptions, batch_processor
from docshift.engine.stats import COUNTERS, RunStats
from docshift.engine.writer import WriteGuards
from docshift.errors import DriftError, RunFileError, RunStopped
from docshift.loader import checksum_of, load_migration
from docshift.migration import Migration
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.journal import JournalReader, JournalWriter
from docshift.runfolder.layout import LANDED_FORMAT, PARTITION_FORMAT, MigrationFolder
from docshift.store import Store, open_store
from docshift.store.base import Document
from docshift.validators.rules import RuleContext, RuleSession
from docshift.validators.scan import rule_names

__all__ = [
    "ConfiguredStore",
    "Partition",
    "PartitionDone",
    "PartitionWorker",
    "ShippedMigration",
    "StoreFactory",
    "WorkerPlan",
    "WorkerShare",
    "read_partition",
]

StoreFactory = Callable[[], Store]
"""Opens the store on a worker: picklable (shipped with the pipeline), called once per worker."""


@dataclass(frozen=True)
class ConfiguredStore:
    """The store a config points at (the emulator or Cloud Firestore), opened on the worker."""

    config: Config

    def __call__(self) -> Store:
        return open_store(self.config)


@dataclass(frozen=True)
class Partition:
    """One key range ``(start_after, end_at]`` of a target, and its place in the run."""

    index: int
    start_after: str | None = None
    end_at: str | None = None


@dataclass(frozen=True)
class PartitionDone:
    """A finished partition as its record holds it: the attempt that finished it, its counts, and
    the dead-letter file of that attempt (the run's dead letters are those of finishing attempts)."""

    index: int
    attempt: str
    counters: dict[str, int]
    dead_letters: int
    elapsed_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "attempt": self.attempt,
            "counters": dict(self.counters),
            "dead_letters": self.dead_letters,
            "elapsed_seconds": self.elapsed_seconds,
        }

    @classmethod
    def read(cls, path: Path) -> PartitionDone:
        return cls.of(PARTITION_FORMAT.read(path))

    @classmethod
    def of(cls, body: dict[str, Any]) -> PartitionDone:
        return cls(
            int(body["index"]),
            str(body["attempt"]),
            {str(k): int(v) for k, v in body["counters"].items()},
            int(body["dead_letters"]),
            float(body["elapsed_seconds"]),
        )


@dataclass(frozen=True)
class ShippedMigration:
    """A migration file's content, shipped with the pipeline: a worker loads it from this, not
    from a path that exists only on the machine that submitted the pipeline."""

    file_name: str
    source: str
    checksum: str

    @classmethod
    def of(cls, migration: Migration) -> ShippedMigration:
        if migration.path is None:
            raise DriftError(
                f"{migration.label} has no file to ship to the workers",
                hint="load the migration from its file (docshift.loader.load_migration)",
            )
        source = migration.path.read_bytes().decode("utf-8-sig")
        if checksum_of(source) != migration.checksum:
            raise DriftError(
                f"{migration.path.name} changed since it was loaded",
                hint="run again: the run ships the file as it is then",
            )
        return cls(migration.path.name, source, migration.checksum)

    def load(self) -> Migration:
        """The migration, loaded on the worker; refused if its content is not the recorded one."""
        found = checksum_of(self.source)
        if found != self.checksum:
            raise DriftError(
                f"{self.file_name} shipped to the worker has checksum {found[:12]}, the run recorded "
                f"{self.checksum[:12]}",
                hint="the pipeline's migration is not the run's: start the run again",
            )
        with tempfile.TemporaryDirectory(prefix="docshift-migration-") as folder:
            path = Path(folder) / self.file_name
            path.write_text(self.source, encoding="utf-8")
            return load_migration(path)


class WorkerShare(RateLimiter):
    """The run's write limit (cap and ramp) divided by the number of workers: together they keep
    to the limit one process keeps to. The adaptive rate (``adaptive``) is the worker's own: what
    the store's answers to this worker's requests set, not divided again."""

    def __init__(
        self,
        cap: float,
        *,
        ramp: bool,
        workers: int,
        adaptive: bool = False,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(cap, ramp=ramp, adaptive=adaptive, clock=clock)
        self.workers = max(workers, 1)

    @property
    def limit(self) -> float:
        shared = [level / self.workers for level in (self.ramp_limit, self._cap) if level > 0]
        levels = [*shared, *([self.adaptive_limit] if self.adaptive_limit > 0 else [])]
        return min(levels) if levels else 0.0


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs, shipped with the pipeline (picklable)."""

    config: Config
    migration: ShippedMigration
    folder: str
    """The migration's folder in the run folder (a path every worker reaches)."""
    options: PipelineOptions
    workers: int = 1
    ramp: bool = False
    store: StoreFactory | None = None
    """None: the store ``config`` points at."""
    stop_file: str | None = None
    """Created when the run is asked to stop: a worker that finds it stops its partition."""
    steer_file: str | None = None
    """The run's pause and write limit now (JSON): a worker follows it between batches."""
    run_files: str | None = None
    """The URL the worker writes its files under (``--beam-option run_files``); None: ``folder``."""

    @property
    def files(self) -> RunFiles:
        """The run folder's files as this worker reads and writes them (see :mod:`docshift.beam.files`)."""
        return RunFiles(Path(self.folder).parent.parent, self.run_files)


class _WorkerCheck:
    """The migration's inline rules on a worker: what the run's validation checks in one process
    (the counts and the gate are judged on the partitions' records, by the run)."""

    def __init__(self, migration: Migration, sessions: list[tuple[str, RuleSession]]) -> None:
        self.destination = migration.target.destination
        self.sessions = sessions

    def __call__(self, source: Document, new_data: dict[str, Any]) -> tuple[str, str] | None:
        doc = Document(self.destination(source.path), new_data)
        for name, session in self.sessions:
            message = session.check_batch([doc])[0]
            if message is not None:
                return name, message
        return None


def worker_check(migration: Migration, store: Store) -> DocumentCheck | None:
    context = RuleContext(store=store, phase="inline")
    sessions = [
        (name, rule.session(context))
        for name, rule in zip(rule_names(migration.rules), migration.rules, strict=True)
        if rule.inline
    ]
    return _WorkerCheck(migration, sessions) if sessions else None


def read_partition(store: Store, migration: Migration, partition: Partition) -> Iterator[Document]:
    """The documents of one partition of the migration's target, in name order."""
    query = migration.target.query(start_after=partition.start_after, end_at=partition.end_at)
    return iter(store.stream(query))


@dataclass
class PartitionWorker:
    """One worker's set-up: its store, the migration, its rules check and its share of the limit.
    Each attempt at a partition gets its own circuit breaker, adaptive batch size and stop (a retry
    after an outage starts afresh); the rate limiter, its ramp and the run's limit are the worker's."""

    plan: WorkerPlan
    store: Store
    migration: Migration
    check: DocumentCheck | None
    limiter: WorkerShare
    on_batch: Callable[[dict[str, int]], None] | None = None
    """Hears each batch's counts as it is done (live metrics: an attempt that fails has counted)."""
    files: MigrationFolder = field(init=False)
    io: RunFiles = field(init=False)
    _steered: bytes | None = field(default=None, init=False)
    _paused: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.files = MigrationFolder(Path(self.plan.folder))
        self.io = self.plan.files

    @classmethod
    def open(cls, plan: WorkerPlan) -> PartitionWorker:
        store = (plan.store or ConfiguredStore(plan.config))()
        migration = plan.migration.load()
        limits = plan.options.limits
        limiter = WorkerShare(
            limits.max_writes_per_second, ramp=plan.ramp, workers=plan.workers, adaptive=limits.adaptive_rate
        )
        return cls(plan, store, migration, worker_check(migration, store), limiter)

    def close(self) -> None:
        self.store.close()

    def migrate(self, partition: Partition) -> PartitionDone:
        """Migrate one partition (see the module's rules); a partition already recorded finished
        (a retried bundle whose first attempt got that far) is not done again."""
        record = self.files.partition_record(partition.index)
        found = self.io.read_format(PARTITION_FORMAT, record)
        if found is not None:
            return PartitionDone.of(found)
        started = time.monotonic()
        attempt = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        staging = staging_folder()
        try:
            counts, letters = self._attempt(partition, attempt, staging)
        finally:
            remove_staging(staging)
        done = PartitionDone(
            partition.index,
            attempt,
            {name: counts.get(name, 0) for name in COUNTERS},
            letters,
            time.monotonic() - started,
        )
        self.io.write_format(PARTITION_FORMAT, record, done.to_json())
        return done

    def _attempt(self, partition: Partition, attempt: str, staging: Path) -> tuple[Counter[str], int]:
        """One attempt at the partition: its journal and dead letters (staged on this worker and
        stored under the run_files URL, or written in the run folder); its counts and dead letters."""
        options = self.plan.options
        pattern = self.files.attempt_journal(partition.index, "*")
        earlier = [
            self.io.fetch(path, staging / "earlier" / path.name) or path for path in self.io.glob(pattern)
        ]
        journal: JournalWriter | None = None
        if options.execute and options.engine.backup:
            path = self.files.attempt_journal(partition.index, attempt)
            if self.io.remote:
                journal = PublishedJournal(self.io, path, staging / path.name)
            else:
                journal = JournalWriter(path, note_unconfirmed=False)
        letters_path = self.files.attempt_dead_letters(partition.index, attempt)
        staged_letters = staging / letters_path.name if self.io.remote else letters_path
        letters_file = DeadLetterFile(staged_letters)
        try:
            counts, landed = self._settle_earlier(journal, earlier)
            if counts:
                self._note_landed(partition, attempt, counts)
            letters = self._process((partition, attempt), journal, letters_file, landed, counts)
            letters_file.add_many([(x.source, x.stage, x.error, x.rule) for x in letters])
        finally:
            letters_file.close()
            if journal is not None:
                journal.close()
        if self.io.remote and staged_letters.is_file():
            self.io.write(letters_path, staged_letters.read_bytes())
        return counts, len(letters)

    def _settle_earlier(
        self, journal: JournalWriter | None, earlier: list[Path]
    ) -> tuple[Counter[str], LandedWrites]:
        """Count the writes earlier attempts at the partition landed (and journal the outcomes
        they could not), so that finding those documents migrated does not count them again."""
        counts: Counter[str] = Counter()
        landed = LandedWrites()
        if journal is None or not earlier:
            return counts, landed
        transform = self.migration.up
        found = settle(
            self.store,
            self.migration.target,
            transform,
            JournalReader(earlier),
            checked=self.check is not None,
        )
        outcomes = [write.outcome for write in found if write.outcome is not None]
        if outcomes:
            journal.append(outcomes, durable=True)
        for write in found:
            counts.update(landed.note(write.path, write.counters))
        return counts, landed

    def _note_landed(self, partition: Partition, attempt: str, counts: Counter[str]) -> None:
        """Save what the partition's writes landed so far (this attempt's counts hold what the
        earlier ones landed, settled first): what a stop of the run reports of it."""
        if not self.plan.options.execute:
            return
        body = {
            "index": partition.index,
            "attempt": attempt,
            "counters": {name: counts.get(name, 0) for name in COUNTERS},
        }
        self.io.write_format(LANDED_FORMAT, self.files.partition_landed(partition.index), body)

    def _process(
        self,
        attempting: tuple[Partition, str],
        journal: JournalWriter | None,
        letters_file: DeadLetterFile,
        landed: LandedWrites,
        counts: Counter[str],
    ) -> list[DeadLetter]:
        stats = RunStats()
        options = self.plan.options
        processor = batch_processor(
            self.store,
            self.migration,
            options,
            PassSteps(check=self.check),
            guards=WriteGuards.from_config(options.engine, options.limits, Controls(self.limiter)),
            stats=stats,
            dead_letters=letters_file,
            journal=journal,
            landed=landed,
        )
        letters: list[DeadLetter] = []
        partition, attempt = attempting
        documents = read_partition(self.store, self.migration, partition)
        for batch in _batches(documents, lambda: processor.writer.batch_size):
            self._steer()
            done = processor.process(batch, letters)
            done["read"] += len(batch)
            counts.update(done)
            self._note_landed(partition, attempt, counts)
            if self.on_batch is not None:
                self.on_batch(dict(done))
        return letters

    def _steer(self) -> None:
        """Before each batch: stop if the run is stopping; wait while it is paused; take its write
        limit (``docshift throttle``: the whole run's, of which this worker keeps its share)."""
        while True:
            stop = self.plan.stop_file
            if stop is not None and self.io.exists(Path(stop)):
                raise RunStopped(
                    "stopped by `docshift stop`",
                    hint="resume the run: the partitions finished are kept",
                )
            if not self._read_steering():
                return
            time.sleep(0.2)

    def _read_steering(self) -> bool:
        """Take the steering file's limit if it changed; whether the run is paused."""
        path = self.plan.steer_file
        if path is None:
            return False
        try:
            raw = self.io.read(Path(path))
            body = orjson.loads(raw) if raw is not None else None
        except (RunFileError, orjson.JSONDecodeError):
            return self._paused  # being replaced, or the file system failed for a moment: as it was
        if body is None:
            return self._paused  # not there yet: as it was
        key = raw
        if key != self._steered:
            self._steered = key
            self._paused = bool(body.get("paused"))
            self.limiter.set_cap(float(body.get("limit") or 0.0))
        return self._paused


def _batches(documents: Iterable[Document], size: Callable[[], int]) -> Iterator[list[Document]]:
    """``documents`` in batches of the adaptive size (asked again at each cut)."""
    batch: list[Document] = []
    wanted = size()
    for doc in documents:
        batch.append(doc)
        if len(batch) >= wanted:
            yield batch
            batch, wanted = [], size()
    if batch:
        yield batch

"""One migration over its target: shard readers -> bounded queue -> writer pool -> cursor tracker.

Why this shape: the emulator (and Firestore's billing) favour one long streaming query per shard
over paged queries; the Python process is bound to about one core, so transforms and encoding run
in a few writer threads whose gRPC waits overlap; the bounded queue makes a slow store slow the
reader down, and a budget in bytes (:class:`~docshift.engine.limits.MemoryBudget`) bounds the
documents held at once, so memory stays flat whatever the collection size and document size.

The tracker advances a shard's cursor only over batches that are completely handled, in order, so
a checkpoint never claims a document whose write is still in flight.

A run file that cannot be written (journal, dead letters, checkpoint: :class:`RunFileError`) stops
the run at once, wherever it happens; the error then says what the run had written.

A run stopped at once can leave writes past its checkpoint; each checkpoint records which journal
members they are in, and a resume counts the ones that landed before it reads anything
(:mod:`docshift.engine.landed`), so its counts are those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.config import EngineConfig, LimitsConfig
from docshift.engine.batch import (
    BatchProcessor,
    BatchRules,
    DeadLetter,
    Decision,
    DocumentCheck,
    SettlingCheck,
)
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    Checkpointed,
    EngineState,
    PassFinished,
    PassStarted,
    PassStats,
    PassStopped,
    Progressed,
    RunHooks,
    Warned,
)
from docshift.engine.landed import LandedWrites, settle
from docshift.engine.limits import (
    CommitWindow,
    DocumentCost,
    FailureBudget,
    MemoryBudget,
    MemoryGuard,
    MemoryState,
)
from docshift.engine.stats import COUNTERS, FailureSamples, RunStats, format_ms, handled
from docshift.engine.writer import BatchWriter, WriteGuards
from docshift.errors import (
    BatchAborted,
    DocshiftError,
    EmergencyStop,
    MemoryLimitExceeded,
    RunFileError,
    RunStopped,
    TooManyFailures,
)
from docshift.migration import Migration, Transform
from docshift.runfolder.atomic import run_file
from docshift.runfolder.checkpoint import Checkpoint, JournalMark, ShardCursor
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.journal import JournalWriter, read_members
from docshift.runfolder.layout import MigrationFolder
from docshift.store.base import Document, Store
from docshift.values import Timestamp

__all__ = [
    "DocumentSource",
    "MigrationPipeline",
    "PassSteps",
    "PipelineOptions",
    "PipelineResult",
    "batch_processor",
]


@dataclass(frozen=True)
class PipelineOptions:
    """One migration's run: the engine and limits settings as configured, and what this run adds."""

    execute: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    limit: int | None = None
    sample_percent: float | None = None
    sample_above: float = 0.0
    progress_interval: float = 1.0
    max_commit_p95: float | None = None
    """Seconds; a canary trigger: commits slower than this at the 95th percentile stop the run."""


@dataclass
class PipelineResult:
    migration_id: str
    state: str  # finished, stopped
    counters: dict[str, int]
    elapsed_seconds: float
    folder: Path
    error: DocshiftError | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    landed: dict[str, int] = field(default_factory=dict)
    """What a stopped pass wrote past its cursors, which ``counters`` (settled behind them) do not
    hold: the checkpoint's ``beyond_cursor``. A resume counts it, once, from the journal; with
    none (``--no-backup``) it finds those documents migrated, and this stays said beside the counts."""


@dataclass
class _Batch:
    shard: int
    seq: int
    docs: list[Document]
    cost: int = 0
    """Its documents' share of the memory budget, given back once a writer is done with them."""
    counts: Counter[str] = field(default_factory=Counter)
    letters: list[DeadLetter] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    """The byte spans of the journal members it appended (see :meth:`MigrationPipeline._save`)."""
    judged: threading.Event = field(default_factory=threading.Event)
    """Set once the tracker has counted it and judged the run on it (gate, failure budget): its
    writer starts nothing before, so a stop those judgements ask for always falls at the same batch."""
    size: int = field(init=False)
    last_path: str = field(init=False)

    def __post_init__(self) -> None:
        # What the cursor tracker needs once the documents are let go (see MigrationPipeline._write_loop).
        self.size = len(self.docs)
        self.last_path = self.docs[-1].path


@dataclass
class _ShardDone:
    shard: int
    batches: int


DocumentSource = Callable[[ShardCursor], Iterable[Document]]
"""Where a pass reads a shard's documents from, in name order after its cursor: by default the
migration's target query; a retry's are the documents a dead-letter file lists."""


@dataclass(frozen=True)
class PassSteps:
    """What one pass does besides reading, deciding and writing: its own transform instead of the
    migration's ``up`` (a rollback's ``down``), the run's document check, what is told of each
    decision (a dry run's plan) and of each saved checkpoint (the history's progress), and its own
    documents instead of the target's (a retry's)."""

    transform: Transform | None = None
    check: DocumentCheck | None = None
    on_decision: Callable[[Decision], None] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    source: DocumentSource | None = None


def batch_processor(
    store: Store,
    migration: Migration,
    options: PipelineOptions,
    steps: PassSteps,
    *,
    guards: WriteGuards,
    stats: RunStats,
    dead_letters: DeadLetterFile,
    journal: JournalWriter | None,
    landed: LandedWrites | None,
) -> BatchProcessor:
    """The per-document core of a pass (transform, check, diff, guarded write through the one
    :class:`BatchWriter`, conflict re-read, dead letters), set up from the pass's options: the
    engine's pipeline and a Beam worker (:mod:`docshift.beam`) both process batches through it."""
    engine = options.engine
    rules = BatchRules(
        options.execute,
        transform=steps.transform,
        check=steps.check,
        conflict_retries=engine.conflict_retries,
        write_mode=engine.write_mode,
        sample_percent=options.sample_percent,
        sample_above=options.sample_above,
    )
    writer = BatchWriter(store, guards, journal=journal, latency=stats.commit_latency)
    return BatchProcessor(
        migration, rules, writer, stats, dead_letters, on_decision=steps.on_decision, landed=landed
    )


class MigrationPipeline:
    def __init__(
        self,
        store: Store,
        migration: Migration,
        options: PipelineOptions,
        folder: Path,
        checkpoint: Checkpoint,
        *,
        controls: Controls | None = None,
        hooks: RunHooks | None = None,
        steps: PassSteps | None = None,
        memory: MemoryGuard | None = None,
    ) -> None:
        steps = steps or PassSteps()
        self.source = steps.source or self._target_documents
        check = steps.check
        self.store = store
        self.migration = migration
        self.options = options
        self.folder = folder
        self.files = MigrationFolder(folder)
        self.checkpoint = checkpoint
        self.controls = controls or Controls()
        self.hooks = hooks or RunHooks()
        self.on_checkpoint = steps.on_checkpoint
        self._progress = _Progress(self.on_checkpoint or (lambda saved: None))
        """Tells ``on_checkpoint`` (the history's progress: a store round trip or two) of each saved
        checkpoint from its own thread, so the tracker keeps judging the batches writers wait on."""
        engine, limits = options.engine, options.limits
        self.memory = memory or MemoryGuard(limits.memory_soft_limit_mb, limits.memory_hard_limit_mb)
        self.stats = RunStats(dict(checkpoint.counters), checkpoint.elapsed_seconds)
        self.settled: Counter[str] = Counter(checkpoint.counters)
        """Counts of the documents behind the cursors only: what a checkpoint may claim."""
        self.window = CommitWindow(
            engine.base_concurrency,
            engine.most_concurrency,
            rate_limit=lambda: self.controls.limiter.limit,
        )
        """Batches in flight, from the commit latency observed (see :class:`CommitWindow`)."""
        self.guards = WriteGuards.from_config(engine, limits, self.controls, self.window)
        self.sizer, self.breaker = self.guards.sizer, self.guards.breaker
        self.budget = FailureBudget(engine.max_failures)
        self.dead_letters = DeadLetterFile(self.files.dead_letters)
        self.journal: JournalWriter | None = None
        try:
            with run_file(folder):
                folder.mkdir(parents=True, exist_ok=True)
            kept = checkpoint.dead_letter_bytes
            if kept is not None:
                # Letters written after the checkpoint belong to batches that are done again now.
                self.dead_letters.truncate(kept)
            uncounted = _uncounted(checkpoint.journal)
            if options.execute and engine.backup:
                # A checkpoint that says which journal members it does not count is settled from
                # those (settle, below); only one from before that needs the journal's unconfirmed
                # writes, read from all of it (the batch processor's copies then use them).
                self.journal = JournalWriter(self.files.journal, note_unconfirmed=uncounted is None)
        except RunFileError as error:
            raise self._file_failure(error, saved=None) from error
        self.landed = LandedWrites(checkpoint.landed)
        self._landed_before = dict(checkpoint.beyond_cursor)
        """What an earlier process of the run wrote past the checkpoint: until the resume has
        settled it (counted it from the journal), still beyond the cursor."""
        self._uncounted = uncounted if self.journal is not None else None
        """The journal members the checkpoint does not count, until the resume settled them."""
        self._open: dict[tuple[int, int], list[tuple[int, int]]] = {}
        """Journal spans of the batches begun and not yet settled behind the cursor."""
        self._open_lock = threading.Lock()
        self.processor = batch_processor(
            store,
            migration,
            options,
            steps,
            guards=self.guards,
            stats=self.stats,
            dead_letters=self.dead_letters,
            journal=self.journal,
            landed=self.landed,
        )
        self._on_settled = check.settled if isinstance(check, SettlingCheck) else None
        self._work: queue.Queue[_Batch | None] = queue.Queue(maxsize=self.window.cap)
        """Batches read and not taken by a writer: at most the window's size (:meth:`_put`)."""
        self._done: queue.Queue[_Batch | _ShardDone] = queue.Queue()
        self.cost = DocumentCost()
        self.idle_mb = self.memory.idle_mb()
        """The resident size before any document is read; documents may use what is left below
        the soft limit (see :class:`~docshift.engine.limits.MemoryBudget`)."""
        self.memory_budget = self._memory_budget()
        self._fatal: list[BaseException] = []
        self._untracked = threading.Event()
        """Set once the tracker stops taking finished batches: no writer waits for a judgement then."""

    def _memory_budget(self) -> MemoryBudget:
        room = max(self.memory.soft_limit_mb - self.idle_mb, 0.0)
        open_shards = sum(1 for s in self.checkpoint.shards if not s.done)
        return MemoryBudget(int(room * 1_048_576), self.options.engine.base_concurrency + open_shards)

    # ------------------------------------------------------------------ threads
    def _target_documents(self, shard: ShardCursor) -> Iterable[Document]:
        return self.store.stream(
            self.migration.target.query(start_after=shard.resume_after, end_at=shard.end_at)
        )

    def _read_shard(self, index: int, shard: ShardCursor) -> None:
        stop = self.controls.stop
        remaining = self.options.limit
        if remaining is not None:
            remaining -= self.stats.counters.get("read", 0)
        budget = self.memory_budget
        seq, cost = 0, 0
        batch: list[Document] = []
        try:
            if remaining is not None and remaining <= 0:
                self._done.put(_ShardDone(index, 0))  # nothing left to read: the shard is done
                return
            for doc in self.source(shard):
                if not self._running():
                    return
                # The document is held from here: its cost joins the open batch if the budget has
                # room; otherwise the batch goes to the writers and this one waits to start the next.
                doc_cost = self.cost(doc)
                admitted = bool(batch) and budget.try_acquire(doc_cost, cost)
                if batch and not admitted:
                    if not self._put(_Batch(index, seq, batch, cost)):
                        return
                    seq, batch, cost = seq + 1, [], 0
                if not admitted and not budget.acquire(doc_cost, stop):
                    return
                batch.append(doc)
                cost += doc_cost
                if len(batch) >= self.sizer.size:
                    if not self._put(_Batch(index, seq, batch, cost)):
                        return
                    seq, batch, cost = seq + 1, [], 0
                if remaining is not None:
                    remaining -= 1
                    if remaining <= 0:
                        break
            if batch:
                if not self._put(_Batch(index, seq, batch, cost)):
                    return
                seq, batch, cost = seq + 1, [], 0
            self._done.put(_ShardDone(index, seq))
        except BaseException as exc:
            self._fatal.append(exc)
            self.controls.request_stop(f"reading failed: {exc}")
        finally:
            budget.release(cost)  # a batch left unsent: the run is stopping

    def _running(self) -> bool:
        """Wait while the run is paused; False once it is stopping."""
        while self.controls.paused and not self.controls.stop.is_set():
            time.sleep(0.05)
        return not self.controls.stop.is_set()

    def _put(self, item: _Batch) -> bool:
        """Hand a batch to the writers; ``False`` if the run stops first (the reader then gives
        its cost back). The readers keep as many batches ready as the window has writers, so a
        writer that finishes finds its next batch read, however far the store is."""
        self.stats.add(read=item.size)
        while not self.controls.stop.is_set():
            if self._work.qsize() >= self.window.size:
                time.sleep(0.005)
                continue
            try:
                self._work.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _write_loop(self) -> None:
        while True:
            slot = self.window.acquire()  # False once closed (the run is ending): the sentinel is next
            item = self._work.get()
            if item is None:
                if slot:
                    self.window.release()
                return
            try:
                if self.controls.stop.is_set():
                    continue  # unfinished: read again on resume
                with self._open_lock:
                    self._open[(item.shard, item.seq)] = item.spans
                item.counts = self.processor.process(item.docs, item.letters, item.spans)
            except BatchAborted:
                continue
            except BaseException as exc:
                self._fatal.append(exc)
                self.controls.request_stop(str(exc))
                continue
            finally:
                item.docs = []  # a batch done out of order waits for earlier ones: without its documents
                self.memory_budget.release(item.cost)
                if slot:
                    self.window.release()
            self._done.put(item)
            self._await_judgement(item)

    def _await_judgement(self, item: _Batch) -> None:
        """Wait until the tracker has judged ``item`` (see :attr:`_Batch.judged`): a handoff, since
        the tracker takes a finished batch at once; the other writers' commits stay in flight."""
        while not item.judged.wait(0.05):
            if self.controls.stop.is_set() or self._untracked.is_set():
                return

    # ------------------------------------------------------------------ tracking
    def _advance(self, item: _Batch | _ShardDone) -> int:
        """Record a finished batch; move cursors over every batch now complete in order."""
        shards = self.checkpoint.shards
        if isinstance(item, _ShardDone):
            self._expected[item.shard] = item.batches
        else:
            self._finished[item.shard][item.seq] = item
        handled = 0
        shard = item.shard
        while self._next_seq[shard] in self._finished[shard]:
            batch = self._finished[shard][self._next_seq[shard]]
            # First: a cursor past a letter that was not written would lose it.
            self.dead_letters.add_many([(x.source, x.stage, x.error, x.rule) for x in batch.letters])
            del self._finished[shard][self._next_seq[shard]]
            with self._open_lock:
                self._open.pop((shard, self._next_seq[shard]), None)
            shards[shard].cursor = batch.last_path
            self._next_seq[shard] += 1
            handled += batch.size
            self.settled.update(batch.counts)
            self.settled["read"] += batch.size
            if self._on_settled is not None:
                self._on_settled(batch.counts, batch.letters)
        if self._expected[shard] == self._next_seq[shard]:
            shards[shard].done = True
        if handled:
            self.stats.processed(handled)
        return handled

    def run(self) -> PipelineResult:
        shards = self.checkpoint.shards
        open_shards = [i for i, s in enumerate(shards) if not s.done]
        self._expected: dict[int, int | None] = dict.fromkeys(open_shards)
        self._next_seq = dict.fromkeys(open_shards, 0)
        self._finished: dict[int, dict[int, _Batch]] = {i: {} for i in open_shards}
        unsettled = self._settle_landed()
        self.hooks.pass_started(
            PassStarted(self.migration.label, len(shards), self.options.execute, dict(self.stats.counters))
        )
        if unsettled is not None:  # nothing is read or written before the landed writes are counted
            if isinstance(unsettled, RunFileError):
                self._file_failed(unsettled)
            else:
                self._fatal.append(unsettled)
                self.controls.request_stop(str(unsettled))
            return self._finish()
        if not self.memory_budget.capacity:
            self.hooks.warning(
                Warned(
                    f"memory {self.idle_mb:.0f} MiB before reading is above the soft limit "
                    f"{self.memory.soft_limit_mb} MiB: documents are read one at a time; raise "
                    "memory_soft_limit_mb"
                )
            )
        readers = [
            threading.Thread(
                target=self._read_shard, args=(i, shards[i]), daemon=True, name=f"docshift-reader-{i}"
            )
            for i in open_shards
        ]
        writers = [
            threading.Thread(target=self._write_loop, daemon=True, name=f"docshift-writer-{n}")
            for n in range(self.window.cap)
        ]
        try:  # before any write: where a resume starts, and which dead letters it keeps
            self._save("running")
        except RunFileError as error:
            self._file_failed(error)
        for thread in readers + writers:
            thread.start()
        since_checkpoint, last_checkpoint, last_progress = 0, time.monotonic(), time.monotonic()
        try:
            while not all(shards[i].done for i in open_shards) and not self.controls.stop.is_set():
                try:
                    item: _Batch | _ShardDone | None = None
                    with contextlib.suppress(queue.Empty):
                        item = self._done.get(timeout=0.1)
                        since_checkpoint += self._advance(item)
                    self._watch()
                    if isinstance(item, _Batch):
                        item.judged.set()
                    now = time.monotonic()
                    if since_checkpoint >= self.options.engine.checkpoint_every_docs or (
                        now - last_checkpoint >= self.options.engine.checkpoint_every_seconds
                    ):
                        self._save("running")
                        since_checkpoint, last_checkpoint = 0, now
                except RunFileError as error:
                    self._file_failed(error)
                    break
                except Exception as error:  # e.g. the history's progress record failed: a stop
                    self._fatal.append(error)
                    self.controls.request_stop(f"stopped: {error}", EmergencyStop)
                    break
                if now - last_progress >= self.options.progress_interval:
                    self._emit_progress()
                    last_progress = now
        finally:
            self._shutdown(readers, writers)
        return self._finish()

    def _settle_landed(self) -> Exception | None:
        """Count the writes an earlier process of this run landed past the checkpoint (and journal
        the outcomes it could not); returns why that failed, if it did (nothing is counted then,
        and the checkpoint keeps saying which members to settle)."""
        if self._uncounted is None or self.journal is None:
            return None
        after, spans = self._uncounted
        try:
            found = settle(
                self.store,
                self.migration.target,
                self.processor.transform,
                read_members(self.journal.path, spans, after),
                checked=self.processor.check is not None,
            )
            outcomes = [landed.outcome for landed in found if landed.outcome is not None]
            if outcomes:
                self.journal.append(outcomes, durable=True)
                self.journal.confirmed([entry.path for entry in outcomes])
        except Exception as error:
            return error
        counts: Counter[str] = Counter()
        for landed in found:
            counts.update(self.landed.note(landed.path, landed.counters))
        changes = {name: value for name, value in counts.items() if value}
        self.settled.update(changes)
        self.stats.add(**changes)
        self._uncounted = None
        return None

    def _file_failed(self, error: RunFileError) -> None:
        """Stop at once: no new batch starts, and a batch whose before-images can no longer be
        journalled sends nothing (the journal raises for it)."""
        self._fatal.append(error)
        self.controls.request_stop(error.message, RunFileError)

    def _shutdown(self, readers: list[threading.Thread], writers: list[threading.Thread]) -> None:
        """Let in-flight commits land, drop unstarted batches (read again on resume), drain."""
        unfinished = not all(shard.done for shard in self.checkpoint.shards)
        if unfinished and not self.controls.stop.is_set():  # ended by what nothing stopped: stop the threads
            self.controls.request_stop("stopped: the pass ended unexpectedly", EmergencyStop)
        self._untracked.set()
        self.window.close()
        self._progress.wait()  # nothing reported after the pass ends, whatever ends it
        self._progress.close()
        for _ in writers:
            while True:
                try:
                    self._work.put(None, timeout=0.1)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        dropped = self._work.get_nowait()  # unstarted: read again on resume
                        if dropped is not None:
                            self.memory_budget.release(dropped.cost)
        for thread in writers:
            thread.join()
        for thread in readers:
            thread.join(timeout=5)
        while True:
            try:
                self._advance(self._done.get_nowait())
            except queue.Empty:
                break
            except RunFileError as error:
                self._file_failed(error)
        self._pass_on_notes()

    def _pass_on_notes(self) -> None:
        for message in self.processor.take_notes():
            self.hooks.warning(Warned(message))

    def _watch(self) -> None:
        """Memory, commit latency and failure budget; each can stop the run (the circuit breaker
        stops it from the writer that tripped it)."""
        self._pass_on_notes()
        state = self.memory.state()
        if state == MemoryState.HARD:
            self.controls.request_stop(
                f"memory {self.memory.last_rss_mb:.0f} MiB reached the hard limit "
                f"{self.memory.hard_limit_mb} MiB",
                MemoryLimitExceeded,
            )
        elif state == MemoryState.SOFT:
            if not self.memory_budget.paused:
                self.memory_budget.pause()
                self.hooks.warning(
                    Warned(f"memory {self.memory.last_rss_mb:.0f} MiB above the soft limit; reading paused")
                )
        elif self.memory_budget.paused:
            self.memory_budget.resume()
        self.controls.check_lease()
        if self.options.max_commit_p95 is not None and self.stats.commits >= 20:
            p95 = self.stats.percentile(0.95)
            limit = self.options.max_commit_p95
            if p95 is not None and p95 > limit:
                self.controls.request_stop(
                    f"commit latency p95 {format_ms(p95)} ms is above {format_ms(limit)} ms", EmergencyStop
                )
        counters = self.stats.counts()  # not the live dict: a half-added batch would skew the rate
        processed = handled(counters)
        failed = counters.get("failed", 0) - counters.get("rejected", 0)  # rules: the integrity gate
        if self.budget.exceeded(failed, processed):
            self.controls.request_stop(
                f"{failed} documents failed, more than --max-failures {self.budget.spec}",
                TooManyFailures,
            )

    def _emit_progress(self) -> None:
        counters, stats = PassStats.split(self.stats.snapshot())
        self.hooks.progressed(
            Progressed(
                self.migration.label,
                counters,
                stats,
                EngineState(
                    self.sizer.size,
                    self.controls.limiter.limit,
                    self.memory.last_rss_mb,
                    self.controls.paused,
                    self.controls.limiter.ramp_limit,
                    self.controls.limiter.adaptive_limit,
                    self.window.size,
                ),
            )
        )

    def _save(self, state: str) -> None:
        """Checkpoint what is behind the cursors; the journal and dead letters it counts first."""
        if self.journal is not None:
            self.journal.sync()
        self.dead_letters.sync()
        if not self.folder.is_dir():  # removed: a checkpoint written into a new one would be alone
            raise RunFileError(
                f"{self.folder} was removed while the run was writing it",
                path=str(self.folder),
                hint="leave run folders in place while a run writes them",
            )
        self.checkpoint.dead_letter_bytes = self.dead_letters.size()
        if self._uncounted is None:
            self._note_uncounted(state)
        self.checkpoint.counters = {name: self.settled.get(name, 0) for name in COUNTERS}
        self.checkpoint.beyond_cursor = self._beyond_cursor()
        self.checkpoint.elapsed_seconds = self.stats.elapsed
        self.checkpoint.state = state
        self.checkpoint.save(self.files.checkpoint)
        if self.on_checkpoint is not None:
            if state == "running":
                self._progress.post(self._saved_copy())
            else:  # the last one: in order after every earlier one, before the pass returns
                self._progress.flush()
                self.on_checkpoint(self.checkpoint)
        self.hooks.checkpointed(
            Checkpointed(self.migration.label, state, tuple(s.cursor for s in self.checkpoint.shards))
        )

    def _saved_copy(self) -> Checkpoint:
        """The checkpoint as saved, for the progress thread: the tracker moves the live one on."""
        saved = self.checkpoint
        return dataclasses.replace(
            saved,
            shards=[dataclasses.replace(shard) for shard in saved.shards],
            counters=dict(saved.counters),
        )

    def _note_uncounted(self, state: str) -> None:
        """Record in the checkpoint which journal members hold batches its counters do not count:
        every one from ``journal.size`` on, and those before it at ``journal.unsettled`` (batches
        in flight, or done and waiting for an earlier one); and ``landed``, the writes a resume
        counted before its reader came to them. A resume settles them (docshift.engine.landed)."""
        checkpoint = self.checkpoint
        if self.journal is None:  # no journal (--no-backup): nothing a resume could settle from
            checkpoint.journal = None
        else:
            size = self.journal.size()  # a member appended after this has its span after it
            with self._open_lock:
                spans = [span for batch in self._open.values() for span in list(batch)]
            checkpoint.journal = JournalMark(size, tuple(sorted(span for span in spans if span[1] <= size)))
        landed = self.landed.record()
        checkpoint.landed = landed if landed and state != "finished" else {}

    def _beyond_cursor(self) -> dict[str, int]:
        """The writes that landed past the cursors, which the settled counters do not hold: a
        batch done while an earlier one is not (or failed), the commits of a batch that failed
        after some landed; and what an earlier process of the run left there, until settled."""
        if not self.options.execute:
            return {}
        live = self.stats.counts()
        beyond = Counter({name: live.get(name, 0) - self.settled.get(name, 0) for name in WRITTEN})
        if self._uncounted is not None or self.journal is None:
            # Settled by a resume from the journal; with none, never: its reader finds them migrated.
            beyond.update(self._landed_before)
        return {name: value for name in WRITTEN if (value := beyond.get(name, 0)) > 0}

    def _finish(self) -> PipelineResult:
        error: DocshiftError | None = None
        done = all(s.done for s in self.checkpoint.shards)
        counters = {name: self.settled.get(name, 0) for name in COUNTERS}
        if done:
            error = failures_over_budget(self.budget, counters, self.dead_letters.path)
        if not done or self.controls.stop.is_set():
            error = self._stop_error()
            done = False
        saved = True
        try:
            self._save("finished" if done and error is None else ("failed" if done else "stopped"))
            if self.journal is not None:
                self.journal.close()
            self.dead_letters.close()
        except RunFileError as unwritten:
            saved = False
            if not isinstance(error, RunFileError):
                error = unwritten
            done = False
        except Exception as unreported:  # the checkpoint is saved; telling on_checkpoint failed
            if error is None:  # a stop says its own cause; the command records the outcome after
                self.hooks.warning(
                    Warned(f"{self.migration.label}: the last progress record failed: {unreported}")
                )
        finally:
            with contextlib.suppress(RunFileError):  # closed quietly after a failure (reported)
                if self.journal is not None:
                    self.journal.close()
                self.dead_letters.close()
        landed = dict(self.checkpoint.beyond_cursor) if saved else self._beyond_cursor()
        if isinstance(error, RunFileError):
            error = self._file_failure(error, saved)
        elif error is not None and landed:
            error.message += f"; {landed_text(landed)} ({on_resume(self.journal is not None)})"
        adaptive = self.controls.limiter.adaptive
        throttled = adaptive is not None and adaptive.refusals > 0
        return end_pass(
            self.hooks,
            self.migration,
            self.stats,
            counters,
            PassEnd(
                done,
                self.folder,
                error,
                landed,
                write_rate=(round(adaptive.settled, 1) or None) if throttled and adaptive else None,
                throttled=adaptive.refusals if throttled and adaptive else None,
            ),
        )

    def _file_failure(self, error: RunFileError, saved: bool | None) -> RunFileError:
        """``error`` with what the run had written when it stopped: the counts, that each write's
        before-image was on disk before it was sent, and what the checkpoint holds. ``saved`` is
        None when the pipeline could not even start."""
        counts = self.stats.counts()
        kinds = [
            f"{counts.get(kind, 0):,} {kind}"
            for kind in ("updated", "created", "deleted")
            if counts.get(kind, 0)
        ]
        total = sum(counts.get(kind, 0) for kind in ("updated", "created", "deleted"))
        label = self.migration.label
        if not self.options.execute:
            written = "a dry run: nothing was written to the store"
        elif not total:
            written = f"{label}: no document was written"
        else:
            written = f"{label}: {total:,} documents written ({', '.join(kinds)})"
            if self.journal is not None:
                written += ", each one's before-image on disk before it was sent"
        if saved is None:
            kept = ""
        elif saved:
            kept = "; the checkpoint is saved"
        else:
            kept = (
                "; the checkpoint could not be saved: a resume does again what came after the last "
                "one saved, counting the writes that landed after it from the before-image journal"
            )
        return RunFileError(
            f"{error.message}; run {self.checkpoint.run_id} stopped at once: {written}{kept}",
            path=error.path,
            hint="free space or fix the folder (permissions, mount), then resume the run",
        )

    def _stop_error(self) -> DocshiftError:
        fatal = next((e for e in self._fatal if not isinstance(e, BatchAborted)), None)
        if isinstance(fatal, RunStopped):
            return fatal
        if isinstance(fatal, DocshiftError):
            return EmergencyStop(f"stopped: {fatal.message}", hint=fatal.hint)
        if fatal is not None:
            return EmergencyStop(
                f"stopped by an unexpected {type(fatal).__name__}: {fatal}",
                hint="rerun with --debug for the traceback and report it; the checkpoint is kept",
            )
        cls = self.controls.stop_class or RunStopped
        stop = cls(self.controls.stop_reason or "stopped")  # the command adds how to resume
        failures = self.processor.failures
        if self.breaker.tripped and failures.total:
            self._name_the_failures(stop, failures)
        return stop

    def _name_the_failures(self, stop: RunStopped, failures: FailureSamples) -> None:
        """A stop caused by failing documents says why they failed (the dead-letter file's text),
        with a document each, and where all of them are; when every document failed the same way,
        a resume would only fail again: the hint says to fix the migration instead."""
        stop.message += (
            f"; the first failures: {failures.describe()} (each one is listed in {self.files.dead_letters})"
        )
        counts = self.stats.counts()
        succeeded = sum(counts.get(kind, 0) for kind in ("updated", "created", "deleted", "unchanged"))
        if failures.one_reason and not succeeded:
            stop.hint = (
                "every document failed the same way and none was written: fix the migration (or "
                "the data), then run it again: docshift run --execute"
            )
            stop.offer_resume = False


WRITTEN = ("updated", "created", "deleted")
"""The counters of writes that landed in the store."""


def failures_over_budget(
    budget: FailureBudget, counters: Mapping[str, int], dead_letters: Path
) -> TooManyFailures | None:
    """At a pass's end: more documents failed than ``--max-failures`` allows of all it handled
    (a rule's refusal, ``rejected``, is the integrity gate's to judge, not this budget's)."""
    processed = handled(counters)
    failed = counters.get("failed", 0) - counters.get("rejected", 0)
    if not budget.exceeded(failed, processed, final=True):
        return None
    return TooManyFailures(
        f"{failed} of {processed} documents failed, more than --max-failures {budget.spec}",
        hint=f"see {dead_letters}",
    )


@dataclass(frozen=True)
class PassEnd:
    """What :func:`end_pass` says of a pass besides its counts."""

    done: bool
    """Every document of the pass was handled (else it stopped)."""
    folder: Path
    error: DocshiftError | None = None
    landed: Mapping[str, int] = field(default_factory=dict)
    write_rate: float | None = None
    throttled: int | None = None


def end_pass(
    hooks: RunHooks,
    migration: Migration,
    stats: RunStats,
    settled: Mapping[str, int],
    ended: PassEnd,
) -> PipelineResult:
    """How every kind of pass (the pipeline, a script, a Beam driver) ends: the hooks hear of it
    with the settled counts (behind the cursors; the live ones may hold batches a stop left
    unfinished, which a resume does again), and the command gets its result."""
    counters = {name: settled.get(name, 0) for name in COUNTERS}
    snapshot = {**stats.snapshot(), **counters, "processed": handled(counters)}
    event = PassFinished if ended.done else PassStopped
    hooks.pass_ended(
        event(
            migration.label,
            *PassStats.split(snapshot),
            str(ended.error) if ended.error else None,
            write_rate=ended.write_rate,
            throttled=ended.throttled,
        )
    )
    return PipelineResult(
        migration.id,
        "finished" if ended.done else "stopped",
        counters,
        stats.elapsed,
        ended.folder,
        ended.error,
        snapshot,
        dict(ended.landed),
    )


def on_resume(journal: bool) -> str:
    """What a resume makes of the writes landed past the cursor: settled from the journal, or,
    with none (``--no-backup``), found migrated by its reader."""
    if journal:
        return "counted once on resume"
    return "no before-image journal: a resume finds them migrated and counts them unchanged"


def landed_text(landed: dict[str, int]) -> str:
    """``landed`` as the stop says it: ``0 updated behind the cursor…`` is the counters' part."""
    kinds = ", ".join(f"{landed[name]:,} {name}" for name in WRITTEN if landed.get(name))
    return f"{kinds} landed after the cursor, beside the counts behind it"


class _Progress:
    """Hands checkpoints to ``report`` from a thread of its own, the latest one only when several
    wait; ``report`` failing is raised at the next hand-over (``post`` or ``flush``), in the
    tracker's thread, as when it was called there."""

    def __init__(self, report: Callable[[Checkpoint], None]) -> None:
        self.report = report
        self._pending: Checkpoint | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._cond = threading.Condition()

    def post(self, checkpoint: Checkpoint) -> None:
        with self._cond:
            self._raise()
            self._pending = checkpoint
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="docshift-progress")
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every checkpoint posted was reported; raise if reporting one failed."""
        self.wait()
        with self._cond:
            self._raise()

    def wait(self) -> None:
        """Wait until every checkpoint posted was reported (a failure is kept for ``flush``)."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait(0.1)

    def close(self) -> None:
        """End the thread once what was posted is reported (after :meth:`wait`); a later
        ``post`` starts another."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._closing = True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._closing = False

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None:
                    if self._closing:
                        return
                    self._cond.wait()
                checkpoint, self._pending, self._busy = self._pending, None, True
            try:
                self.report(checkpoint)
            except BaseException as error:
                with self._cond:
                    self._error = self._error or error
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _uncounted(journal: JournalMark | None) -> tuple[int, list[tuple[int, int]]] | None:
    """Which journal members a checkpoint does not count: every one from ``journal.size`` on,
    and those at ``journal.unsettled``; None for a checkpoint from before these were recorded."""
    if journal is None:
        return None
    return journal.size, list(journal.unsettled)


def new_checkpoint(
    run_id: str, migration: Migration, shards: list[ShardCursor], settings: dict[str, Any]
) -> Checkpoint:
    return Checkpoint(
        run_id=run_id,
        migration_id=migration.id,
        checksum=migration.checksum,
        shards=shards,
        started_at=Timestamp.now(),
        settings=settings,
    )

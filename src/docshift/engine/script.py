"""A script migration's run: ``apply(ctx)`` reads and writes through a :class:`ScriptContext`.

A script is not one document in, one document out, so the per-document pipeline cannot run it; it
runs beside it (``commands/run.py`` dispatches by the migration's kind), with the same guarantees:

- every write goes through the run's :class:`~docshift.engine.writer.BatchWriter` (rate limit,
  request size, breaker), and its before-image ("did not exist" for a document it creates) is in
  the journal, on disk, before it is sent, so ``docshift rollback RUN_ID`` restores it exactly;
- every write is guarded: by the update time the script read the document at (``ctx.get``,
  ``ctx.get_all``, ``ctx.stream``), or, for a document it did not read, by the one read just before
  the write; a ``create`` must find no document. A write refused so (an application changed the
  document meanwhile) is never forced: the run stops, the refusal is listed in the dead-letter
  file, and a resume re-does the script from its last checkpoint on the current data;
- writes are buffered and sent in batches. Reads see the store, so a read of a document with a
  write still buffered first sends the buffer (a script reads its own writes); ``ctx.stream`` of a
  collection first sends the buffered writes into that collection;
- ``ctx.checkpoint(key)`` sends the buffer and records ``key`` once every write before it landed;
  a resume gives it back as ``ctx.resume_key``, and the script skips what it did. Writes after the
  last checkpoint are done again on resume: a write that finds the document already holding what it
  would write is no write, counted as what the killed process did when the journal says it did;
- a dry run runs the same code against a simulated copy of the store (writes change only the
  copy, and the script's later reads see them) and records each write with its diff.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.config import EngineConfig, LimitsConfig
from docshift.engine.batch import Decision
from docshift.engine.controls import Controls
from docshift.engine.diff import field_changes
from docshift.engine.hooks import (
    Checkpointed,
    EngineState,
    PassStarted,
    PassStats,
    Progressed,
    RunHooks,
)
from docshift.engine.pipeline import PassEnd, PipelineResult, end_pass
from docshift.engine.stats import COUNTERS, RunStats
from docshift.engine.writer import BatchWriter, Outgoing, WriteGuards
from docshift.errors import (
    BatchAborted,
    ConflictError,
    DocshiftError,
    EmergencyStop,
    RunFileError,
    RunStopped,
    ScriptAborted,
    ScriptFailed,
    StoreError,
    UsageError,
)
from docshift.migration import DELETE, DocView, Migration
from docshift.runfolder.atomic import run_file
from docshift.runfolder.checkpoint import Checkpoint, JournalMark, ScriptProgress
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.journal import JournalEntry, JournalWriter, digest_of, read_members
from docshift.runfolder.layout import MigrationFolder
from docshift.store.base import (
    DELETE_FIELD,
    Document,
    FieldPath,
    Filter,
    Query,
    Store,
    Write,
    WriteResult,
    collection_of,
    parse_field_path,
    split_path,
)
from docshift.store.semantics import apply_field_updates, document_problem, query_problem
from docshift.store.simulated import SimulatedStore
from docshift.values import Timestamp, Value, as_stored, copy_data, values_equal

__all__ = ["ScriptContext", "ScriptOptions", "ScriptRunner"]

_APPLIED = {"set": "updated", "update": "updated", "create": "created", "delete": "deleted"}
_CLAIMED = "claimed"
"""A write found done, whose landing this process counted already."""
_ABSENT: Any = object()
"""In the map of what the script saw: the path was never read."""


@dataclass(frozen=True)
class ScriptOptions:
    """A script migration's run: dry run or execute, and the engine settings it writes with."""

    execute: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    progress_interval: float = 1.0


@dataclass
class _Write:
    """One write the script asked for, buffered until the next flush."""

    kind: str  # set, update, create, delete
    path: str
    data: dict[str, Value] | None = None
    fields: dict[FieldPath, Value] | None = None


@dataclass
class _Refused:
    path: str
    reason: str
    data: dict[str, Value] = field(default_factory=dict)


class ScriptContext:
    """What ``apply(ctx)`` reads and writes through (see docs/script-migrations.md).

    Reads return :class:`~docshift.migration.DocView` values (``doc.data`` is a fresh copy, of
    docshift's own value types); writes are buffered and sent in guarded, journalled batches.
    """

    def __init__(self, runner: ScriptRunner) -> None:
        self._runner = runner

    # ------------------------------------------------------------------ about the run
    @property
    def execute(self) -> bool:
        """False in a dry run: the writes change a simulated copy of the store only."""
        return self._runner.options.execute

    @property
    def run_id(self) -> str:
        return self._runner.checkpoint.run_id

    @property
    def resume_key(self) -> str | None:
        """The key of the last ``ctx.checkpoint(key)`` an earlier process of this run recorded
        (None on a fresh run): skip the work done up to it."""
        return self._runner.resume_key

    # ------------------------------------------------------------------ reads
    def get(self, path: str) -> DocView | None:
        """The document at ``path`` (None when there is none), after sending any write of it
        still buffered."""
        return self.get_all([path])[0]

    def get_all(self, paths: Sequence[str]) -> list[DocView | None]:
        """The documents at ``paths``, in the order asked (None where there is none)."""
        if isinstance(paths, str):
            raise UsageError("ctx.get_all takes a list of paths, got one string", hint="use ctx.get(path)")
        checked = [self._runner.document_path(p, "ctx.get_all") for p in paths]
        return self._runner.read(checked)

    def stream(
        self,
        collection: str,
        *,
        where: Iterable[tuple[str, str, Value]] | None = None,
        limit: int | None = None,
        group: bool = False,
        start_after: str | None = None,
    ) -> Iterator[DocView]:
        """The documents of ``collection`` (with ``group``, of every collection with that id) in
        document-name order, matching every ``(field, op, value)`` of ``where``, at most ``limit``,
        after the document path ``start_after``. Writes into the collection still buffered are sent
        first."""
        query = self._runner.query(collection, where, limit, group, start_after)
        return self._runner.stream(query)

    def count(
        self, collection: str, *, where: Iterable[tuple[str, str, Value]] | None = None, group: bool = False
    ) -> int:
        """How many documents ``ctx.stream(collection, where=..., group=...)`` would give."""
        query = self._runner.query(collection, where, None, group, None)
        return self._runner.count(query)

    # ------------------------------------------------------------------ writes
    def set(self, path: str, data: Mapping[str, Value]) -> None:
        """Replace the document at ``path`` with ``data`` (creating it when there is none)."""
        self._runner.buffer(
            _Write("set", self._runner.document_path(path, "ctx.set"), _data(data, "ctx.set"))
        )

    def create(self, path: str, data: Mapping[str, Value]) -> None:
        """Create the document at ``path``; refused (the run stops) when one exists with other data."""
        self._runner.buffer(
            _Write("create", self._runner.document_path(path, "ctx.create"), _data(data, "ctx.create"))
        )

    def update(self, path: str, fields: Mapping[str | FieldPath, Value]) -> None:
        """Change these fields of the existing document at ``path``: keys are field paths
        (``"a.b"`` reaches a nested field, or a tuple of segments); the value ``DELETE`` removes
        the field."""
        checked = self._runner.document_path(path, "ctx.update")
        self._runner.buffer(_Write("update", checked, fields=_fields(fields)))

    def delete(self, path: str) -> None:
        """Delete the document at ``path`` (nothing to do when there is none)."""
        self._runner.buffer(_Write("delete", self._runner.document_path(path, "ctx.delete")))

    def checkpoint(self, key: str) -> None:
        """Send every buffered write and record ``key`` as done: a resume after a stop gives it
        back as ``ctx.resume_key``."""
        if not isinstance(key, str) or not key:
            raise UsageError(
                f"ctx.checkpoint takes a non-empty string key, got {key!r}",
                hint="pass what a resume needs to skip the work done, e.g. the last document id",
            )
        self._runner.mark(key)


def _data(data: Mapping[str, Value], call: str) -> dict[str, Value]:
    if not isinstance(data, Mapping):
        raise UsageError(
            f"{call} takes the document's data as a dict, got a {type(data).__name__}",
            hint=f'write e.g. {call}("settings/app", {{"theme": "dark"}})',
        )
    copied: dict[str, Value] = copy_data(dict(data))
    return copied


def _fields(fields: Mapping[str | FieldPath, Value]) -> dict[FieldPath, Value]:
    if not isinstance(fields, Mapping) or not fields:
        raise UsageError(
            "ctx.update takes a non-empty dict of field paths to values",
            hint='write e.g. ctx.update("users/alice", {"profile.city": "Oslo", "legacy": DELETE})',
        )
    parsed: dict[FieldPath, Value] = {}
    for key, value in fields.items():
        path = parse_field_path(key) if isinstance(key, str) else tuple(key)
        parsed[path] = DELETE_FIELD if value is DELETE or value is DELETE_FIELD else copy_data(value)
    return parsed


def _updated(data: dict[str, Value], fields: Mapping[FieldPath, Value]) -> dict[str, Value]:
    """``data`` with an update's fields applied (``DELETE_FIELD`` removes one)."""
    result: dict[str, Value] = copy_data(data)
    apply_field_updates(result, fields)
    return result


class ScriptRunner:
    """Runs one script migration's ``apply(ctx)`` from its checkpoint (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        migration: Migration,
        options: ScriptOptions,
        folder: Path,
        checkpoint: Checkpoint,
        *,
        controls: Controls | None = None,
        hooks: RunHooks | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
    ) -> None:
        assert migration.apply is not None
        self.migration = migration
        self.options = options
        self.folder = folder
        self.files = MigrationFolder(folder)
        self.checkpoint = checkpoint
        self.controls = controls or Controls()
        self.hooks = hooks or RunHooks()
        self.on_decision = on_decision
        self.on_checkpoint = on_checkpoint
        self.store: Store = store if options.execute else SimulatedStore(store)
        progress = checkpoint.script or ScriptProgress()
        checkpoint.script = progress
        self.resume_key = progress.key
        if progress.marked is None:
            progress.marked = dict(checkpoint.counters)
        # Counted on from the last mark: what came after it is done again (and what landed of it,
        # counted from the journal by _settle_landed).
        self.stats = RunStats(dict(progress.marked), checkpoint.elapsed_seconds)
        self.counters: Counter[str] = Counter(progress.marked)
        """What the run did: up to the mark, then what this process counted."""
        self.seen: dict[str, Timestamp | None] = {}
        """path -> the update time the script last read or wrote it at (None: no document)."""
        self.pending: dict[str, _Write] = {}
        self.dead_letters = DeadLetterFile(self.files.dead_letters)
        self.journal: JournalWriter | None = None
        self.claims: set[str] = set()
        """Paths whose write an earlier process of the run landed past the checkpoint, counted when
        this one started: done again and found unchanged, they are not counted again."""
        self._last_progress = time.monotonic()
        self._closed: ScriptAborted | None = None
        with run_file(folder):
            folder.mkdir(parents=True, exist_ok=True)
        if checkpoint.dead_letter_bytes is not None:
            self.dead_letters.truncate(checkpoint.dead_letter_bytes)  # refusals after it are re-done
        if options.execute:
            # Always journalled, --no-backup or not: a script has no down(); its rollback is the restore.
            self.journal = JournalWriter(self.files.journal, note_unconfirmed=False)
        self.guards = WriteGuards.from_config(options.engine, options.limits, self.controls)
        self.writer = BatchWriter(
            self.store, self.guards, journal=self.journal, latency=self.stats.commit_latency
        )

    # ------------------------------------------------------------------ the run
    def run(self) -> PipelineResult:
        label = self.migration.label
        self.hooks.pass_started(PassStarted(label, 1, self.options.execute, dict(self.counters)))
        error: DocshiftError | None = None
        try:
            self._settle_landed()
            self._save_start()
            assert self.migration.apply is not None
            self.migration.apply(ScriptContext(self))
            self._check_open()
            self._flush()
        except ScriptAborted as abort:
            error = abort.error
        except DocshiftError as raised:  # a ctx call refused (a bad path, a bad where)
            error = self._failed(raised, f"{raised.message}", raised.hint)
        except Exception as raised:
            detail = f"{type(raised).__name__}: {raised}" if str(raised) else type(raised).__name__
            error = self._failed(raised, f"apply() raised {detail}", None)
        if error is None and self.controls.stop.is_set():
            error = self._stop_error()
        return self._finish(error)

    def _finish(self, error: DocshiftError | None) -> PipelineResult:
        done = error is None
        try:
            if done:
                self.checkpoint.shards[0].done = True
                self._save_mark("finished")
            else:
                self._save_stop()
        except RunFileError as unwritten:
            error, done = unwritten, False
        finally:
            self._close_files()
        ended = PassEnd(done, self.folder, error)
        return end_pass(self.hooks, self.migration, self.stats, self._counted(), ended)

    def _close_files(self) -> None:
        for close in (self.journal.close if self.journal else None, self.dead_letters.close):
            if close is not None:
                with contextlib.suppress(RunFileError):  # a broken file was raised where it broke
                    close()

    def _failed(self, raised: BaseException, message: str, hint: str | None) -> DocshiftError:
        """The stop for a script that raised: where in its file, and what to do next."""
        line = None
        for frame in traceback.extract_tb(raised.__traceback__):
            if self.migration.path is not None and frame.filename == str(self.migration.path):
                line = frame.lineno
        where = f" ({self.migration.path.name}:{line})" if line and self.migration.path else ""
        run_id = self.checkpoint.run_id
        if self.options.execute:
            then = (
                f"what it wrote before is journalled: fix the script and resume from its last checkpoint "
                f"(docshift run --execute --resume {run_id} --force), or undo it (docshift rollback {run_id} "
                "--execute)"
            )
        else:
            then = "a dry run: nothing was written; fix the script and run the dry run again"
        return ScriptFailed(
            f"{self.migration.label}: {message}{where}", hint=f"{hint}; {then}" if hint else then
        )

    def _stop_error(self) -> DocshiftError:
        cls = self.controls.stop_class or RunStopped
        return cls(self.controls.stop_reason or "stopped")

    # ------------------------------------------------------------------ checkpoints
    def mark(self, key: str) -> None:
        self._check_open()
        self._flush()
        assert self.checkpoint.script is not None
        self.checkpoint.script.key = key
        self.checkpoint.script.marks += 1
        self._guarded(lambda: self._save_mark("running"))

    def _settle_landed(self) -> None:
        """Count the writes an earlier process of this run landed after its last checkpoint (and
        journal the outcomes it could not), before the script does that work again: a write whose
        outcome is journalled, or after which the same document was written again (flushes are
        sent one after the other, and a refusal stops the run), landed; the last one of a document
        landed if the document holds what it left (its digest, journalled before it was sent)."""
        mark = self.checkpoint.journal
        if self.journal is None or mark is None:
            return
        entries = list(self._guarded(lambda: list(read_members(self.files.journal, [], mark.size))))
        sent: dict[str, list[JournalEntry]] = {}
        confirmed: set[str] = set()
        for entry in entries:
            if entry.kind in ("before", "created"):
                sent.setdefault(entry.path, []).append(entry)
                confirmed.discard(entry.path)
            elif entry.kind in ("written", "deleted"):
                confirmed.add(entry.path)
        unknown = [path for path in sent if path not in confirmed]
        found = self._guarded(lambda: self.store.get_many(unknown)) if unknown else []
        outcomes: list[JournalEntry] = []
        for path, now in zip(unknown, found, strict=True):
            last = sent[path][-1]
            if last.leaves is not None and last.leaves == digest_of(now.data if now is not None else None):
                confirmed.add(path)
                outcome = JournalEntry("deleted", path) if now is None else None
                outcomes.append(
                    outcome or JournalEntry("written", path, update_time=now.update_time if now else None)
                )
            else:
                sent[path].pop()  # not landed: done again by the script
        if outcomes:
            self._guarded(lambda: self.journal.append(outcomes, durable=True) if self.journal else None)
        counts: Counter[str] = Counter()
        for path, writes in sent.items():
            counts.update(_counter(entry) for entry in writes)
            if writes:
                self.claims.add(path)
        self._count(counts)

    def _save_start(self) -> None:
        """Before any write: where a resume starts. A resumed run keeps its last mark (the journal
        and dead letters after it are what the next resume settles, if this process stops too)."""
        if self.journal is not None and self.checkpoint.journal is None:
            self.checkpoint.journal = JournalMark(self.journal.size())
        if self.checkpoint.dead_letter_bytes is None:
            self.checkpoint.dead_letter_bytes = self.dead_letters.size()
        self._save("running")

    def _save_mark(self, state: str) -> None:
        """Save what is done up to here: the counters, the journal and dead letters behind them."""
        if self.journal is not None:
            self.journal.sync()
            self.checkpoint.journal = JournalMark(self.journal.size())
        self.dead_letters.sync()
        self.checkpoint.dead_letter_bytes = self.dead_letters.size()
        self.checkpoint.counters = self._counted()
        assert self.checkpoint.script is not None
        self.checkpoint.script.marked = dict(self.checkpoint.counters)
        self._save(state)

    def _save_stop(self) -> None:
        """A stop: the mark stays where it was (what came after it is done again on resume, which
        counts on from the mark's counters and the journal); the counters say what the run did, for
        the result, the history, the report and ``docshift runs``."""
        if self.journal is not None:
            self.journal.sync()
        self.dead_letters.sync()
        self.checkpoint.counters = self._counted()
        self._save("stopped")

    def _counted(self) -> dict[str, int]:
        return {name: self.counters.get(name, 0) for name in COUNTERS}

    def _save(self, state: str) -> None:
        if not self.folder.is_dir():
            raise RunFileError(
                f"{self.folder} was removed while the run was writing it",
                path=str(self.folder),
                hint="leave run folders in place while a run writes them",
            )
        self.checkpoint.elapsed_seconds = self.stats.elapsed
        self.checkpoint.state = state
        self.checkpoint.save(self.files.checkpoint)
        if self.on_checkpoint is not None and self.options.execute:
            self.on_checkpoint(self.checkpoint)
        key = self.checkpoint.script.key if self.checkpoint.script else None
        self.hooks.checkpointed(Checkpointed(self.migration.label, state, (key,)))

    # ------------------------------------------------------------------ reads
    def document_path(self, path: str, call: str) -> str:
        self._check_open()
        if not isinstance(path, str):
            raise UsageError(
                f"{call} takes a document path, got a {type(path).__name__}",
                hint='a document path has an even number of segments, e.g. "users/alice"',
            )
        parts = split_path(path)
        if len(parts) % 2:
            raise UsageError(
                f"{call}: {path!r} is not a document path (it has an odd number of segments)",
                hint='a document path has an even number of segments, e.g. "users/alice"',
            )
        return "/".join(parts)

    def query(
        self,
        collection: str,
        where: Iterable[tuple[str, str, Value]] | None,
        limit: int | None,
        group: bool,
        start_after: str | None,
    ) -> Query:
        self._check_open()
        if not isinstance(collection, str):
            raise UsageError(
                f"ctx.stream takes a collection path, got a {type(collection).__name__}",
                hint='write e.g. ctx.stream("users")',
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise UsageError(
                f"limit must be a whole number above 0, got {limit!r}", hint="pass limit=100, or none"
            )
        filters: list[Filter] = []
        for item in where or ():
            if not isinstance(item, list | tuple) or len(item) != 3 or not isinstance(item[0], str):
                raise UsageError(
                    f"where entry {item!r} is not a (field, op, value) tuple",
                    hint='write where=[("status", "==", "active")]',
                )
            filters.append(Filter.parse(item[0], str(item[1]), item[2]))
        problem = query_problem(filters)
        if problem:
            raise UsageError(f"where: {problem}", hint="Firestore refuses such a query: filter in the script")
        return Query(collection.strip("/"), group, tuple(filters), start_after=start_after, limit=limit)

    def read(self, paths: Sequence[str]) -> list[DocView | None]:
        if any(path in self.pending for path in paths):
            self._flush()
        found = self._guarded(lambda: self.store.get_many(list(paths)))
        for path, doc in zip(paths, found, strict=True):
            self.seen[path] = doc.update_time if doc is not None else None
        self._read(len(paths))
        return [DocView(doc) if doc is not None else None for doc in found]

    def stream(self, query: Query) -> Iterator[DocView]:
        if any(_in_query(path, query) for path in self.pending):
            self._flush()
        documents = self._guarded(lambda: iter(self.store.stream(query)))
        while True:
            self._check_open()
            try:
                doc = next(documents)
            except StopIteration:
                return
            except StoreError as error:
                raise self._abort(
                    EmergencyStop(f"reading failed: {error.message}", hint=error.hint)
                ) from None
            self.seen[doc.path] = doc.update_time
            self._read(1)
            yield DocView(doc)

    def count(self, query: Query) -> int:
        if any(_in_query(path, query) for path in self.pending):
            self._flush()
        counted: int = self._guarded(lambda: self.store.count(query))
        return counted

    def _read(self, count: int) -> None:
        self.counters["read"] += count
        self.stats.add(read=count)
        self._progress()

    # ------------------------------------------------------------------ writes
    def buffer(self, write: _Write) -> None:
        self._check_open()
        if write.path in self.pending:  # one write per document per request: send the earlier one first
            self._flush()
        self.pending[write.path] = write
        if len(self.pending) >= self.writer.batch_size:
            self._flush()

    def _flush(self) -> None:
        """Send the buffered writes: each decided on what the store holds now, guarded by what the
        script read; a refused one stops the run (after the rest of the batch landed)."""
        while self.pending:
            writes = list(self.pending.values())[: max(self.writer.batch_size, 1)]
            for write in writes:
                del self.pending[write.path]
            self._send(writes)

    def _send(self, writes: list[_Write]) -> None:
        current = self._guarded(lambda: self.store.get_many([w.path for w in writes]))
        outgoing: list[Outgoing[Decision]] = []
        refused: list[_Refused] = []
        counts: Counter[str] = Counter()
        for write, now in zip(writes, current, strict=True):
            decided = self._decide(write, now)
            if isinstance(decided, _Refused):
                refused.append(decided)
            elif isinstance(decided, str):
                if decided != _CLAIMED:
                    counts[decided] += 1
            else:
                if self.on_decision is not None:
                    self.on_decision(decided)
                outgoing.append(_outgoing(decided, self.journal is not None))
        results = self._guarded(lambda: self.writer.write(outgoing)) if outgoing else []
        for item, result in zip(outgoing, results, strict=True):
            self._landed_result(item, result, counts, refused)
        ok = sum(counts[k] for k in ("updated", "created", "deleted", "unchanged"))
        self.writer.record(ok, len(refused))
        self._count(counts)
        if refused:
            self._refuse(refused)
        self._progress()

    def _landed_result(
        self, item: Outgoing[Decision], result: WriteResult, counts: Counter[str], refused: list[_Refused]
    ) -> None:
        decision, path = item.origin, item.write.path
        if result.ok:
            counts[_APPLIED[decision.kind]] += 1
            if decision.kind == "delete":
                self.seen[path] = None
            elif result.update_time is not None:
                self.seen[path] = result.update_time
            else:  # applied, its update time not told: the next write reads it again
                self.seen.pop(path, None)
            return
        self.seen.pop(path, None)
        data = decision.new_data or {}
        if isinstance(result.error, ConflictError):
            refused.append(_Refused(path, "the document changed since the script read it", data))
        else:
            refused.append(_Refused(path, f"the store refused the write: {result.error}", data))

    def _count(self, counts: Counter[str]) -> None:
        changes = {name: value for name, value in counts.items() if value}
        self.counters.update(changes)
        self.stats.add(**changes)
        self.stats.processed(sum(changes.get(k, 0) for k in ("updated", "created", "deleted", "unchanged")))

    def _decide(self, write: _Write, now: Document | None) -> Decision | str | _Refused:
        """The write to send for ``write`` given what the store holds (``now``): a decision, a
        counter (no write needed), or a refusal."""
        seen = self.seen.get(write.path, _ABSENT)
        now_time = now.update_time if now is not None else None
        if seen is not _ABSENT and seen != now_time:
            what = "deleted" if now is None else ("created" if seen is None else "changed")
            return _Refused(write.path, f"the document was {what} since the script read it", write.data or {})
        if write.kind == "delete":
            if now is None:
                return self._redone(write.path) or "unchanged"
            return Decision(now, now, "delete", Write.delete(write.path, update_time=now_time))
        if write.kind == "update":
            if now is None:
                return _Refused(write.path, "ctx.update: there is no document to update (use ctx.set)")
            assert write.fields is not None
            new = _updated(now.data, write.fields)
        else:
            assert write.data is not None
            new = write.data
        new, _ = as_stored(new)
        problem = document_problem(write.path, new)
        if problem:
            return _Refused(write.path, problem, new)
        if now is not None and values_equal(now.data, new):
            return self._redone(write.path) or "unchanged"
        if write.kind == "create" and now is not None:
            return _Refused(write.path, "ctx.create: a document with other data exists there", new)
        source = now if now is not None else Document(write.path, {})
        if now is None:
            return Decision(source, None, "create", Write.create(write.path, new, checked=True), new_data=new)
        changes = field_changes(now.data, new)
        guarded = Write.set(write.path, new, update_time=now_time, checked=True)
        return Decision(source, now, "set", guarded, changes, new)

    def _redone(self, path: str) -> str | None:
        """A write found done already, by an earlier process of this run after its checkpoint:
        counted when this process started (:meth:`_settle_landed`), so not again (once)."""
        if path in self.claims:
            self.claims.discard(path)
            return _CLAIMED
        return None

    def _refuse(self, refused: list[_Refused]) -> None:
        letters = [(Document(r.path, r.data), "write", r.reason, None) for r in refused]
        self._guarded(lambda: self.dead_letters.add_many(letters))
        self.counters["failed"] += len(refused)
        self.stats.add(failed=len(refused))
        first = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise self._abort(
            ScriptFailed(
                f"{self.migration.label}: the write of {first.path} was refused: {first.reason}{more}; "
                f"nothing was overwritten (listed in {self.dead_letters.path})",
                hint=(
                    f"resume to do the script again from its last checkpoint on the current data: docshift "
                    f"run --execute --resume {self.checkpoint.run_id}"
                    if self.options.execute
                    else "a dry run: nothing was written; fix the script or the data, then run it again"
                ),
            )
        )

    # ------------------------------------------------------------------ the run's state
    def _guarded(self, call: Callable[[], Any]) -> Any:
        """Run a store or run-file call; turn what means "stop" into the abort of the script."""
        try:
            return call()
        except BatchAborted:
            raise self._abort(self._stop_error()) from None
        except RunStopped as error:  # the store kept failing, a run file could not be written
            raise self._abort(error) from None
        except StoreError as error:
            raise self._abort(EmergencyStop(f"the store failed: {error.message}", hint=error.hint)) from None

    def _abort(self, error: DocshiftError) -> ScriptAborted:
        self._closed = ScriptAborted(error)
        self.pending.clear()  # never sent: a resume does them again
        return self._closed

    def _check_open(self) -> None:
        """Every ctx call: once the run must stop (a refusal, a stop request, the lease lost), the
        script is unwound; while paused, it waits."""
        if self._closed is not None:
            raise self._closed
        while self.controls.paused and not self.controls.stop.is_set():
            time.sleep(0.05)
        self.controls.check_lease()
        if self.controls.stop.is_set():
            raise self._abort(self._stop_error())

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.options.progress_interval:
            return
        self._last_progress = now
        counters, stats = PassStats.split(self.stats.snapshot())
        state = EngineState(self.writer.batch_size, self.controls.limiter.limit, 0.0, self.controls.paused)
        self.hooks.progressed(Progressed(self.migration.label, counters, stats, state))


def _in_query(path: str, query: Query) -> bool:
    """Whether a write of ``path`` may be among what ``query`` reads."""
    parent = collection_of(path)
    if query.group:
        return parent.rsplit("/", 1)[-1] == query.collection
    return parent == query.collection


def _outgoing(decision: Decision, journalled: bool) -> Outgoing[Decision]:
    write = decision.write
    assert write is not None
    before = None
    if journalled:
        leaves = digest_of(None if decision.kind == "delete" else decision.new_data)
        existing = decision.existing
        if existing is None:
            before = JournalEntry("created", write.path, leaves=leaves)
        else:
            before = JournalEntry(
                "before",
                existing.path,
                existing.data,
                existing.update_time,
                existing.create_time,
                leaves=leaves,
            )
    return Outgoing(write, decision, before=before, leaves=decision.new_data)


def _counter(entry: JournalEntry) -> str:
    """The counter a journalled write adds once it landed."""
    if entry.kind == "created":
        return "created"
    return "deleted" if entry.leaves == "" else "updated"

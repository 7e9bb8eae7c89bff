"""Undo a migration run from its before-image journal.

The journal names exactly the documents the run changed, so it drives every rollback that has one:
by restore (put the before-image back) and by down() (apply the migration's ``down`` to what the
run wrote). Documents the run never touched are never read or written.

The state to put back for a document is the last before-image that is not our own earlier output
(so an application write made before our write is kept), and every undo is guarded by the update
time our write produced: a document changed since is a conflict, left alone and listed, unless
forced. Created documents are deleted; deleted ones are created again (from the before-image, also
with down(), which cannot see a deleted document). Afterwards every undone document is compared
with its before-image: whatever down() does, a rollback that did not give the data back says so.

The journal is read twice: once to index which entry restores each path (paths and small tuples
only, no document data), once to stream the restores in journal order, so the position in that
order is an exact, resumable cursor.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from docshift import codec
from docshift.config import EngineConfig, LimitsConfig
from docshift.engine.diff import FieldChange, field_changes
from docshift.engine.hooks import Progressed, RunHooks
from docshift.engine.writer import BatchWriter, Outgoing, WriteGuards
from docshift.errors import ConflictError
from docshift.migration import DELETE, UNCHANGED, DocView, Transform
from docshift.runfolder.atomic import run_file, write_fully
from docshift.runfolder.journal import JournalEntry, JournalReader, digest_of
from docshift.runfolder.layout import MigrationFolder
from docshift.store.base import Document, Store, Write, WriteKind, WriteResult
from docshift.store.simulated import SimulatedStore
from docshift.values import Timestamp, values_equal

__all__ = ["UndoAction", "UndoResult", "UndoRules", "Undoer", "older_outputs", "undo_actions"]


@dataclass(frozen=True, slots=True)
class UndoAction:
    """What to do for one document. ``kind``: ``restore`` (set back ``before``), ``recreate``
    (create ``before`` again), ``delete`` (remove what the run created), ``check`` (the process
    died with this write in flight: compare with the store to decide)."""

    seq: int
    kind: str
    path: str
    before: JournalEntry | None
    guard: Timestamp | None
    leaves: str | None = None
    """The digest of what the run's last write of ``path`` left stored (see
    :class:`~docshift.runfolder.journal.JournalEntry`); None in a journal from before it."""


@dataclass
class _PathState:
    seq: int
    written: Timestamp | None = None
    created: bool = False
    deleted: bool = False
    leaves: str | None = None
    """Digest of what the last write sent for the path leaves stored."""


def _index(journal: Path | Sequence[Path]) -> dict[str, _PathState]:
    states: dict[str, _PathState] = {}
    for seq, entry in enumerate(JournalReader(journal)):
        state = states.get(entry.path)
        if entry.kind == "before":
            # A before-image that is the run's own earlier output (its write produced that update
            # time, or it holds exactly what that write left: its outcome was never journalled)
            # is not the state to put back.
            own_output = state is not None and (
                (state.written is not None and entry.update_time == state.written)
                or (bool(state.leaves) and digest_of(entry.data) == state.leaves)
            )
            if own_output:
                assert state is not None
                state.leaves = entry.leaves
            else:
                states[entry.path] = _PathState(seq, leaves=entry.leaves)
        elif entry.kind == "created":
            if state is None:
                states[entry.path] = _PathState(seq, created=True, leaves=entry.leaves)
            else:
                state.leaves = entry.leaves
        elif entry.kind == "written" and state is not None:
            state.written = entry.update_time
        elif entry.kind == "deleted" and state is not None:
            state.deleted = True
    return states


def undo_actions(journal: Path | Sequence[Path], start_after: int = -1) -> Iterator[UndoAction]:
    """The restore actions of a journal in journal order, after position ``start_after``. Several
    journals (a Beam run's attempts at its partitions) are read as one, in the order given: a
    document's state to put back is then its earliest before-image that is not the run's own
    output, whichever attempt journalled it."""
    states = _index(journal)
    for seq, entry in enumerate(JournalReader(journal)):
        state = states.get(entry.path)
        if state is None or state.seq != seq or seq <= start_after:
            continue
        if state.created:
            yield UndoAction(
                seq, "delete" if state.written else "check", entry.path, None, state.written, state.leaves
            )
        elif state.deleted:
            yield UndoAction(seq, "recreate", entry.path, entry, None, state.leaves)
        elif state.written is not None:
            yield UndoAction(seq, "restore", entry.path, entry, state.written, state.leaves)
        else:
            yield UndoAction(seq, "check", entry.path, entry, None, state.leaves)


def older_outputs(journals: Sequence[Path | Sequence[Path]]) -> Callable[[UndoAction], bool] | None:
    """For a migration applied over several runs, undone newest run first: whether a document of
    a newer run's journal held what one of the older runs (``journals``: theirs) wrote when the
    newer run changed it (the update time that run's write produced; for a document the newer
    run created, that an older run deleted it): the older run's undo takes it further back."""
    if not journals:
        return None
    outputs: dict[str, set[Timestamp | None]] = {}
    for journal in journals:
        for entry in JournalReader(journal):
            if entry.kind == "written" and entry.update_time is not None:
                outputs.setdefault(entry.path, set()).add(entry.update_time)
            elif entry.kind == "deleted":
                outputs.setdefault(entry.path, set()).add(None)

    def chained(action: UndoAction) -> bool:
        found = outputs.get(action.path)
        if not found:
            return False
        before = action.before
        if before is None or before.data is None:  # created by this run: gone after the older one
            return None in found
        return before.update_time in found

    return chained


@dataclass
class UndoResult:
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("restored", "recreated", "deleted", "unchanged", "conflicts", "verified", "mismatched"), 0
        )
    )
    position: int = -1
    samples: list[tuple[str, str, list[FieldChange]]] = field(default_factory=list)
    stopped: bool = False
    landed: dict[str, Timestamp] = field(default_factory=dict)
    """The undo writes of the batch after ``position`` that landed and are counted, although the
    batch did not finish (the store failed between its requests): path -> the update time each
    produced. Met again by the resume, they are not counted twice."""


@dataclass(frozen=True, slots=True)
class _Missed:
    """No write undoes this document (down() left it, or failed): it stays unlike its before-image."""

    reason: str


@dataclass(frozen=True)
class UndoRules:
    """How a rollback decides what to write for each document of a journal."""

    execute: bool
    force: bool = False
    """Undo documents changed since the run wrote them too (those changes are lost)."""
    redo: Transform | None = None
    """The migration's ``up()``: tells the run's own output by value in a journal from before the
    digests of what each write leaves."""
    undo: Transform | None = None
    """The migration's ``down()`` (``--strategy down``); None: the before-images are put back."""
    left_to_older: Callable[[UndoAction], bool] | None = None
    """For one run of a migration applied over several: whether the before-image of ``action`` is
    the output of an older run of it, whose journal this rollback undoes next. Such a document
    that no longer holds this run's output is left to that run's undo (which finds it back, or
    reports the conflict), not reported here too."""
    samples: int = 5
    """Undo writes kept with their field changes, for the report."""


@dataclass
class _Sorted:
    """One batch's actions, sorted by what is done with them."""

    writes: list[tuple[UndoAction, Write]] = field(default_factory=list)
    conflicts: list[tuple[UndoAction, str]] = field(default_factory=list)
    missed: list[tuple[UndoAction, str, Document | None]] = field(default_factory=list)


class Undoer:
    """Undoes journal actions in batches, guarded, resumable, and checks every document it was
    to undo against its before-image afterwards.

    Two ways to compute what to write for a document that still holds the run's output: its
    before-image (restore), or ``undo`` (the migration's ``down()``) applied to it. Either way the
    same documents are visited (the journal's), the same guard decides whether the run's output is
    still there, and the same check compares the result with the before-image: a document that
    does not equal it is ``mismatched`` and listed in the migration folder's mismatches file
    (``listings``: conflicts likewise).

    The writes go out through a :class:`~docshift.engine.writer.BatchWriter` (requests under the
    size limit, the breaker, the adaptive batch size); a batch takes the rate limiter's tokens
    before it is read, and is then written whole, so a stop never leaves half of it done.

    With ``execute`` off, writes go to a :class:`SimulatedStore` over ``store`` (pass one to share
    it between several restorers: a dry run of several migrations).
    """

    def __init__(
        self,
        store: Store,
        rules: UndoRules,
        *,
        listings: MigrationFolder,
        guards: WriteGuards | None = None,
        hooks: RunHooks | None = None,
        on_batch: Callable[[UndoResult], None] | None = None,
        own_writes: dict[str, tuple[Timestamp, Timestamp | None]] | None = None,
    ) -> None:
        self.store = (
            store
            if rules.execute or isinstance(store, SimulatedStore)
            else SimulatedStore(store, retain_writes=False)
        )
        self.rules = rules
        self.force = rules.force
        self.undo = rules.undo
        self.conflicts_file = listings.conflicts
        self.mismatches_file = listings.mismatches
        self.guards = guards or WriteGuards.from_config(EngineConfig(), LimitsConfig())
        self.writer = BatchWriter(self.store, self.guards, again="resume the rollback")
        self.hooks = hooks or RunHooks()
        self.on_batch = on_batch
        self.own_writes = own_writes if own_writes is not None else {}
        """Across one rollback: path -> (update time our write produced, update time of the state
        it undid). Undoing an older migration after a newer one then sees the newer one's write as
        ours, not as an application change."""

    def run(self, actions: Iterator[UndoAction], result: UndoResult) -> UndoResult:
        batch: list[UndoAction] = []
        last_progress = time.monotonic()
        for action in actions:
            batch.append(action)
            if len(batch) >= self.writer.batch_size:
                if not self._batch(batch, result):
                    return result
                batch = []
                if time.monotonic() - last_progress >= 1.0:
                    last_progress = time.monotonic()
                    self.hooks.progressed(Progressed("rollback", dict(result.counters)))
        if batch:
            self._batch(batch, result)
        return result

    def _batch(self, actions: Sequence[UndoAction], result: UndoResult) -> bool:
        if not self.writer.admit(len(actions)):
            result.stopped = True
            return False
        current = self.store.get_many([a.path for a in actions])
        batch = _Sorted()
        for action, now in zip(actions, current, strict=True):
            self._sort(action, now, batch, result)
        if batch.writes:
            applied = self._write(batch, result)
            batch.missed += self._verify(applied, result)  # refused writes are conflicts, not mismatches
        result.counters["mismatched"] += len(batch.missed)
        result.counters["conflicts"] += len(batch.conflicts)
        self._record_conflicts(batch.conflicts, current, actions)
        self._record_mismatches(batch.missed)
        result.position = actions[-1].seq
        result.landed = {}
        if self.on_batch is not None:
            self.on_batch(result)
        return True

    def _sort(self, action: UndoAction, now: Document | None, batch: _Sorted, result: UndoResult) -> None:
        landed = result.landed.get(action.path)
        if landed is not None and now is not None and now.update_time == landed:
            # Undone (and counted) by the attempt the store failed in; not verified then.
            if action.before is not None and now.update_time is not None:
                self.own_writes[action.path] = (now.update_time, action.before.update_time)
            problem = self._difference(action, now)
            if problem is None:
                result.counters["verified"] += 1
            else:
                batch.missed.append((action, problem, now))  # counted mismatched with the batch's
            return
        decision = self._decide(action, now)
        if isinstance(decision, _Missed):
            result.counters["unchanged"] += 1
            batch.missed.append((action, decision.reason, now))
        elif isinstance(decision, str):
            left = self.rules.left_to_older is not None and self.rules.left_to_older(action)
            if decision == "unchanged" or left:
                result.counters["unchanged"] += 1
            else:
                batch.conflicts.append((action, decision))
        else:
            batch.writes.append((action, decision))
            self._sample(action, now, decision, result)

    def _write(self, batch: _Sorted, result: UndoResult) -> list[UndoAction]:
        """Send the batch's undo writes, whole (its tokens were taken); returns the actions whose
        write was applied. A refused write is a conflict, listed."""
        outgoing = [Outgoing(write, action) for action, write in batch.writes]
        applied: list[UndoAction] = []
        failed = 0

        def receive(request: Sequence[Outgoing[UndoAction]], answers: Sequence[WriteResult]) -> None:
            # Counted request by request: when the store fails at a later request of the batch,
            # what landed is counted, and noted (``landed``) for the resume that meets it again.
            nonlocal failed
            for item, answer in zip(request, answers, strict=True):
                action, write = item.origin, item.write
                if answer.ok:
                    applied.append(action)
                    result.counters[_done(action, write)] += 1
                    if answer.update_time is not None:
                        result.landed[action.path] = answer.update_time
                        if action.before is not None:
                            self.own_writes[action.path] = (answer.update_time, action.before.update_time)
                elif isinstance(answer.error, ConflictError):
                    batch.conflicts.append((action, "the document changed after the migration wrote it"))
                else:
                    failed += 1
                    batch.conflicts.append((action, f"write failed: {answer.error}"))

        self.writer.write(outgoing, receive=receive, paced=False)
        self.writer.record(len(batch.writes) - failed, failed)
        return applied

    def _decide(self, action: UndoAction, now: Document | None) -> Write | str | _Missed:
        """The write that undoes ``action``; or "unchanged"; or a conflict reason (the document no
        longer holds what the run wrote: left alone); or :class:`_Missed` (down() gives no write
        that undoes it)."""
        removes = action.kind == "delete" or (action.kind == "check" and action.before is None)
        if self._already_undone(action, now, removes):
            return "unchanged"
        if action.guard is not None and not self.force:
            if now is None:
                return "the document was deleted after the migration wrote it"
            if not self._still_ours(action, now):
                return "the document changed after the migration wrote it"
            action = dataclasses.replace(action, guard=now.update_time)
        if removes:
            return self._removal(action, now)
        if action.kind == "recreate":
            return self._recreation(action, now)
        if action.kind == "restore":
            return self._undo_write(action, now, None if self.force else action.guard)
        return self._in_flight(action, now)

    def _already_undone(self, action: UndoAction, now: Document | None, removes: bool) -> bool:
        """Gone already (a removal), or holding its before-image again: a rollback done again
        after a crash, or the application put it back (noted as our own state then)."""
        if removes:
            return now is None
        before = action.before
        if now is None or before is None or before.data is None or not values_equal(now.data, before.data):
            return False
        if now.update_time is not None:
            self.own_writes[action.path] = (now.update_time, before.update_time)
        return True

    def _still_ours(self, action: UndoAction, now: Document) -> bool:
        """Whether ``now`` still holds the run's write that ``action.guard`` names: by its update
        time, as this rollback's own earlier undo of a newer run, or by its data."""
        if now.update_time == action.guard:
            return True
        own = self.own_writes.get(action.path)
        if own is not None and own[0] == now.update_time and own[1] == action.guard:
            return True
        return self._redone(action, now)

    def _removal(self, action: UndoAction, now: Document | None) -> Write | str:
        """Delete what the run created; for one whose write the run died before confirming, only
        once the document is known to hold what that write left."""
        if action.kind == "check" and not self.force:
            if now is not None and action.leaves and self._redone(action, now):
                return Write.delete(action.path, update_time=now.update_time)  # its write landed
            return "created by the run, but the run died before confirming its write"
        return Write.delete(action.path, update_time=None if self.force else action.guard)

    def _recreation(self, action: UndoAction, now: Document | None) -> Write | str:
        """down() cannot see a document the run deleted: only its before-image brings it back."""
        before = action.before
        assert before is not None and before.data is not None
        if now is None:
            return Write.create(action.path, before.data)
        if self.force:
            return Write.set(action.path, before.data)
        return "deleted by the migration, but a document exists there again"

    def _in_flight(self, action: UndoAction, now: Document | None) -> Write | str | _Missed:
        """A "check": the run died with this write in flight; the store tells whether it landed."""
        before = action.before
        assert before is not None and before.data is not None
        if now is None:
            return Write.create(action.path, before.data)
        if now.update_time == before.update_time:
            return "unchanged"  # the write never happened
        if self.force or self._redone(action, now):
            return self._undo_write(action, now, None if self.force else now.update_time)
        return "changed since it was read, and not by this migration"

    def _undo_write(
        self, action: UndoAction, now: Document | None, guard: Timestamp | None
    ) -> Write | _Missed:
        """The write that turns ``now`` (the run's output) back: the before-image, or down()'s
        result. A document gone since (and forced back) has nothing for down() to see: its
        before-image brings it back."""
        before = action.before
        assert before is not None and before.data is not None
        if self.undo is None or now is None:
            return Write.set(action.path, before.data, update_time=guard)
        try:
            undone = self.undo(DocView(now))
        except Exception as exc:
            return _Missed(f"down() raised {type(exc).__name__}: {exc}")
        if undone is DELETE:
            return Write.delete(action.path, update_time=guard)
        if undone is UNCHANGED or (isinstance(undone, dict) and values_equal(undone, now.data)):
            return _Missed("down() left it unchanged: it still holds what the run wrote")
        if not isinstance(undone, dict):
            return _Missed(f"down() returned {type(undone).__name__}; return a dict, UNCHANGED or DELETE")
        return Write.set(action.path, undone, update_time=guard)

    def _redone(self, action: UndoAction, now: Document) -> bool:
        """Whether ``now`` holds exactly what the run's write left: our own write, even when its
        update time is unknown (not journalled before a crash) or was replaced by an earlier
        restore of this rollback that a resumed rollback no longer remembers. Told by the digest
        journalled before the write was sent; in a journal from before it, by what the migration
        makes of the before-image."""
        if action.leaves is not None:
            return action.leaves != "" and digest_of(now.data) == action.leaves
        before = action.before
        if self.rules.redo is None or before is None or before.data is None:
            return False
        try:
            expected = self.rules.redo(
                DocView(Document(before.path, before.data, before.create_time, before.update_time))
            )
        except Exception:
            return False
        return isinstance(expected, dict) and values_equal(expected, now.data)

    def _sample(self, action: UndoAction, now: Document | None, write: Write, result: UndoResult) -> None:
        if len(result.samples) >= self.rules.samples:
            return
        old = now.data if now is not None else {}
        new = dict(write.data or {}) if write.kind != WriteKind.DELETE else {}
        result.samples.append((action.path, action.kind, field_changes(old, new)))

    def _verify(
        self, actions: Sequence[UndoAction], result: UndoResult
    ) -> list[tuple[UndoAction, str, Document | None]]:
        """The post-rollback check: each written document equals its before-image (data, and
        existence). Returns the ones that do not, with why."""
        after = self.store.get_many([a.path for a in actions])
        missed: list[tuple[UndoAction, str, Document | None]] = []
        for action, now in zip(actions, after, strict=True):
            problem = self._difference(action, now)
            if problem is None:
                result.counters["verified"] += 1
            else:
                missed.append((action, problem, now))
        return missed

    def _difference(self, action: UndoAction, now: Document | None) -> str | None:
        by = "down()" if self.undo is not None else "the restore"
        before = action.before
        if before is None or before.data is None:  # the run created it
            return None if now is None else f"it still exists after {by}, but the run created it"
        if now is None:
            return f"{by} deleted it, but it existed before the run"
        if not values_equal(now.data, before.data):
            return f"after {by} it differs from its before-image"
        return None

    def _record_conflicts(
        self,
        conflicts: list[tuple[UndoAction, str]],
        current: Sequence[Document | None],
        actions: Sequence[UndoAction],
    ) -> None:
        if not conflicts:
            return
        now_by_path = {a.path: doc for a, doc in zip(actions, current, strict=True)}
        lines: list[bytes] = []
        for action, reason in conflicts:
            now = now_by_path.get(action.path)
            record: dict[str, Any] = {
                "path": action.path,
                "reason": reason,
                "action": action.kind,
                "before": codec.encode(action.before.data) if action.before else None,
                "current": codec.encode(now.data) if now is not None else None,
                "current_update_time": codec.encode(now.update_time) if now is not None else None,
            }
            lines.append(orjson.dumps(record) + b"\n")
        _append_lines(self.conflicts_file, lines)

    def _record_mismatches(self, missed: list[tuple[UndoAction, str, Document | None]]) -> None:
        """``mismatches.jsonl``: documents that do not equal their before-image after the rollback,
        with what they hold instead (``after``, null when there is no document)."""
        if not missed:
            return
        lines = [
            orjson.dumps(
                {
                    "path": action.path,
                    "reason": reason,
                    "action": action.kind,
                    "strategy": "down" if self.undo is not None else "restore",
                    "before": codec.encode(action.before.data)
                    if action.before and action.before.data is not None
                    else None,
                    "after": codec.encode(now.data) if now is not None else None,
                }
            )
            + b"\n"
            for action, reason, now in missed
        ]
        _append_lines(self.mismatches_file, lines)


def _append_lines(path: Path, lines: list[bytes]) -> None:
    """Append to one of the rollback's own files; a failure to is a run-file error (exit 12), like
    every file of a run folder."""
    with run_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            write_fully(fd, b"".join(lines))
        finally:
            os.close(fd)


def _done(action: UndoAction, write: Write) -> str:
    """The counter a successful undo write adds to."""
    if write.kind == WriteKind.DELETE:
        return "deleted"
    return "recreated" if action.kind == "recreate" or write.kind == WriteKind.CREATE else "restored"

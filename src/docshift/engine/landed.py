"""Writes that landed past a run's last checkpoint: found in the journal and counted on resume.

A checkpoint counts only the batches settled behind its cursors. A run that stops at once (kill -9,
a run file that could not be written, the store failing for good) can leave batches past it whose
writes landed; read again on resume, their documents are found already migrated, and a document it
deleted is not read again at all. So the checkpoint also records which journal members hold the
batches it does not count (``journal_bytes``, ``journal_unsettled``: see
:mod:`docshift.runfolder.checkpoint`), and the resume settles those first (:func:`settle`): a
document that holds what the run wrote (the update time its write produced, or data whose digest is
the one journalled before the write was sent; after a delete: gone) is counted as updated, created
or deleted, its missing outcome is journalled (so a rollback's guard is exact), and it is noted in
:class:`LandedWrites`, kept in the checkpoint (``landed``), so that the reader, finding it
unchanged, does not count it again. A write that did not land is left to the pipeline, which does it
again as before. Bounded by the batches that were in flight or waiting for an earlier one, so small.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from docshift.migration import DELETE, UNCHANGED, DocView, Target, Transform
from docshift.runfolder.journal import JournalEntry, digest_of
from docshift.store.base import Document, Store
from docshift.store.semantics import matches
from docshift.values import as_stored, copy_data, values_equal

__all__ = ["Landed", "LandedWrites", "settle"]

_READ_BATCH = 300


class LandedWrites:
    """Documents (by the path written: a copy's destination) whose landed write a resume counted
    before its reader came to them, each with the counters that added. Thread-safe."""

    def __init__(self, counted: Mapping[str, Sequence[str]] | None = None) -> None:
        self._counted: dict[str, tuple[str, ...]] = {
            str(path): tuple(str(name) for name in names) for path, names in (counted or {}).items()
        }
        self._unclaimed = dict(self._counted)
        self._lock = threading.Lock()

    def claim(self, path: str) -> tuple[str, ...] | None:
        """The counters ``path`` added, the first time this process's reader comes to it (then the
        reader does not count it again if it finds it unchanged, or takes them back if not)."""
        if not self._unclaimed:
            return None
        with self._lock:
            return self._unclaimed.pop(path, None)

    def note(self, path: str, counters: Sequence[str]) -> Counter[str]:
        """Count ``path``'s landed write as ``counters``; returns what that changes in the counts
        (nothing when an earlier resume counted it so already)."""
        names = tuple(counters)
        with self._lock:
            before = self._counted.get(path, ())
            self._counted[path] = names
            self._unclaimed[path] = names
        delta: Counter[str] = Counter(names)
        delta.subtract(before)
        return delta

    def record(self) -> dict[str, list[str]]:
        """For the checkpoint: every path counted so, whether this process's reader came to it or
        not (a batch that did may not be settled yet when the run stops again)."""
        with self._lock:
            return {path: list(names) for path, names in self._counted.items()}


@dataclass(frozen=True, slots=True)
class Landed:
    """One landed write a checkpoint did not count: the counters it adds, and the outcome entry to
    journal when the stopped process could not."""

    path: str
    counters: tuple[str, ...]
    outcome: JournalEntry | None


def settle(
    store: Store, target: Target, transform: Transform, entries: Iterable[JournalEntry], *, checked: bool
) -> list[Landed]:
    """The writes of ``entries`` (the journal members a checkpoint does not count) that landed.

    For each path its last write sent counts, with the outcome journalled after it if any. Without
    one, the document is read: it holds what was sent (its digest is the entry's ``leaves``; in a
    journal from before those, the transform of the before-image, or for a copy of its source) or,
    for a delete, is gone. ``checked``: the migration's inline rules were
    checked on each document it updated or created, so those count as checked as well.
    """
    sent: dict[str, JournalEntry] = {}
    outcomes: dict[str, JournalEntry] = {}
    for entry in entries:
        if entry.kind in ("before", "created"):
            sent[entry.path] = entry
            outcomes.pop(entry.path, None)
        elif entry.kind in ("written", "deleted") and entry.path in sent:
            outcomes[entry.path] = entry
    paths = list(sent)
    found: list[Landed] = []
    for start in range(0, len(paths), _READ_BATCH):
        chunk = paths[start : start + _READ_BATCH]
        sources = {
            path: _source_path(target, sent[path])
            for path in chunk
            if target.copy_to and sent[path].leaves is None
        }
        wanted = sorted({source for source in sources.values() if source is not None})
        origins = dict(zip(wanted, store.get_many(wanted), strict=True))
        for path, now in zip(chunk, store.get_many(chunk), strict=True):
            source = sources.get(path)
            origin = origins.get(source) if source is not None else None
            landed = _landed(target, transform, sent[path], outcomes.get(path), now, origin)
            if landed is None:
                continue
            outcome = None
            if path not in outcomes:
                outcome = (
                    JournalEntry("deleted", path)
                    if landed == "deleted"
                    else JournalEntry("written", path, update_time=now.update_time if now else None)
                )
            counters = [landed]
            if checked and landed != "deleted":
                counters.append("checked")
            if not target.copy_to and not _readable(target, now):
                counters.append("read")  # read by the stopped process, and not read again now
            found.append(Landed(path, tuple(counters), outcome))
    return found


def _source_path(target: Target, entry: JournalEntry) -> str | None:
    """The document a copy's write was made from (journals from before ``source`` was recorded:
    the source collection's document of the same id, which a collection group cannot tell)."""
    if entry.source is not None:
        return entry.source
    return None if target.group else f"{target.collection}/{entry.path.rsplit('/', 1)[-1]}"


def _landed(
    target: Target,
    transform: Transform,
    sent: JournalEntry,
    outcome: JournalEntry | None,
    now: Document | None,
    origin: Document | None,
) -> str | None:
    """``updated``, ``created`` or ``deleted`` if the write ``sent`` landed, else None."""
    if outcome is not None:
        if outcome.kind == "deleted":
            return "deleted"
        return "created" if sent.kind == "created" else "updated"
    if sent.leaves is not None:  # what the write leaves stored: told exactly, up() not run again
        if sent.leaves == "":
            return "deleted" if now is None and sent.kind == "before" else None
        if now is None or digest_of(now.data) != sent.leaves:
            return None
        return "created" if sent.kind == "created" else "updated"
    if target.copy_to:  # a journal from before ``leaves``: what up() makes of it now
        if origin is None:
            return None  # its source is gone: what was sent cannot be told
    elif sent.kind == "before" and sent.data is not None:
        origin = Document(sent.path, sent.data, sent.create_time, sent.update_time)
    else:
        return None
    try:
        result = transform(DocView(origin))
    except Exception:  # the same transform failed: the pipeline meets it again
        return None
    if result is UNCHANGED and target.copy_to:
        result = copy_data(origin.data)
    if result is DELETE:
        return "deleted" if now is None and sent.kind == "before" else None
    if not isinstance(result, dict) or now is None:
        return None
    expected, _ = as_stored(result)
    if not values_equal(now.data, expected):
        return None
    return "created" if sent.kind == "created" else "updated"


def _readable(target: Target, now: Document | None) -> bool:
    """Whether the resume's reader comes to this document (it exists and still matches the
    target's filters)."""
    return now is not None and all(matches(now.data, condition) for condition in target.filters)

"""A dry run's copy-on-write view of a store: writes change only the view, reads see them.

Why: a dry run of several steps (a rollback of several migrations, newest first) must show each
step the data the earlier steps would leave, or its counts, conflicts and mismatches are not the
ones the execute will meet. Running the same code as the execute against this view, instead of a
separate "what would happen" path, makes the prediction the execute's own logic.

The view's own writes are read as they are now; every other document as ``inner`` gives it, at the
read time asked for (a :class:`~docshift.store.base.SnapshotStore` under the view pins one).
The documents a write touches are copied from the store into a :class:`MemoryStore`, which then
applies the write with the store's semantics (update-time guards, server update times, value
normalisation, limits). Only touched documents are held in memory; with ``retain_writes`` off
(the last step, which nothing reads after), only those of the latest commit.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
from collections.abc import Iterator, Sequence

from docshift.store.base import DelegatingStore, Document, Query, Store, Write, WriteResult
from docshift.store.memory import MemoryStore
from docshift.values import Timestamp

__all__ = ["SimulatedStore"]


def _name_key(document: Document) -> tuple[str, ...]:
    return tuple(document.path.split("/"))


class SimulatedStore(DelegatingStore):
    """Reads from ``inner`` overlaid with the writes made so far; writes never reach ``inner``."""

    def __init__(self, inner: Store, *, retain_writes: bool = True) -> None:
        super().__init__(inner)
        self.retain_writes = retain_writes
        """Off: a commit first forgets the previous commit's writes (nothing reads them again)."""
        self._view = MemoryStore(inner.info.project, inner.info.database)
        self._touched: set[str] = set()
        self._latest: list[str] = []
        self._lock = threading.Lock()

    def _is_touched(self, paths: Sequence[str]) -> list[bool]:
        with self._lock:
            return [path in self._touched for path in paths]

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        touched = self._is_touched(paths)
        real = iter(
            self.inner.get_many(
                [p for p, t in zip(paths, touched, strict=True) if not t], read_time=read_time
            )
            if not all(touched)
            else []
        )
        mine = iter(
            self._view.get_many([p for p, t in zip(paths, touched, strict=True) if t]) if any(touched) else []
        )
        return [next(mine) if t else next(real) for t in touched]

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        with self._lock:
            touched = frozenset(self._touched)
        if not touched:
            yield from self.inner.stream(query, read_time=read_time)
            return
        unlimited = dataclasses.replace(query, limit=None)
        real = (doc for doc in self.inner.stream(unlimited, read_time=read_time) if doc.path not in touched)
        merged = heapq.merge(real, self._view.stream(unlimited), key=_name_key)
        yield from merged if query.limit is None else itertools.islice(merged, query.limit)

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        if not self._touched:
            return self.inner.count(query, read_time=read_time)
        return sum(1 for _ in self.stream(dataclasses.replace(query, keys_only=True), read_time=read_time))

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        found = set(self.inner.list_collections(document_path, read_time=read_time))
        return sorted(found | set(self._view.list_collections(document_path)))

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        with self._lock:
            if not self.retain_writes and self._latest:
                self._forget(self._latest)
                self._latest = []
            fresh = list(dict.fromkeys(w.path for w in writes if w.path not in self._touched))
        if fresh:
            self._view.load(doc for doc in self.inner.get_many(fresh) if doc is not None)
            with self._lock:
                self._touched.update(fresh)
        results = self._view.commit(writes)
        if not self.retain_writes:
            with self._lock:
                self._latest.extend(w.path for w in writes)
        return results

    def _forget(self, paths: list[str]) -> None:
        """Reads of ``paths`` go to the store again (called with the lock held)."""
        self._view.commit([Write.delete(path) for path in dict.fromkeys(paths)])
        self._touched.difference_update(paths)

    def close(self) -> None:
        """A view: the store it overlays belongs to whoever opened it."""

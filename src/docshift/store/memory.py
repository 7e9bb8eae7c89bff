"""An in-memory store with Firestore's semantics: for tests (:mod:`docshift.testing` exports it) and
for the dry-run rollback's copy-on-write view (``store/simulated.py``).

It keeps name order, cursors, filters, preconditions, per-write results, server update times and the
document limits the way the emulator does; ``tests/integration/test_store_contract.py`` runs the same
behavioural suite against both so the two cannot drift apart.

Reads at a ``read_time`` are answered from the versions it keeps: every document's states with the
time each became current (a deletion is a version without a document), kept for ``keeps_seconds``
(an hour, as Cloud Firestore keeps them) after they were replaced and then dropped, so memory stays
bounded by the writes of that window.
"""

from __future__ import annotations

import bisect
import collections
import copy
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime

from docshift.errors import ConflictError, PermanentError
from docshift.store.base import (
    Document,
    FieldPath,
    Query,
    Store,
    StoreInfo,
    Write,
    WriteKind,
    WriteResult,
    split_path,
)
from docshift.store.semantics import (
    VERSION_SECONDS,
    apply_field_updates,
    document_problem,
    error_hint,
    matches,
    query_problem,
    read_time_error,
    read_time_problem,
)
from docshift.values import Reference, Timestamp, Value

__all__ = ["MemoryStore"]

_CONFLICT = error_hint("FAILED_PRECONDITION", guarded=True)


def _name_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def _stored(value: Value, project: str) -> Value:
    """A fresh copy of ``value`` as Firestore stores it, so reads give what the emulator gives.

    Timestamp values keep only microseconds (Firestore truncates), datetimes become Timestamps,
    tuples arrays, bytearrays bytes, subclasses (IntEnum, StrEnum) their plain type, and a reference
    without project or database gets this store's project and ``(default)``.
    """
    kind = type(value)
    if kind is dict:
        return {key: _stored(item, project) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_stored(item, project) for item in value]
    if kind is Timestamp:
        return value.stored
    if isinstance(value, datetime):
        return Timestamp.from_datetime(value)
    if kind is bytearray:
        return bytes(value)
    if kind is Reference and not (value.project and value.database):
        return Reference(value.path, value.project or project, value.database or "(default)")
    if kind not in (bool, int, float, str) and isinstance(value, bool | int | float | str):
        base = next(b for b in (bool, int, float, str) if isinstance(value, b))
        return base(value)
    return value  # immutable (str, bytes, GeoPoint, ...); other types are refused by document_problem


def _apply_fields(data: dict[str, Value], fields: Mapping[FieldPath, Value], project: str) -> None:
    apply_field_updates(data, fields, lambda value: _stored(value, project))


_Version = tuple[Timestamp, Document | None]
"""A document's state from a moment on: the document, or None once it was deleted."""


def _wall_clock() -> Timestamp:
    micros = time.time_ns() // 1000
    return Timestamp(micros // 1_000_000, (micros % 1_000_000) * 1000)


class MemoryStore(Store):
    """Documents in a dict, guarded by one lock. Thread-safe, like the real client.

    ``keeps_seconds``: how long a replaced version stays readable at a ``read_time``; ``clock``:
    the store's time (tests move it instead of waiting)."""

    def __init__(
        self,
        project: str = "memory",
        database: str = "(default)",
        *,
        keeps_seconds: int = VERSION_SECONDS,
        clock: Callable[[], Timestamp] = _wall_clock,
    ) -> None:
        self.info = StoreInfo(project=project, database=database, emulator_host="memory")
        self.keeps_seconds = keeps_seconds
        self._clock = clock
        self._docs: dict[str, Document] = {}
        self._versions: dict[str, list[_Version]] = {}
        """Per path with a replaced version still kept: its versions, oldest first, the last current."""
        self._replaced: collections.deque[tuple[Timestamp, str]] = collections.deque()
        """(when, path) of every replacement, oldest first: what to drop once it is out of reach."""
        self._lock = threading.Lock()
        self._last_micros = 0

    def _now(self) -> Timestamp:
        now = self._clock()
        micros = now.seconds * 1_000_000 + now.nanos // 1000
        if micros >= self._last_micros:
            return now
        return Timestamp(self._last_micros // 1_000_000, (self._last_micros % 1_000_000) * 1000)

    def _next_time(self) -> Timestamp:
        now = self._clock()
        micros = max(now.seconds * 1_000_000 + now.nanos // 1000, self._last_micros + 1)
        self._last_micros = micros
        return Timestamp(micros // 1_000_000, (micros % 1_000_000) * 1000)

    def snapshot_time(self) -> Timestamp:
        with self._lock:
            return self._now()

    @property
    def versions_kept(self) -> int:
        """How many replaced versions (deletions included) are kept for reads in the past."""
        with self._lock:
            return sum(len(versions) - 1 for versions in self._versions.values())

    def _check_read_time(self, read_time: Timestamp) -> None:
        """Refuse what the emulator refuses, with its codes and messages (called with the lock held)."""
        problem = read_time_problem(read_time, self._now(), self.keeps_seconds)
        if problem is not None:
            code, message = problem
            error = read_time_error(code, message, read_time)
            assert error is not None
            raise error

    def _documents_at(self, read_time: Timestamp | None) -> list[Document]:
        """Every document as it was at ``read_time`` (now, when None)."""
        with self._lock:
            if read_time is None:
                return list(self._docs.values())
            self._check_read_time(read_time)
            found = [doc for path, doc in self._docs.items() if path not in self._versions]
            found.extend(
                doc for versions in self._versions.values() if (doc := _version_at(versions, read_time))
            )
        return [doc for doc in found if doc.update_time is None or doc.update_time <= read_time]

    def _one_at(self, path: str, read_time: Timestamp) -> Document | None:
        versions = self._versions.get(path)
        doc = self._docs.get(path) if versions is None else _version_at(versions, read_time)
        if doc is not None and doc.update_time is not None and doc.update_time > read_time:
            return None
        return doc

    def _selected(self, query: Query, read_time: Timestamp | None = None) -> list[Document]:
        problem = query_problem(query.filters)
        if problem:  # refused as a whole, as Firestore refuses it
            raise PermanentError(problem, code="INVALID_ARGUMENT", hint=error_hint("INVALID_ARGUMENT"))
        parts = split_path(query.collection)
        docs = self._documents_at(read_time)
        if query.group:
            chosen = [d for d in docs if d.path.split("/")[-2] == parts[0]]
        elif query.descendants:
            prefix = tuple(parts)
            chosen = [d for d in docs if _name_key(d.path)[: len(prefix)] == prefix]
        else:
            chosen = [d for d in docs if d.collection == query.collection]
        chosen = [d for d in chosen if all(matches(d.data, f) for f in query.filters)]
        chosen.sort(key=lambda d: _name_key(d.path))
        if query.start_after is not None:
            after = _name_key(query.start_after)
            chosen = [d for d in chosen if _name_key(d.path) > after]
        if query.end_at is not None:
            end = _name_key(query.end_at)
            chosen = [d for d in chosen if _name_key(d.path) <= end]
        if query.limit is not None:
            chosen = chosen[: query.limit]
        return chosen

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        for doc in self._selected(query, read_time):
            data = {} if query.keys_only else copy.deepcopy(doc.data)
            yield Document(doc.path, data, doc.create_time, doc.update_time)

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        with self._lock:
            if read_time is None:
                found = [self._docs.get(path) for path in paths]
            else:
                self._check_read_time(read_time)
                found = [self._one_at(path, read_time) for path in paths]
        return [
            Document(d.path, copy.deepcopy(d.data), d.create_time, d.update_time) if d else None
            for d in found
        ]

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        return len(self._selected(query, read_time))

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        depth = 0 if document_path is None else len(split_path(document_path))
        prefix = () if document_path is None else _name_key(document_path)
        keys = [_name_key(doc.path) for doc in self._documents_at(read_time)]
        found = {key[depth] for key in keys if len(key) > depth + 1 and key[:depth] == prefix}
        return sorted(found)

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        paths = [write.path for write in writes]
        if len(set(paths)) != len(paths):
            raise PermanentError(
                "the same document cannot be written more than once in a single request",
                code="INVALID_ARGUMENT",
                hint="send each document's writes in separate commits",
            )
        with self._lock:
            results = [self._apply(write) for write in writes]
            self._forget_unreachable()
            return results

    def _apply(self, write: Write) -> WriteResult:
        path = write.path
        parts = split_path(path)
        if len(parts) % 2:
            error = PermanentError(
                f"{path!r} is not a document path",
                code="INVALID_ARGUMENT",
                hint=error_hint("INVALID_ARGUMENT"),
            )
            return WriteResult(path, error=error)
        current = self._docs.get(path)
        conflict = self._conflict(write, current)
        if conflict is not None:
            return WriteResult(path, error=conflict)
        if write.kind == WriteKind.DELETE:
            stamp = self._next_time()
            if current is not None:
                self._replace(path, current, stamp, None)
            return WriteResult(path, update_time=stamp)
        if write.kind == WriteKind.UPDATE:
            data = copy.deepcopy(current.data) if current else {}
            _apply_fields(data, write.fields or {}, self.info.project)
        else:
            data = _stored(dict(write.data or {}), self.info.project)
        problem = document_problem(path, data)
        if problem:
            refused = PermanentError(
                problem, code="INVALID_ARGUMENT", path=path, hint=error_hint("INVALID_ARGUMENT")
            )
            return WriteResult(path, error=refused)
        stamp = self._next_time()
        created = current.create_time if current else stamp
        written = Document(path, data, created, stamp)
        if current is not None or path in self._versions:
            self._replace(path, current, stamp, written)
        else:
            self._docs[path] = written  # a first version: nothing older to keep
        return WriteResult(path, update_time=stamp)

    def _replace(self, path: str, current: Document | None, stamp: Timestamp, new: Document | None) -> None:
        """Make ``new`` (None: deleted) the current version from ``stamp`` on, keeping the one it
        replaces for reads in the past (called with the lock held)."""
        versions = self._versions.get(path)
        if versions is None:
            since = current.update_time if current is not None and current.update_time else Timestamp(0, 0)
            versions = self._versions[path] = [(since, current)]
        versions.append((stamp, new))
        self._replaced.append((stamp, path))
        if new is None:
            self._docs.pop(path, None)
        else:
            self._docs[path] = new

    def _forget_unreachable(self) -> None:
        """Drop the versions no read can reach any more: replaced before the oldest read time the
        store serves (called with the lock held)."""
        now = self._now()
        oldest = Timestamp(max(now.seconds - self.keeps_seconds, 0), now.nanos)
        while self._replaced and self._replaced[0][0] <= oldest:
            _, path = self._replaced.popleft()
            versions = self._versions.get(path)
            if versions is None:
                continue
            while len(versions) > 1 and versions[1][0] <= oldest:
                versions.pop(0)
            if len(versions) == 1:
                del self._versions[path]  # only the current version (or deletion) is left

    @staticmethod
    def _conflict(write: Write, current: Document | None) -> ConflictError | None:
        guard, path = write.precondition, write.path
        if guard is None:
            return None
        if guard.exists is True and current is None:
            return ConflictError("no document to update", code="NOT_FOUND", path=path, hint=_CONFLICT)
        if guard.exists is False and current is not None:
            return ConflictError("document already exists", code="ALREADY_EXISTS", path=path, hint=_CONFLICT)
        if guard.update_time is not None and (current is None or current.update_time != guard.update_time):
            message = "the document changed since it was read"
            return ConflictError(message, code="FAILED_PRECONDITION", path=path, hint=_CONFLICT)
        return None

    def load(self, documents: Iterable[Document]) -> None:
        """Put documents exactly as given, server times included: a copy of another store's."""
        copies = [
            Document(d.path, copy.deepcopy(d.data), d.create_time, d.update_time, d.size) for d in documents
        ]
        with self._lock:
            for doc in copies:
                self._versions.pop(doc.path, None)  # as given, without a past
                self._docs[doc.path] = doc

    def clear(self) -> None:
        with self._lock:
            self._docs.clear()
            self._versions.clear()
            self._replaced.clear()


def _version_at(versions: list[_Version], read_time: Timestamp) -> Document | None:
    """The version current at ``read_time``: the last that began no later than it."""
    index = bisect.bisect_right(versions, read_time, key=lambda version: version[0])
    return versions[index - 1][1] if index else None

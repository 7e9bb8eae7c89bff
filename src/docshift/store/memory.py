"""An in-memory store with Firestore's semantics: for tests (:mod:`docshift.testing` exports it) and
for the dry-run rollback's copy-on-write view (``store/simulated.py``).

It keeps name order, cursors, filters, preconditions, per-write results, server update times and the
document limits the way the emulator does; ``tests/integration/test_store_contract.py`` runs the same
behavioural suite against both so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime

from docshift.errors import ConflictError, PermanentError
from docshift.store.base import (
    DELETE_FIELD,
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
from docshift.store.semantics import document_problem, error_hint, matches, query_problem
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
    for field_path, value in fields.items():
        parent: dict[str, Value] = data
        for segment in field_path[:-1]:
            child = parent.get(segment)
            if not isinstance(child, dict):
                if value is DELETE_FIELD:
                    break
                child = {}
                parent[segment] = child
            parent = child
        else:
            if value is DELETE_FIELD:
                parent.pop(field_path[-1], None)
            else:
                parent[field_path[-1]] = _stored(value, project)


class MemoryStore(Store):
    """Documents in a dict, guarded by one lock. Thread-safe, like the real client."""

    def __init__(self, project: str = "memory", database: str = "(default)") -> None:
        self.info = StoreInfo(project=project, database=database, emulator_host="memory")
        self._docs: dict[str, Document] = {}
        self._lock = threading.Lock()
        self._last_micros = 0

    def _next_time(self) -> Timestamp:
        micros = max(time.time_ns() // 1000, self._last_micros + 1)
        self._last_micros = micros
        return Timestamp(micros // 1_000_000, (micros % 1_000_000) * 1000)

    def _selected(self, query: Query) -> list[Document]:
        problem = query_problem(query.filters)
        if problem:  # refused as a whole, as Firestore refuses it
            raise PermanentError(problem, code="INVALID_ARGUMENT", hint=error_hint("INVALID_ARGUMENT"))
        parts = split_path(query.collection)
        with self._lock:
            docs = list(self._docs.values())
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

    def stream(self, query: Query) -> Iterator[Document]:
        for doc in self._selected(query):
            data = {} if query.keys_only else copy.deepcopy(doc.data)
            yield Document(doc.path, data, doc.create_time, doc.update_time)

    def get_many(self, paths: Sequence[str]) -> list[Document | None]:
        with self._lock:
            found = [self._docs.get(path) for path in paths]
        return [
            Document(d.path, copy.deepcopy(d.data), d.create_time, d.update_time) if d else None
            for d in found
        ]

    def count(self, query: Query) -> int:
        return len(self._selected(query))

    def list_collections(self, document_path: str | None = None) -> list[str]:
        depth = 0 if document_path is None else len(split_path(document_path))
        prefix = () if document_path is None else _name_key(document_path)
        with self._lock:
            keys = [_name_key(path) for path in self._docs]
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
            return [self._apply(write) for write in writes]

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
            self._docs.pop(path, None)
            return WriteResult(path, update_time=self._next_time())
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
        self._docs[path] = Document(path, data, created, stamp)
        return WriteResult(path, update_time=stamp)

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
            self._docs.update((d.path, d) for d in copies)

    def clear(self) -> None:
        with self._lock:
            self._docs.clear()

"""The store interface the engine talks to: documents, queries with name cursors, guarded writes.

Paths are relative to the database's document root (``users/alice``, ``users/alice/orders/o1``).
Streams are always in document-name order so that "the last path finished" is a complete cursor.
Every read takes an optional ``read_time``: the documents as they were at that moment (Firestore's
consistent snapshot reads), instead of as they are now; :class:`SnapshotStore` pins one for a
whole command.
``commit`` is deliberately non-atomic with one result per write (Firestore's BatchWrite): one
document's conflict or bad value must never fail its neighbours.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from docshift.errors import StoreError, UsageError
from docshift.values import Timestamp, Value, values_equal

__all__ = [
    "DELETE_FIELD",
    "DelegatingStore",
    "Document",
    "FieldPath",
    "Filter",
    "Op",
    "Precondition",
    "Query",
    "SnapshotStore",
    "Store",
    "Write",
    "WriteKind",
    "WriteResult",
    "collection_of",
    "parse_field_path",
    "split_path",
    "write_landed",
]

FieldPath = tuple[str, ...]
"""A field path as segments, so names containing dots or backticks stay unambiguous."""


class _DeleteField:
    """Marker in an update: remove this field."""

    _instance: _DeleteField | None = None

    def __new__(cls) -> _DeleteField:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DELETE_FIELD"


DELETE_FIELD: Any = _DeleteField()


class Op(enum.StrEnum):
    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_IN = "not-in"
    ARRAY_CONTAINS = "array-contains"
    ARRAY_CONTAINS_ANY = "array-contains-any"


def parse_field_path(text: str) -> FieldPath:
    """``a.b`` -> ("a", "b"); backticks quote segments with dots: ```a.b`.c`` -> ("a.b", "c")."""
    segments: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "`":
            quoted = not quoted
        elif char == "\\" and quoted and index + 1 < len(text):
            index += 1
            current.append(text[index])
        elif char == "." and not quoted:
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    segments.append("".join(current))
    if quoted or any(not segment for segment in segments):
        raise UsageError(f"invalid field path {text!r}", hint="use a.b, and `quote` names with dots")
    return tuple(segments)


@dataclass(frozen=True, slots=True)
class Filter:
    field: FieldPath
    op: Op
    value: Value

    @classmethod
    def parse(cls, field_path: str, op: str, value: Value) -> Filter:
        try:
            operator = Op(op)
        except ValueError:
            allowed = ", ".join(o.value for o in Op)
            raise UsageError(f"unsupported filter operator {op!r}", hint=f"use one of {allowed}") from None
        if operator in (Op.IN, Op.NOT_IN, Op.ARRAY_CONTAINS_ANY) and not isinstance(value, list):
            raise UsageError(
                f"filter {field_path} {op} needs a list value, got {value!r}",
                hint=f'write e.g. ("{field_path}", "{op}", ["a", "b"])',
            )
        return cls(parse_field_path(field_path), operator, value)


def split_path(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    if not path.strip("/") or any(not part for part in parts):
        raise UsageError(f"invalid path {path!r}", hint="paths look like users or users/alice/orders")
    return parts


def collection_of(document_path: str) -> str:
    """The collection path a document lives in."""
    return document_path.rsplit("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Query:
    """Documents of one collection (or, with ``group``, every collection with that id), name order.

    ``start_after`` and ``end_at`` are document paths bounding the name range (exclusive, inclusive),
    which is how resumable cursors and shards are expressed.

    ``descendants`` also streams every document below the collection, in subcollections at any depth
    (also under documents that do not exist), in name order: ``users/a``, ``users/a/orders/o1``,
    ``users/b``. One query instead of a listing per document is what makes recursive backups fast.
    """

    collection: str
    group: bool = False
    filters: tuple[Filter, ...] = ()
    start_after: str | None = None
    end_at: str | None = None
    limit: int | None = None
    keys_only: bool = False
    descendants: bool = False

    def __post_init__(self) -> None:
        parts = split_path(self.collection)
        if self.group and len(parts) != 1:
            raise UsageError(
                f"a collection group is one id, got {self.collection!r}",
                hint='a group is a collection id such as "orders", found at any depth',
            )
        if self.descendants and (self.group or self.filters):
            raise UsageError(
                "a query with descendants takes neither a collection group nor filters",
                hint="filter the documents after reading them",
            )
        if not self.group and len(parts) % 2 != 1:
            raise UsageError(
                f"{self.collection!r} is not a collection path (it has an even number of segments)",
                hint="a collection path has an odd number of segments: users or users/alice/orders",
            )
        if self.limit is not None and self.limit < 0:
            raise UsageError("a query limit cannot be negative", hint="pass a limit of 0 or more, or None")


@dataclass(frozen=True, slots=True)
class Document:
    """One document as read: its path, a data dict of docshift values, and its server times."""

    path: str
    data: dict[str, Value]
    create_time: Timestamp | None = None
    update_time: Timestamp | None = None
    size: int | None = None
    """Approximate stored size in bytes when the store knows it cheaply (the wire size)."""

    @property
    def id(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def collection(self) -> str:
        return collection_of(self.path)


@dataclass(frozen=True, slots=True)
class Precondition:
    """Write only if the document exists (or not), or still has exactly this update time."""

    exists: bool | None = None
    update_time: Timestamp | None = None


class WriteKind(enum.StrEnum):
    SET = "set"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Write:
    """One document write. Build with :meth:`set`, :meth:`create`, :meth:`update`, :meth:`delete`."""

    kind: WriteKind
    path: str
    data: Mapping[str, Value] | None = None
    fields: Mapping[FieldPath, Value] | None = None
    precondition: Precondition | None = None
    checked: bool = False
    """The caller already checked Firestore's limits on this write (the engine checks every
    transformed document), so a store may skip its own check before sending. The store itself
    still refuses what breaks them; only the duplicate work on the client is saved."""

    @classmethod
    def set(
        cls,
        path: str,
        data: Mapping[str, Value],
        *,
        update_time: Timestamp | None = None,
        checked: bool = False,
    ) -> Write:
        """Replace the whole document (creating it if missing, unless guarded by update time)."""
        guard = Precondition(update_time=update_time) if update_time else None
        return cls(WriteKind.SET, path, data=data, precondition=guard, checked=checked)

    @classmethod
    def create(cls, path: str, data: Mapping[str, Value], *, checked: bool = False) -> Write:
        """Create; fails with a conflict when the document already exists."""
        return cls(
            WriteKind.CREATE, path, data=data, precondition=Precondition(exists=False), checked=checked
        )

    @classmethod
    def update(
        cls,
        path: str,
        fields: Mapping[FieldPath, Value],
        *,
        update_time: Timestamp | None = None,
        checked: bool = False,
    ) -> Write:
        """Change only these field paths (``DELETE_FIELD`` removes one); the document must exist."""
        guard = Precondition(update_time=update_time) if update_time else Precondition(exists=True)
        return cls(WriteKind.UPDATE, path, fields=fields, precondition=guard, checked=checked)

    @classmethod
    def delete(cls, path: str, *, update_time: Timestamp | None = None) -> Write:
        guard = Precondition(update_time=update_time) if update_time else None
        return cls(WriteKind.DELETE, path, precondition=guard)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened to one write: ``update_time`` when applied, ``error`` when not."""

    path: str
    update_time: Timestamp | None = None
    error: StoreError | None = None
    resent: bool = False
    """The write was sent again after a request whose reply was lost (a reset connection, a
    deadline): that request may have applied it, so a precondition refusal of the resent write
    can be the write's own earlier success. :func:`write_landed` tells the two apart."""
    maybe_applied: bool = False
    """With a transient ``error``: the write was in a request that failed as a whole (its reply
    lost), so the store may have applied it; the retry layer then marks its resend ``resent``."""

    @property
    def ok(self) -> bool:
        return self.error is None


def write_landed(write: Write, now: Document | None, data: Mapping[str, Value] | None = None) -> bool:
    """Whether ``now``, read after ``write`` was refused, is exactly what ``write`` leaves behind.

    For a resent write (:attr:`WriteResult.resent`) that means its first send was applied: the
    stored data equal what was sent (a delete: the document is gone). ``data`` is the whole
    document the write leaves, needed for an update, which names only the fields it changes.
    """
    if write.kind == WriteKind.DELETE:
        return now is None
    expected = data if data is not None else write.data
    if now is None or expected is None:
        return False
    return values_equal(now.data, dict(expected))


@dataclass
class StoreInfo:
    """Where a store points; shown in confirmations, reports and ``doctor``."""

    project: str
    database: str = "(default)"
    emulator_host: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_emulator(self) -> bool:
        return self.emulator_host is not None

    def describe(self) -> str:
        where = f"emulator {self.emulator_host}" if self.emulator_host else "Cloud Firestore"
        return f"project {self.project}, database {self.database} ({where})"


class Store(abc.ABC):
    """What docshift needs from a document store. Implementations: memory, Firestore.

    ``read_time`` on a read: the store as it was at that moment (a consistent snapshot); ``None``
    reads the live data. A store refuses a read time it cannot serve (in the future, older than it
    keeps versions, or finer than a microsecond) with a :class:`~docshift.errors.PermanentError`
    whose hint says which (see :func:`docshift.store.semantics.read_time_error`).
    """

    info: StoreInfo

    @abc.abstractmethod
    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        """Documents matching ``query`` in name order, after ``start_after``, up to ``end_at``."""

    @abc.abstractmethod
    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        """The documents at ``paths`` (``None`` where missing), in the order asked."""

    @abc.abstractmethod
    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        """How many documents ``query`` would stream (ignoring ``keys_only``)."""

    @abc.abstractmethod
    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        """Apply writes independently (not atomically); one result per write, in order.

        Per-write failures come back as results; only a failure of the whole request raises.
        A request may not name the same document twice.
        """

    @abc.abstractmethod
    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        """Ids of the collections directly under a document (or the database root), sorted."""

    def partition(self, query: Query, count: int, *, read_time: Timestamp | None = None) -> list[str] | None:
        """Up to ``count - 1`` split paths dividing ``query`` evenly, or ``None`` if unsupported."""
        return None

    def snapshot_time(self) -> Timestamp:
        """A read time the store can serve now, by its own clock (a client clock running ahead of
        the store's would ask for a read in the future, which the store refuses)."""
        return Timestamp.now().stored

    def get(self, path: str, *, read_time: Timestamp | None = None) -> Document | None:
        return self.get_many([path], read_time=read_time)[0]

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DelegatingStore(Store):
    """Passes every call to ``inner``. Wrappers that watch or disturb a store (failure injection,
    tests) extend this and override only the calls they change."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.info = inner.info

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        return self.inner.stream(query, read_time=read_time)

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        return self.inner.get_many(paths, read_time=read_time)

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        return self.inner.count(query, read_time=read_time)

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        return self.inner.commit(writes)

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        return self.inner.list_collections(document_path, read_time=read_time)

    def partition(self, query: Query, count: int, *, read_time: Timestamp | None = None) -> list[str] | None:
        return self.inner.partition(query, count, read_time=read_time)

    def snapshot_time(self) -> Timestamp:
        return self.inner.snapshot_time()

    def close(self) -> None:
        self.inner.close()


class SnapshotStore(DelegatingStore):
    """A read-only view of ``inner`` as it was at ``read_time``: every read is pinned to it.

    Why: a dry run, ``verify``, a ``validate`` scan, shard planning or a backup that reads for
    minutes would otherwise see some documents before and others after the application's writes
    in between; pinned, they see one consistent state. A read given its own ``read_time`` keeps it.
    Writing through the view is refused: only reads are pinned (executions read live data, which
    their update-time guards make safe), and a write "at" a past time means nothing.
    """

    def __init__(self, inner: Store, read_time: Timestamp) -> None:
        super().__init__(inner)
        self.read_time = read_time

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        return self.inner.stream(query, read_time=read_time or self.read_time)

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        return self.inner.get_many(paths, read_time=read_time or self.read_time)

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        return self.inner.count(query, read_time=read_time or self.read_time)

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        return self.inner.list_collections(document_path, read_time=read_time or self.read_time)

    def partition(self, query: Query, count: int, *, read_time: Timestamp | None = None) -> list[str] | None:
        return self.inner.partition(query, count, read_time=read_time or self.read_time)

    def snapshot_time(self) -> Timestamp:
        return self.read_time

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        raise UsageError(
            f"cannot write through a snapshot of the store at {self.read_time}",
            hint="only reads are pinned to a read time; write through the live store",
        )

    def close(self) -> None:
        """A view: the store it reads belongs to whoever opened it."""

"""What a migration is, as the engine sees it, and what ``up``/``down`` receive and return.

A migration file is a plain Python module (like an Alembic revision)::

    description = "split full name"
    collection = "users"                 # or: collection_group = "orders"
    where = [("status", "==", "active")] # optional
    limit = None                         # optional
    copy_to = None                       # optional: write results to another collection

    def up(doc: DocView) -> Result:
        data = doc.data
        first, _, last = data.pop("full_name", "").partition(" ")
        return {**data, "first": first, "last": last}

``up``/``down`` get a read-only :class:`DocView` and return the new data (a dict), :data:`DELETE` to
delete the document, or :data:`UNCHANGED` (returning equal data also means unchanged: no write).
Transforms must be idempotent: ``up`` on an already-migrated document returns it unchanged.

A *script* migration (:attr:`MigrationKind.SCRIPT`) has ``apply(ctx)`` instead of ``up``, for changes
that are not one document in, one document out; it reads and writes through its context
(:class:`docshift.engine.script.ScriptContext`) and has no target: see docs/script-migrations.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

from docshift.store.base import Document, Filter, Query
from docshift.values import Timestamp, Value, copy_data, values_equal

__all__ = [
    "DELETE",
    "SCRIPT_TARGET",
    "UNCHANGED",
    "DocView",
    "Migration",
    "MigrationKind",
    "Result",
    "Script",
    "Target",
    "Transform",
    "check_idempotent",
]


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


DELETE: Final[Any] = _Marker("DELETE")
"""Return this from ``up``/``down`` to delete the document."""
UNCHANGED: Final[Any] = _Marker("UNCHANGED")
"""Return this from ``up``/``down`` to leave the document alone."""

Result: TypeAlias = "dict[str, Any] | Any"
"""What a transform returns: new data, ``DELETE`` or ``UNCHANGED``."""


class DocView:
    """A read-only view of one document. ``data`` is a fresh deep copy on every access, so a
    transform may change it freely without touching what was read (which is kept for diffs,
    conflict checks and before-images)."""

    __slots__ = ("_doc",)

    def __init__(self, document: Document) -> None:
        self._doc = document

    @property
    def id(self) -> str:
        return self._doc.id

    @property
    def path(self) -> str:
        return self._doc.path

    @property
    def collection(self) -> str:
        return self._doc.collection

    @property
    def data(self) -> dict[str, Value]:
        data: dict[str, Value] = copy_data(self._doc.data)
        return data

    @property
    def create_time(self) -> Timestamp | None:
        return self._doc.create_time

    @property
    def update_time(self) -> Timestamp | None:
        return self._doc.update_time

    def get(self, field_name: str, default: Value = None) -> Value:
        """A copy of one top-level field (cheaper than copying all of ``data``)."""
        return copy_data(self._doc.data.get(field_name, default))

    def __contains__(self, field_name: object) -> bool:
        return field_name in self._doc.data

    def __repr__(self) -> str:
        return f"DocView({self.path!r})"


Transform: TypeAlias = Callable[[DocView], Any]
Script: TypeAlias = Callable[[Any], Any]
"""A script migration's ``apply(ctx)``; what it returns is ignored."""


class MigrationKind(enum.StrEnum):
    """Which kind of file a migration is: ``up(doc)`` over a target, or ``apply(ctx)``."""

    DOCUMENT = "document"
    SCRIPT = "script"


@dataclass(frozen=True)
class Target:
    """Which documents a migration reads, and where its results go."""

    collection: str
    group: bool = False
    filters: tuple[Filter, ...] = ()
    limit: int | None = None
    copy_to: str | None = None

    def query(self, **bounds: Any) -> Query:
        return Query(self.collection, self.group, self.filters, limit=self.limit, **bounds)

    def describe(self) -> str:
        if self is SCRIPT_TARGET:
            return "a script: apply(ctx) reads and writes what it names"
        kind = "collection group" if self.group else "collection"
        text = f"{kind} {self.collection}"
        if self.filters:
            text += " where " + " and ".join(
                f"{'.'.join(f.field)} {f.op.value} {f.value!r}" for f in self.filters
            )
        if self.limit is not None:
            text += f" (first {self.limit})"
        if self.copy_to:
            text += f" -> copy to {self.copy_to}"
        return text

    def destination(self, source_path: str) -> str:
        """Where the result for ``source_path`` is written (itself unless this is a copy)."""
        if not self.copy_to:
            return source_path
        return f"{self.copy_to}/{source_path.rsplit('/', 1)[-1]}"


SCRIPT_TARGET: Final = Target("(script)")
"""A script migration's target: it has none (its ``apply`` names what it reads and writes). Only
described; the run never streams it (a script is dispatched to the script runner)."""


def _no_transform(doc: DocView) -> Any:
    """A script migration's ``up``: it changes no document one by one (``apply`` does its work)."""
    return UNCHANGED


@dataclass(frozen=True)
class Migration:
    """One loaded migration file."""

    id: str
    name: str
    description: str
    target: Target
    up: Transform
    down: Transform | None = None
    rules: tuple[Any, ...] = ()
    path: Path | None = None
    checksum: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: MigrationKind = MigrationKind.DOCUMENT
    apply: Script | None = None
    """A script migration's ``apply(ctx)`` (``kind`` is then :attr:`MigrationKind.SCRIPT`)."""

    @classmethod
    def script(
        cls,
        migration_id: str,
        name: str,
        description: str,
        apply: Script,
        *,
        path: Path | None = None,
        checksum: str = "",
    ) -> Migration:
        """A script migration: ``apply(ctx)``, no target, no ``up``/``down`` (rollback restores)."""
        return cls(
            migration_id,
            name,
            description,
            SCRIPT_TARGET,
            _no_transform,
            path=path,
            checksum=checksum,
            kind=MigrationKind.SCRIPT,
            apply=apply,
        )

    @property
    def is_script(self) -> bool:
        return self.kind is MigrationKind.SCRIPT

    @property
    def label(self) -> str:
        return f"{self.id}_{self.name}"

    @property
    def reversible(self) -> bool:
        return self.down is not None


def check_idempotent(transform: Transform, samples: Sequence[Document]) -> list[str]:
    """Paths of sample documents where applying ``transform`` twice differs from applying it once."""
    offenders: list[str] = []
    for sample in samples:
        once = transform(DocView(sample))
        if once is DELETE or once is UNCHANGED or not isinstance(once, dict):
            continue
        twice = transform(DocView(Document(sample.path, once, sample.create_time, sample.update_time)))
        if twice is UNCHANGED:
            continue
        if twice is DELETE or not values_equal(twice, once):
            offenders.append(sample.path)
    return offenders

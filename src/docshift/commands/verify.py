"""``docshift verify``: does a copy migration's target hold exactly ``up(source)`` for every source?

Two streaming passes in constant memory (plus 8 bytes per copied document):

1. the source, in batches: ``up`` on each document, the target documents fetched with one
   ``get_many`` per batch and compared exactly (``values_equal``): *missing* when absent,
   *different* (with field diffs) when not equal;
2. the target's keys: a document no source produced is *extra*.

A source for which ``up`` returns ``UNCHANGED`` is copied as it is, so the target must equal the
source; one for which ``up`` raises is counted as ``failed``. Both passes read one snapshot (the
moment verify starts, or ``read_time``): a source and its copy are compared as they were at the
same moment, not with the application's writes between the two reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift import codec
from docshift.commands.validate import find_migration, report_folder
from docshift.config import Config
from docshift.engine.diff import FieldChange, field_changes
from docshift.errors import UsageError
from docshift.migration import DELETE, UNCHANGED, DocView, Migration, Target
from docshift.runfolder.layout import VERIFY_FORMAT
from docshift.store import Query, Store, store_for
from docshift.store.base import Document
from docshift.store.read_time import pin
from docshift.validators.collection import DigestSet, digest
from docshift.values import Timestamp, values_equal

__all__ = ["Difference", "VerifyReport", "verify"]

_BATCH = 300


@dataclass(frozen=True)
class Difference:
    kind: str  # missing, extra, different, failed
    path: str
    source: str | None = None
    detail: str = ""
    changes: tuple[FieldChange, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "source": self.source,
            "detail": self.detail,
            "changes": [
                {
                    "field": ".".join(c.path),
                    "target": codec.encode(c.old),
                    "expected": codec.encode(c.new),
                    "added": c.added,
                    "removed": c.removed,
                }
                for c in self.changes
            ],
        }


@dataclass
class VerifyReport:
    migration_id: str
    label: str
    source: str
    target: str
    source_count: int = 0
    target_count: int = 0
    expected: int = 0
    matched: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("missing", "extra", "different", "failed", "skipped"), 0)
    )
    examples: list[Difference] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    path: Path | None = None
    read_time: Timestamp | None = None
    """The snapshot both sides were read at."""

    @property
    def passed(self) -> bool:
        return not any(self.counts[kind] for kind in ("missing", "extra", "different", "failed"))

    def add(self, difference: Difference, keep: int) -> None:
        self.counts[difference.kind] += 1
        if sum(1 for d in self.examples if d.kind == difference.kind) < keep:
            self.examples.append(difference)

    def summary(self) -> str:
        problems = ", ".join(f"{self.counts[k]:,} {k}" for k in ("missing", "extra", "different", "failed"))
        return (
            f"{self.label}: {self.source_count:,} source and {self.target_count:,} target documents; "
            f"{self.matched:,} of {self.expected:,} expected copies match; {problems}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "label": self.label,
            "source": self.source,
            "target": self.target,
            "source_count": self.source_count,
            "target_count": self.target_count,
            "expected": self.expected,
            "matched": self.matched,
            **self.counts,
            "passed": self.passed,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "at": Timestamp.now().isoformat(),
            "read_time": self.read_time.isoformat() if self.read_time is not None else None,
            "examples": [d.to_json() for d in self.examples],
        }


def verify(
    config: Config,
    migration_id: str,
    *,
    store: Store | None = None,
    examples: int = 20,
    read_time: Timestamp | None = None,
) -> VerifyReport:
    """Compare a copy migration's source and target; the report is saved as
    ``runs_dir/verify-<id>-<time>/report.json``."""
    migration = find_migration(config, migration_id)
    if not migration.target.copy_to:
        raise UsageError(
            f"migration {migration.label} changes documents in place (no copy_to): nothing to compare",
            hint="verify compares a copy migration's source and target; check rules with docshift validate",
        )
    with store_for(config, store) as active:
        snapshot = pin(active, read_time)
        report = compare(snapshot, migration, examples=examples)
        report.read_time = snapshot.read_time
    path = report_folder(config, "verify", migration).report
    VERIFY_FORMAT.write(path, report.to_json())
    report.path = path
    return report


def compare(store: Store, migration: Migration, *, examples: int = 20) -> VerifyReport:
    started = time.monotonic()
    target = migration.target
    assert target.copy_to is not None
    source = Target(target.collection, target.group, target.filters, target.limit).describe()
    report = VerifyReport(migration.id, migration.label, source, target.copy_to)
    produced = DigestSet()
    for batch in _batches(store.stream(target.query())):
        report.source_count += len(batch)
        _compare_batch(store, migration, batch, produced, report, examples)
    for doc in store.stream(Query(target.copy_to, keys_only=True)):
        report.target_count += 1
        if digest(doc.path) not in produced:
            report.add(Difference("extra", doc.path, detail="no source document produces it"), examples)
    report.elapsed_seconds = time.monotonic() - started
    return report


def _compare_batch(
    store: Store,
    migration: Migration,
    batch: list[Document],
    produced: DigestSet,
    report: VerifyReport,
    examples: int,
) -> None:
    expected: list[tuple[Document, str, dict[str, Any]]] = []
    for source in batch:
        destination = migration.target.destination(source.path)
        try:
            result = migration.up(DocView(source))
        except Exception as exc:
            report.add(
                Difference("failed", destination, source.path, f"up() raised {type(exc).__name__}: {exc}"),
                examples,
            )
            continue
        if result is UNCHANGED:  # copied as it is
            produced.add(digest(destination))
            expected.append((source, destination, source.data))
        elif result is DELETE:
            continue  # a document there would be extra
        elif not isinstance(result, dict):
            report.add(
                Difference("failed", destination, source.path, f"up() returned {type(result).__name__}"),
                examples,
            )
        else:
            produced.add(digest(destination))
            expected.append((source, destination, result))
    found = store.get_many([destination for _, destination, _ in expected])
    for (source, destination, data), actual in zip(expected, found, strict=True):
        report.expected += 1
        if actual is None:
            report.add(Difference("missing", destination, source.path, "not in the target"), examples)
        elif values_equal(actual.data, data):
            report.matched += 1
        else:
            changes = tuple(field_changes(actual.data, data))
            detail = "; ".join(change.describe() for change in changes[:5])
            report.add(Difference("different", destination, source.path, detail, changes), examples)


def _batches(documents: Iterator[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch

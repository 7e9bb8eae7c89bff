"""Scan a migration's target against its rules: streaming, in batches, in constant memory.

A scan keeps counts and a few example failures per rule, never the documents, so a collection of
any size costs the same memory (plus 8 bytes per distinct value for ``unique``). Its report says,
per rule, how many documents failed and which ones for example, and the integrity score.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.engine.sharding import plan_shards
from docshift.migration import Migration, Target
from docshift.runfolder.layout import VALIDATION_FORMAT
from docshift.store.base import Document, Query, Store
from docshift.validators.collection import CountRule
from docshift.validators.rules import Rule, RuleContext, RuleSession
from docshift.validators.score import Level, integrity_level, integrity_score
from docshift.values import Timestamp

__all__ = [
    "Baseline",
    "RuleResult",
    "ValidationReport",
    "load_report",
    "rule_names",
    "sampled_documents",
    "save_report",
    "scan",
    "scan_query",
]

EXAMPLES = 5
_SAMPLE_RANGES = 10


@dataclass(frozen=True)
class Baseline:
    """What an after-scan's count expectations compare with: the before-scan's count and what the
    run deleted and created (``None`` when unknown)."""

    before_total: int | None = None
    deleted: int | None = None
    created: int | None = None
    target_before: int | None = None
    """A copy's target collection before the run."""


@dataclass
class RuleResult:
    name: str
    failures: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)
    collection_failures: list[str] = field(default_factory=list)
    """Failures about the whole target (a count expectation), not about one document."""
    note: str | None = None
    """Why the rule was not checked, when it was not (a count without a before-scan)."""

    def add(self, path: str, message: str, keep: int = EXAMPLES) -> None:
        self.failures += 1
        if len(self.examples) < keep:
            self.examples.append((path, message))

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "failures": self.failures,
            "examples": [{"path": p, "message": m} for p, m in self.examples],
            "collection_failures": self.collection_failures,
            "note": self.note,
        }


@dataclass
class ValidationReport:
    """The outcome of one scan (or, with ``phase="inline"``, of a run's inline checks)."""

    migration_id: str
    label: str
    phase: str  # before, after, inline
    target: str
    total: int | None
    checked: int
    failed: int
    rules: list[RuleResult]
    warning: float = 95.0
    critical: float = 90.0
    sample: int | None = None
    elapsed_seconds: float = 0.0
    at: str = ""
    path: Path | None = None
    target_total: int | None = None
    """A before-scan of a copy also counts the copy's target collection (for ``count``)."""
    read_time: str | None = None
    """The snapshot the scan read (``docshift validate``), as RFC 3339; None: live data."""

    @property
    def score(self) -> float:
        return integrity_score(self.checked, self.failed)

    @property
    def level(self) -> Level:
        if any(rule.collection_failures for rule in self.rules):
            return Level.CRITICAL
        return integrity_level(self.score, self.warning, self.critical)

    @property
    def passed(self) -> bool:
        """Not below the critical threshold, and every count expectation met."""
        return self.level != Level.CRITICAL

    def summary(self) -> str:
        scope = "all" if self.sample is None else f"a sample of {self.sample:,}"
        counts = "".join(f"; {failure}" for rule in self.rules for failure in rule.collection_failures)
        return (
            f"{self.label} {self.phase}: integrity {self.score:.1f}% ({self.failed:,} of "
            f"{self.checked:,} documents checked fail a rule; {scope}){counts}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "label": self.label,
            "phase": self.phase,
            "target": self.target,
            "total": self.total,
            "target_total": self.target_total,
            "checked": self.checked,
            "failed": self.failed,
            "score": round(self.score, 3),
            "level": self.level.value,
            "passed": self.passed,
            "thresholds": {"warning": self.warning, "critical": self.critical},
            "sample": self.sample,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "at": self.at,
            "read_time": self.read_time,
            "rules": [rule.to_json() for rule in self.rules],
        }


def save_report(report: ValidationReport, path: Path) -> Path:
    VALIDATION_FORMAT.write(path, report.to_json())
    report.path = path
    return path


def load_report(path: Path) -> dict[str, Any]:
    return VALIDATION_FORMAT.read(path)


def rule_names(rules: Sequence[Rule]) -> list[str]:
    """Rule names made unique within a migration (``x``, ``x #2``), as reports key them."""
    seen: dict[str, int] = {}
    names = []
    for rule in rules:
        seen[rule.name] = seen.get(rule.name, 0) + 1
        names.append(rule.name if seen[rule.name] == 1 else f"{rule.name} #{seen[rule.name]}")
    return names


def scan_query(migration: Migration, phase: str) -> Query:
    """What a scan reads: the migration's own target, except after a copy, which reads the copy."""
    target = migration.target
    if phase == "after" and target.copy_to:
        return Query(target.copy_to)
    return target.query()


def _sample_queries(store: Store, query: Query, sample: int) -> Iterator[Query]:
    """About ``sample`` documents spread over the key space: the start of up to ten ranges."""
    if query.limit is not None:
        yield Query(query.collection, query.group, query.filters, limit=min(query.limit, sample))
        return
    ranges = min(sample, _SAMPLE_RANGES)
    shards = plan_shards(store, Target(query.collection, query.group, query.filters), ranges)
    each = -(-sample // len(shards))
    for shard in shards:
        yield Query(
            query.collection,
            query.group,
            query.filters,
            start_after=shard.start_after,
            end_at=shard.end_at,
            limit=each,
        )


def sampled_documents(store: Store, query: Query, sample: int | None, total: int) -> Iterator[Document]:
    """Every document of ``query`` (``total`` of them), or about ``sample`` spread over the key
    space: what a ``validate --sample`` scans, and what ``docshift test`` reads of a live target."""
    if sample is None or sample >= total:
        yield from store.stream(query)
        return
    left = sample
    for part in _sample_queries(store, query, sample):
        for doc in store.stream(part):
            yield doc
            left -= 1
            if left <= 0:
                return


def scan(
    store: Store,
    migration: Migration,
    *,
    phase: str = "after",
    sample: int | None = None,
    baseline: Baseline | None = None,
    warning: float = 95.0,
    critical: float = 90.0,
    batch_size: int = 300,
) -> ValidationReport:
    """Check every rule of ``migration`` on its target (all of it, or ``sample`` documents)."""
    started = time.monotonic()
    query = scan_query(migration, phase)
    total = store.count(query)
    base = baseline or Baseline()
    context = RuleContext(
        store=store,
        phase=phase,
        total=total,
        before_total=base.before_total,
        target_before=base.target_before,
        deleted=base.deleted,
        created=base.created,
    )
    rules = list(migration.rules)
    results = [RuleResult(name) for name in rule_names(rules)]
    sessions = [rule.session(context) for rule in rules]
    checked = failed = 0
    batch: list[Document] = []
    for doc in sampled_documents(store, query, sample, total):
        batch.append(doc)
        if len(batch) >= batch_size:
            failed += _check(batch, sessions, results)
            checked += len(batch)
            batch = []
    if batch:
        failed += _check(batch, sessions, results)
        checked += len(batch)
    for rule, session, result in zip(rules, sessions, results, strict=True):
        result.collection_failures = session.finish()
        if isinstance(rule, CountRule) and not rule.checkable(context):
            result.note = (
                "not checked: a count is compared after a run, with a before-scan's count"
                if phase == "after"
                else "counted only: compared by the after-scan"
            )
    shown = sample if sample is not None and sample < total else None
    copy_to = migration.target.copy_to
    return ValidationReport(
        migration.id,
        migration.label,
        phase,
        _describe(query),
        total,
        checked,
        failed,
        results,
        warning,
        critical,
        shown,
        time.monotonic() - started,
        Timestamp.now().isoformat(),
        target_total=store.count(Query(copy_to)) if phase == "before" and copy_to else None,
    )


def _check(batch: list[Document], sessions: list[RuleSession], results: list[RuleResult]) -> int:
    """Run every rule on a batch; returns how many of its documents failed at least one."""
    failing: set[int] = set()
    for session, result in zip(sessions, results, strict=True):
        for index, message in enumerate(session.check_batch(batch)):
            if message is not None:
                result.add(batch[index].path, message)
                failing.add(index)
    return len(failing)


def _describe(query: Query) -> str:
    target = Target(query.collection, query.group, query.filters, query.limit)
    return target.describe()

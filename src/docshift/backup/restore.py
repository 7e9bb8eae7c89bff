"""Putting backed-up documents back, and reading them again to prove it worked.

Writes are full-document ``set`` writes without preconditions, so a restore can be run again after
any failure and ends in the same state. They go out through the run's batched writer
(:mod:`docshift.engine.writer`): batches of the adaptive size that each fit one request, a few in
flight, paced by the rate limiter, a request refused as a whole split until the bad document is
alone, and a circuit breaker that stops a restore whose writes keep failing. Reading the backup
blocks while the writes are busy, so memory holds at most ``concurrency`` batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.backup.manifest import BackupManifest
from docshift.backup.reader import BackupRecord, read_records
from docshift.engine.hooks import BackupHooks, RestoreProgressed, VerifyProgressed
from docshift.engine.writer import (
    BatchWriter,
    Outgoing,
    WriteGuards,
    pipelined,
    request_batches,
)
from docshift.errors import BatchAborted, DataError, EmergencyStop, UsageError
from docshift.store import Document, Query, Store, Write, WriteResult
from docshift.values import values_equal

_DAMAGED = "the backup was changed or damaged after it was written; restore from an intact copy"

__all__ = [
    "PathMap",
    "RestoreReport",
    "VerifyReport",
    "verify_documents",
    "write_documents",
]

SAMPLES = 20
"""Failures and mismatches kept with their paths; the rest are only counted."""

Pair = tuple[str, BackupRecord]


@dataclass(frozen=True)
class PathMap:
    """Where each backed-up collection goes: back where it was, or where ``--into`` says.

    A document keeps the shape of its path below the collection: with ``users`` into ``people``,
    ``users/a/orders/o1`` becomes ``people/a/orders/o1``.
    """

    group: bool
    targets: Mapping[str, str]

    @classmethod
    def build(cls, manifest: BackupManifest, into: str | Mapping[str, str] | None) -> PathMap:
        sources = manifest.collections
        if into is None or into == {}:
            return cls(manifest.group, {name: name for name in sources})
        if manifest.group:
            raise UsageError(
                "a collection group backup cannot be restored --into another collection",
                hint="restore it where it was, into another project or database",
            )
        if isinstance(into, str):
            if len(sources) != 1:
                raise UsageError(
                    f"the backup holds {len(sources)} collections ({', '.join(sources)}); "
                    "--into must say which goes where",
                    hint=f"repeat --into OLD=NEW, e.g. --into {sources[0]}={sources[0]}_restored"
                    if sources
                    else "this backup holds no collections",
                )
            into = {sources[0]: into}
        unknown = sorted(set(into) - set(sources))
        if unknown:
            raise UsageError(
                f"the backup holds no collection {unknown[0]!r}", hint=f"it holds: {', '.join(sources)}"
            )
        targets = {name: into.get(name, name) for name in sources}
        for target in targets.values():
            Query(target)  # refuses a document path or an empty name, with a hint
        if len(set(targets.values())) != len(targets):
            raise UsageError(
                "two backed-up collections would be restored into the same collection",
                hint="give each one its own target with --into OLD=NEW",
            )
        return cls(False, targets)

    def target(self, source: str) -> str:
        return self.targets[source]

    def __call__(self, source: str, path: str) -> str:
        if self.group:
            if path.split("/")[-2:-1] != [source]:
                raise DataError(f"{path} is not in collection group {source}", hint=_DAMAGED)
            return path
        if not path.startswith(source + "/"):
            raise DataError(f"{path} is not below the backed-up collection {source}", hint=_DAMAGED)
        return self.targets[source] + path[len(source) :]


@dataclass
class VerifyReport:
    """Every backed-up document read back from the store and compared value by value."""

    checked: int = 0
    missing: int = 0
    different: int = 0
    samples: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.different == 0

    def note(self, path: str, problem: str) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append((path, problem))


@dataclass
class RestoreReport:
    folder: Path
    target: str
    documents: int
    written: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    verification: VerifyReport | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and (self.verification is None or self.verification.ok)

    @property
    def docs_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def records(folder: Path, manifest: BackupManifest, paths: PathMap) -> Iterator[Pair]:
    """(target path, record) for every backed-up document, lazily, file after file."""
    for entry in manifest.files:
        for record in read_records(folder, entry):
            yield paths(entry.collection, record.path), record


def _target(pair: Pair) -> str:
    return pair[0]


def _size(pair: Pair) -> int:
    """A record's request bytes: its JSON line, never smaller than what it encodes on the wire
    (bytes grow by a third in base64)."""
    return pair[1].size


def write_documents(
    store: Store,
    pairs: Iterable[Pair],
    report: RestoreReport,
    *,
    guards: WriteGuards,
    concurrency: int,
    hooks: BackupHooks | None = None,
) -> None:
    """Set every document at its target path; per-document failures are counted in ``report``.

    Raises :class:`~docshift.errors.EmergencyStop` when the writes keep failing (the circuit
    breaker) or the store does, once the batches in flight are counted.
    """
    hooks = hooks or BackupHooks()
    started = time.monotonic()
    writer = BatchWriter(store, guards, again="run the same restore again")

    def commit(batch: list[Pair]) -> list[WriteResult]:
        return writer.write([Outgoing(Write.set(t, r.data), t, size=r.size) for t, r in batch])

    def handle(batch: list[Pair], results: list[WriteResult]) -> None:
        failed = _count(report, results)
        writer.record(len(results) - failed, failed)
        elapsed = time.monotonic() - started
        hooks.phase_progressed(
            RestoreProgressed(
                report.written + report.failed,
                report.documents,
                report.written,
                report.failed,
                report.written / elapsed if elapsed > 0 else 0.0,
            )
        )

    try:
        pipelined(writer.batches(pairs, _size, _target), commit, handle, concurrency)
    except (BatchAborted, EmergencyStop) as stop:
        reason = stop.message if isinstance(stop, EmergencyStop) else guards.controls.stop_reason
        raise _stopped(report, reason or "stopped") from None
    finally:
        report.seconds = time.monotonic() - started


def _count(report: RestoreReport, results: Sequence[WriteResult]) -> int:
    """Add a batch's results to ``report``; returns how many failed."""
    failed = 0
    for result in results:
        if result.ok:
            report.written += 1
            continue
        failed += 1
        if len(report.failures) < SAMPLES and result.error is not None:
            report.failures.append((result.path, f"{result.error.code}: {result.error.message}"))
    report.failed += failed
    return failed


def _stopped(report: RestoreReport, reason: str) -> EmergencyStop:
    first = f" (first: {report.failures[0][0]}: {report.failures[0][1]})" if report.failures else ""
    return EmergencyStop(
        f"the restore stopped: {reason}; {report.written:,} of {report.documents:,} documents were "
        f"written, {report.failed:,} could not be{first}",
        hint="fix the cause and run the same restore again; it is safe to repeat (every write is a full set)",
    )


def _difference(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual:
            return f"field {key!r} is missing"
        if key not in expected:
            return f"field {key!r} is not in the backup"
        if not values_equal(expected[key], actual[key]):
            return f"field {key!r} differs"
    return "differs"


def verify_documents(
    store: Store,
    pairs: Iterable[Pair],
    total: int,
    *,
    batch_size: int,
    concurrency: int,
    hooks: BackupHooks | None = None,
) -> VerifyReport:
    """Read every target path back (in batches) and compare it with the backup, value by value."""
    hooks = hooks or BackupHooks()
    report = VerifyReport()
    started = time.monotonic()

    def read(batch: list[Pair]) -> list[Document | None]:
        return store.get_many([target for target, _ in batch])

    def handle(batch: list[Pair], found: list[Document | None]) -> None:
        for (target, record), doc in zip(batch, found, strict=True):
            report.checked += 1
            if doc is None:
                report.missing += 1
                report.note(target, "missing")
            elif not values_equal(record.data, doc.data):
                report.different += 1
                report.note(target, _difference(record.data, doc.data))
        hooks.phase_progressed(VerifyProgressed(report.checked, total, report.missing, report.different))

    pipelined(request_batches(pairs, lambda: batch_size, _size, _target), read, handle, concurrency)
    report.seconds = time.monotonic() - started
    return report

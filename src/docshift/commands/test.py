"""``docshift test``: the built-in checks of the migrations (:mod:`docshift.commands.checks`), without
writing pytest code.

* :func:`run_checks`: each migration's fixture pairs (``<migrations>/tests/<id>/*.json``) seeded into
  a fresh store (in memory, or a fresh ``demo-`` project on the emulator), the migration run on them
  by the engine as ``docshift run --execute`` runs it, the result compared with the expected
  documents and run again to see that it writes nothing; then the document checks on the pairs.
* :func:`record_pairs`: N documents of the real target read (nothing is written to it), ``up``
  applied, and written as fixture pairs for review (string values masked on request).
* :func:`check_live`: the document checks on N live documents, and the files against the target's
  history; read-only.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.codec import digest
from docshift.commands.checks import (
    CHECKS,
    CheckResult,
    Finding,
    FixturePair,
    apply_up,
    check_files,
    data_diff,
    document_checks,
    fixture_folder,
    load_fixture_pairs,
    pair_payload,
    skip_reason,
)
from docshift.commands.run import RunOptions, run
from docshift.commands.validate import find_migration
from docshift.config import Config
from docshift.emulator import EmulatorLocation, find_emulator, running_emulator
from docshift.errors import DocshiftError, UsageError
from docshift.history import History
from docshift.loader import describe_file, load_migrations
from docshift.migration import Migration
from docshift.runfolder.atomic import write_atomic
from docshift.store import Store, Write, open_store, store_for
from docshift.store.base import Document
from docshift.store.memory import MemoryStore
from docshift.validators.scan import sampled_documents
from docshift.values import Value, as_stored

__all__ = [
    "CheckReport",
    "MigrationChecks",
    "RecordReport",
    "check_expected",
    "check_live",
    "mask_strings",
    "record_pairs",
    "run_checks",
    "seed_documents",
]

_COMMIT_SIZE = 400


@dataclass
class MigrationChecks:
    """Every check of one migration, in the order they ran."""

    migration: Migration
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)


@dataclass
class CheckReport:
    """What ``docshift test`` checked, where (``memory``, ``emulator``, or the target read-only), and
    what failed."""

    where: str
    files: CheckResult
    migrations: list[MigrationChecks] = field(default_factory=list)

    @property
    def results(self) -> list[CheckResult]:
        return [self.files, *(result for checks in self.migrations for result in checks.results)]

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if not result.passed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        results = self.results
        failed = len(self.failed)
        skipped = sum(result.skipped is not None for result in results)
        ran = len(results) - skipped
        text = f"{ran - failed} of {ran} checks passed ({self.where})"
        if skipped:
            text += f", {skipped} skipped"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "passed": self.passed,
            "summary": self.summary(),
            "checks": [result.to_json() for result in self.results],
        }


def _chosen(config: Config, migration_ids: Sequence[str]) -> list[Migration]:
    if not migration_ids:
        return load_migrations(config.migrations_dir)
    return [find_migration(config, migration_id) for migration_id in migration_ids]


# --------------------------------------------------------------------------- seeding and the engine


def seed_documents(store: Store, documents: Mapping[str, Mapping[str, Value]]) -> None:
    """Write ``documents`` (path -> data) into ``store`` as they are, in requests of a few hundred;
    raises the first write the store refuses."""
    writes = [Write.set(path, dict(data)) for path, data in documents.items()]
    for start in range(0, len(writes), _COMMIT_SIZE):
        for result in store.commit(writes[start : start + _COMMIT_SIZE]):
            if result.error is not None:
                raise result.error


def check_expected(
    config: Config, migration: Migration, pairs: Sequence[FixturePair], store: Store
) -> CheckResult:
    """The ``expected`` check: the pairs' documents before, seeded into ``store`` (which should hold
    nothing else the migration reads), the migration run on them by the engine (executed, as
    ``docshift run --execute --only`` runs it), each document compared with the one expected after,
    then a second run that must write nothing. ``config`` says where the migrations are; its runs
    folder is used for the two runs."""
    seed_documents(store, {pair.path: pair.before for pair in pairs})
    findings: list[Finding] = []
    first = _engine_run(config, migration, store, findings)
    paths = [migration.target.destination(pair.path) for pair in pairs]
    stored = dict(zip(paths, store.get_many(paths), strict=True))
    for pair, path in zip(pairs, paths, strict=True):
        found = stored[path]
        got = None if found is None else found.data
        expected = None if pair.after is None else as_stored(pair.after)[0]
        same = (got is None and expected is None) or (
            got is not None and expected is not None and not data_diff(expected, got)
        )
        if not same:
            findings.append(
                Finding(
                    "expected",
                    pair.path,
                    f"the migrated document differs from {describe_file(pair.file)} (- expected, + got)",
                    tuple(data_diff(expected, got)),
                )
            )
    again = _engine_run(config, migration, store, findings, again=True) if first is not None else None
    if again is not None:
        written = {name: again.get(name, 0) for name in ("updated", "created", "deleted")}
        if any(written.values()):
            counts = ", ".join(f"{count} {name}" for name, count in written.items() if count)
            findings.append(
                Finding(
                    "expected",
                    migration.target.describe(),
                    f"a second run of the migration wrote again ({counts}): up() is not idempotent",
                )
            )
    return CheckResult("expected", migration.label, len(pairs), tuple(findings))


def _engine_run(
    config: Config, migration: Migration, store: Store, findings: list[Finding], *, again: bool = False
) -> dict[str, int] | None:
    """Run ``migration`` alone, executed; its counters, or ``None`` (and a finding) when it stopped."""
    try:
        result = run(config, RunOptions(execute=True, only=migration.id), store=store)
    except DocshiftError as exc:
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        findings.append(
            Finding("expected", migration.target.describe(), f"the run stopped: {exc.message}{hint}")
        )
        return None
    counters: dict[str, int] = {}
    for outcome in result.outcomes:
        for name, count in outcome.result.counters.items():
            counters[name] = counters.get(name, 0) + count
    if counters.get("failed") and not again:
        findings.append(
            Finding(
                "expected",
                migration.target.describe(),
                f"{counters['failed']} document(s) failed in the run (see the other checks for why)",
            )
        )
    return counters


@contextmanager
def _fresh_stores(config: Config, *, emulator: bool) -> Iterator[Iterator[tuple[Config, Store]]]:
    """A source of fresh stores, one per migration, each with the config that runs on it: in memory,
    or a new ``demo-`` project on the emulator (``config``'s emulator host, or the one
    :func:`~docshift.emulator.running_emulator` finds or starts, stopped at the end)."""
    with tempfile.TemporaryDirectory(prefix="docshift-test-") as scratch:
        runs = Path(scratch) / "runs"
        if not emulator:
            yield _memory_stores(config, runs)
            return
        given = config.store.emulator_host
        location = EmulatorLocation(host=given, source="emulator_host") if given else find_emulator()
        with running_emulator(location) as host:
            opened: list[Store] = []
            try:
                yield _emulator_stores(config, runs, host, opened)
            finally:
                for store in opened:
                    store.close()


def _memory_stores(config: Config, runs: Path) -> Iterator[tuple[Config, Store]]:
    while True:
        yield dataclasses.replace(config, runs_dir=runs / uuid.uuid4().hex[:8]), MemoryStore()


def _emulator_stores(
    config: Config, runs: Path, host: str, opened: list[Store]
) -> Iterator[tuple[Config, Store]]:
    while True:
        project = f"demo-docshift-test-{uuid.uuid4().hex[:10]}"
        settings = dataclasses.replace(
            config.store, project=project, emulator_host=host, database="(default)"
        )
        fresh = dataclasses.replace(config, store=settings, runs_dir=runs / project)
        store = open_store(fresh)
        opened.append(store)
        yield fresh, store


# --------------------------------------------------------------------------- docshift test


def run_checks(config: Config, migration_ids: Sequence[str] = (), *, emulator: bool = False) -> CheckReport:
    """``docshift test [MIGRATION ...]``: every check of the named migrations (all by default) on
    their fixture pairs, in memory or on the emulator. Nothing outside the fresh stores is written."""
    report = CheckReport("emulator" if emulator else "in memory", check_files(config.migrations_dir))
    migrations = _chosen(config, migration_ids)
    with _fresh_stores(config, emulator=emulator) as stores:
        for migration in migrations:
            checks = MigrationChecks(migration)
            report.migrations.append(checks)
            reason = skip_reason(migration)
            pairs = [] if reason else load_fixture_pairs(config.migrations_dir, migration)
            if reason is None and not pairs:
                folder = describe_file(fixture_folder(config.migrations_dir, migration))
                reason = (
                    f"no fixture pairs in {folder} (`docshift test --record {migration.id} --sample 20` "
                    "writes some from the real data)"
                )
            if reason is not None:
                checks.results = [
                    CheckResult(check, migration.label, skipped=reason) for check in ("expected", *CHECKS)
                ]
                continue
            fresh, store = next(stores)
            checks.results.append(check_expected(fresh, migration, pairs, store))
            checks.results.extend(document_checks(migration, [pair.document for pair in pairs]))
    return report


def check_live(
    config: Config, migration_ids: Sequence[str] = (), *, sample: int, store: Store | None = None
) -> CheckReport:
    """``docshift test --against-store --sample N``: the document checks on about ``sample`` live
    documents of each migration's target, and the files against the target's history. Reads only."""
    if sample <= 0:
        raise UsageError(f"--sample must be above 0, got {sample}", hint="pass --sample 1 or more")
    migrations = _chosen(config, migration_ids)
    with store_for(config, store) as active:
        history = History(active, config.store.state_prefix).all()
        report = CheckReport(
            f"{sample} documents each, read from {active.info.describe()}",
            check_files(config.migrations_dir, history),
        )
        for migration in migrations:
            checks = MigrationChecks(migration)
            report.migrations.append(checks)
            if skip_reason(migration) is not None:
                checks.results = document_checks(migration, [])
                continue
            checks.results = document_checks(migration, _sample(active, migration, sample))
    return report


def _sample(store: Store, migration: Migration, sample: int) -> list[Document]:
    query = migration.target.query()
    return list(sampled_documents(store, query, sample, store.count(query)))


# --------------------------------------------------------------------------- docshift test --record


@dataclass
class RecordReport:
    """What ``docshift test --record`` read and wrote."""

    migration: Migration
    folder: Path
    read: int = 0
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    """Pairs already there (reviewed ones are never overwritten)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of documents ``up`` failed on: no pair is written for them."""


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def mask_strings(value: Value) -> Value:
    """``value`` with every string masked (letters become ``x``/``X``, digits ``9``; spaces and
    punctuation kept, so the shape of an e-mail or a date stays); map keys are kept."""
    if isinstance(value, str):
        return "".join(
            ("X" if ch.isupper() else "x") if ch.isalpha() else ("9" if ch.isdigit() else ch) for ch in value
        )
    if isinstance(value, dict):
        return {key: mask_strings(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_strings(item) for item in value]
    return value


def _file_name(document_id: str) -> str:
    """A file name for a document id: the id when it is a safe name, else a safe name and a digest."""
    safe = _UNSAFE.sub("_", document_id).strip(".")
    if safe == document_id and safe:
        return f"{safe}.json"
    return f"{safe[:40] or 'doc'}-{digest(document_id)[:8]}.json"


def record_pairs(
    config: Config,
    migration_id: str,
    *,
    sample: int,
    mask: bool = False,
    store: Store | None = None,
) -> RecordReport:
    """``docshift test --record ID --sample N``: about ``sample`` documents of the migration's real
    target read (never written), ``up`` applied, and each written as a fixture pair to review and
    keep (``<migrations>/tests/<id>/<document id>.json``); existing pairs are kept as they are."""
    if sample <= 0:
        raise UsageError(f"--sample must be above 0, got {sample}", hint="pass --sample 1 or more")
    migration = find_migration(config, migration_id)
    reason = skip_reason(migration)
    if reason is not None:
        raise UsageError(
            f"cannot record pairs for {migration.label}: {reason}",
            hint="record pairs of an up/down migration",
        )
    report = RecordReport(migration, fixture_folder(config.migrations_dir, migration))
    with store_for(config, store) as active:
        documents = _sample(active, migration, sample)
    for document in documents:
        report.read += 1
        before = mask_strings(document.data) if mask else document.data
        applied = apply_up(migration, Document(document.path, before))
        if applied.error is not None:
            report.failed.append((document.path, applied.error))
            continue
        file = report.folder / _file_name(document.id)
        if file.exists():
            report.kept.append(file)
            continue
        write_atomic(file, pair_payload(document.path, before, applied.data))
        report.written.append(file)
    return report

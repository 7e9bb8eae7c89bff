"""Cost before the run: the Firestore operations a command will bill, and their price.

An estimate writes nothing and takes no lock. It reads what it needs to know the figures: a count
aggregation of each target (billed one read per up to 1,000 index entries matched), the history,
and, for the writes a migration will make, a deterministic sample of its target put through the
same decision the engine makes (``up()``, the diff, the guards), scaled to the count. A dry run
knows its writes exactly: :func:`dry_run_estimate` prices them from its counters, with no read.

Every figure is derived from the data or from what the command is known to send; what cannot be
known in advance (conflicts re-read, the lease's heartbeats and the checkpoints made by time, both
of which depend on how long the run takes, index entries written) is listed in ``unknown`` and
never guessed. docs/estimate.md says what is counted and what is not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.commands.backup import BackupOptions
from docshift.commands.rollback import RollbackOptions, _new_plan
from docshift.commands.run import RunOptions, RunReport, _select
from docshift.commands.validate import find_migration
from docshift.config import Config, PricesConfig
from docshift.engine.batch import BatchProcessor, BatchRules
from docshift.engine.controls import Controls
from docshift.engine.stats import RunStats
from docshift.engine.undo import undo_actions
from docshift.engine.writer import BatchWriter, WriteGuards
from docshift.errors import UsageError
from docshift.history import History
from docshift.loader import load_migrations
from docshift.lock import LeaseLock
from docshift.migration import Migration
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.layout import RunFolder
from docshift.store import Query, Store, store_for
from docshift.validators.scan import scan_query

__all__ = [
    "DEFAULT_SAMPLE",
    "INDEX_ENTRIES_PER_COUNT_READ",
    "CostLine",
    "Estimate",
    "Operations",
    "count_reads",
    "dry_run_estimate",
    "estimate_backup",
    "estimate_rollback",
    "estimate_run",
    "estimate_validate",
    "estimate_verify",
]

INDEX_ENTRIES_PER_COUNT_READ = 1000
"""A count aggregation is billed one document read per up to this many index entries matched."""
DEFAULT_SAMPLE = 500
"""Documents of each target an estimate puts through ``up()`` to find its writes."""
_WRITTEN = ("updated", "created")


def count_reads(matched: int) -> int:
    """What a count aggregation over ``matched`` documents bills: one read per up to 1,000 index
    entries, and at least one."""
    return max(1, math.ceil(matched / INDEX_ENTRIES_PER_COUNT_READ))


def query_reads(returned: int) -> int:
    """What a query bills: a read per document returned, and at least one read."""
    return max(1, returned)


@dataclass(frozen=True)
class Operations:
    """Billed Firestore operations."""

    reads: int = 0
    writes: int = 0
    deletes: int = 0

    def __add__(self, other: Operations) -> Operations:
        return Operations(self.reads + other.reads, self.writes + other.writes, self.deletes + other.deletes)

    def price(self, prices: PricesConfig) -> float:
        return (
            self.reads * prices.price_reads_per_100k
            + self.writes * prices.price_writes_per_100k
            + self.deletes * prices.price_deletes_per_100k
        ) / 100_000


@dataclass(frozen=True)
class CostLine:
    """One item of an estimate: what it is, its operations, and how they were found."""

    item: str
    operations: Operations
    basis: str = ""

    def to_json(self, prices: PricesConfig) -> dict[str, Any]:
        return {
            "item": self.item,
            **dataclasses.asdict(self.operations),
            "price": round(self.operations.price(prices), 6),
            "basis": self.basis,
        }


@dataclass(frozen=True)
class Estimate:
    """What a command will bill: its items, the documents it reads, where its expected writes come
    from, index entries (None: unknown), and what cannot be known in advance."""

    command: str
    target: str
    lines: tuple[CostLine, ...]
    documents: int
    """Documents the command reads (the count aggregation of its targets)."""
    writes_from: str
    """How the expected writes and deletes were found: a dry run, a sample (its size), a journal."""
    prices: PricesConfig
    index_entries: int | None = None
    """Index entries the command's count aggregations match; None: unknown."""
    unknown: tuple[str, ...] = ()

    @property
    def total(self) -> Operations:
        total = Operations()
        for line in self.lines:
            total += line.operations
        return total

    @property
    def price(self) -> float:
        return self.total.price(self.prices)

    def to_json(self) -> dict[str, Any]:
        total = self.total
        return {
            "command": self.command,
            "target": self.target,
            "documents": self.documents,
            **dataclasses.asdict(total),
            "price": round(self.price, 6),
            "currency": self.prices.price_currency,
            "prices_per_100k": {
                "reads": self.prices.price_reads_per_100k,
                "writes": self.prices.price_writes_per_100k,
                "deletes": self.prices.price_deletes_per_100k,
            },
            "writes_from": self.writes_from,
            "index_entries": self.index_entries if self.index_entries is not None else "unknown",
            "lines": [line.to_json(self.prices) for line in self.lines],
            "unknown": list(self.unknown),
        }

    def summary(self) -> str:
        """One line: the operations and their price (the dry run's summary prints it)."""
        total = self.total
        return (
            f"estimate for --execute: {total.reads:,} reads, {total.writes:,} writes, "
            f"{total.deletes:,} deletes = {self.price:,.4f} {self.prices.price_currency} at "
            f"{self.prices.price_reads_per_100k:g}/{self.prices.price_writes_per_100k:g}/"
            f"{self.prices.price_deletes_per_100k:g} per 100k reads/writes/deletes ({self.writes_from}"
            f"{'; not counted: ' + '; '.join(self.unknown) if self.unknown else ''})"
        )


_HEARTBEAT_SECONDS: float = (LeaseLock.__init__.__kwdefaults__ or {})["heartbeat_seconds"]
_HEARTBEAT = f"the lease's heartbeat: 1 write every {_HEARTBEAT_SECONDS:g} s of run time"
_BY_TIME = "checkpoints made by time (each: 1 history read and write)"
_CONFLICTS = "documents re-read after a conflict (an application wrote them during the run): 1 read each"


def _history_reads(store: Store, config: Config) -> CostLine:
    """Choosing the pending migrations reads every history record (one query)."""
    return _history_query(store.count(Query(History(store, config.store.state_prefix).collection)))


def _history_query(records: int) -> CostLine:
    """One query of the history's ``records`` records."""
    return CostLine("history: read the records", Operations(reads=query_reads(records)), "one query")


_LEASE = CostLine(
    "lease: take and release", Operations(reads=1, writes=1, deletes=1), "a read and a create, a delete"
)


def _history_check(migration_count: int) -> CostLine:
    """Once the run holds the lease, it reads the chosen migrations' records again (one batch get)
    to see that no other run changed them while it took the lease."""
    return CostLine(
        "history: check the chosen records under the lease",
        Operations(reads=migration_count),
        "one read per migration",
    )


def _before_images(config: Config, label: str) -> list[CostLine]:
    """Before-images are saved to the run folder (on disk), from the documents already read."""
    if not config.engine.backup:
        return []
    return [CostLine(f"{label}: before-images", Operations(), "saved on disk from the documents read")]


def _history_records(config: Config, label: str, total: int) -> CostLine:
    """A migration's history record: read and written when it starts, at each checkpoint (one
    before the first write, one at the end, and about one every ``checkpoint_every_docs``
    documents between) and when it finishes."""
    checkpoints = 2 + total // config.engine.checkpoint_every_docs
    return CostLine(
        f"{label}: history records",
        Operations(reads=2 + checkpoints, writes=2 + checkpoints),
        f"started, finished, {checkpoints:,} checkpoint(s) by document count",
    )


def _target_count(store: Store, migration: Migration, limit: int | None) -> int:
    total = store.count(migration.target.query())
    return total if limit is None else min(total, limit)


@dataclass(frozen=True)
class _Sampled:
    """What ``up()`` decided for a sample of a target: its size, and the writes and deletes."""

    size: int
    writes: int
    deletes: int


def _sample_decisions(
    store: Store, config: Config, migration: Migration, size: int, percent: float | None
) -> _Sampled:
    """The first ``size`` documents of the target (name order: deterministic) put through the
    engine's own decision (transform, diff, guards), reading nothing but them (and, for a copy,
    their destinations). Nothing is written: only :meth:`BatchProcessor.decide` is used."""
    rules = BatchRules(
        execute=False,
        conflict_retries=config.engine.conflict_retries,
        write_mode=config.engine.write_mode,
        sample_percent=percent,
    )
    writer = BatchWriter(store, WriteGuards.from_config(config.engine, config.limits, Controls()))
    decider = BatchProcessor(migration, rules, writer, RunStats(), DeadLetterFile(Path("unused")))
    query = dataclasses.replace(migration.target.query(), limit=size)
    sources = list(store.stream(query))
    if migration.target.copy_to:
        existing = store.get_many([migration.target.destination(doc.path) for doc in sources])
    else:
        existing = list(sources)
    writes = deletes = 0
    for source, current in zip(sources, existing, strict=True):
        kind = decider.decide(source, current).kind
        if kind in ("update", "set", "create"):
            writes += 1
        elif kind == "delete":
            deletes += 1
    return _Sampled(len(sources), writes, deletes)


def _scaled(found: int, sample: int, total: int) -> int:
    return found if sample >= total or sample == 0 else round(found * total / sample)


def _migration_lines(
    store: Store, config: Config, options: RunOptions, migration: Migration, sample: int
) -> tuple[list[CostLine], int, str]:
    """One migration's items, the documents it reads, and how its writes were found."""
    label = migration.label
    total = _target_count(store, migration, options.limit)
    eta = "count aggregation, for the ETA (the live view, --json, a status endpoint)"
    lines = [CostLine(f"{label}: count the target", Operations(reads=count_reads(total)), eta)]
    shards = 1 if options.limit is not None else options.shards or config.engine.shards
    if shards > 1 and migration.target.limit is None and total >= shards * 2:
        planning = count_reads(total) + (1 if migration.target.group else query_reads(total))
        how = "PartitionQuery" if migration.target.group else "a count and a keys-only scan"
        lines.append(CostLine(f"{label}: plan {shards} shards", Operations(reads=planning), how))
    copy = 2 if migration.target.copy_to else 1  # a copy also reads each destination
    lines.append(CostLine(f"{label}: read the target", Operations(reads=copy * query_reads(total))))
    decided = _sample_decisions(store, config, migration, min(sample, total), options.sample_percent)
    writes = _scaled(decided.writes, decided.size, total)
    deletes = _scaled(decided.deletes, decided.size, total)
    if decided.size >= total:
        basis = f"up() on all {total:,} documents (exact)"
    else:
        basis = f"up() on the first {decided.size:,} of {total:,} documents in name order, scaled"
    lines.append(CostLine(f"{label}: write the changes", Operations(writes=writes, deletes=deletes), basis))
    lines += _before_images(config, label)
    if options.scans:
        scan = count_reads(total) + query_reads(total)
        lines.append(CostLine(f"{label}: --validate scans", Operations(reads=2 * scan), "before and after"))
    lines.append(_history_records(config, label, total))
    return lines, total, basis


def estimate_run(
    config: Config, options: RunOptions, *, store: Store | None = None, sample: int = DEFAULT_SAMPLE
) -> Estimate:
    """What ``docshift run --execute`` with ``options`` will bill, for every pending migration
    (or those ``to``/``only`` choose). Reads counts, the history and a sample; writes nothing."""
    if options.resume is not None:
        raise UsageError(
            "--estimate is for a new run: a resume continues a run whose documents are partly done",
            hint="drop --resume to estimate the whole run, or `docshift show RUN_ID` for what it did",
        )
    if sample < 1:
        raise UsageError(f"the estimate's sample must be 1 or more, got {sample}", hint="pass 1 or more")
    migrations = load_migrations(config.migrations_dir)
    with store_for(config, store) as active:
        history = History(active, config.store.state_prefix)
        selected, _ = _select(migrations, history.read(), options)
        lines = [_history_reads(active, config), _LEASE]
        if selected:
            lines.append(_history_check(len(selected)))
        documents = 0
        bases: list[str] = []
        unknown = [_HEARTBEAT, _CONFLICTS, _BY_TIME]
        for migration in selected:
            if migration.is_script:
                unknown.append(f"{migration.label}: a script's apply(ctx) names what it reads and writes")
                continue
            found, total, basis = _migration_lines(active, config, options, migration, sample)
            lines += found
            documents += total
            bases.append(basis)
        return Estimate(
            "run",
            active.info.describe(),
            tuple(lines),
            documents,
            "; ".join(bases) or "no pending migration",
            config.prices,
            index_entries=None,
            unknown=(*unknown, "index entries written (they depend on the database's indexes)"),
        )


def dry_run_estimate(config: Config, report: RunReport) -> Estimate:
    """What executing a finished dry run's migrations will bill, from the dry run's own counters
    (exact for the data it read): its reads again, its writes, the history and the lease."""
    lines: list[CostLine] = [
        CostLine("history: read the records", Operations(reads=1), "at least one read"),
        _LEASE,
    ]
    if report.outcomes:
        lines.append(_history_check(len(report.outcomes)))
    documents = 0
    for outcome in report.outcomes:
        counters, label = outcome.result.counters, outcome.migration.label
        read = counters.get("read", 0)
        documents += read
        copy = 2 if outcome.migration.target.copy_to else 1
        writes = sum(counters.get(k, 0) for k in _WRITTEN)
        lines += [
            CostLine(f"{label}: count the target", Operations(reads=count_reads(read))),
            CostLine(f"{label}: read the target", Operations(reads=copy * query_reads(read))),
            CostLine(
                f"{label}: write the changes",
                Operations(writes=writes, deletes=counters.get("deleted", 0)),
                "the dry run",
            ),
            *_before_images(config, label),
            _history_records(config, label, read),
        ]
    return Estimate(
        "run",
        report.target,
        tuple(lines),
        documents,
        f"from dry run {report.run_id}",
        config.prices,
        unknown=(_HEARTBEAT, _CONFLICTS, _BY_TIME),
    )


def estimate_backup(config: Config, options: BackupOptions, *, store: Store | None = None) -> Estimate:
    """What ``docshift backup`` will bill: one query per collection, a read per document (the
    files are on disk: no writes), and the read time it pins."""
    with store_for(config, store) as active:
        lines = [CostLine("pin the read time", Operations(reads=1), "a lookup of a missing document")]
        names: Sequence[str] = options.collections
        recursive = options.recursive
        if options.all_collections:
            state = config.store.state_prefix + "_"
            names = [name for name in active.list_collections() if not name.startswith(state)]
            recursive = True
            lines.append(CostLine("list the collections", Operations(reads=1)))
        documents = 0
        for name in names:
            query = Query(name.strip("/"), group=options.group, descendants=recursive)
            found = active.count(query)
            documents += found
            lines += [
                CostLine(f"{name}: count", Operations(reads=count_reads(found)), "count aggregation"),
                CostLine(f"{name}: read", Operations(reads=query_reads(found))),
            ]
        return Estimate(
            "backup",
            active.info.describe(),
            tuple(lines),
            documents,
            "a backup writes files, not documents",
            config.prices,
            unknown=(),
        )


def estimate_validate(
    config: Config,
    migration_id: str,
    *,
    phase: str = "after",
    sample: int | None = None,
    store: Store | None = None,
) -> Estimate:
    """What ``docshift validate`` will bill: the count, the documents scanned, and (with a
    sample) the keys-only scan that spreads it over the key space."""
    migration = find_migration(config, migration_id)
    with store_for(config, store) as active:
        total = active.count(scan_query(migration, phase))
        lines = [
            CostLine("pin the read time", Operations(reads=1)),
            CostLine("history record (baseline)", Operations(reads=1)),
            CostLine("count the target", Operations(reads=count_reads(total)), "count aggregation"),
        ]
        scanned = total if sample is None else min(sample, total)
        if sample is not None and sample < total:
            lines.append(
                CostLine(
                    "spread the sample",
                    Operations(reads=count_reads(total) + query_reads(total)),
                    "a count and a keys-only scan of the target",
                )
            )
        lines.append(CostLine("scan the documents", Operations(reads=query_reads(scanned))))
        return Estimate(
            "validate",
            active.info.describe(),
            tuple(lines),
            scanned,
            "validate writes nothing",
            config.prices,
        )


def estimate_verify(config: Config, migration_id: str, *, store: Store | None = None) -> Estimate:
    """What ``docshift verify`` will bill: the source, a look-up of each expected copy, and a
    keys-only scan of the copy's collection."""
    migration = find_migration(config, migration_id)
    copy_to = migration.target.copy_to
    if not copy_to:
        raise UsageError(
            f"migration {migration.label} changes documents in place (no copy_to): nothing to compare",
            hint="verify compares a copy migration's source and target; check rules with docshift validate",
        )
    with store_for(config, store) as active:
        source = active.count(migration.target.query())
        copies = active.count(Query(copy_to))
        lines = (
            CostLine("pin the read time", Operations(reads=1)),
            CostLine("read the source", Operations(reads=query_reads(source))),
            CostLine(
                "look up each expected copy",
                Operations(reads=source),
                "at most: up() may delete some sources",
            ),
            CostLine("scan the copy's names", Operations(reads=query_reads(copies)), "keys-only"),
        )
        return Estimate(
            "verify",
            active.info.describe(),
            lines,
            source + copies,
            "verify writes nothing",
            config.prices,
        )


def _undo_operations(journal: Path) -> tuple[int, Operations]:
    """A journal's before-images to restore: each read before and after its undo (the check), and
    the write that undoes it (a delete for a document the run created)."""
    images = 0
    total = Operations()
    for action in undo_actions(journal):
        images += 1
        writes = 1 if action.kind in ("restore", "recreate") else 0
        deletes = 1 if action.kind == "delete" else 0
        total += Operations(reads=2, writes=writes, deletes=deletes)
    return images, total


def estimate_rollback(config: Config, options: RollbackOptions, *, store: Store | None = None) -> Estimate:
    """What ``docshift rollback --execute`` will bill: from the journals of the runs it undoes,
    the before-images to restore and their writes; down() over a whole target is priced at its
    reads, its writes unknown (its dry run finds them)."""
    if options.resume is not None:
        raise UsageError(
            "--estimate is for a new rollback",
            hint="drop --resume, or `docshift show RUN_ID` for what it did",
        )
    migrations = {m.id: m for m in load_migrations(config.migrations_dir)}
    with store_for(config, store) as active:
        records = History(active, config.store.state_prefix).read().records
        plan, order, _ = _new_plan(config, active, options, migrations, records)
        lines: list[CostLine] = [_history_query(len(records)), _LEASE, _history_check(len(plan))]
        unknown: list[str] = [_HEARTBEAT]
        images = 0
        for step, run in order:
            label = step.migration.label
            if run is None:
                total = active.count(step.migration.target.query())
                reads = count_reads(total) + query_reads(total)
                lines.append(CostLine(f"{label}: down() over the target", Operations(reads=reads)))
                unknown.append(f"{label}: the writes of down() over the target (its dry run finds them)")
                continue
            journal = RunFolder.of(config.runs_dir, run).migration(label).journal
            found, operations = _undo_operations(journal)
            images += found
            lines.append(
                CostLine(f"{label}: {found:,} before-image(s) of run {run}", operations, "the journal")
            )
        lines += [
            CostLine(f"{step.migration.label}: history", Operations(reads=1, writes=1)) for step in plan
        ]
        return Estimate(
            "rollback",
            active.info.describe(),
            tuple(lines),
            images,
            f"{images:,} before-image(s) in the runs' journals",
            config.prices,
            unknown=tuple(unknown),
        )

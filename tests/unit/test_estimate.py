"""Cost before the run (``docshift.commands.estimate``) on the memory store: every figure is what
the data is, priced at the configured prices, and what a real run then bills matches it."""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from docshift.commands.backup import BackupOptions, backup
from docshift.commands.estimate import (
    Operations,
    count_reads,
    dry_run_estimate,
    estimate_backup,
    estimate_rollback,
    estimate_run,
    estimate_validate,
    estimate_verify,
)
from docshift.commands.rollback import RollbackOptions, run_rollback
from docshift.commands.run import RunOptions, run, run_migrations
from docshift.commands.verify import verify
from docshift.config import Config, EngineConfig, PricesConfig, StoreConfig, load_config
from docshift.errors import ConfigError, UsageError
from docshift.store import DelegatingStore, Document, Query, Store, Write, WriteKind, WriteResult
from docshift.testing import MemoryStore
from docshift.values import Timestamp
from tests.unit.engine_support import export, seed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"


class BillingStore(DelegatingStore):
    """Counts what Cloud Firestore bills for each call: a read per document a query returns (at
    least one), per document looked up, one per 1,000 documents a count matches, a write or delete
    per write that landed."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.billed = Operations()
        self._lock = threading.Lock()

    def _add(self, operations: Operations) -> None:
        with self._lock:
            self.billed += operations

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        returned = 0
        try:
            for doc in self.inner.stream(query, read_time=read_time):
                returned += 1
                yield doc
        finally:
            self._add(Operations(reads=max(1, returned)))

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        self._add(Operations(reads=len(paths)))
        return self.inner.get_many(paths, read_time=read_time)

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        found = self.inner.count(query, read_time=read_time)
        self._add(Operations(reads=max(1, math.ceil(found / 1000))))
        return found

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        landed = [w for w, r in zip(writes, results, strict=True) if r.ok]
        deletes = sum(1 for w in landed if w.kind is WriteKind.DELETE)
        self._add(Operations(writes=len(landed) - deletes, deletes=deletes))
        return results

    def snapshot_time(self) -> Timestamp:
        self._add(Operations(reads=1))
        return self.inner.snapshot_time()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", migrations)
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=50, min_batch_size=10),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def _person(index: int) -> dict[str, object]:
    # Every fourth document (in name order) has nothing to split: a pattern any prefix samples fairly.
    data: dict[str, object] = {"n": index, "email": f"u{index}@example.com"}
    return data if index % 4 == 0 else {**data, "full_name": f"First{index} Last{index}"}


def test_the_figures_are_the_data_the_sample_equals_the_dry_run_and_a_run_bills_them(config: Config) -> None:
    store = MemoryStore()
    seed(store, 2400, make=_person)  # type: ignore[arg-type]
    before = export(store)
    billed = BillingStore(store)
    estimate = estimate_run(config, RunOptions(), store=billed, sample=400)
    assert export(store) == before and store.list_collections() == ["users"]  # nothing written, no lease
    writes = next(line for line in estimate.lines if line.item.endswith("write the changes"))
    assert writes.operations == Operations(writes=1800)  # 300 of the first 400, scaled to 2,400
    assert "first 400 of 2,400 documents in name order" in writes.basis
    assert estimate.documents == 2400 and estimate.index_entries is None
    dry = run_migrations(config, RunOptions(), store=store)
    assert dry.outcomes[0].result.counters["updated"] == 1800  # what the sample said
    from_dry = dry_run_estimate(config, dry)
    assert from_dry.total == estimate.total  # the sample found what the dry run found
    counted = BillingStore(store)
    run(config, RunOptions(execute=True), store=counted)  # the whole command, as the CLI runs it
    assert counted.billed.writes == estimate.total.writes
    assert counted.billed.deletes == estimate.total.deletes
    # The library's run shows no ETA, so it makes no count aggregation for one.
    eta = next(line for line in estimate.lines if line.item.endswith("count the target"))
    assert eta.operations == Operations(reads=3) and "ETA" in eta.basis
    assert counted.billed.reads == estimate.total.reads - 3
    assert estimate.price == pytest.approx(
        (estimate.total.reads * 0.03 + estimate.total.writes * 0.09 + estimate.total.deletes * 0.01) / 1e5
    )


def test_a_whole_target_smaller_than_the_sample_is_exact_and_deletes_are_counted(
    config: Config, tmp_path: Path
) -> None:
    (config.migrations_dir / "0002_drop_empty.py").write_text(
        "from docshift import DELETE, UNCHANGED\n"
        "collection = 'users'\n"
        "def up(doc):\n"
        "    return DELETE if doc.data.get('n', 0) % 5 == 0 else UNCHANGED\n",
        encoding="utf-8",
    )
    store = MemoryStore()
    seed(store, 100, make=_person)  # type: ignore[arg-type]
    estimate = estimate_run(config, RunOptions(only="0002"), store=store)
    writes = next(line for line in estimate.lines if line.item.endswith("write the changes"))
    assert writes.operations == Operations(deletes=20)
    assert "all 100 documents (exact)" in writes.basis


def test_prices_come_from_the_config_file_and_a_bad_price_is_refused_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "docshift.toml").write_text(
        "price_reads_per_100k = 0.06\nprice_writes_per_100k = 0.18\nprice_deletes_per_100k = 0.02\n"
        'price_currency = "EUR"\n',
        encoding="utf-8",
    )
    config = load_config(env={}, cwd=tmp_path)
    assert config.prices == PricesConfig(0.06, 0.18, 0.02, "EUR")
    assert Operations(reads=100_000, writes=200_000, deletes=100_000).price(config.prices) == pytest.approx(
        0.44
    )
    (tmp_path / "docshift.toml").write_text("price_writes_per_100k = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(env={}, cwd=tmp_path)
    assert "price_writes_per_100k" in refused.value.message and "negative" in refused.value.message
    assert "100,000 document writes" in (refused.value.hint or "")
    (tmp_path / "docshift.toml").write_text('price_currency = "dollars"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="currency code"):
        load_config(env={}, cwd=tmp_path)


def test_count_aggregation_bills_a_read_per_thousand_index_entries() -> None:
    assert [count_reads(n) for n in (0, 1, 1000, 1001, 25_000)] == [1, 1, 1, 2, 25]


def test_a_backup_estimate_is_what_the_backup_reads(config: Config, tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 1500)
    estimate = estimate_backup(config, BackupOptions(["users"], tmp_path / "b"), store=store)
    assert estimate.documents == 1500 and not (tmp_path / "b").exists()
    billed = BillingStore(store)
    backup(config, BackupOptions(["users"], tmp_path / "b"), store=billed)
    # The estimate also counts the collection (2 reads) to know its size; the backup does not.
    assert estimate.total == billed.billed + Operations(reads=count_reads(1500))


def test_a_rollback_estimate_counts_the_before_images_to_restore(config: Config) -> None:
    store = MemoryStore()
    seed(store, 120, make=_person)  # type: ignore[arg-type]
    report = run_migrations(config, RunOptions(execute=True), store=store)
    estimate = estimate_rollback(config, RollbackOptions(run_id=report.run_id), store=store)
    undo = next(line for line in estimate.lines if "before-image" in line.item)
    assert estimate.documents == 90 and undo.operations == Operations(reads=180, writes=90)
    billed = BillingStore(store)
    run_rollback(
        config, RollbackOptions(run_id=report.run_id, execute=True, strategy="restore"), store=billed
    )
    assert billed.billed.reads == estimate.total.reads  # the history read once, its check under the lease
    assert billed.billed.writes == estimate.total.writes
    assert billed.billed.deletes == estimate.total.deletes


def test_a_verify_estimate_is_what_verify_reads(config: Config) -> None:
    (config.migrations_dir / "0002_copy.py").write_text(
        "collection = 'users'\ncopy_to = 'people'\ndef up(doc):\n    return {**doc.data, 'copied': True}\n",
        encoding="utf-8",
    )
    store = MemoryStore()
    seed(store, 150)
    run_migrations(config, RunOptions(execute=True, only="0002"), store=store)
    estimate = estimate_verify(config, "0002", store=store)
    assert estimate.documents == 300 and estimate.total.writes == estimate.total.deletes == 0
    billed = BillingStore(store)
    assert verify(config, "0002", store=billed).passed
    assert billed.billed == estimate.total


def test_validate_estimate_and_a_resume_is_refused(config: Config, tmp_path: Path) -> None:
    (config.migrations_dir / "0002_rules.py").write_text(
        "from docshift.validators import required\ncollection = 'users'\nrules = [required('n')]\n"
        "def up(doc):\n    return doc.data\n",
        encoding="utf-8",
    )
    store = MemoryStore()
    seed(store, 300)
    assert estimate_validate(config, "0002", store=store).documents == 300
    assert estimate_validate(config, "0002", sample=50, store=store).documents == 50
    with pytest.raises(UsageError, match="new run"):
        estimate_run(config, RunOptions(resume="latest"), store=store)

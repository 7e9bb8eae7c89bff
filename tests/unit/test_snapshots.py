"""Pinned snapshots on the in-memory store: a dry run, a backup, verify and validate read the store as
it was at one read time, whatever is written meanwhile; executions read live data; the versions the
store keeps for that stay bounded."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from docshift.backup.reader import read_records
from docshift.commands.backup import BackupOptions, backup
from docshift.commands.run import RunOptions, load_run_info, run_migrations
from docshift.commands.validate import validate
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.errors import PermanentError, UsageError
from docshift.runfolder.layout import RunFolder
from docshift.store import DelegatingStore, Document, Query, SnapshotStore, Store, Write
from docshift.store.read_time import check_resumable, parse_read_time, parse_timestamp
from docshift.testing import MemoryStore
from docshift.values import Timestamp
from tests.unit.engine_support import seed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", migrations)
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=50, min_batch_size=10, shards=3),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


class WritesOnFirstRead(DelegatingStore):
    """An application writing just as the command begins to stream: the first data stream's writes
    land before its first document is read (live, that stream and every later read would see them)."""

    def __init__(self, inner: Store, writes: list[Write]) -> None:
        super().__init__(inner)
        self.writes = writes
        self.read_times: list[Timestamp | None] = []

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        if not query.collection.startswith("_docshift"):
            self.read_times.append(read_time)
            if self.writes:
                assert all(result.ok for result in self.inner.commit(self.writes))
                self.writes = []
        return self.inner.stream(query, read_time=read_time)


def _meanwhile() -> list[Write]:
    return [
        Write.set("users/u00000", {"full_name": "Changed Meanwhile", "n": -1}),
        Write.set("users/z_new", {"full_name": "New Comer", "n": 999}),
        Write.set("users/z_new2", {"full_name": "Late Comer", "n": 998}),
        Write.delete("users/u00001"),
    ]


def test_a_dry_run_reads_the_store_as_it_was_when_it_started(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 200)
    store = WritesOnFirstRead(memory, _meanwhile())
    report = run_migrations(config, RunOptions(), store=store)
    [outcome] = report.outcomes
    # Live, u00001's deletion and the two new ones would make it 181, and the plan would show the
    # changed u00000.
    assert outcome.result.counters["updated"] == 180
    assert report.read_time is not None and set(store.read_times) == {report.read_time}
    plan = gzip.decompress(
        RunFolder(report.folder).migration(outcome.migration.label).plan.read_bytes()
    ).decode()
    assert "z_new" not in plan and "Changed Meanwhile" not in plan and "users/u00001" in plan
    info = load_run_info(report.folder)
    assert parse_timestamp(info["read_time"]) == report.read_time
    assert info["reads"] == f"reads: snapshot at {report.read_time}"


def test_a_dry_run_at_a_chosen_read_time_leaves_out_what_was_written_after_it(config: Config) -> None:
    store = MemoryStore()
    seed(store, 100)
    then = store.snapshot_time()
    assert all(result.ok for result in store.commit(_meanwhile()))
    report = run_migrations(config, RunOptions(read_time=then), store=store)
    assert report.read_time == then
    assert report.outcomes[0].result.counters["updated"] == 90


def test_an_execute_reads_live_data_and_refuses_a_read_time(config: Config) -> None:
    store = MemoryStore()
    seed(store, 50)
    with pytest.raises(UsageError, match="--read-time is for dry runs") as refused:
        run_migrations(config, RunOptions(execute=True, read_time=store.snapshot_time()), store=store)
    assert refused.value.exit_code == 2 and refused.value.hint
    watched = WritesOnFirstRead(store, [Write.set("users/z_new", {"full_name": "New Comer"})])
    report = run_migrations(config, RunOptions(execute=True), store=watched)
    assert report.read_time is None and set(watched.read_times) == {None}
    assert report.outcomes[0].result.counters["updated"] == 46  # 45 seeded + the one written meanwhile
    assert load_run_info(report.folder)["reads"] == "reads: live"


def test_a_resumed_dry_run_keeps_its_read_time_while_the_store_serves_it() -> None:
    now = Timestamp(1_800_000_000, 0)
    kept = Timestamp(now.seconds - 3000, 5000)
    assert check_resumable(kept, now, "dry run x").at == kept
    whole_minute = Timestamp(now.seconds - 2 * 86_400, 0)
    resumable = check_resumable(whole_minute, now, "dry run x")
    assert resumable.at == whole_minute and resumable.note and "point-in-time recovery" in resumable.note
    with pytest.raises(UsageError, match="cannot read the same snapshot") as refused:
        check_resumable(Timestamp(now.seconds - 7200, 5000), now, "dry run x")
    assert "start a new dry run" in (refused.value.hint or "")


def test_a_backup_is_one_snapshot_while_writes_happen_during_it(tmp_path: Path, config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 30)
    seed(memory, 30, collection="orders")
    before = {doc.path: doc.data for name in ("users", "orders") for doc in memory.stream(Query(name))}
    during = [  # written while users is backed up: orders is read after, at the same moment
        Write.set("orders/u00000", {"changed": True}),
        Write.set("orders/z_new", {"n": 1}),
        Write.delete("orders/u00001"),
        Write.set("users/z_new", {"n": 1}),
    ]
    store = WritesOnFirstRead(memory, during)
    manifest = backup(config, BackupOptions(["users", "orders"], tmp_path / "backup"), store=store)
    backed_up = {
        record.path: record.data
        for entry in manifest.files
        for record in read_records(tmp_path / "backup", entry)
    }
    assert backed_up == before
    assert manifest.read_time is not None and set(store.read_times) == {manifest.read_time}
    assert memory.get("orders/z_new") is not None  # the writes did land, after the snapshot


def test_validate_reads_one_snapshot_and_records_it(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 20)
    store = WritesOnFirstRead(memory, [Write.set("users/z_new", {"full_name": "New Comer"})])
    report = validate(config, "0001", phase="before", store=store)
    assert report.checked == 20 and report.read_time is not None
    assert {str(t) for t in store.read_times} == {report.read_time}


def test_a_snapshot_is_read_only() -> None:
    store = MemoryStore()
    with pytest.raises(UsageError, match="cannot write through a snapshot"):
        SnapshotStore(store, store.snapshot_time()).commit([Write.set("a/b", {})])


class Clock:
    def __init__(self) -> None:
        self.now = Timestamp(1_800_000_000, 0)

    def __call__(self) -> Timestamp:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now = Timestamp(self.now.seconds + seconds, self.now.nanos)


def test_the_memory_store_keeps_replaced_versions_only_as_long_as_it_serves_them() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, keeps_seconds=3600)
    times = []
    for value in range(100):
        [result] = store.commit([Write.set("c/a", {"v": value})])
        times.append(result.update_time)
    store.commit([Write.delete("c/b")])  # nothing to delete: no version to keep
    store.commit([Write.set("c/b", {"v": 0})])
    store.commit([Write.delete("c/b")])
    assert store.versions_kept == 99 + 1
    assert store.get("c/a", read_time=times[10]) == Document("c/a", {"v": 10}, times[0], times[10])
    clock.advance(1800)
    assert store.get("c/a", read_time=times[10]) == Document("c/a", {"v": 10}, times[0], times[10])
    clock.advance(1801)
    store.commit([Write.set("c/other", {"v": 1})])  # any commit drops what is out of reach
    assert store.versions_kept == 0
    with pytest.raises(PermanentError, match="too old"):
        store.get("c/a", read_time=times[10])
    still = clock.now
    assert store.get("c/a", read_time=still) == Document("c/a", {"v": 99}, times[0], times[99])
    assert store.get("c/b", read_time=still) is None


def test_read_time_flags_parse_rfc3339_and_relative_times_within_what_firestore_serves() -> None:
    now = Timestamp(1_800_000_000, 250_000_000)
    assert parse_read_time("-10m", now).at == Timestamp(now.seconds - 600, now.nanos)
    assert parse_read_time("-1h", now).note is None
    # 1_800_000_000 s is 2027-01-15T08:00:00Z
    assert parse_read_time("2027-01-15T08:00:00.123456Z", now).at == Timestamp(1_800_000_000, 123_456_000)
    assert parse_read_time("2027-01-15T08:30:00.5+01:00", now).at == Timestamp(1_799_998_200, 500_000_000)
    old = parse_read_time("-1h30m", now)  # older than an hour: a whole minute, with a note
    assert old.at == Timestamp(1_799_994_600, 0) and old.note and "point-in-time recovery" in old.note
    for text, match in (
        ("+10m", "not a time"),
        ("yesterday", "not a time"),
        ("2027-01-15T08:00:00", "not a time"),  # no zone
        ("-8d", "more than seven days"),
        ("2099-01-01T00:00:00Z", "in the future"),
        ("2027-01-15T07:59:59.123456789Z", "finer than a microsecond"),
    ):
        with pytest.raises(UsageError, match=match) as refused:
            parse_read_time(text, now)
        assert refused.value.exit_code == 2 and refused.value.hint, text

"""docshift.beam without a runner: the worker's partition attempts, the shipped migration, the
worker's share of the write limit, the Beam options, and what ``--runner beam`` refuses."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem

from docshift.beam import BeamSettings, Partition, PartitionWorker, ShippedMigration, WorkerPlan, WorkerShare
from docshift.beam.driver import beam_pipeline_options, worker_count
from docshift.beam.files import RunFiles
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.hooks import Warned
from docshift.engine.pipeline import PipelineOptions
from docshift.errors import BatchAborted, DriftError, RunStopped, UsageError
from docshift.loader import load_migration
from docshift.runfolder.journal import JournalReader
from docshift.runfolder.layout import PARTITION_FORMAT, MigrationFolder
from docshift.store import DelegatingStore, Query, Store, Write, WriteResult
from docshift.store.memory import MemoryStore
from docshift.testing import FaultInjectingStore, RecordingHooks, RecordingStore
from docshift.values import values_equal

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "migrations" / "0001_split_full_name.py"


def test_import_docshift_does_not_import_apache_beam() -> None:
    code = (
        "import sys, docshift, docshift.cli, docshift.commands.run\n"
        "assert 'apache_beam' not in sys.modules, 'apache_beam imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_worker_share_is_the_limit_divided_by_the_workers() -> None:
    now = [0.0]
    share = WorkerShare(300.0, ramp=False, workers=3, clock=lambda: now[0])
    assert share.limit == 100.0
    ramped = WorkerShare(0.0, ramp=True, workers=4, clock=lambda: now[0])
    assert ramped.limit == 500.0 / 4  # the 500/50/5 ramp, shared
    now[0] = 301.0
    assert ramped.limit == 750.0 / 4
    assert WorkerShare(0.0, ramp=False, workers=2).limit == 0.0  # no limit stays none
    # The adaptive rate is set by this worker's own answers from the store: not divided again.
    adaptive = WorkerShare(3000.0, ramp=False, workers=3, adaptive=True, clock=lambda: now[0])
    assert adaptive.adaptive is not None
    adaptive.adaptive.refused()  # refused before anything was measured: from 500 writes/s, less 10%
    assert adaptive.limit == 450.0
    adaptive.set_cap(900.0)
    assert adaptive.limit == 300.0  # the run's 900, shared by 3, is lower now


def test_a_shipped_migration_loads_on_the_worker_and_its_checksum_is_checked(tmp_path: Path) -> None:
    migration = load_migration(EXAMPLE)
    shipped = ShippedMigration.of(migration)
    loaded = shipped.load()
    assert (loaded.id, loaded.checksum, loaded.target) == (migration.id, migration.checksum, migration.target)
    tampered = ShippedMigration(shipped.file_name, shipped.source + "\nx = 1\n", shipped.checksum)
    with pytest.raises(DriftError) as refused:
        tampered.load()
    assert refused.value.hint
    edited = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, edited)
    early = load_migration(edited)
    edited.write_text(edited.read_text() + "\n# edited\n")
    with pytest.raises(DriftError, match="changed since it was loaded"):
        ShippedMigration.of(early)


def test_beam_options_are_key_value_pairs_beam_knows() -> None:
    options = beam_pipeline_options(
        BeamSettings(("direct_running_mode=multi_processing", "direct_num_workers=3"))
    )
    assert options.get_all_options()["runner"] == "DirectRunner"
    assert worker_count(options) == 3
    assert worker_count(beam_pipeline_options(BeamSettings())) == 1
    with pytest.raises(UsageError, match="is not KEY=VALUE") as bad:
        beam_pipeline_options(BeamSettings(("direct_num_workers",)))
    assert bad.value.hint
    with pytest.raises(UsageError, match="no such pipeline option"):
        beam_pipeline_options(BeamSettings(("no_such_option=1",)))


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        (RunOptions(runner="beam"), "executes a run"),
        (RunOptions(execute=True, runner="beam", limit=5), "--limit runs in this process"),
        (RunOptions(execute=True, runner="beam", sample_percent=5.0), "--sample runs in this process"),
        (RunOptions(execute=True, runner="beam", stages=(10.0, 100.0)), "--stages runs in this process"),
        (RunOptions(execute=True, beam_options=("a=b",)), "--beam-option needs --runner beam"),
    ],
)
def test_what_the_beam_runner_refuses(tmp_path: Path, options: RunOptions, refused: str) -> None:
    (tmp_path / "migrations").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "migrations")
    config = Config(migrations_dir=tmp_path / "migrations", runs_dir=tmp_path / "runs")
    with pytest.raises(UsageError, match=refused) as error:
        run_migrations(config, options, store=MemoryStore())
    assert error.value.hint
    assert not (tmp_path / "runs").exists()  # refused before anything was started


# --------------------------------------------------------------------------- one partition's attempts


class _DiesAfter(DelegatingStore):
    """Lands ``after`` commit requests, then raises (a worker dying mid-bundle)."""

    def __init__(self, inner: Store, after: int) -> None:
        super().__init__(inner)
        self.after = after

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if self.after <= 0:
            raise RuntimeError("injected: the worker died")
        self.after -= 1
        return self.inner.commit(writes)

    def close(self) -> None:
        """The shared store outlives the worker."""


def _seed(store: Store, count: int) -> None:
    writes = [
        Write.set(f"users/u{i:04d}", {"full_name": f"Ada Lovelace{i}", "email": f"ada{i}@example.com"})
        for i in range(count)
    ]
    assert all(result.ok for result in store.commit(writes))


def _plan(tmp_path: Path, store: Store) -> WorkerPlan:
    migration = load_migration(EXAMPLE)
    engine = EngineConfig(batch_size=10, min_batch_size=10, max_batch_size=10)
    return WorkerPlan(
        Config(store=StoreConfig(project="memory")),
        ShippedMigration.of(migration),
        str(tmp_path / "run" / migration.label),
        PipelineOptions(execute=True, engine=engine),
        store=lambda: store,
    )


def test_a_partition_retried_after_some_writes_counts_as_one_that_never_failed(tmp_path: Path) -> None:
    clean, retried = MemoryStore(), MemoryStore()
    _seed(clean, 50)
    _seed(retried, 50)
    before = {doc.path: doc.data for doc in retried.stream(Query("users"))}
    partition = Partition(0)
    once = PartitionWorker.open(_plan(tmp_path / "clean", clean)).migrate(partition)

    plan = _plan(tmp_path / "retried", retried)
    first = PartitionWorker.open(plan)
    first.store = _DiesAfter(retried, after=2)
    with pytest.raises(RuntimeError, match="injected"):
        first.migrate(partition)
    files = MigrationFolder(Path(plan.folder))
    assert not files.partition_record(0).exists()  # not finished: a resume does it again
    [attempt] = files.attempt_journals(0)
    kept = [entry for entry in JournalReader(attempt) if entry.kind == "before"]
    assert len(kept) == 30  # three batches journalled ahead of their commits (the third's failed)
    assert all(values_equal(entry.data, before[entry.path]) for entry in kept)

    done = PartitionWorker.open(plan).migrate(partition)
    assert done.counters == once.counters
    assert done.counters["updated"] == 50 and done.counters["read"] == 50
    assert files.attempt_journals(0)[0] == attempt  # the first attempt's journal is kept, unchanged
    assert [entry for entry in JournalReader(attempt) if entry.kind == "before"] == kept
    assert len(files.attempt_journals(0)) == 2
    again = {e.path for e in JournalReader(files.attempt_journals(0)[1]) if e.kind == "before"}
    assert len(again) == 30  # the 20 that landed were not written again
    # A retried bundle whose partition is recorded does nothing again.
    assert PartitionWorker.open(plan).migrate(partition) == done
    assert len(files.attempt_journals(0)) == 2


def test_a_worker_follows_the_runs_pause_write_limit_and_stop(tmp_path: Path) -> None:
    store = RecordingStore(MemoryStore())
    _seed(store.inner, 30)
    base = _plan(tmp_path, store)
    files = MigrationFolder(Path(base.folder))
    files.path.mkdir(parents=True)
    plan = dataclasses.replace(
        base, workers=2, stop_file=str(files.beam_stop), steer_file=str(files.beam_steer)
    )
    files.beam_steer.write_bytes(orjson.dumps({"paused": True, "limit": 80.0}))
    worker = PartitionWorker.open(plan)
    failures: list[BaseException] = []

    def migrate() -> None:
        try:
            worker.migrate(Partition(0))
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=migrate)
    thread.start()
    limiter = worker.limiter
    while thread.is_alive() and limiter.limit != 40.0:  # it read the steering file before a batch
        thread.join(0.01)
    assert limiter.limit == 40.0  # the run's 80 ops/s, shared by 2 workers
    assert thread.is_alive()  # paused
    assert store.commits == 0
    files.beam_stop.touch()
    thread.join()
    assert store.commits == 0  # paused, then stopped: nothing was written
    assert isinstance(failures[0], RunStopped) and failures[0].hint
    assert not files.partition_record(0).exists()

    files.beam_stop.unlink()
    files.beam_steer.write_bytes(orjson.dumps({"paused": False, "limit": 0.0}))
    done = PartitionWorker.open(plan).migrate(Partition(0))
    assert done.counters["updated"] == 30 and store.commits > 0


def test_a_script_migration_of_a_beam_run_runs_in_this_process_and_the_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    shutil.copy(ROOT / "examples" / "scripts" / "0003_tags_to_subcollection.py", tmp_path / "migrations")
    config = Config(migrations_dir=tmp_path / "migrations", runs_dir=tmp_path / "runs")
    store = MemoryStore()
    assert all(r.ok for r in store.commit([Write.set("users/u1", {"tags": ["a", "b"]})]))
    hooks = RecordingHooks()
    report = run_migrations(config, RunOptions(execute=True, runner="beam"), store=store, hooks=hooks)
    assert report.outcomes[0].state == "applied"
    said = [e.message for e in hooks.events if isinstance(e, Warned)]
    assert any("is a script migration (apply(ctx)): it runs in this process" in m for m in said)
    assert store.get_many(["users/u1/tags/a"])[0] is not None


def test_an_attempt_after_one_the_circuit_breaker_stopped_starts_afresh(tmp_path: Path) -> None:
    """A bundle retried on the same worker (after an outage) is not stopped by the breaker that
    stopped the attempt before it: breaker, batch size and stop are each attempt's own."""
    inner = MemoryStore()
    _seed(inner, 200)
    failing = FaultInjectingStore(inner, write_failure_rate=1.0)
    worker = PartitionWorker.open(_plan(tmp_path, failing))
    with pytest.raises(BatchAborted):
        worker.migrate(Partition(0))  # every write fails: the breaker trips and stops the attempt
    assert not worker.files.partition_record(0).exists()
    failing.enabled = False  # the outage is over; the runner retries the bundle on this worker
    done = worker.migrate(Partition(0))
    assert done.counters["updated"] == 200 and done.counters["failed"] == 0


class _WatchedFileSystem(LocalFileSystem):  # type: ignore[misc]
    """``docshift-watched://PATH``: Beam's local file system, where a file is there from the moment
    it is created (as on HDFS or a shared mount, unlike an object store). Each write first notes
    what a reader of the record's name would find at that moment."""

    record: ClassVar[Path | None] = None
    seen: ClassVar[list[bytes | None]] = []

    @classmethod
    def scheme(cls) -> str:
        return "docshift-watched"

    @staticmethod
    def _local(url: str) -> str:
        return url.removeprefix("docshift-watched://")

    def create(self, path: str, *args: Any, **kwargs: Any) -> Any:
        handle = super().create(self._local(path), *args, **kwargs)
        write = handle.write

        def watched(data: bytes) -> None:
            record = _WatchedFileSystem.record
            assert record is not None
            _WatchedFileSystem.seen.append(record.read_bytes() if record.exists() else None)
            write(data)

        handle.write = watched
        return handle

    def open(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path: str) -> bool:
        return bool(super().exists(self._local(path)))

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def delete(self, paths: list[str]) -> None:
        super().delete([self._local(p) for p in paths])


def test_a_record_under_a_url_is_never_seen_half_written(tmp_path: Path) -> None:
    """The driver reads the partitions' records while the workers rewrite them: on a file system
    where a file shows as soon as it is created, a reader must find the whole old record or the
    whole new one (or none), never an empty or cut one."""
    runs = tmp_path / "runs"
    bucket = tmp_path / "bucket"
    files = RunFiles(runs, f"docshift-watched://{bucket}")
    path = runs / "20260101T000000-abcdef" / "0001_x" / "partitions" / "p00002.json"
    _WatchedFileSystem.record = bucket / path.relative_to(runs)
    _WatchedFileSystem.seen = []
    first, second = {"counters": {"updated": 1}}, {"counters": {"updated": 2}}
    files.write_format(PARTITION_FORMAT, path, first)
    whole_first = _WatchedFileSystem.record.read_bytes()
    files.write_format(PARTITION_FORMAT, path, second)
    assert (files.read_format(PARTITION_FORMAT, path) or {}).get("counters") == second["counters"]
    assert _WatchedFileSystem.seen and set(_WatchedFileSystem.seen) <= {None, whole_first}
    left = [p.name for p in _WatchedFileSystem.record.parent.iterdir()]
    assert left == ["p00002.json"]  # no partial file left over


def test_a_file_under_a_url_is_stored_as_given_whatever_its_name(tmp_path: Path) -> None:
    """A journal segment is gzip already: stored as is (readable by any tool), not compressed again
    because its name ends in ``.gz``, and read back as it was written."""
    runs = tmp_path / "runs"
    files = RunFiles(runs, f"docshift-watched://{tmp_path / 'bucket'}")
    path = runs / "20260101T000000-abcdef" / "0001_x" / "before-images" / "p00000-1-a.000000.jsonl.gz"
    payload = gzip.compress(b'{"kind": "before"}\n')
    _WatchedFileSystem.record = tmp_path / "unused"
    files.write(path, payload)
    assert (tmp_path / "bucket" / path.relative_to(runs)).read_bytes() == payload
    assert files.read(path) == payload


class _NoReplaceFileSystem(_WatchedFileSystem):
    """``docshift-noreplace://PATH``: a rename onto an existing file is refused, as on HDFS."""

    @classmethod
    def scheme(cls) -> str:
        return "docshift-noreplace"

    @staticmethod
    def _local(url: str) -> str:
        return url.removeprefix("docshift-noreplace://")

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        if any(Path(self._local(d)).exists() for d in destinations):
            raise OSError("destination exists")
        super().rename(sources, destinations)


def test_a_record_is_rewritten_where_a_rename_does_not_replace(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    files = RunFiles(runs, f"docshift-noreplace://{tmp_path / 'bucket'}")
    path = runs / "20260101T000000-abcdef" / "0001_x" / "landed" / "p00000.json"
    _WatchedFileSystem.record = tmp_path / "bucket" / path.relative_to(runs)
    _WatchedFileSystem.seen = []
    for updated in (1, 2, 3):
        files.write_format(PARTITION_FORMAT, path, {"counters": {"updated": updated}})
    assert (files.read_format(PARTITION_FORMAT, path) or {}).get("counters") == {"updated": 3}
    assert [p.name for p in _WatchedFileSystem.record.parent.iterdir()] == ["p00000.json"]
    assert b"" not in _WatchedFileSystem.seen  # never half a record (at most, for a moment, none)

"""The ``run_migrations()`` Python API on the memory store: run folders, resume, history, limits
across shards."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from docshift.commands.run import RunOptions, load_run_info, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.controls import Controls
from docshift.engine.hooks import Progressed
from docshift.errors import LockedError, RunStopped, UsageError
from docshift.history import History, MigrationStatus, current_user
from docshift.loader import load_migrations
from docshift.lock import Lease, lease_path, read_lease
from docshift.runfolder import Checkpoint, JournalReader, read_versioned, write_versioned
from docshift.store import RetryingStore, RetryPolicy, Write
from docshift.testing import FaultInjectingStore, MemoryStore, RecordingHooks, RecordingStore
from docshift.values import Timestamp
from tests.unit.engine_support import assert_data, expected_after, export, seed, split_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"


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


def test_a_dry_run_then_a_run_then_nothing_pending(config: Config) -> None:
    store = MemoryStore()
    seed(store, 200)
    before = export(store)
    dry = run_migrations(config, RunOptions(), store=store)
    assert not dry.execute and [o.result.counters["updated"] for o in dry.outcomes] == [180]
    assert export(store) == before
    assert store.list_collections() == ["users"]  # no history, no lease in a dry run
    assert load_run_info(dry.folder)["state"] == "finished"
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert [o.result.counters["updated"] for o in report.outcomes] == [180]
    assert_data(store, expected_after(before, split_name))
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert record.counts["updated"] == 180 and record.run_id == report.run_id
    assert read_lease(store, "_docshift") is None  # released
    assert run_migrations(config, RunOptions(execute=True), store=store).outcomes == []


def test_a_stopped_run_resumes_from_its_checkpoint(config: Config) -> None:
    store = MemoryStore()
    seed(store, 400)
    before = export(store)
    controls = Controls()
    progress = RecordingHooks()

    class StopAtFirstCheckpoint(RecordingHooks):
        def progressed(self, event: Progressed) -> None:
            progress.progressed(event)
            if event.stats is not None and event.stats.processed > 0:
                controls.request_stop("test stop")

    slow = Config(
        store=config.store,
        engine=EngineConfig(batch_size=10, min_batch_size=10, concurrency=1),
        migrations_dir=config.migrations_dir,
        runs_dir=config.runs_dir,
    )
    from docshift.engine.limits import RateLimiter

    controls.limiter = RateLimiter(150)  # about 2.5 s: the progress event after 1 s stops it
    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            slow, RunOptions(execute=True), store=store, controls=controls, hooks=StopAtFirstCheckpoint()
        )
    run_id = stopped.value.resume_command.split()[-1] if stopped.value.resume_command else ""
    assert stopped.value.resume_command == f"docshift run --execute --resume {run_id}"
    folder = config.runs_dir / run_id
    assert load_run_info(folder)["state"] == "stopped"
    saved = Checkpoint.load(folder / "0001_split_full_name" / "checkpoint.json")
    assert saved.state == "stopped" and 0 < saved.counters["read"] < 400
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.INTERRUPTED  # stopped, not failed
    assert f"--resume {run_id}" in (record.error or "")
    assert read_lease(store, "_docshift") is None
    report = run_migrations(config, RunOptions(execute=True, resume="latest"), store=store)
    assert report.run_id == run_id
    assert_data(store, expected_after(before, split_name))
    assert report.outcomes[0].result.counters["read"] == 400
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert load_run_info(folder)["state"] == "finished"
    with pytest.raises(UsageError, match="no unfinished run"):
        run_migrations(config, RunOptions(execute=True, resume="latest"), store=store)


def test_resume_after_a_kill_between_the_last_checkpoint_and_the_history_marks_it_applied(
    config: Config,
) -> None:
    """Killed after the final checkpoint but before the history was updated: resuming finishes it."""
    store = MemoryStore()
    seed(store, 50)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    [migration] = load_migrations(config.migrations_dir)
    history = History(store, "_docshift")
    history.start(migration, report.run_id)  # as the killed process left it: running
    info = read_versioned(report.folder / "run.json", "docshift-run", 1)
    write_versioned(report.folder / "run.json", "docshift-run", 1, {**info, "state": "running"})
    resumed = run_migrations(config, RunOptions(execute=True, resume=report.run_id), store=store)
    assert resumed.run_id == report.run_id
    record = history.get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert record.counts["updated"] == 45


def test_limit_counts_documents_across_all_shards(config: Config) -> None:
    store = MemoryStore()
    seed(store, 300)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True, limit=37, shards=3), store=store)
    assert report.outcomes[0].result.counters["read"] == 37
    changed = [p for p, doc in export(store).items() if doc.update_time != before[p].update_time]
    assert changed == [p for p in sorted(before)[:37] if "full_name" in before[p].data]


def test_transient_failures_through_the_run_api_migrate_every_document_once(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 1500)
    before = export(memory)
    faulty = FaultInjectingStore(memory, write_failure_rate=0.05, request_failure_rate=0.05, seed=2)
    store = RetryingStore(faulty, RetryPolicy(attempts=8, initial_wait=0.001, max_wait=0.005))
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert faulty.injected > 20 and store.retries > 10
    [outcome] = report.outcomes
    changed = {path for path, doc in before.items() if "full_name" in doc.data}
    assert outcome.result.counters["updated"] == len(changed)
    assert outcome.result.counters["failed"] == outcome.result.counters["conflicts"] == 0
    journal = report.folder / "0001_split_full_name" / "before-images.jsonl.gz"
    befores = Counter(entry.path for entry in JournalReader(journal) if entry.kind == "before")
    assert set(befores) == changed and set(befores.values()) == {1}
    assert_data(memory, expected_after(before, split_name))
    record = History(memory, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED


def _stopped_run(config: Config, store: MemoryStore) -> str:
    """A run stopped after its first migration checkpointed; its run id."""
    controls = Controls()
    controls.request_stop("stopped before it began")
    with pytest.raises(RunStopped) as stopped:
        run_migrations(config, RunOptions(execute=True), store=store, controls=controls)
    assert stopped.value.resume_command is not None
    return stopped.value.resume_command.split()[-1]


def _plant_lease(store: MemoryStore, run_id: str, pid: int, owner: str | None = None) -> None:
    now = Timestamp.now()
    lease = Lease(owner or current_user(), pid, run_id, now, Timestamp(now.seconds + 60, now.nanos))
    assert store.commit([Write.set(lease_path("_docshift"), lease.to_data())])[0].ok


def test_resume_refuses_while_the_process_of_that_run_is_alive(config: Config) -> None:
    store = MemoryStore()
    seed(store, 50)
    run_id = _stopped_run(config, store)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _plant_lease(store, run_id, alive.pid)
        with pytest.raises(LockedError, match=f"run {run_id} is still running"):
            run_migrations(config, RunOptions(execute=True, resume=run_id), store=store)
        _plant_lease(store, run_id, 4242, owner="someone@another-host")
        with pytest.raises(LockedError, match="still running"):
            run_migrations(config, RunOptions(execute=True, resume=run_id), store=store)
    finally:
        alive.kill()
        alive.wait()
    # Its process is gone (killed): resuming takes the run's lease over at once.
    _plant_lease(store, run_id, alive.pid)
    report = run_migrations(config, RunOptions(execute=True, resume=run_id), store=store)
    assert report.outcomes[0].result.counters["updated"] == 45
    assert read_lease(store, "_docshift") is None


def test_without_a_user_name_every_record_names_the_same_uid(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a container with an unnamed uid (no USER, no passwd entry) the run's run.json, its lease
    and the history all name ``uid<N>@host``: every one asks ``history.current_user``."""

    def unnamed() -> str:
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(getpass, "getuser", unnamed)
    expected = f"uid{os.getuid()}@{socket.gethostname()}"
    store = RecordingStore(MemoryStore())
    seed(store, 20)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert load_run_info(report.folder)["user"] == expected
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.user == expected
    assert {event.user for event in record.events} == {expected}
    leases = [w for request in store.requests for w in request if w.path == lease_path("_docshift")]
    assert leases and {str((w.data or {}).get("owner")) for w in leases if w.data} == {expected}

"""A new executing run takes the database's lease while it reads the history (one round trip
fewer before its first write), and still holds it before it writes anything else; a run that
then has nothing to do, or fails before it starts, gives it back (and another run holding it is
then no error: such a run never needed it)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from docshift.commands import session as session_module
from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.errors import ExitCode, LockedError, StoreError, TransientError
from docshift.history import History, MigrationStatus
from docshift.lock import Lease, LeaseLock, force_unlock, lease_path, read_lease
from docshift.store import DelegatingStore, Document, Query, Store, Write, WriteResult
from docshift.testing import MemoryStore, RecordingStore
from docshift.values import Timestamp
from tests.unit.engine_support import seed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"
PREFIX = "_docshift"
HISTORY = f"{PREFIX}_history"


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


class HistoryWaitsForLease(DelegatingStore):
    """Holds the history read until the lease's write has arrived (for at most ``patience``
    seconds): it proceeds at once only when the two run side by side."""

    def __init__(self, inner: Store, patience: float = 20.0) -> None:
        super().__init__(inner)
        self.lease_written = threading.Event()
        self.history_read_waited: list[bool] = []
        self.patience = patience

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if any(write.path == lease_path(PREFIX) for write in writes):
            self.lease_written.set()
        return self.inner.commit(writes)

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        if query.collection == HISTORY:
            self.history_read_waited.append(self.lease_written.wait(self.patience))
        return self.inner.stream(query, read_time=read_time)


class FailingHistory(DelegatingStore):
    """The history cannot be read."""

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        if query.collection == HISTORY:
            raise TransientError("history unavailable", hint="try again")
        return self.inner.stream(query, read_time=read_time)


def test_the_lease_is_taken_while_the_history_is_read_and_before_any_other_write(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 120)
    recorded = RecordingStore(memory)
    store = HistoryWaitsForLease(recorded)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert [o.result.counters["updated"] for o in report.outcomes] == [108]
    assert store.history_read_waited == [True]  # the lease's write came while the history was read
    paths = recorded.paths()
    assert paths[0] == [lease_path(PREFIX)]  # nothing else is written before the lease is held
    assert paths[-1] == [lease_path(PREFIX)]  # and it is released at the end
    assert read_lease(memory, PREFIX) is None


def test_a_run_with_nothing_to_do_gives_the_lease_back(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 20)
    run_migrations(config, RunOptions(execute=True), store=memory)
    again = run_migrations(config, RunOptions(execute=True), store=memory)
    assert again.outcomes == []  # nothing pending
    assert read_lease(memory, PREFIX) is None


def test_another_runs_lease_is_no_error_for_a_run_with_nothing_to_do(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 20)
    run_migrations(config, RunOptions(execute=True), store=memory)
    with LeaseLock(memory, PREFIX, run_id="other-run") as held:
        again = run_migrations(config, RunOptions(execute=True), store=memory)
        assert again.outcomes == []
        lease = read_lease(memory, PREFIX)
        assert lease is not None and lease.run_id == "other-run" and lease.update_time == held.update_time


def test_a_run_with_work_refused_by_another_runs_lease_writes_nothing(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 20)
    with LeaseLock(memory, PREFIX, run_id="other-run"):
        recorded = RecordingStore(memory)
        with pytest.raises(LockedError):
            run_migrations(config, RunOptions(execute=True), store=recorded)
        assert recorded.commits == 0
        lease = read_lease(memory, PREFIX)
        assert lease is not None and lease.run_id == "other-run"
    assert not (config.runs_dir.exists() and any(config.runs_dir.iterdir()))  # no run folder either


def test_a_run_that_fails_reading_the_history_leaves_no_lease(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 20)
    with pytest.raises(StoreError, match="history unavailable"):
        run_migrations(config, RunOptions(execute=True), store=FailingHistory(memory))
    assert read_lease(memory, PREFIX) is None


def test_a_dry_run_takes_no_lease(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 20)
    recorded = RecordingStore(memory)
    run_migrations(config, RunOptions(), store=recorded)
    assert recorded.commits == 0


class AnotherRunFinishesFirst(DelegatingStore):
    """Once this run has read the history, its first read of the lease document lets another run
    go first (``other``): that run takes the free lease, applies the same pending migrations,
    records them applied and releases the lease, all before this run takes the lease."""

    def __init__(self, inner: Store, other: Callable[[], None], patience: float = 20.0) -> None:
        super().__init__(inner)
        self.other = other
        self.history_read = threading.Event()
        self.other_went_after_the_history_read: list[bool] = []
        self.patience = patience

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        if query.collection != HISTORY:
            return self.inner.stream(query, read_time=read_time)
        documents = list(self.inner.stream(query, read_time=read_time))
        self.history_read.set()
        return iter(documents)

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        if lease_path(PREFIX) in paths and not self.other_went_after_the_history_read:
            self.other_went_after_the_history_read.append(self.history_read.wait(self.patience))
            self.other()
        return self.inner.get_many(paths, read_time=read_time)


def test_a_run_whose_migrations_another_run_applied_while_it_took_the_lease_writes_nothing(
    config: Config,
) -> None:
    memory = MemoryStore()
    seed(memory, 40)
    other_reports = []

    def other_run() -> None:
        other_reports.append(
            run_migrations(config, RunOptions(execute=True, run_id="other-run"), store=memory)
        )

    recorded = RecordingStore(memory)
    store = AnotherRunFinishesFirst(recorded, other_run)
    with pytest.raises(LockedError) as refused:
        run_migrations(config, RunOptions(execute=True, run_id="late-run"), store=store)
    assert store.other_went_after_the_history_read == [True]  # it chose 0001 as pending
    assert [o.result.counters["updated"] for o in other_reports[0].outcomes] == [36]
    assert refused.value.exit_code is ExitCode.LOCKED
    assert refused.value.hint == "another run changed the history while this one started; run again"
    assert "0001" in refused.value.message
    # The late run wrote nothing but its lease (taken, then given back): no target document, no history.
    assert {path for request in recorded.paths() for path in request} == {lease_path(PREFIX)}
    record = History(memory, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert record.runs == ("other-run",)  # applied once
    assert read_lease(memory, PREFIX) is None
    assert sorted(p.name for p in config.runs_dir.iterdir()) == ["other-run"]  # no folder of the late run


class TakenOverOnceHeld(LeaseLock):
    """A lease taken over as soon as it is held (it was removed with ``docshift unlock --force``
    and another run took it), which the holder's next heartbeat finds."""

    taken_over_by: ClassVar[list[LeaseLock]] = []
    other_store: ClassVar[Store | None] = None
    """Where the other process works (the database itself, not this run's view of it)."""

    def acquire(self) -> Lease:
        held_already = self.lease is not None  # ``with`` acquires again what is held: a no-op
        lease = super().acquire()
        if self.run_id != "other-run" and not held_already:
            assert self.other_store is not None
            force_unlock(self.other_store, self.prefix)
            other = LeaseLock(self.other_store, self.prefix, run_id="other-run")
            other.acquire()
            self.taken_over_by.append(other)
            assert not self.extend()  # the heartbeat's beat: the lease is lost
        return lease


def test_a_run_whose_lease_is_lost_before_it_starts_writes_nothing(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = MemoryStore()
    seed(memory, 20)
    monkeypatch.setattr(session_module, "LeaseLock", TakenOverOnceHeld)
    monkeypatch.setattr(TakenOverOnceHeld, "other_store", memory)
    recorded = RecordingStore(memory)
    try:
        with pytest.raises(LockedError, match="lost the database's lease before it started") as refused:
            run_migrations(config, RunOptions(execute=True), store=recorded)
        assert refused.value.exit_code is ExitCode.LOCKED
        # Its lease's create and the heartbeat's refused extension: nothing else, no history either.
        assert recorded.paths() == [[lease_path(PREFIX)], [lease_path(PREFIX)]]
        assert History(memory, PREFIX).get("0001") is None
        lease = read_lease(memory, PREFIX)
        assert lease is not None and lease.run_id == "other-run"  # the other run's lease is left alone
        assert not (config.runs_dir.exists() and any(config.runs_dir.iterdir()))
    finally:
        for other in TakenOverOnceHeld.taken_over_by:
            other.release()
        TakenOverOnceHeld.taken_over_by.clear()


def test_a_rollback_of_a_run_another_rollback_undid_while_it_took_the_lease_writes_nothing(
    config: Config,
) -> None:
    """Two rollbacks of one run started side by side: the late one decided from the history (0001
    applied by the run), then, before it held the lease, the other undid the run. Undoing it again
    would fight documents restored since; the late one re-checks the history under the lease."""
    memory = MemoryStore()
    seed(memory, 40)
    run_migrations(config, RunOptions(execute=True, run_id="the-run"), store=memory)
    undone = []

    def other_rollback() -> None:
        undone.append(
            rollback(
                config, RollbackOptions(run_id="the-run", execute=True, rollback_id="first"), store=memory
            )
        )

    recorded = RecordingStore(memory)
    store = AnotherRunFinishesFirst(recorded, other_rollback)
    with pytest.raises(LockedError) as refused:
        rollback(config, RollbackOptions(run_id="the-run", execute=True, rollback_id="late"), store=store)
    assert store.other_went_after_the_history_read == [True] and undone
    assert refused.value.exit_code is ExitCode.LOCKED and "0001" in refused.value.message
    assert {path for request in recorded.paths() for path in request} == {lease_path(PREFIX)}
    record = History(memory, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK

"""Commits applied by the store whose reply was lost (a connection reset after the write).

The retry layer sends such a commit again and the update-time guard refuses it: that refusal is
docshift's own write, already applied, and must be counted as applied (and journalled with its
update time), never as an application conflict. Real application writes stay conflicts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.errors import TransientError
from docshift.history import History, MigrationStatus
from docshift.lock import LeaseLock, lease_path, read_lease
from docshift.migration import DocView
from docshift.reports.report import collect_report
from docshift.runfolder import Checkpoint, JournalReader
from docshift.store import Query, RetryingStore, RetryPolicy, Store, Write, WriteResult
from docshift.store.base import DelegatingStore
from docshift.testing import LostReplies, MemoryStore
from docshift.values import Value, values_equal
from tests.unit.engine_support import export, make_migration, options, run_pipeline, seed
from tests.unit.test_undo import FLAG, PRUNE  # the same migrations as the restore tests

FAST = RetryPolicy(attempts=6, initial_wait=0.001, max_wait=0.002)

COPY = '''"""Copy users into users_v2."""
description = "copy"
collection = "users"
copy_to = "users_v2"


def up(doc):
    return {**doc.data, "version": 2}
'''


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    write_migrations(migrations)
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=20, min_batch_size=10),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def data_of(store: Store, collection: str) -> dict[str, dict[str, Value]]:
    return {doc.path: doc.data for doc in store.stream(Query(collection))}


def changed_paths(journal: Path) -> Counter[str]:
    """Per journal entry kind, how many documents have one."""
    kinds: dict[str, set[str]] = {}
    for entry in JournalReader(journal):
        kinds.setdefault(entry.kind, set()).add(entry.path)
    return Counter({kind: len(paths) for kind, paths in kinds.items()})


def write_migrations(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in (("0001_flag.py", FLAG), ("0002_prune.py", PRUNE), ("0003_copy.py", COPY)):
        (folder / name).write_text(source, encoding="utf-8")


def check_lossy_run(
    config: Config,
    inner: Store,
    count: int,
    lossy_store: Callable[[Store], LostReplies | LostSecondRequest] | None = None,
) -> None:
    """Run FLAG, PRUNE and COPY over ``count`` users (with ``n`` = 0..count-1) in ``inner``, with
    the reply of every commit lost once; then roll all three back through the same lossy store.
    Every view of the run tells the truth and the rollback gives back the exact pre-run data."""
    before = data_of(inner, "users")
    assert len(before) == count and count % 5 == 0
    kept = count - count // 5
    truth_of = {
        "0001_flag": {"updated": count},
        "0002_prune": {"updated": kept, "deleted": count // 5},
        "0003_copy": {"created": kept},
    }
    # Every commit's first reply is lost (its resend gets through).
    lossy = lossy_store(inner) if lossy_store is not None else LostReplies(inner, every=1)
    store = RetryingStore(lossy, FAST)

    report = run_migrations(config, RunOptions(execute=True), store=store)

    assert lossy.lost >= 8  # the replies of the run's commits were lost
    history = History(inner, config.store.state_prefix).all()
    for outcome in report.outcomes:
        label = outcome.migration.label
        truth = {
            "updated": 0,
            "created": 0,
            "deleted": 0,
            "unchanged": 0,
            "conflicts": 0,
            "failed": 0,
            **truth_of[label],
        }
        counted = {name: outcome.result.counters.get(name, 0) for name in truth}
        assert counted == truth, label  # the summary
        saved = Checkpoint.load(report.folder / label / "checkpoint.json")
        assert {name: saved.counters.get(name, 0) for name in truth} == truth, label
        record = history[outcome.migration.id]
        assert record.status is MigrationStatus.APPLIED
        assert {name: record.counts.get(name, 0) for name in truth} == truth, label
        journal = changed_paths(report.folder / label / "before-images.jsonl.gz")
        # Every write has its outcome journalled: the update time it produced, or its delete.
        assert journal["written"] == truth["updated"] + truth["created"], label
        assert journal["deleted"] == truth["deleted"], label
    totals = collect_report(report.folder)["totals"]
    assert totals["conflicts"] == 0 and totals["unchanged"] == 0
    assert (totals["updated"], totals["deleted"], totals["created"]) == (count + kept, count // 5, kept)

    undone = rollback(config, RollbackOptions(to="0", execute=True), store=store)

    assert [(i.migration.id, i.counters["conflicts"], i.counters["mismatched"]) for i in undone.items] == [
        ("0003", 0, 0),
        ("0002", 0, 0),
        ("0001", 0, 0),
    ]
    assert [i.counters["deleted"] for i in undone.items] == [kept, 0, 0]
    assert [i.counters["recreated"] + i.counters["restored"] for i in undone.items] == [0, count, count]
    after = data_of(inner, "users")
    assert after.keys() == before.keys()
    assert all(values_equal(after[path], before[path]) for path in before)
    assert data_of(inner, "users_v2") == {}
    records = History(inner, config.store.state_prefix).all().values()
    assert {r.status for r in records} == {MigrationStatus.ROLLED_BACK}


def test_a_run_whose_replies_are_lost_counts_its_own_writes_and_rolls_back_exactly(config: Config) -> None:
    memory = MemoryStore()
    seed(memory, 100, make=lambda i: {"n": i, "name": f"user {i}"})
    check_lossy_run(config, memory, 100)


class LostSecondRequest(DelegatingStore):
    """A commit the adapter sent as two requests, both applied, the second one's reply lost: as
    the Firestore adapter reports it, the first half applied and the second half failed
    transiently, maybe applied. Every other commit of the users' collections."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.commits = self.lost = 0

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        if len(writes) < 2 or writes[0].path.startswith("_docshift"):
            return results
        self.commits += 1
        if self.commits % 2 == 0:
            return results
        self.lost += 1
        half = len(writes) // 2
        reset = TransientError("connection reset by peer", code="UNAVAILABLE")
        lost = [WriteResult(w.path, error=reset, maybe_applied=True) for w in writes[half:]]
        return [*results[:half], *lost]


def test_a_commit_sent_in_requests_whose_later_reply_was_lost_counts_its_own_writes(config: Config) -> None:
    """Writes of a request whose reply was lost, after an earlier request of the same commit was
    answered: their resends are refused by their own guards, and that is still docshift's write."""
    memory = MemoryStore()
    memory.commit([Write.set(f"users/u{i:03d}", {"n": i}) for i in range(100)])
    check_lossy_run(config, memory, 100, LostSecondRequest)


def test_an_application_write_racing_a_lost_reply_is_still_a_conflict(tmp_path: Path) -> None:
    """Our write landed, then the application changed the document before our resend: the
    refusal is the application's doing. It is a conflict, and the document is migrated again
    from the application's version."""
    memory = MemoryStore()
    seed(memory, 40, make=lambda i: {"n": i})
    raced: set[str] = set()

    def application(writes: Sequence[Write]) -> None:
        path = writes[0].path
        if path not in raced:
            raced.add(path)
            [doc] = memory.get_many([path])
            assert doc is not None and doc.data.get("flag") is True  # our write landed
            memory.commit([Write.set(path, {"n": doc.data["n"], "app": True})])  # without our flag

    def add_flag(doc: DocView) -> dict[str, Value]:
        return {**doc.data, "flag": True}

    store = RetryingStore(LostReplies(memory, every=2, meanwhile=application), FAST)
    result = run_pipeline(
        store, make_migration(add_flag), tmp_path / "run", options(batch_size=10, concurrency=1)
    )

    assert result.error is None
    assert len(raced) >= 2  # each raced document once: its write landed, then the application's
    assert result.counters["conflicts"] == len(raced) and result.counters["updated"] == 40
    after = export(memory)
    assert all(doc.data.get("flag") is True for doc in after.values())
    assert all(after[path].data.get("app") is True for path in raced)  # the application's write kept


def test_a_lease_heartbeat_whose_reply_was_lost_keeps_the_lease() -> None:
    check_lease_heartbeat(MemoryStore())


def check_lease_heartbeat(memory: Store) -> None:
    """The extension landed, its reply was lost, the resend was refused: the lease is still this
    run's (a false "lease lost" would stop the run). A lease another run took meanwhile is lost."""
    path = lease_path("_docshift")
    taken: list[bool] = []

    def takeover(writes: Sequence[Write]) -> None:
        if len(taken) == 2:  # the third lost reply: another run takes the lease in that moment
            [doc] = memory.get_many([path])
            assert doc is not None
            memory.commit([Write.set(path, {**doc.data, "run_id": "another"})])
        taken.append(True)

    lossy = LostReplies(memory, every=2, touches=lambda p: p == path, meanwhile=takeover)
    lock = LeaseLock(RetryingStore(lossy, FAST), "_docshift", run_id="run-1", heartbeat_seconds=50)
    lease = lock.acquire()  # its create's reply is lost too: found as our own
    try:
        assert lock.extend() and not lock.lost.is_set()  # reply of the extension lost: still ours
        held = read_lease(memory, "_docshift")
        assert held is not None and lock.lease is not None
        assert held.expires_at > lease.expires_at and lock.lease.update_time == held.update_time
        assert not lock.extend() and lock.lost.is_set()  # lost reply, and another run took it
    finally:
        lock.release()
    assert lossy.lost == 3


def test_a_history_change_whose_reply_was_lost_is_recorded_once() -> None:
    """The history's read-change-write: a resent write refused by its own guard must not make the
    change again (each event once, however many replies are lost)."""
    memory = MemoryStore()
    lossy = LostReplies(memory, every=2, touches=lambda p: p.startswith("_docshift_history"))
    history = History(RetryingStore(lossy, FAST), "_docshift")
    migration = make_migration()
    history.start(migration, "run-1")
    history.finish(migration.id, MigrationStatus.APPLIED, {"updated": 3})
    record = History(memory, "_docshift").get(migration.id)
    assert record is not None and lossy.lost >= 2
    assert [e.status for e in record.events] == [MigrationStatus.RUNNING, MigrationStatus.APPLIED]
    assert record.status is MigrationStatus.APPLIED and record.counts == {"updated": 3}

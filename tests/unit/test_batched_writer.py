"""One batched writer for the run, the rollback and the restore: what each gets from it.

The engine had these protections first; the rollback and the restore go through the same writer
(:mod:`docshift.engine.writer`) and so have them too: requests split below the request size limit,
a request refused as a whole split until the bad document is alone, the adaptive batch size, the
circuit breaker, and a store that keeps failing stopping with what was done.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.backup import BackupOptions, backup, restore
from docshift.commands.rollback import RollbackConflicts, RollbackOptions, rollback
from docshift.commands.run import RunOptions, run
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.controls import Controls
from docshift.engine.limits import AdaptiveBatch, CircuitBreaker
from docshift.engine.writer import (
    BatchWriter,
    Outgoing,
    WriteGuards,
    pipelined,
    request_batches,
)
from docshift.errors import BatchAborted, EmergencyStop, PermanentError, TransientError
from docshift.runfolder import JournalReader, JournalWriter
from docshift.runfolder.journal import JournalEntry
from docshift.store import Document, Query, Store, Write, WriteResult
from docshift.store.semantics import MAX_REQUEST_BYTES, document_size
from docshift.testing import MemoryStore
from docshift.values import Value, values_equal
from tests.unit.engine_support import StoreWrapper, build, export, make_migration, options, seed

FLAG = '''"""Flag every user."""
description = "flag"
collection = "users"


def up(doc):
    return {**doc.data, "flag": True}
'''


def users(store: Store) -> dict[str, dict[str, Value]]:
    return {path: doc.data for path, doc in export(store).items()}


def same(a: dict[str, dict[str, Value]], b: dict[str, dict[str, Value]]) -> bool:
    return a.keys() == b.keys() and all(values_equal(a[path], b[path]) for path in a)


def mine(writes: Sequence[Write]) -> list[Write]:
    """The writes to user documents (not docshift's history and lease)."""
    return [write for write in writes if write.path.startswith(("users/", "c/"))]


class RefusesPoison(StoreWrapper):
    """Refuses a whole request that holds a poisoned path, as a store refusing a bad value does."""

    def __init__(self, inner: Store, poison: set[str]) -> None:
        super().__init__(inner)
        self.poison = poison

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if any(write.path in self.poison for write in writes):
            raise PermanentError("invalid value in the request", code="INVALID_ARGUMENT")
        return self.inner.commit(writes)


class RefusesLargeRequests(StoreWrapper):
    """Refuses a whole request of more than ``most`` user writes, as too large."""

    def __init__(self, inner: Store, most: int) -> None:
        super().__init__(inner)
        self.most = most
        self.refused = 0
        self.sizes: list[int] = []

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        count = len(mine(writes))
        if count > self.most:
            self.refused += 1
            raise PermanentError("request payload size exceeds the limit", code="INVALID_ARGUMENT")
        if count:
            self.sizes.append(count)
        return self.inner.commit(writes)


class FailsEveryWrite(StoreWrapper):
    """Fails each user write on its own (the request goes through), as missing permissions do."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.attempts = 0

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        kept = [write for write in writes if not write.path.startswith(("users/", "c/"))]
        results = {result.path: result for result in self.inner.commit(kept)} if kept else {}
        self.attempts += len(writes) - len(kept)
        denied = PermanentError("missing or insufficient permissions", code="PERMISSION_DENIED")
        return [results.get(write.path) or WriteResult(write.path, error=denied) for write in writes]


class RecordsRequests(StoreWrapper):
    """Records the document bytes of each commit request."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.requests: list[tuple[int, int]] = []

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        size = sum(document_size(write.path, write.data or {}) for write in mine(writes))
        if mine(writes):
            self.requests.append((len(mine(writes)), size))
        return self.inner.commit(writes)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_flag.py").write_text(FLAG, encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=20, min_batch_size=10, max_batch_size=20),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def applied(config: Config, count: int, make: Callable[[int], dict[str, Value]] | None = None) -> Any:
    """A store of ``count`` users, before and after FLAG ran over it."""
    store = MemoryStore()
    if make is None:
        seed(store, count)
    else:
        seed(store, count, make=make)
    before = users(store)
    report = run(config, RunOptions(execute=True), store=store)
    return store, before, report.run_id


def undo(config: Config, run_id: str, store: Store) -> Any:
    return rollback(config, RollbackOptions(run_id=run_id, strategy="restore", execute=True), store=store)


# ---------------------------------------------------------------------------- the run
def test_two_writes_of_one_document_in_a_batch_go_in_two_requests_not_a_refused_one(tmp_path: Path) -> None:
    """A collection group copied by id: two sources of one id write one destination. The store
    refuses a request naming a document twice; the run must not take that for a request too
    large (halving its batch size) nor for a failed commit (the circuit breaker)."""
    store = MemoryStore()
    for shop in ("a", "b"):
        for i in range(10):
            store.commit([Write.set(f"shops/{shop}/orders/o{i}", {"shop": shop, "i": i})])

    class CountsRefusals(StoreWrapper):
        refused = 0

        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            try:
                return self.inner.commit(writes)
            except PermanentError:
                self.refused += 1
                raise

    counting = CountsRefusals(store)
    migration = make_migration(collection="orders", group=True, copy_to="copies")
    pipeline = build(counting, migration, tmp_path, options(batch_size=50, concurrency=1))
    result = pipeline.run()
    assert result.error is None
    assert counting.refused == 0
    assert pipeline.sizer.size == 50  # not halved
    assert store.count(Query("copies")) == 10


# ---------------------------------------------------------------------------- the rollback
def test_a_rollback_request_refused_as_a_whole_fails_only_its_bad_document(config: Config) -> None:
    store, before, run_id = applied(config, 100)
    with pytest.raises(RollbackConflicts, match="1 document"):
        undo(config, run_id, RefusesPoison(store, {"users/u00042"}))
    now = users(store)
    assert now["users/u00042"]["flag"] is True  # the bad one is left as the run wrote it...
    del now["users/u00042"], before["users/u00042"]
    assert same(now, before)  # ...and only it: the 19 others of its batch are back too
    [listed] = (config.runs_dir).glob("*/0001_flag/conflicts.jsonl")
    assert "write failed" in listed.read_text() and "u00042" in listed.read_text()


def test_a_rollback_splits_its_requests_below_the_request_size_limit(config: Config) -> None:
    store, before, run_id = applied(config, 40, make=lambda i: {"n": i, "blob": "b" * 700_000})
    recording = RecordsRequests(store)
    undo(config, run_id, recording)  # batches of 20 documents of 700 KB: 14 MB each
    assert sum(count for count, _ in recording.requests) == 40
    assert max(size for _, size in recording.requests) < MAX_REQUEST_BYTES
    assert same(users(store), before)


def test_a_rollback_batch_shrinks_after_a_request_too_large_for_the_store(config: Config) -> None:
    store, before, run_id = applied(config, 100)
    refusing = RefusesLargeRequests(store, most=10)
    undo(config, run_id, refusing)
    assert same(users(store), before)
    # The first batch of 20 was refused and split; the ones after it came at the smaller size.
    assert refusing.refused == 1
    assert max(refusing.sizes) == 10


def test_a_rollback_whose_writes_keep_failing_is_stopped_by_the_circuit_breaker(config: Config) -> None:
    store, _, run_id = applied(config, 200)
    failing = FailsEveryWrite(store)
    with pytest.raises(EmergencyStop, match="circuit breaker") as stopped:
        undo(config, run_id, failing)
    assert stopped.value.exit_code == 12
    assert (stopped.value.resume_command or "").startswith("docshift rollback --execute --resume ")
    assert 0 < failing.attempts < 200  # it stopped early, not after failing every document


# ---------------------------------------------------------------------------- the restore
RESTORE = Config(engine=EngineConfig(batch_size=50, min_batch_size=10, max_batch_size=50, concurrency=1))
"""One batch at a time, so what each test counts is exact."""


def backed_up(tmp_path: Path, count: int) -> Path:
    source = MemoryStore()
    seed(source, count, collection="c", make=lambda i: {"i": i, "text": "x" * 50})
    backup(RESTORE, BackupOptions(["c"], tmp_path / "b"), store=source)
    return tmp_path / "b"


def test_a_restore_request_refused_as_a_whole_fails_only_its_bad_document(tmp_path: Path) -> None:
    folder = backed_up(tmp_path, 200)
    target = MemoryStore()
    report = restore(RESTORE, folder, store=RefusesPoison(target, {"c/u00077"}))
    assert (report.written, report.failed) == (199, 1)
    assert report.failures == [("c/u00077", "INVALID_ARGUMENT: invalid value in the request")]
    assert target.count(Query("c")) == 199


def test_a_restore_batch_shrinks_after_a_request_too_large_for_the_store(tmp_path: Path) -> None:
    folder = backed_up(tmp_path, 250)
    target = MemoryStore()
    refusing = RefusesLargeRequests(target, most=25)
    report = restore(RESTORE, folder, store=refusing)
    assert (report.written, report.failed) == (250, 0)
    # The first batch of 50 was refused and split; the ones after it came at the smaller size.
    assert refusing.refused == 1
    assert refusing.sizes == [25] * 10


def test_a_restore_whose_writes_keep_failing_is_stopped_by_the_circuit_breaker(tmp_path: Path) -> None:
    folder = backed_up(tmp_path, 1000)
    failing = FailsEveryWrite(MemoryStore())
    concurrent = Config(engine=dataclasses.replace(RESTORE.engine, concurrency=4))
    with pytest.raises(EmergencyStop, match="circuit breaker") as stopped:
        restore(concurrent, folder, store=failing)
    assert stopped.value.exit_code == 12
    assert "0 of 1,000 documents were written" in stopped.value.message
    assert "PERMISSION_DENIED" in stopped.value.message
    assert stopped.value.hint is not None and "run the same restore again" in stopped.value.hint
    assert 0 < failing.attempts < 1000


class FailsAfter(StoreWrapper):
    """Commits ``good`` requests, then fails every one as a whole (the retries ran out)."""

    def __init__(self, inner: Store, good: int) -> None:
        super().__init__(inner)
        self.left = good
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        with self._lock:
            self.left -= 1
            if self.left < 0:
                raise TransientError("the service is unavailable", code="UNAVAILABLE")
        return self.inner.commit(writes)


def test_a_restore_against_a_store_that_keeps_failing_stops_saying_what_was_written(tmp_path: Path) -> None:
    folder = backed_up(tmp_path, 500)
    target = MemoryStore()
    with pytest.raises(EmergencyStop, match="the store kept failing") as stopped:
        restore(RESTORE, folder, store=FailsAfter(target, good=3))
    written = target.count(Query("c"))
    assert written == 150  # three requests of 50
    assert f"{written} of 500 documents were written" in stopped.value.message
    assert stopped.value.hint is not None and "run the same restore again" in stopped.value.hint
    again = restore(RESTORE, folder, store=target)
    assert (again.written, again.failed) == (500, 0)


# ---------------------------------------------------------------------------- the writer itself
def guards(size: int = 10) -> WriteGuards:
    return WriteGuards(Controls(), CircuitBreaker(0.5, 20, 3), AdaptiveBatch(size, 2, size))


def sets(paths: Sequence[str]) -> list[Outgoing[str]]:
    return [Outgoing(Write.set(path, {"v": 1}), path) for path in paths]


def test_request_batches_keep_to_the_count_the_bytes_and_one_write_per_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import docshift.engine.writer as writer_module

    monkeypatch.setattr(writer_module, "REQUEST_BUDGET", 100)
    items = [("a", 10), ("b", 10), ("a", 10), ("c", 95), ("d", 5), ("e", 1), ("f", 1), ("g", 1)]
    cut = list(request_batches(items, lambda: 3, lambda item: item[1], lambda item: item[0]))
    # "a" twice: cut; "c" does not fit beside "a", nor "e" beside "c" and "d": cut; three at most.
    assert [[path for path, _ in batch] for batch in cut] == [["a", "b"], ["a"], ["c", "d"], ["e", "f", "g"]]


def test_a_stop_between_requests_journals_the_outcomes_of_the_ones_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docshift.engine.writer as writer_module

    monkeypatch.setattr(writer_module, "REQUEST_BUDGET", 200)  # two writes per request
    store = MemoryStore()
    shared = guards()

    class StopsAfterFirst(StoreWrapper):
        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            shared.controls.request_stop("test stop")
            return self.inner.commit(writes)

    journal = JournalWriter(tmp_path / "journal.jsonl.gz")
    writer = BatchWriter(StopsAfterFirst(store), shared, journal=journal)
    outgoing = [
        dataclasses.replace(item, before=JournalEntry("created", item.write.path), size=100)
        for item in sets([f"c/d{i}" for i in range(6)])
    ]
    heard: list[str] = []
    with pytest.raises(BatchAborted):
        writer.write(outgoing, receive=lambda sent, results: heard.extend(item.origin for item in sent))
    journal.close()
    kinds = [(entry.kind, entry.path) for entry in JournalReader(tmp_path / "journal.jsonl.gz")]
    assert [kind for kind in kinds if kind[0] == "created"] == [("created", f"c/d{i}") for i in range(6)]
    assert [kind for kind in kinds if kind[0] == "written"] == [("written", "c/d0"), ("written", "c/d1")]
    assert heard == ["c/d0", "c/d1"] and store.count(Query("c")) == 2


def test_an_unpaced_call_is_sent_whole_even_when_a_stop_comes_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import docshift.engine.writer as writer_module

    monkeypatch.setattr(writer_module, "REQUEST_BUDGET", 200)
    store = MemoryStore()
    shared = guards()
    writer = BatchWriter(store, shared)
    assert writer.admit(6)
    shared.controls.request_stop("test stop")
    results = writer.write(
        [dataclasses.replace(o, size=100) for o in sets([f"c/d{i}" for i in range(6)])], paced=False
    )
    assert all(result.ok for result in results) and store.count(Query("c")) == 6
    assert not writer.admit(1)


def test_consecutive_failed_requests_trip_the_breaker_and_ask_the_run_to_stop() -> None:
    class Refuses(StoreWrapper):
        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            raise PermanentError("refused", code="FAILED_PRECONDITION")

    shared = guards()
    writer = BatchWriter(Refuses(MemoryStore()), shared)
    for attempt in range(3):
        [result] = writer.write(sets([f"c/d{attempt}"]))
        assert result.error is not None
    assert shared.breaker.tripped and shared.controls.stop.is_set()
    assert shared.controls.stop_class is EmergencyStop
    assert shared.controls.stop_reason == "circuit breaker: 3 commits failed in a row"


def test_pipelined_counts_the_batches_in_flight_when_one_fails() -> None:
    release = threading.Event()
    handled: list[int] = []

    def work(batch: int) -> int:
        if batch == 0:
            release.wait(5)
            raise RuntimeError("the first batch failed")
        if batch == 1:
            release.set()
        return batch

    def batches() -> Iterator[int]:
        yield from range(5)

    with pytest.raises(RuntimeError, match="first batch"):
        pipelined(batches(), work, lambda batch, result: handled.append(result), concurrency=2)
    assert handled == [1]  # in flight beside the failed one: done, and counted; the rest never started


def test_a_resent_write_refused_by_its_own_guard_is_recognised_as_landed() -> None:
    store = MemoryStore()
    [created] = store.commit([Write.set("c/d1", {"v": 1})])
    guard = created.update_time

    class LostReply(StoreWrapper):
        """Applies the write, then answers as the retry layer does for its resend."""

        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            self.inner.commit(writes)
            answers = self.inner.commit(writes)  # the resend: its guard fails, the first landed
            return [dataclasses.replace(answer, resent=True) for answer in answers]

    writer = BatchWriter(LostReply(store), guards())
    write = Write.set("c/d1", {"v": 2}, update_time=guard)
    [result] = writer.write([Outgoing(write, "c/d1")])
    doc: Document | None = store.get("c/d1")
    assert result.ok and doc is not None and result.update_time == doc.update_time

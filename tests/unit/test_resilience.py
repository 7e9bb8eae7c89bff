"""The retry layer (``RetryingStore``) and the failure injector (``FaultInjectingStore``), in memory.

The wrappers below sit *under* the RetryingStore, playing the part of a flaky service; the retry layer
itself is always the real one.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Iterator, Sequence

import pytest

from docshift.errors import ConflictError, CredentialsError, PermanentError, StoreError, TransientError
from docshift.store import (
    DelegatingStore,
    Document,
    Query,
    RetryingStore,
    RetryPolicy,
    Store,
    Write,
    WriteResult,
)
from docshift.store.base import Filter, write_landed
from docshift.testing import FaultInjectingStore, LostReplies, MemoryStore, RecordingStore
from docshift.values import Timestamp

QUICK = RetryPolicy(attempts=5, initial_wait=0.001, max_wait=0.002)


class Passthrough(DelegatingStore):
    """Delegates everything to ``inner``; subclasses break one thing."""


class FailWrites(Passthrough):
    """Fails the writes to ``paths[p]`` transiently (without applying them) the first ``n`` times."""

    def __init__(self, inner: Store, failures: dict[str, int], error: type[StoreError] = TransientError):
        super().__init__(inner)
        self.failures = dict(failures)
        self.error = error

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        failing = {w.path for w in writes if self.failures.get(w.path, 0) > 0}
        for path in failing:
            self.failures[path] -= 1
        passed = iter(self.inner.commit([w for w in writes if w.path not in failing]))
        return [
            WriteResult(w.path, error=self.error("aborted", code="ABORTED", path=w.path))
            if w.path in failing
            else next(passed)
            for w in writes
        ]


class FailRequests(Passthrough):
    """Raises the given errors, one per commit request, before anything is applied."""

    def __init__(self, inner: Store, errors: list[StoreError]) -> None:
        super().__init__(inner)
        self.errors = list(errors)

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.commit(writes)


class BreakingStream(Passthrough):
    """Streams break with ``error`` after yielding ``after[i]`` documents on the i-th call."""

    def __init__(self, inner: Store, after: list[int], error: StoreError | None = None) -> None:
        super().__init__(inner)
        self.after = list(after)
        self.error = error or TransientError("stream reset", code="UNAVAILABLE")
        self.queries: list[Query] = []

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        self.queries.append(query)
        limit = self.after.pop(0) if self.after else None
        for count, doc in enumerate(self.inner.stream(query, read_time=read_time)):
            if count == limit:
                raise self.error
            yield doc
        if limit is not None and limit >= 0:
            raise self.error  # broken at the very end, before the stream said it was done


class FlakyReads(Passthrough):
    """Every read method fails transiently on its first ``n`` calls."""

    def __init__(self, inner: Store, n: int = 1) -> None:
        super().__init__(inner)
        self.left = {"get_many": n, "count": n, "list_collections": n, "partition": n}
        self.calls = dict.fromkeys(self.left, 0)

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] += 1
        if self.left[name] > 0:
            self.left[name] -= 1
            raise TransientError(f"{name} timed out", code="DEADLINE_EXCEEDED")

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        self._maybe_fail("get_many")
        return self.inner.get_many(paths, read_time=read_time)

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        self._maybe_fail("count")
        return self.inner.count(query, read_time=read_time)

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        self._maybe_fail("list_collections")
        return self.inner.list_collections(document_path, read_time=read_time)

    def partition(self, query: Query, count: int, *, read_time: Timestamp | None = None) -> list[str] | None:
        self._maybe_fail("partition")
        return ["items/m"]


def fill(store: Store, collection: str, n: int) -> list[str]:
    paths = [f"{collection}/{i:03d}" for i in range(n)]
    results = store.commit([Write.set(p, {"i": i}) for i, p in enumerate(paths)])
    assert all(r.ok for r in results)
    return paths


# --------------------------------------------------------------------------- commit: per-write failures


@pytest.mark.parametrize("seed", range(5))
def test_injected_write_failures_are_retried_until_each_write_is_applied_exactly_once(seed: int) -> None:
    memory = MemoryStore()
    faults = FaultInjectingStore(memory, write_failure_rate=0.3, seed=seed)
    recording = RecordingStore(faults)
    store = RetryingStore(recording, RetryPolicy(attempts=30, initial_wait=0.001, max_wait=0.002))
    writes = [Write.create(f"docs/{i:02d}", {"i": i}) for i in range(40)]

    results = store.commit(writes)

    # Write.create conflicts if it is applied twice, so all-ok means each was applied exactly once.
    assert [r.path for r in results] == [w.path for w in writes]
    assert all(r.ok and r.update_time is not None for r in results), [r.error for r in results]
    assert faults.injected > 0
    # Every injected failure caused exactly one re-send, and nothing else was ever sent twice.
    assert sum(len(request) for request in recording.requests) == len(writes) + faults.injected
    assert store.retries == len(recording.requests) - 1
    for i in range(40):
        doc = memory.get(f"docs/{i:02d}")
        assert doc is not None and doc.data == {"i": i}
        assert results[i].update_time == doc.update_time


def test_successful_writes_in_a_partly_failed_commit_are_never_resent() -> None:
    memory = MemoryStore()
    recording = RecordingStore(FailWrites(memory, {"c/b": 1, "c/d": 2}))
    store = RetryingStore(recording, QUICK)
    results = store.commit([Write.set(f"c/{x}", {"x": x}) for x in "abcde"])

    assert [r.ok for r in results] == [True] * 5
    assert recording.paths() == [["c/a", "c/b", "c/c", "c/d", "c/e"], ["c/b", "c/d"], ["c/d"]]
    assert store.retries == 2
    assert [r.path for r in results] == [f"c/{x}" for x in "abcde"]
    first_a = memory.get("c/a")
    assert first_a is not None and results[0].update_time == first_a.update_time


def test_permanent_and_conflict_results_are_returned_without_retrying() -> None:
    memory = MemoryStore()
    fill(memory, "p", 1)
    recording = RecordingStore(FailWrites(memory, {"p/flaky": 1}))
    store = RetryingStore(recording, QUICK)
    results = store.commit(
        [
            Write.set("p/ok", {"v": 1}),
            Write.set("p/huge", {"blob": "x" * 1_100_000}),
            Write.create("p/000", {"v": 2}),
            Write.set("p/flaky", {"v": 3}),
        ]
    )
    assert [r.path for r in results] == ["p/ok", "p/huge", "p/000", "p/flaky"]
    assert results[0].ok and results[3].ok
    assert isinstance(results[1].error, PermanentError)
    assert isinstance(results[2].error, ConflictError)
    assert recording.paths()[1:] == [["p/flaky"]]
    assert store.retries == 1


def test_writes_still_failing_when_attempts_run_out_come_back_as_transient_results() -> None:
    memory = MemoryStore()
    recording = RecordingStore(FailWrites(memory, {"e/stuck": 100}))
    store = RetryingStore(recording, QUICK)
    ok, stuck = store.commit([Write.set("e/ok", {}), Write.set("e/stuck", {})])
    assert ok.ok
    assert isinstance(stuck.error, TransientError) and stuck.path == "e/stuck"
    assert recording.sends("e/stuck") == QUICK.attempts
    assert recording.sends("e/ok") == 1
    assert store.retries == QUICK.attempts - 1
    assert memory.get("e/stuck") is None


def test_a_permanent_per_write_error_is_not_retried() -> None:
    recording = RecordingStore(FailWrites(MemoryStore(), {"x/1": 5}, error=CredentialsError))
    store = RetryingStore(recording, QUICK)
    [result] = store.commit([Write.set("x/1", {})])
    assert isinstance(result.error, CredentialsError)
    assert len(recording.requests) == 1 and store.retries == 0


# --------------------------------------------------------------------------- commit: whole-request failures


def test_whole_request_transient_failures_are_retried() -> None:
    memory = RecordingStore(MemoryStore())
    errors: list[StoreError] = [
        TransientError("unavailable", code="UNAVAILABLE"),
        TransientError("deadline", code="DEADLINE_EXCEEDED"),
    ]
    recording = RecordingStore(FailRequests(memory, errors))
    seen: list[TransientError] = []
    store = RetryingStore(recording, QUICK, on_retry=seen.append)

    results = store.commit([Write.create("w/1", {"v": 1}), Write.create("w/2", {"v": 2})])

    assert all(r.ok for r in results)
    assert len(recording.requests) == 3
    assert memory.commits == 1
    assert store.retries == 2
    assert [e.code for e in seen] == ["UNAVAILABLE", "DEADLINE_EXCEEDED"]


def test_injected_request_failures_are_retried_and_apply_nothing() -> None:
    memory = RecordingStore(MemoryStore())
    faults = FaultInjectingStore(memory, request_failure_rate=0.5, seed=3)
    store = RetryingStore(faults, RetryPolicy(attempts=40, initial_wait=0.001, max_wait=0.002))
    for batch in range(10):
        results = store.commit([Write.create(f"r/{batch}-{i}", {"i": i}) for i in range(5)])
        assert all(r.ok for r in results)
    assert faults.injected > 0
    assert store.retries == faults.injected
    assert memory.commits == 10
    assert memory.count(Query("r")) == 50


def test_a_whole_request_that_keeps_failing_raises_instead_of_returning_nothing() -> None:
    memory = RecordingStore(MemoryStore())
    errors: list[StoreError] = [TransientError("down", code="UNAVAILABLE")] * 20
    recording = RecordingStore(FailRequests(memory, errors))
    store = RetryingStore(recording, QUICK)
    with pytest.raises(TransientError, match="down"):
        store.commit([Write.set("z/1", {}), Write.set("z/2", {})])
    assert len(recording.requests) == QUICK.attempts
    assert store.retries == QUICK.attempts - 1
    assert memory.commits == 0


def test_permanent_request_errors_are_not_retried() -> None:
    error = PermanentError("bad request", code="INVALID_ARGUMENT")
    recording = RecordingStore(FailRequests(MemoryStore(), [error]))
    store = RetryingStore(recording, QUICK)
    with pytest.raises(PermanentError, match="bad request"):
        store.commit([Write.set("q/1", {})])
    assert len(recording.requests) == 1
    assert store.retries == 0


def test_a_request_naming_one_document_twice_is_refused_once() -> None:
    recording = RecordingStore(MemoryStore())
    store = RetryingStore(recording, QUICK)
    with pytest.raises(PermanentError):
        store.commit([Write.set("d/1", {}), Write.set("d/1", {})])
    assert len(recording.requests) == 1


class TransientThenRefused(Passthrough):
    """First request: writes to ``flaky`` fail transiently, the rest are applied. Later requests raise."""

    def __init__(self, inner: Store, flaky: str, error: StoreError) -> None:
        super().__init__(inner)
        self.flaky, self.error, self.requests = flaky, error, 0

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        self.requests += 1
        if self.requests > 1:
            raise self.error
        return FailWrites(self.inner, {self.flaky: 1}).commit(writes)


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("permission revoked", code="PERMISSION_DENIED"),
        TransientError("unavailable", code="UNAVAILABLE"),
    ],
)
def test_a_whole_request_failure_while_retrying_keeps_the_writes_that_already_succeeded(
    error: StoreError,
) -> None:
    memory = MemoryStore()
    store = RetryingStore(TransientThenRefused(memory, "k/2", error), QUICK)

    results = store.commit([Write.set("k/1", {}), Write.set("k/2", {}), Write.set("k/3", {})])

    # k/1 and k/3 were applied: the caller must be told so, not get an exception for all three.
    assert [r.path for r in results] == ["k/1", "k/2", "k/3"]
    assert results[0].ok and results[2].ok
    assert isinstance(results[1].error, type(error))
    assert memory.get("k/1") is not None and memory.get("k/2") is None


def test_a_refusal_after_a_lost_reply_is_marked_resent_and_tells_our_own_write_apart() -> None:
    """The first request was applied but its reply lost; the resend is refused by every guard.
    The results say the writes were resent, and the store's data show which of them landed."""
    memory = MemoryStore()
    fill(memory, "k", 3)
    one, two, three = memory.get_many(["k/000", "k/001", "k/002"])
    assert one is not None and two is not None and three is not None
    writes = [
        Write.set(one.path, {"i": 10}, update_time=one.update_time),
        Write.update(two.path, {("j",): 1}, update_time=two.update_time),
        Write.delete(three.path, update_time=three.update_time),
        Write.create("k/new", {"i": 4}),
    ]
    store = RetryingStore(LostReplies(memory, every=2), QUICK)
    results = store.commit(writes)
    assert all(isinstance(r.error, ConflictError) and r.resent for r in results), results
    now = memory.get_many([w.path for w in writes])
    assert write_landed(writes[0], now[0])
    assert write_landed(writes[1], now[1], {"i": 1, "j": 1})  # an update: the whole new document
    assert not write_landed(writes[1], now[1], {"i": 1, "j": 2})
    assert write_landed(writes[2], now[2]) and now[2] is None
    assert write_landed(writes[3], now[3])
    # A refusal without a lost reply before it is not marked: someone else changed the document.
    stale = Write.set(one.path, {"i": 11}, update_time=one.update_time)
    [plain] = RetryingStore(memory, QUICK).commit([stale])
    assert isinstance(plain.error, ConflictError) and not plain.resent


def test_empty_commit_returns_no_results() -> None:
    assert RetryingStore(MemoryStore(), QUICK).commit([]) == []


# --------------------------------------------------------------------------- streams


@pytest.mark.parametrize("break_after", [0, 1, 5, 9, 10])
def test_a_stream_broken_midway_resumes_after_the_last_document_without_duplicates(break_after: int) -> None:
    memory = MemoryStore()
    paths = fill(memory, "items", 10)
    breaking = BreakingStream(memory, [break_after])
    store = RetryingStore(breaking, QUICK)

    got = [doc.path for doc in store.stream(Query("items"))]

    assert got == paths
    # A break after documents is a stream's routine end (resumed at once, not a retry); one before
    # any document is a failure, retried after a backoff.
    assert (store.retries, store.stream_resumes) == ((0, 1) if break_after else (1, 0))
    assert len(breaking.queries) == 2
    expected_cursor = paths[break_after - 1] if break_after else None
    assert breaking.queries[1].start_after == expected_cursor


def test_a_resumed_stream_keeps_the_querys_filters_bounds_and_limit() -> None:
    memory = MemoryStore()
    paths = fill(memory, "items", 20)
    breaking = BreakingStream(memory, [3, 2])
    store = RetryingStore(breaking, QUICK)
    query = Query(
        "items",
        filters=(Filter.parse("i", ">=", 2),),
        start_after=paths[3],
        end_at=paths[15],
        limit=8,
        keys_only=True,
    )

    docs = list(store.stream(query))

    assert [d.path for d in docs] == paths[4:12]
    assert all(d.data == {} for d in docs)
    assert store.stream_resumes == 2 and store.retries == 0
    last = breaking.queries[-1]
    assert last.start_after == paths[8] and last.limit == 3
    assert last.filters == query.filters and last.end_at == query.end_at and last.keys_only


def test_a_collection_group_stream_resumes_by_full_path() -> None:
    memory = MemoryStore()
    for parent in ["a", "b", "c"]:
        fill(memory, f"users/{parent}/orders", 3)
    breaking = BreakingStream(memory, [4])
    store = RetryingStore(breaking, QUICK)
    got = [d.path for d in store.stream(Query("orders", group=True))]
    assert got == [f"users/{p}/orders/{i:03d}" for p in "abc" for i in range(3)]
    assert breaking.queries[1].start_after == "users/b/orders/000"
    assert breaking.queries[1].group


def test_a_stream_that_keeps_making_progress_survives_more_breaks_than_attempts() -> None:
    memory = MemoryStore()
    paths = fill(memory, "items", 30)
    breaking = BreakingStream(memory, [2] * 12)  # 12 breaks, with only 5 attempts per failure
    store = RetryingStore(breaking, QUICK)
    assert [d.path for d in store.stream(Query("items"))] == paths
    assert store.stream_resumes == 12 and store.retries == 0


def test_a_stream_that_breaks_after_progress_with_another_error_is_retried_as_a_failure() -> None:
    memory = MemoryStore()
    paths = fill(memory, "items", 30)
    error = TransientError("deadline", code="DEADLINE_EXCEEDED")
    breaking = BreakingStream(memory, [2] * 12, error)  # progress between breaks: never runs out
    store = RetryingStore(breaking, QUICK)
    assert [d.path for d in store.stream(Query("items"))] == paths
    assert store.retries == 12 and store.stream_resumes == 0


def test_a_stream_that_never_makes_progress_gives_up_after_the_attempts() -> None:
    memory = MemoryStore()
    fill(memory, "items", 3)
    breaking = BreakingStream(memory, [0] * 50)
    store = RetryingStore(breaking, QUICK)
    with pytest.raises(TransientError):
        list(store.stream(Query("items")))
    assert len(breaking.queries) == QUICK.attempts
    assert store.retries == QUICK.attempts - 1


def test_a_permanent_error_in_a_stream_is_not_retried() -> None:
    memory = MemoryStore()
    paths = fill(memory, "items", 5)
    breaking = BreakingStream(memory, [2], PermanentError("no index", code="FAILED_PRECONDITION"))
    store = RetryingStore(breaking, QUICK)
    got: list[str] = []
    with pytest.raises(PermanentError, match="no index"):
        got.extend(d.path for d in store.stream(Query("items")))
    assert got == paths[:2]
    assert len(breaking.queries) == 1 and store.retries == 0


def test_stopping_a_stream_early_does_not_retry_or_raise() -> None:
    memory = MemoryStore()
    fill(memory, "items", 5)
    breaking = BreakingStream(memory, [])
    store = RetryingStore(breaking, QUICK)
    stream = store.stream(Query("items"))
    assert isinstance(stream, types.GeneratorType)
    assert next(stream).path == "items/000"
    stream.close()
    assert len(breaking.queries) == 1 and store.retries == 0


# --------------------------------------------------------------------------- reads


def test_reads_are_retried_on_transient_errors() -> None:
    memory = MemoryStore()
    fill(memory, "items", 3)
    flaky = FlakyReads(memory, n=2)
    seen: list[TransientError] = []
    store = RetryingStore(flaky, QUICK, on_retry=seen.append)
    assert [d.path if d else None for d in store.get_many(["items/001", "items/nope"])] == ["items/001", None]
    assert store.count(Query("items")) == 3
    assert store.list_collections() == ["items"]
    assert store.partition(Query("items"), 2) == ["items/m"]
    assert flaky.calls == {"get_many": 3, "count": 3, "list_collections": 3, "partition": 3}
    assert store.retries == 8
    assert len(seen) == 8 and all(e.code == "DEADLINE_EXCEEDED" for e in seen)


def test_reads_give_up_after_the_attempts() -> None:
    flaky = FlakyReads(MemoryStore(), n=100)
    store = RetryingStore(flaky, QUICK)
    with pytest.raises(TransientError):
        store.count(Query("items"))
    assert flaky.calls["count"] == QUICK.attempts


def test_the_retry_counter_is_shared_safely_between_threads() -> None:
    memory = MemoryStore()
    faults = FaultInjectingStore(memory, request_failure_rate=0.3, seed=11)
    store = RetryingStore(faults, RetryPolicy(attempts=50, initial_wait=0.0005, max_wait=0.001))

    def work(t: int) -> None:
        for b in range(10):
            assert all(r.ok for r in store.commit([Write.create(f"t/{t}-{b}-{i}", {}) for i in range(3)]))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert memory.count(Query("t")) == 180
    assert store.retries == faults.injected > 0


def test_the_wrappers_share_the_inner_stores_info() -> None:
    memory = MemoryStore(project="p1")
    assert RetryingStore(FaultInjectingStore(memory), QUICK).info is memory.info


# --------------------------------------------------------------------------- the injector itself


def test_fault_injection_is_deterministic_for_a_seed_and_fails_writes_without_applying_them() -> None:
    def run(seed: int) -> list[bool]:
        memory = MemoryStore()
        faults = FaultInjectingStore(memory, write_failure_rate=0.5, seed=seed)
        results = faults.commit([Write.set(f"s/{i}", {}) for i in range(30)])
        for result in results:
            assert (memory.get(result.path) is not None) == result.ok
            if not result.ok:
                assert isinstance(result.error, TransientError) and result.error.path == result.path
        assert faults.injected == sum(not r.ok for r in results)
        return [r.ok for r in results]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert 0 < sum(run(1)) < 30


def test_fault_injection_can_be_switched_off() -> None:
    memory = MemoryStore()
    faults = FaultInjectingStore(memory, write_failure_rate=1.0, request_failure_rate=0.0, seed=0)
    [failed] = faults.commit([Write.set("o/1", {})])
    assert not failed.ok
    faults.enabled = False
    [ok] = faults.commit([Write.set("o/1", {})])
    assert ok.ok and faults.injected == 1


def test_injected_request_failure_applies_nothing() -> None:
    memory = RecordingStore(MemoryStore())
    faults = FaultInjectingStore(memory, request_failure_rate=1.0)
    with pytest.raises(TransientError):
        faults.commit([Write.set("n/1", {})])
    assert memory.commits == 0 and memory.get("n/1") is None


# --------------------------------------------------------------------------- backoff


def _time_failing_commit(policy: RetryPolicy) -> float:
    errors: list[StoreError] = [TransientError("down", code="UNAVAILABLE")] * policy.attempts
    store = RetryingStore(FailRequests(MemoryStore(), errors), policy)
    started = time.monotonic()
    with pytest.raises(TransientError):
        store.commit([Write.set("w/1", {})])
    return time.monotonic() - started


def test_retries_back_off_exponentially() -> None:
    # Waits of at least 0.04, 0.08 and 0.16 s before the 2nd, 3rd and 4th attempt.
    elapsed = _time_failing_commit(RetryPolicy(attempts=4, initial_wait=0.04, max_wait=1.0))
    assert 0.28 <= elapsed < 3.0


def test_retry_waits_are_capped_by_max_wait() -> None:
    # Uncapped, these waits would be 0.3 + 0.6 + 1.2 + 2.4 s; capped, 4 x 0.02 s.
    elapsed = _time_failing_commit(RetryPolicy(attempts=5, initial_wait=0.3, max_wait=0.02))
    assert 0.08 <= elapsed < 2.0


def test_broken_streams_back_off_too() -> None:
    memory = MemoryStore()
    fill(memory, "items", 2)
    policy = RetryPolicy(attempts=5, initial_wait=0.04, max_wait=1.0)
    store = RetryingStore(BreakingStream(memory, [0, 0, 0]), policy)
    started = time.monotonic()
    assert len(list(store.stream(Query("items")))) == 2
    assert time.monotonic() - started >= 0.28

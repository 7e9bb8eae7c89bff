"""The retry layer over the real Firestore adapter: ``RetryingStore(FaultInjectingStore(FirestoreStore))``.

Server-assigned update times prove "applied exactly once": a write applied a second time would get a
new update time (or fail its precondition).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from docshift.config import Config
from docshift.emulator import free_port
from docshift.errors import ConflictError, PermanentError, TransientError
from docshift.store import Query, RetryingStore, RetryPolicy, Write
from docshift.store.firestore import FirestoreStore
from docshift.testing import FaultInjectingStore, RecordingStore
from tests.unit.test_resilience import BreakingStream, FailWrites

QUICK = RetryPolicy(attempts=5, initial_wait=0.001, max_wait=0.002)
PATIENT = RetryPolicy(attempts=40, initial_wait=0.001, max_wait=0.002)


@pytest.fixture
def firestore(emulator_config: Config) -> Iterator[FirestoreStore]:
    """The adapter alone, without the retry layer ``open_store`` adds."""
    settings = emulator_config.store
    store = FirestoreStore(settings.project, emulator_host=settings.emulator_host)
    yield store
    store.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_injected_write_failures_are_retried_until_applied_exactly_once(
    firestore: FirestoreStore, seed: int
) -> None:
    faults = FaultInjectingStore(firestore, write_failure_rate=0.4, seed=seed)
    recording = RecordingStore(faults)
    store = RetryingStore(recording, PATIENT)
    writes = [Write.create(f"orders/{i:03d}", {"i": i, "tags": ["a", i]}) for i in range(60)]

    results = store.commit(writes)

    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.path for r in results] == [w.path for w in writes]
    assert faults.injected > 0
    assert sum(len(request) for request in recording.requests) == len(writes) + faults.injected
    assert store.retries == len(recording.requests) - 1
    docs = firestore.get_many([w.path for w in writes])
    for i, (doc, result) in enumerate(zip(docs, results, strict=True)):
        assert doc is not None and doc.data == {"i": i, "tags": ["a", i]}
        assert doc.update_time == result.update_time == doc.create_time


def test_successful_writes_of_a_partly_failed_commit_are_not_sent_again(firestore: FirestoreStore) -> None:
    recording = RecordingStore(FailWrites(firestore, {"c/b": 1, "c/d": 2}))
    store = RetryingStore(recording, QUICK)

    results = store.commit([Write.set(f"c/{x}", {"x": x}) for x in "abcde"])

    assert all(r.ok for r in results)
    assert recording.paths() == [[f"c/{x}" for x in "abcde"], ["c/b", "c/d"], ["c/d"]]
    # Each document still carries the update time of the one commit that applied it.
    for result in results:
        doc = firestore.get(result.path)
        assert doc is not None and doc.update_time == result.update_time
    first, second, third = (results[i].update_time for i in (0, 1, 3))
    assert first is not None and second is not None and third is not None
    assert first < second < third  # a, then b on the first retry, then d on the second


def test_guarded_writes_survive_retries_without_conflicting_with_themselves(
    firestore: FirestoreStore,
) -> None:
    seeded = firestore.commit([Write.set(f"g/{i:02d}", {"v": 0}) for i in range(30)])
    assert all(r.ok for r in seeded)
    faults = FaultInjectingStore(firestore, write_failure_rate=0.5, seed=7)
    store = RetryingStore(faults, PATIENT)
    guarded = [Write.update(r.path, {("v",): 1}, update_time=r.update_time) for r in seeded]

    results = store.commit(guarded)

    # Applying any of them twice would fail the second time: the update time had already changed.
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert faults.injected > 0
    docs = firestore.get_many([r.path for r in seeded])
    assert all(doc is not None and doc.data == {"v": 1} for doc in docs)
    stale = store.commit([Write.update(seeded[0].path, {("v",): 2}, update_time=seeded[0].update_time)])
    assert isinstance(stale[0].error, ConflictError)
    assert store.retries > 0


def test_whole_request_failures_are_retried_against_the_emulator(firestore: FirestoreStore) -> None:
    faults = FaultInjectingStore(firestore, request_failure_rate=0.5, seed=5)
    store = RetryingStore(faults, PATIENT)
    for batch in range(8):
        results = store.commit([Write.create(f"r/{batch}-{i}", {"i": i}) for i in range(10)])
        assert all(r.ok for r in results)
    assert faults.injected > 0 and store.retries == faults.injected
    assert firestore.count(Query("r")) == 80


def test_a_refused_write_is_not_retried(firestore: FirestoreStore) -> None:
    recording = RecordingStore(firestore)
    store = RetryingStore(recording, QUICK)
    ok, bad = store.commit([Write.set("p/ok", {"v": 1}), Write.set("p/bad", {"__reserved__": 1})])
    assert ok.ok
    assert isinstance(bad.error, PermanentError)
    assert len(recording.requests) == 1 and store.retries == 0


def test_an_unreachable_emulator_fails_when_opened_and_is_never_retried() -> None:
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(PermanentError) as caught:
        FirestoreStore("demo-nowhere", emulator_host=host, timeout=5)
    error = caught.value
    assert not isinstance(error, TransientError)  # the retry layer is never reached
    assert error.code == "UNAVAILABLE"
    assert error.message == (
        f"cannot reach the Firestore emulator at {host} (project demo-nowhere, database (default)): "
        "connection refused: nothing listens on that port"
    )
    assert error.hint is not None and "docshift emulator" in error.hint


def test_a_store_that_goes_away_after_it_was_reached_is_transient_and_retried() -> None:
    """Unlike a store that was never there, one that answered and then went away (a restart, a
    network break during a run) is retried: it is likely to come back."""
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gone = FirestoreStore("demo-gone", emulator_host=f"127.0.0.1:{port}", timeout=5)
    server.stop(None).wait()
    seen: list[TransientError] = []
    store = RetryingStore(gone, QUICK, on_retry=seen.append)
    try:
        with pytest.raises(TransientError) as caught:
            store.commit([Write.set("a/b", {})])
        assert caught.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert caught.value.hint is not None
        assert store.retries == QUICK.attempts - 1 == len(seen)
        with pytest.raises(TransientError):
            list(store.stream(Query("a")))
    finally:
        gone.close()


def test_a_stream_broken_midway_resumes_without_duplicates_on_the_emulator(firestore: FirestoreStore) -> None:
    paths = [f"items/{i:03d}" for i in range(25)]
    assert all(r.ok for r in firestore.commit([Write.set(p, {"n": i}) for i, p in enumerate(paths)]))
    breaking = BreakingStream(firestore, [7, 0, 10])
    store = RetryingStore(breaking, QUICK)

    docs = list(store.stream(Query("items")))

    assert [d.path for d in docs] == paths
    assert [d.data["n"] for d in docs] == list(range(25))
    # Breaks after documents are routine (resumed at once); the one before any document is retried.
    assert store.stream_resumes == 2 and store.retries == 1
    assert [q.start_after for q in breaking.queries] == [None, paths[6], paths[6], paths[16]]

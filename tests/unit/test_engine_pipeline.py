"""Whole migrations through the pipeline on the memory store: stops, resumes, limits, shards, samples."""

from __future__ import annotations

import gzip
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from docshift.engine.controls import Controls
from docshift.engine.hooks import Checkpointed, PassFinished, PassStarted, Warned
from docshift.engine.sampling import bucket, in_sample
from docshift.engine.sharding import plan_shards
from docshift.errors import (
    EmergencyStop,
    ExitCode,
    MemoryLimitExceeded,
    RunStopped,
    TooManyFailures,
    TransientError,
)
from docshift.migration import UNCHANGED, DocView
from docshift.runfolder import Checkpoint
from docshift.store import Document, Query, Store, Write, WriteResult
from docshift.testing import MemoryStore, RecordingHooks, RecordingStore
from tests.unit.engine_support import (
    ScriptedMemory,
    StoreWrapper,
    assert_data,
    build,
    dead_letters,
    expected_after,
    export,
    journal_kinds,
    make_migration,
    options,
    run_pipeline,
    seed,
    split_name,
)
from tests.unit.test_engine_batch import Counting


def seeded(count: int = 1000) -> tuple[MemoryStore, dict[str, Document]]:
    store = MemoryStore()
    seed(store, count)
    return store, export(store)


def finish_by_resuming(store: Store, up: Any, folder: Path, **opts: Any) -> Any:
    result = run_pipeline(store, make_migration(up), folder, options(**opts))
    assert result.error is None, result.error
    assert Checkpoint.load(folder / "checkpoint.json").state == "finished"
    return result


def test_a_second_run_finds_nothing_to_do_and_writes_nothing(tmp_path: Path) -> None:
    store, before = seeded(300)
    first = run_pipeline(store, make_migration(), tmp_path / "one")
    assert first.counters["updated"] == 270 and first.counters["unchanged"] == 30
    after_first = export(store)
    recorder = RecordingStore(store)
    second = run_pipeline(recorder, make_migration(), tmp_path / "two")
    assert second.error is None
    assert second.counters["unchanged"] == 300 and second.counters["updated"] == 0
    assert recorder.commits == 0
    assert export(store) == after_first  # same data and same update times
    assert_data(store, expected_after(before, split_name))


def test_checkpoints_never_claim_a_write_still_in_flight(tmp_path: Path) -> None:
    """Commits finish out of order; at every checkpoint each document up to a cursor is done."""
    memory, before = seeded(600)
    rng = random.Random(3)
    lock = threading.Lock()

    class Jittery(StoreWrapper):
        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            with lock:
                delay = rng.random() * 0.03
            time.sleep(delay)
            return self.inner.commit(writes)

    problems: list[str] = []
    checks = {"count": 0}

    def on_checkpoint(checkpoint: Checkpoint) -> None:
        checks["count"] += 1
        for shard in checkpoint.shards:
            if shard.cursor is None:
                continue
            upto = memory.stream(Query("users", start_after=shard.start_after, end_at=shard.cursor))
            problems.extend(doc.path for doc in upto if split_name(DocView(doc)) is not UNCHANGED)

    result = run_pipeline(
        Jittery(memory),
        make_migration(),
        tmp_path,
        options(batch_size=20, concurrency=6, checkpoint_every_seconds=0.01),
        shards=2,
        on_checkpoint=on_checkpoint,
    )
    assert result.error is None
    assert checks["count"] >= 5
    assert problems == []
    assert_data(memory, expected_after(before, split_name))


@pytest.mark.parametrize("seed_value", range(6))
def test_resuming_after_stops_at_random_moments_reaches_the_uninterrupted_result(
    tmp_path: Path, seed_value: int
) -> None:
    store, before = seeded(800)
    rng = random.Random(seed_value)
    stops = 0
    for attempt in range(30):
        controls = Controls()
        stop_after = rng.randint(1, 400)
        seen = {"n": 0}
        lock = threading.Lock()

        def up(
            doc: DocView,
            controls: Controls = controls,
            stop_after: int = stop_after,
            seen: dict[str, int] = seen,
            lock: threading.Lock = lock,
        ) -> Any:
            with lock:
                seen["n"] += 1
                if seen["n"] == stop_after:
                    controls.request_stop("test stop")
            if doc.get("n") % 37 == 5:
                raise ValueError("always fails")
            return split_name(doc)

        result = build(
            store,
            make_migration(up),
            tmp_path,
            options(batch_size=30, max_failures="100"),
            controls=controls,
            shards=1 + attempt % 3,
        ).run()
        if result.error is None:
            break
        assert isinstance(result.error, RunStopped) and result.error.exit_code == ExitCode.INTERRUPTED
        assert Checkpoint.load(tmp_path / "checkpoint.json").state == "stopped"
        stops += 1
    else:
        pytest.fail("never finished")
    assert stops >= 1
    failing = sorted(f"users/u{i:05d}" for i in range(800) if i % 37 == 5)
    expected = expected_after(before, split_name)
    expected.update({path: before[path].data for path in failing})
    assert_data(store, expected)
    counters = Checkpoint.load(tmp_path / "checkpoint.json").counters
    assert counters["read"] == 800  # each document counted once across all the sessions
    assert counters["updated"] + counters["unchanged"] + counters["failed"] == 800
    assert counters["failed"] == len(failing)
    # The dead-letter file names each failed document once, however often the run stopped.
    assert sorted(letter["path"] for letter in dead_letters(tmp_path)) == failing


def failing_every(n: int) -> Any:
    def up(doc: DocView) -> Any:
        if doc.get("n") % n == 0:
            raise ValueError(f"bad {doc.id}")
        return split_name(doc)

    return up


@pytest.mark.parametrize("spec", ["5", "1%"])
def test_max_failures_stops_with_a_resumable_checkpoint(tmp_path: Path, spec: str) -> None:
    store, before = seeded(1000)
    up = failing_every(50)  # 20 failures: 2%
    result = run_pipeline(store, make_migration(up), tmp_path, options(max_failures=spec))
    assert isinstance(result.error, TooManyFailures)
    assert result.error.exit_code == ExitCode.TOO_MANY_FAILURES
    assert int(result.error.exit_code) == 13
    assert f"--max-failures {spec}" in str(result.error)
    saved = Checkpoint.load(tmp_path / "checkpoint.json")
    assert saved.state in ("stopped", "failed")
    # Resumed with a budget that allows them, the run completes exactly.
    final = finish_by_resuming(store, up, tmp_path, max_failures="25")
    failing = {f"users/u{i:05d}" for i in range(0, 1000, 50)}
    assert final.counters["failed"] == 20
    assert final.counters["read"] == 1000
    assert {letter["path"] for letter in dead_letters(tmp_path)} == failing
    expected = expected_after(before, split_name)
    for path in failing:
        expected[path] = before[path].data
    assert_data(store, expected)


def test_failures_within_the_budget_do_not_stop_the_run(tmp_path: Path) -> None:
    store, _ = seeded(1000)
    # Batches of exactly 50 with one failure each: always exactly at the 2% budget, never above.
    opts = options(max_failures="2%", batch_size=50, max_batch_size=50, concurrency=4)
    result = run_pipeline(store, make_migration(failing_every(50)), tmp_path, opts)
    assert result.error is None and result.counters["failed"] == 20


def test_the_circuit_breaker_stops_the_run_and_it_resumes(tmp_path: Path) -> None:
    store, before = seeded(1000)
    broken = {"on": True}

    def up(doc: DocView) -> Any:
        if broken["on"] and doc.get("n") % 3 == 0:
            raise RuntimeError("dependency down")
        return split_name(doc)

    result = run_pipeline(store, make_migration(up), tmp_path, options(max_failures="100%"))
    assert isinstance(result.error, EmergencyStop) and result.error.exit_code == 12
    assert "circuit breaker" in str(result.error)
    assert result.state == "stopped"
    assert Checkpoint.load(tmp_path / "checkpoint.json").state == "stopped"
    assert result.counters["read"] < 1000  # it stopped early
    broken["on"] = False
    final = finish_by_resuming(store, up, tmp_path, max_failures="100%")
    letters = [letter["path"] for letter in dead_letters(tmp_path)]
    # (Failures in batches that were not finished when it stopped are simply done again.)
    assert len(letters) == len(set(letters)) == final.counters["failed"]
    expected = expected_after(before, split_name)
    for path in letters:
        expected[path] = before[path].data
    assert_data(store, expected)  # documents that failed only in unfinished batches were migrated
    assert final.counters["read"] == 1000


def test_the_memory_hard_limit_stops_with_a_checkpoint(tmp_path: Path) -> None:
    store, before = seeded(500)
    memory = ScriptedMemory(soft=100, hard=200)
    memory.mb = 250
    result = run_pipeline(store, make_migration(), tmp_path, memory=memory)
    assert isinstance(result.error, MemoryLimitExceeded) and result.error.exit_code == 11
    assert "hard limit 200 MiB" in str(result.error)
    assert Checkpoint.load(tmp_path / "checkpoint.json").state == "stopped"
    memory.mb = 10
    finish_by_resuming(store, split_name, tmp_path)
    assert_data(store, expected_after(before, split_name))


def test_the_memory_soft_limit_holds_reading_back_until_memory_falls(tmp_path: Path) -> None:
    store, before = seeded(1500)
    memory = ScriptedMemory(soft=100, hard=200)
    hooks = RecordingHooks()
    pipeline = build(
        store,
        make_migration(),
        tmp_path,
        options(batch_size=20, concurrency=2),
        memory=memory,
        hooks=hooks,
        controls=Controls(_limiter(400)),  # 1,500 writes take >= 3.75 s
    )

    def in_flight() -> int:
        counters = pipeline.stats.counts()
        return counters["read"] - counters["updated"] - counters["unchanged"]

    runner = threading.Thread(target=pipeline.run)
    runner.start()
    ahead = time.monotonic() + 10
    while in_flight() <= 60 and time.monotonic() < ahead:
        time.sleep(0.01)
    assert in_flight() > 60  # unconstrained, the reader stays several batches ahead of the writers
    memory.mb = 150
    deadline = time.monotonic() + 10
    while not hooks.of(Warned) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hooks.of(Warned)
    assert pipeline.memory_budget.paused
    drained = time.monotonic() + 10  # the writers drain what was read
    while in_flight() > pipeline.sizer.size and time.monotonic() < drained:
        time.sleep(0.01)
    samples = []
    read_before = pipeline.stats.counts()["read"]
    for _ in range(40):
        samples.append((in_flight(), pipeline.sizer.size))  # the size only grows in this run
        time.sleep(0.01)
    assert all(held <= size for held, size in samples)  # at most one batch at a time above the soft limit ...
    moving = time.monotonic() + 10
    while pipeline.stats.counts()["read"] <= read_before and time.monotonic() < moving:
        time.sleep(0.01)
    assert pipeline.stats.counts()["read"] > read_before  # ... but still moving
    memory.mb = 10
    runner.join(20)
    assert not runner.is_alive()
    assert pipeline.stats.counters["read"] == 1500
    assert_data(store, expected_after(before, split_name))


def test_memory_that_stays_above_the_soft_limit_slows_the_run_but_does_not_stall_it(tmp_path: Path) -> None:
    """Python rarely gives memory back to the OS: once nothing is in flight, reading continues one
    batch at a time instead of waiting for ever for the resident size to fall."""
    store, before = seeded(600)
    memory = ScriptedMemory(soft=100, hard=200)
    memory.mb = 150  # and it stays there
    controls = Controls()
    pipeline = build(
        store,
        make_migration(),
        tmp_path,
        options(batch_size=40, concurrency=3),
        memory=memory,
        controls=controls,
    )
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(pipeline.run()))
    runner.start()
    runner.join(20)
    if runner.is_alive():
        controls.request_stop("test timeout")
        runner.join(10)
        pytest.fail("the run stalled above the soft memory limit")
    [result] = outcome
    assert result.error is None
    assert_data(store, expected_after(before, split_name))
    assert isinstance(pipeline.hooks, RecordingHooks)
    warnings = pipeline.hooks.warnings()
    assert any("above the soft limit 100 MiB: documents are read one at a time" in w for w in warnings)


def test_large_documents_are_held_by_bytes_not_by_batch_counts(tmp_path: Path) -> None:
    """Batches of 50 documents of 100 KiB, 3 writers and a queue of 3: counted by documents, 300
    of them (30 MB) would be held at once. The soft limit leaves 30 MiB of room; counted in bytes
    (each document costs several times its stored size while held), far fewer are."""
    store = MemoryStore()
    seed(store, 400, make=lambda i: {"n": i, "blob": f"{i:07d}-" * 12_800})
    stored = 100 * 1024

    class SlowCommits(StoreWrapper):
        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            time.sleep(0.005)  # a slow store: the reader runs ahead as far as it may
            return self.inner.commit(writes)

    memory = ScriptedMemory(soft=40, hard=400)  # resident 10 MiB throughout: 30 MiB of room
    pipeline = build(
        SlowCommits(store),
        make_migration(lambda doc: {**doc.data, "flag": True}),
        tmp_path,
        options(batch_size=50, min_batch_size=5, max_batch_size=50, concurrency=3),
        memory=memory,
    )
    samples: list[int] = []
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    while runner.is_alive():
        counters = pipeline.stats.counts()
        samples.append(counters["read"] - counters["updated"])
        time.sleep(0.002)
    runner.join()
    assert pipeline.stats.counters["updated"] == 400
    assert max(samples) > 5  # the reader did run ahead of the writers
    assert max(samples) * stored <= 30 * 1_048_576 / 3  # a third of the room in stored bytes


def _limiter(ops: float) -> Any:
    from docshift.engine.limits import RateLimiter

    return RateLimiter(ops)


def test_a_sharded_run_handles_every_document_exactly_once(tmp_path: Path) -> None:
    store, before = seeded(1000)
    shards = plan_shards(store, make_migration().target, 3)
    assert len(shards) == 3
    assert shards[0].start_after is None and shards[-1].end_at is None
    assert [s.start_after for s in shards[1:]] == [s.end_at for s in shards[:-1]]
    up = Counting()
    result = run_pipeline(store, make_migration(up), tmp_path, shards=3)
    assert result.error is None
    assert set(up.calls) == set(before) and set(up.calls.values()) == {1}
    saved = Checkpoint.load(tmp_path / "checkpoint.json")
    assert len(saved.shards) == 3 and all(s.done for s in saved.shards)
    assert saved.counters["read"] == 1000
    assert_data(store, expected_after(before, split_name))


def test_a_sharded_collection_group_run(tmp_path: Path) -> None:
    store = MemoryStore()
    for parent in range(30):
        seed(store, 10, collection=f"teams/t{parent:02d}/users")
    seed(store, 5, collection="users")  # the root collection "users" belongs to the group too
    up = Counting()
    migration = make_migration(up, group=True)
    result = run_pipeline(store, migration, tmp_path, shards=4)
    assert result.error is None
    assert len(up.calls) == 305 and set(up.calls.values()) == {1}
    assert result.counters["read"] == 305


def dry_run_changes(store: Store, folder: Path, percent: float | None) -> set[str]:
    changed: set[str] = set()
    lock = threading.Lock()

    def record(decision: Any) -> None:
        if decision.kind not in ("skipped", "unchanged"):
            with lock:
                changed.add(decision.source.path)

    result = run_pipeline(
        store,
        make_migration(lambda doc: {**doc.data, "seen": True}),
        folder,
        options(execute=False, sample_percent=percent),
        on_decision=record,
    )
    assert result.error is None
    assert result.counters["skipped"] == 1000 - len(changed)
    return changed


def test_sample_is_deterministic_by_path_and_nested(tmp_path: Path) -> None:
    store, before = seeded(1000)
    ten = dry_run_changes(store, tmp_path / "a", 10)
    assert ten == dry_run_changes(store, tmp_path / "b", 10)
    thirty = dry_run_changes(store, tmp_path / "c", 30)
    assert ten < thirty
    assert ten == {path for path in before if bucket(path) < 10}
    assert 60 < len(ten) < 140 and 240 < len(thirty) < 360
    assert dry_run_changes(store, tmp_path / "d", None) == set(before)
    assert all(in_sample(path, 30, 10) == (path in thirty - ten) for path in before)


def test_sampled_execute_writes_only_the_sample(tmp_path: Path) -> None:
    store, before = seeded(1000)
    result = run_pipeline(store, make_migration(), tmp_path, options(sample_percent=5))
    assert result.error is None
    changed = {path for path, doc in export(store).items() if doc.update_time != before[path].update_time}
    assert changed == {p for p in before if bucket(p) < 5 and "full_name" in before[p].data}


def test_limit_takes_the_first_documents_in_name_order(tmp_path: Path) -> None:
    store, before = seeded(200)
    up = Counting()
    result = run_pipeline(store, make_migration(up), tmp_path, options(limit=37, batch_size=10))
    assert result.error is None and result.counters["read"] == 37
    assert set(up.calls) == set(sorted(before)[:37])
    after = export(store)
    untouched = sorted(before)[37:]
    assert all(after[path] == before[path] for path in untouched)


def test_copy_migration_leaves_the_source_and_reruns_as_a_no_op(tmp_path: Path) -> None:
    store, before = seeded(300)
    store.commit([Write.set("users_v2/u00001", {"stale": True})])  # an old copy gets replaced

    def up(doc: DocView) -> Any:
        return {**doc.data, "version": 2}

    migration = make_migration(up, copy_to="users_v2")
    result = run_pipeline(store, migration, tmp_path / "one")
    assert result.error is None
    assert result.counters["created"] == 299 and result.counters["updated"] == 1
    assert export(store) == before  # data and update times
    copies = export(store, "users_v2")
    assert set(copies) == {path.replace("users/", "users_v2/") for path in before}
    for path, doc in before.items():
        assert copies[path.replace("users/", "users_v2/")].data == {**doc.data, "version": 2}
    kinds = journal_kinds(tmp_path / "one")
    assert sum(1 for kind, _ in kinds if kind == "created") == 299
    assert ("before", "users_v2/u00001") in kinds
    recorder = RecordingStore(store)
    again = run_pipeline(recorder, migration, tmp_path / "two")
    assert again.error is None and again.counters["unchanged"] == 300
    assert recorder.commits == 0
    assert export(store, "users_v2") == copies


def test_transient_commit_failures_are_retried_and_every_document_migrated_once(tmp_path: Path) -> None:
    from docshift.store import RetryingStore, RetryPolicy
    from docshift.testing import FaultInjectingStore

    memory, before = seeded(2000)
    faulty = FaultInjectingStore(memory, write_failure_rate=0.05, request_failure_rate=0.05, seed=11)
    store = RetryingStore(faulty, RetryPolicy(attempts=8, initial_wait=0.001, max_wait=0.005))
    result = run_pipeline(store, make_migration(), tmp_path, options(batch_size=40))
    assert result.error is None
    assert faulty.injected > 50 and store.retries > 10
    changed = {path for path, doc in before.items() if "full_name" in doc.data}
    assert result.counters["updated"] == len(changed)
    assert result.counters["conflicts"] == 0 and result.counters["failed"] == 0
    kinds = journal_kinds(tmp_path)
    assert {path for kind, path in kinds if kind == "before"} == changed
    assert all(count == 1 for count in kinds.values())
    assert_data(memory, expected_after(before, split_name))


def test_progress_events_tell_the_story(tmp_path: Path) -> None:
    store, _ = seeded(300)
    hooks = RecordingHooks()
    result = run_pipeline(store, make_migration(), tmp_path, hooks=hooks)
    assert result.error is None
    types = hooks.types()
    assert types[0] is PassStarted and types[-1] is PassFinished
    assert Checkpointed in types
    finish = hooks.events[-1]
    assert isinstance(finish, PassFinished) and finish.stats is not None
    assert finish.counters["updated"] == 270 and finish.stats.processed == 300 and finish.reason is None


def test_a_dry_run_plan_records_every_change_and_flags_a_non_idempotent_up(tmp_path: Path) -> None:
    from docshift.engine.dry_run import DryRunRecorder

    store, before = seeded(200)

    def appends(doc: DocView) -> Any:  # not idempotent: every run changes it again
        return {**doc.data, "n": doc.get("n") + 1000}

    for up, offenders in ((split_name, False), (appends, True)):
        folder = tmp_path / up.__name__
        recorder = DryRunRecorder(folder / "plan.jsonl.gz", up)
        result = run_pipeline(store, make_migration(up), folder, options(execute=False), on_decision=recorder)
        recorder.close()
        assert result.error is None
        lines = gzip.decompress((folder / "plan.jsonl.gz").read_bytes()).splitlines()
        assert len(lines) == result.counters["updated"] and len(recorder.samples) == 5
        assert bool(recorder.not_idempotent) is offenders
    assert export(store) == before


class SlowGate:
    """A settling check that stops the run once ``stop_after`` batches are settled, taking its
    time to judge, as a gate that writes its report does."""

    def __init__(self, controls: Controls, stop_after: int) -> None:
        self.controls, self.stop_after, self.batches = controls, stop_after, 0

    def __call__(self, source: Document, new_data: dict[str, Any]) -> tuple[str, str] | None:
        return None

    def settled(self, counts: Any, letters: Sequence[Any]) -> None:
        self.batches += 1
        if self.batches == self.stop_after:
            time.sleep(0.3)  # the writer would have taken the next batch by now
            self.controls.request_stop("gate", EmergencyStop)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_gate_stops_the_run_at_the_batch_it_judged_however_long_it_takes(
    tmp_path: Path, concurrency: int
) -> None:
    store, before = seeded(1000)
    writes = RecordingStore(store)
    controls = Controls()
    opts = options(batch_size=50, min_batch_size=50, max_batch_size=50, concurrency=concurrency)
    gate = SlowGate(controls, stop_after=3)
    result = build(writes, make_migration(), tmp_path, opts, controls=controls, check=gate).run()
    assert isinstance(result.error, EmergencyStop)
    written = {path for request in writes.paths() for path in request}
    first = sorted(before)[:150]
    changed = {path for path in first if "full_name" in before[path].data}
    if concurrency == 1:
        # Nothing starts while the batch before it is judged: the stop point is always the same.
        assert written == changed and result.counters["updated"] == len(changed)
    else:
        # A later batch may land before the judged one settles (out of order): the stop point
        # depends on which commit answers first, but the run still stops short of the end.
        assert changed <= written and len(written) < sum("full_name" in d.data for d in before.values())
    assert len(export(store)) == len(before)


class ReportFailedFirst(StoreWrapper):
    """Holds every commit until the history's progress record has failed: the pass is mid-way then."""

    def __init__(self, inner: Store, failed: threading.Event) -> None:
        super().__init__(inner)
        self.failed = failed

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        assert self.failed.wait(30), "the progress record was never made"
        return self.inner.commit(writes)


def test_a_failing_progress_record_stops_the_pass_and_its_threads(tmp_path: Path) -> None:
    """The history's progress record fails (the store is gone for it) after the first: the pass
    stops as any stop does (checkpoint saved "stopped", the cause named, resumable), and each of
    its threads (readers, writers, the progress reporter) has ended when it returns."""
    store, _ = seeded(400)
    failed = threading.Event()
    seen: set[threading.Thread] = set()
    reports = 0

    def on_checkpoint(saved: Checkpoint) -> None:
        nonlocal reports
        reports += 1
        seen.update(t for t in threading.enumerate() if t.name.startswith("docshift-"))
        if reports >= 2:
            failed.set()
            raise TransientError("history down", code="UNAVAILABLE")

    opts = options(batch_size=2, min_batch_size=2, max_batch_size=2, concurrency=2, checkpoint_every_docs=2)
    result = run_pipeline(
        ReportFailedFirst(store, failed),
        make_migration(),
        tmp_path,
        opts,
        shards=2,
        on_checkpoint=on_checkpoint,
    )

    assert result.state == "stopped"
    assert isinstance(result.error, EmergencyStop) and "history down" in str(result.error)
    assert result.error.offer_resume  # the command adds how to resume (its hint)
    assert Checkpoint.load(tmp_path / "checkpoint.json").state == "stopped"
    names = {t.name for t in seen}
    assert {"docshift-progress", "docshift-reader-0", "docshift-writer-0"} <= names
    assert [t.name for t in seen if t.is_alive()] == []

"""Hiding a distant store's latency. The commit window: batches in flight from the commit latency
observed (Little's law), bounded by its cap and by the write limit in force, following the latency
as it changes; and the history's progress record, which must not hold the writers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from docshift.config import AUTO_CONCURRENCY, EngineConfig
from docshift.engine.hooks import Progressed
from docshift.engine.limits import CommitWindow, RateLimiter
from docshift.runfolder import Checkpoint
from docshift.store import Store, Write, WriteResult
from docshift.testing import MemoryStore, RecordingHooks, RecordingStore
from tests.unit.engine_support import (
    StoreWrapper,
    assert_data,
    expected_after,
    export,
    make_migration,
    options,
    run_pipeline,
    seed,
    split_name,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steady(window: CommitWindow, clock: Clock, *, rate: float, latency: float, batch: int = 500) -> None:
    """Commits of ``batch`` documents taking ``latency`` s, at ``rate`` documents/s for 6 s (longer
    than the window's memory of latencies)."""
    step = batch / rate
    for _ in range(int(6.0 / step)):
        clock.now += step
        window.committed(batch, latency)


def test_the_window_is_the_floor_plus_the_documents_a_commit_latency_holds() -> None:
    clock = Clock()
    window = CommitWindow(4, 32, clock=clock)
    assert window.size == 4  # nothing measured yet
    steady(window, clock, rate=6000, latency=0.005)  # a near store: 6000 x 0.005 / 500 = 0.06
    assert window.size == 4
    steady(window, clock, rate=6000, latency=0.25)  # 6000 x 0.25 / 500 = 3 batches more
    assert window.size == 7
    steady(window, clock, rate=6000, latency=0.9)  # 10.8: 11 more
    assert window.size == 15 and window.peak == 15


def test_the_window_follows_the_latency_back_down() -> None:
    clock = Clock()
    window = CommitWindow(4, 32, clock=clock)
    steady(window, clock, rate=6000, latency=0.9)
    assert window.size == 15
    steady(window, clock, rate=6000, latency=0.01)
    assert window.size == 4


def test_commits_queued_in_a_busy_store_do_not_grow_the_window() -> None:
    """A store that is busy, not far, answers later the more commits wait in it: the window counts
    the least latency (the round trip and the store's own work), or it would grow to its cap."""
    clock = Clock()
    window = CommitWindow(4, 32, clock=clock)
    for index in range(600):  # 6,000 documents/s; most commits queued up to 1 s, some not at all
        clock.now += 500 / 6000
        window.committed(500, 0.02 if index % 10 == 0 else 1.0)
    assert window.latency == 0.02 and window.size == 4


def test_the_window_is_bounded_by_its_cap() -> None:
    clock = Clock()
    window = CommitWindow(4, 8, clock=clock)
    steady(window, clock, rate=6000, latency=2.0)  # Little's law would want 28
    assert window.size == 8


def test_a_write_limit_needs_fewer_in_flight_and_the_lower_wins() -> None:
    clock = Clock()
    limiter = RateLimiter(1000.0, clock=clock)
    window = CommitWindow(4, 32, rate_limit=lambda: limiter.limit, clock=clock)
    steady(window, clock, rate=1000, latency=0.8, batch=100)
    # Little's law: 4 + 1000 x 0.8 / 100 = 12; the limit: 1000 ops/s x 0.8 s / 100 + 1 = 9.
    assert window.size == 9
    limiter.set_cap(200.0)  # ceil(200 x 0.8 / 100) + 1 = 3: fewer than the floor, since more only wait
    assert window.size == 3
    limiter.set_cap(0.0)
    assert window.size == 12


def test_the_adaptive_rate_lowers_the_window_when_the_store_refuses() -> None:
    clock = Clock()
    limiter = RateLimiter(adaptive=True, clock=clock)
    window = CommitWindow(4, 32, rate_limit=lambda: limiter.limit, clock=clock)
    for _ in range(40):  # 2,000 writes/s accepted for 2 s, commits of 100 taking 0.5 s
        clock.now += 0.05
        limiter.accepted(100)
        window.committed(100, 0.5)
    unlimited = window.size
    assert unlimited == 4 + 10  # 2,000 x 0.5 / 100
    assert limiter.refused()  # the store refuses: the adaptive rate comes down to 0.9 x 2,000
    assert limiter.adaptive_limit == 1800
    assert window.size == 10  # 1,800 x 0.5 / 100 + 1 = 10 < 14


def test_a_fixed_figure_stays_whatever_the_latency() -> None:
    clock = Clock()
    window = CommitWindow(3, 3, clock=clock)
    steady(window, clock, rate=6000, latency=2.0)
    assert window.fixed and window.size == 3


def test_the_config_decides_fixed_or_automatic() -> None:
    auto = EngineConfig()
    assert auto.concurrency == 0 and auto.base_concurrency == AUTO_CONCURRENCY
    assert auto.most_concurrency == 16
    fixed = EngineConfig(concurrency=2, max_concurrency=64)
    assert fixed.base_concurrency == fixed.most_concurrency == 2


def test_acquire_waits_for_room_and_close_lets_every_waiter_go() -> None:
    window = CommitWindow(2, 2)
    assert window.acquire() and window.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(window.acquire()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # the window is full
    window.release()
    waiter.join(2)
    assert got == [True] and window.active == 2
    blocked = threading.Thread(target=lambda: got.append(window.acquire()))
    blocked.start()
    window.close()
    blocked.join(2)
    assert got == [True, False] and not blocked.is_alive()
    stop = threading.Event()
    stop.set()
    full = CommitWindow(1, 1)
    assert full.acquire()
    assert not full.acquire(stop)


class DistantStore(StoreWrapper):
    """The in-memory store with every commit ``latency`` seconds away; counts commits in flight."""

    def __init__(self, inner: Store, latency: float) -> None:
        super().__init__(inner)
        self.latency = latency
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.latency)
            return self.inner.commit(writes)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_a_run_keeps_more_commits_in_flight_for_a_distant_store_and_migrates_everything(
    tmp_path: Path,
) -> None:
    """Commits of 50 taking 0.2 s: four writers get through ~1,000 documents/s, which holds 4
    commits more in flight (Little's law); every document is migrated exactly once."""
    memory = MemoryStore()
    seed(memory, 3000)
    before = export(memory)
    distant = DistantStore(memory, 0.2)
    writes = RecordingStore(distant)
    hooks = RecordingHooks()
    opts = options(batch_size=50, min_batch_size=50, max_batch_size=50, concurrency=0, max_concurrency=12)
    result = run_pipeline(writes, make_migration(), tmp_path, opts, hooks=hooks)
    assert result.error is None and result.state == "finished"
    assert distant.most_in_flight > AUTO_CONCURRENCY
    assert distant.most_in_flight <= 12
    written = [path for request in writes.paths() for path in request]
    assert len(written) == len(set(written))  # each document once
    assert_data(memory, expected_after(before, split_name))
    shown = [event.engine.in_flight for event in hooks.of(Progressed) if event.engine is not None]
    assert max(shown) > AUTO_CONCURRENCY  # the live view and report show the figure


def test_a_fixed_concurrency_keeps_its_figure_for_a_distant_store(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 1000)
    distant = DistantStore(memory, 0.1)
    opts = options(batch_size=50, min_batch_size=50, max_batch_size=50, concurrency=2, max_concurrency=12)
    result = run_pipeline(distant, make_migration(), tmp_path, opts)
    assert result.error is None
    assert distant.most_in_flight == 2


class CountingStore(StoreWrapper):
    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.commits = 0
        self.enough = threading.Event()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        self.commits += 1
        if self.commits >= 5:
            self.enough.set()
        return results


def test_a_slow_progress_record_does_not_hold_the_writers(tmp_path: Path) -> None:
    """The history's progress record is a round trip to the store or two: while it is under way the
    run keeps committing (every writer waits on the tracker's judgements), the records come in
    order, and the last one is the pass's final checkpoint, made before the pass returns."""
    memory = MemoryStore()
    seed(memory, 1000)
    counting = CountingStore(memory)
    reported: list[tuple[str, int]] = []
    held: list[bool] = []

    def on_checkpoint(saved: Checkpoint) -> None:
        if not held:  # the first record takes until the run has committed 5 batches (or 10 s)
            held.append(counting.enough.wait(10))
        reported.append((saved.state, saved.counters.get("read", 0)))

    opts = options(
        batch_size=50, min_batch_size=50, max_batch_size=50, concurrency=2, checkpoint_every_docs=50
    )
    result = run_pipeline(counting, make_migration(), tmp_path, opts, on_checkpoint=on_checkpoint)
    assert result.error is None and result.state == "finished"
    assert held == [True]  # the run committed while the first record was under way
    assert reported[-1] == ("finished", 1000)
    reads = [read for _, read in reported]
    assert reads == sorted(reads)

"""The run's guards with a driven clock: write rate and ramp, breaker, failure budget, batch size, memory."""

from __future__ import annotations

import threading
import time

import pytest

from docshift.engine.controls import Controls
from docshift.engine.limits import (
    AdaptiveBatch,
    CircuitBreaker,
    DocumentCost,
    FailureBudget,
    MemoryBudget,
    MemoryGuard,
    MemoryState,
    RateLimiter,
)
from docshift.errors import EmergencyStop
from docshift.store import Document


class Clock:
    def __init__(self) -> None:
        self.now = 1024.0

    def __call__(self) -> float:
        return self.now


class Acquirer:
    """acquire() in a thread, so the test can move the clock while it waits."""

    def __init__(self, limiter: RateLimiter, count: int, stop: threading.Event | None = None) -> None:
        self.result: bool | None = None
        self.thread = threading.Thread(target=self._run, args=(limiter, count, stop), daemon=True)
        self.thread.start()

    def _run(self, limiter: RateLimiter, count: int, stop: threading.Event | None) -> None:
        self.result = limiter.acquire(count, stop)

    def done_within(self, seconds: float) -> bool:
        self.thread.join(seconds)
        return not self.thread.is_alive()


def test_ramp_follows_500_50_5() -> None:
    clock = Clock()
    limiter = RateLimiter(ramp=True, clock=clock)
    levels = []
    for minutes in (0, 4.99, 5, 9.99, 10, 15, 20):
        clock.now = 1024.0 + minutes * 60
        levels.append(limiter.limit)
    assert levels == [500, 500, 750, 750, 1125, 1687.5, 2531.25]


def test_cap_applies_below_the_ramp_and_can_change_live() -> None:
    clock = Clock()
    limiter = RateLimiter(600, ramp=True, clock=clock)
    assert limiter.limit == 500
    clock.now += 600
    assert limiter.limit == 600  # the ramp is at 1125; the cap wins
    limiter.set_cap(2000)
    assert limiter.limit == 1125
    limiter.set_cap(0)
    assert limiter.limit == 1125
    assert RateLimiter(250, clock=clock).limit == 250
    assert RateLimiter(clock=clock).limit == 0


def test_unlimited_never_waits() -> None:
    limiter = RateLimiter(clock=Clock())
    assert all(limiter.acquire(10_000) for _ in range(100))


def test_tokens_accrue_at_the_limit_rate() -> None:
    # Clock steps are binary fractions so that the token arithmetic is exact.
    clock = Clock()
    limiter = RateLimiter(100, clock=clock)  # 100 ops/s: 10 ops take 0.1 s
    waiter = Acquirer(limiter, 10)
    assert not waiter.done_within(0.3)
    clock.now += 0.0625  # 6.25 tokens: not enough
    assert not waiter.done_within(0.4)
    clock.now += 0.0625  # 12.5
    assert waiter.done_within(2) and waiter.result is True
    clock.now += 0.25  # 2.5 left + 25
    assert limiter.acquire(27)
    waiter = Acquirer(limiter, 1)  # 0.5 left
    assert not waiter.done_within(0.3)
    clock.now += 0.0078125  # + 0.78
    assert waiter.done_within(2) and waiter.result is True


def test_idle_time_allows_at_most_one_second_of_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(100, clock=clock)
    clock.now += 3600
    assert limiter.acquire(100)
    waiter = Acquirer(limiter, 1)
    assert not waiter.done_within(0.3)
    clock.now += 0.01
    assert waiter.done_within(2)
    # A request bigger than one second's worth is allowed once that much has accrued.
    clock.now += 2.5
    assert limiter.acquire(250)


def test_ramp_rate_applies_to_acquire() -> None:
    clock = Clock()
    limiter = RateLimiter(ramp=True, clock=clock)
    clock.now += 1.0
    assert limiter.acquire(500)
    waiter = Acquirer(limiter, 1)
    assert not waiter.done_within(0.3)
    clock.now += 0.00390625  # 1.95 tokens at 500/s
    assert waiter.done_within(2)


def test_pause_blocks_and_a_stop_wakes_the_waiter() -> None:
    clock = Clock()
    controls = Controls(RateLimiter(clock=clock))
    controls.pause()
    assert controls.paused
    waiter = Acquirer(controls.limiter, 1, controls.stop)
    assert not waiter.done_within(0.4)
    controls.resume()
    assert waiter.done_within(2) and waiter.result is True
    controls.pause()
    waiter = Acquirer(controls.limiter, 1, controls.stop)
    assert not waiter.done_within(0.3)
    controls.request_stop("enough", EmergencyStop)
    controls.request_stop("later reason")
    assert waiter.done_within(2) and waiter.result is False
    assert controls.stop_reason == "enough" and controls.stop_class is EmergencyStop
    assert not controls.paused  # a paused run wakes up to stop


def test_throttle_changes_the_limit() -> None:
    controls = Controls(RateLimiter(clock=Clock()))
    controls.throttle(42)
    assert controls.limiter.limit == 42


# ------------------------------------------------------------------------------ circuit breaker
def test_breaker_trips_on_the_failure_rate_over_the_window() -> None:
    breaker = CircuitBreaker(0.10, 200, 5)
    breaker.record(19, 0)
    breaker.record(0, 2)  # 2/21 < 10%
    assert not breaker.tripped
    breaker.record(0, 1)  # 3/22
    assert breaker.tripped and breaker.reason is not None and "failure rate" in breaker.reason
    breaker.record(1000, 0)
    assert breaker.tripped  # stays tripped


def test_breaker_needs_a_minimum_sample_and_forgets_old_outcomes() -> None:
    breaker = CircuitBreaker(0.10, 200, 5)
    breaker.record(0, 19)
    assert not breaker.tripped  # fewer than 20 outcomes: not judged yet
    breaker = CircuitBreaker(0.10, 200, 5)
    breaker.record(0, 10)
    breaker.record(190, 0)  # 10/200 = 10%: not above
    assert not breaker.tripped
    breaker.record(10, 0)  # the 10 failures slide out of the window
    breaker.record(0, 20)  # 20/200
    assert not breaker.tripped
    breaker.record(0, 1)  # 21/200 > 10%
    assert breaker.tripped


def test_breaker_trips_on_consecutive_commit_failures() -> None:
    breaker = CircuitBreaker(0.10, 200, 3)
    breaker.commit_failed()
    breaker.commit_failed()
    breaker.commit_succeeded()
    breaker.commit_failed()
    breaker.commit_failed()
    assert not breaker.tripped
    breaker.commit_failed()
    assert breaker.tripped and breaker.reason == "3 commits failed in a row"


# ------------------------------------------------------------------------------ failure budget
@pytest.mark.parametrize(
    ("spec", "failed", "processed", "final", "exceeded"),
    [
        ("3", 3, 10, False, False),
        ("3", 4, 10_000, False, True),
        ("0", 1, 1, False, True),
        ("1%", 1, 100, False, False),
        ("1%", 2, 100, False, True),
        ("1%", 5, 99, False, False),  # a percentage is judged from 100 documents on ...
        ("1%", 5, 99, True, True),  # ... and at the end
        ("1%", 0, 10, True, False),
        ("0.5%", 5, 1000, False, False),
        ("0.5%", 6, 1000, False, True),
        (" 10 ", 11, 20, False, True),
    ],
)
def test_failure_budget(spec: str, failed: int, processed: int, final: bool, exceeded: bool) -> None:
    assert FailureBudget(spec).exceeded(failed, processed, final=final) is exceeded


@pytest.mark.parametrize("spec", ["", "x", "1%%", "-1", "%5", "1.5.2"])
def test_failure_budget_refuses_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="bad failure budget"):
        FailureBudget(spec)


# ------------------------------------------------------------------------------ batch size, memory
def test_adaptive_batch_halves_to_the_floor_and_grows_back_to_the_ceiling() -> None:
    sizer = AdaptiveBatch(300, 20, 500, grow_after=3)
    assert [sizer.shrink() for _ in range(6)] == [150, 75, 37, 20, 20, 20]
    sizer.healthy()
    sizer.healthy()
    assert sizer.size == 20
    sizer.healthy()
    assert sizer.size == 25
    for _ in range(300):
        sizer.healthy()
    assert sizer.size == 500
    sizer.healthy()
    sizer.healthy()
    sizer.shrink()  # a shrink resets the healthy streak
    sizer.healthy()
    sizer.healthy()
    assert sizer.size == 250


def test_memory_guard_states() -> None:
    rss = {"bytes": 100 * 1_048_576}
    guard = MemoryGuard(512, 1024, reader=lambda: rss["bytes"])
    assert guard.state() == MemoryState.OK and guard.last_rss_mb == 100
    rss["bytes"] = 512 * 1_048_576
    assert guard.state() == MemoryState.SOFT
    rss["bytes"] = 1024 * 1_048_576
    assert guard.state() == MemoryState.HARD
    real = MemoryGuard(10**6, 2 * 10**6)
    assert real.state() == MemoryState.OK and 5 < real.last_rss_mb < 10**6


def test_memory_guard_gives_freed_memory_back_before_calling_it_soft() -> None:
    rss = {"mb": 600}
    trims: list[int] = []

    def trim() -> None:
        trims.append(1)
        rss["mb"] = 400  # what the process had freed, handed back to the OS

    guard = MemoryGuard(512, 1024, reader=lambda: rss["mb"] * 1_048_576, trim=trim, trim_every=3600)
    assert guard.state() == MemoryState.OK and trims == [1]
    rss["mb"] = 600
    assert guard.state() == MemoryState.SOFT and trims == [1]  # at most once per trim_every
    assert MemoryGuard(512, 1024).trim is not None  # glibc (this platform) has malloc_trim


def test_memory_budget_counts_bytes_and_always_lets_one_document_in() -> None:
    stop = threading.Event()
    budget = MemoryBudget(1000, parts=4)
    assert budget.batch_bytes == 250
    assert budget.acquire(5000, stop)  # larger than the whole budget, but nothing else is held
    assert not budget.try_acquire(1, 5000)
    budget.release(5000)
    assert budget.acquire(200, stop) and budget.try_acquire(50, 200)
    assert not budget.try_acquire(1, 250)  # the open batch is full: the reader cuts it here
    assert budget.acquire(250, stop) and budget.acquire(250, stop) and budget.acquire(250, stop)
    assert budget.held == 1000 and budget.peak == 5000
    stop.set()
    assert not budget.acquire(1, stop)  # full: waits, until the run stops
    waiter = threading.Thread(target=lambda: budget.acquire(100, threading.Event()))
    waiter.start()
    budget.release(250)
    waiter.join(5)
    assert not waiter.is_alive() and budget.held == 850


def test_a_paused_memory_budget_finishes_the_open_batch_and_starts_none_while_anything_is_held() -> None:
    stop = threading.Event()
    budget = MemoryBudget(1000, parts=4)
    assert budget.acquire(100, stop)
    budget.pause()
    assert budget.try_acquire(100, 100)  # the batch being read may grow up to batch_bytes
    assert not budget.try_acquire(100, 200)
    stop.set()
    assert not budget.acquire(10, stop)  # a new batch waits while one is held
    budget.release(200)
    assert budget.acquire(10, stop)  # nothing held: one batch at a time goes on
    budget.resume()
    assert budget.acquire(300, stop)


def test_document_cost_follows_the_decoded_size_of_what_is_read() -> None:
    text = Document("c/text", {"blob": "x" * 100_000}, size=100_040)
    numbers = Document("c/numbers", {"values": list(range(10**6, 10**6 + 15_000))}, size=100_000)
    text_cost, numbers_cost = DocumentCost(), DocumentCost()
    assert 3 * 100_000 < text_cost(text) < 7 * 100_000
    assert 1.0 <= text_cost.ratio < 1.2  # a string costs about its stored size
    assert numbers_cost(numbers) > 2 * text_cost(text)  # each number is an object and a pointer
    assert numbers_cost.ratio > 4
    sized = DocumentCost()(Document("c/unsized", {"blob": "x" * 100_000}))  # the store gave no size
    assert 3 * 100_000 < sized < 7 * 100_000


def test_limiter_acquire_is_thread_safe() -> None:
    clock = Clock()
    limiter = RateLimiter(1000, clock=clock)
    clock.now += 1.0  # exactly 1000 tokens
    granted = []
    lock = threading.Lock()

    stop = threading.Event()

    def take() -> None:
        for _ in range(200):
            if not limiter.acquire(1, stop):
                break
            with lock:
                granted.append(1)

    threads = [threading.Thread(target=take) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while len(granted) < 1000 and time.monotonic() - started < 30:
        time.sleep(0.01)
    time.sleep(0.3)  # time for a token too many to be granted, if one could be
    stop.set()
    for thread in threads:
        thread.join()
    assert len(granted) == 1000  # the clock never moved: not one token more
    assert time.monotonic() - started < 30

"""The guards that keep a run within bounds: write rate (with Firestore's 500/50/5 ramp), memory,
failure rate (circuit breaker), the failure budget, and the adaptive batch size.

Each is small, thread-safe, and takes its clock as an argument so tests can drive time.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

__all__ = [
    "AdaptiveBatch",
    "CircuitBreaker",
    "FailureBudget",
    "MemoryGuard",
    "MemoryState",
    "RateLimiter",
]

Clock = Callable[[], float]


class RateLimiter:
    """Token bucket in operations per second, optionally ramping 500 -> +50% every 5 minutes.

    ``limit`` is what applies now: the ramp's level capped by ``cap``; 0 means unlimited.
    ``set_cap`` changes the cap live (``docshift throttle``); ``pause``/``resume`` stop writing.
    """

    RAMP_START = 500.0
    RAMP_FACTOR = 1.5
    RAMP_EVERY = 300.0

    def __init__(self, cap: float = 0.0, *, ramp: bool = False, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._cap = cap
        self.ramp = ramp
        self._started = clock()
        self._tokens = 0.0
        self._last = self._started
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._paused = False
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    @property
    def limit(self) -> float:
        ramp_level = 0.0
        if self.ramp:
            steps = int((self._clock() - self._started) // self.RAMP_EVERY)
            ramp_level = self.RAMP_START * self.RAMP_FACTOR**steps
        levels = [level for level in (ramp_level, self._cap) if level > 0]
        return min(levels) if levels else 0.0

    def set_cap(self, cap: float) -> None:
        with self._cond:
            self._cap = cap
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def acquire(self, count: int, stop: threading.Event | None = None) -> bool:
        """Wait until ``count`` operations may be sent; ``False`` if ``stop`` was set meanwhile.

        First come, first served: callers get their turn in arrival order. Without that, a writer
        holding an early batch can lose the race for tokens again and again, and the checkpoint,
        which only advances over batches finished in order, stands still while others write.
        """
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                while True:
                    while self._serving in self._abandoned:
                        self._abandoned.discard(self._serving)
                        self._serving += 1
                    if stop is not None and stop.is_set():
                        self._abandoned.add(ticket)
                        return False
                    if self._paused or ticket != self._serving:
                        self._cond.wait(0.2)
                        continue
                    limit = self.limit
                    now = self._clock()
                    if limit > 0:
                        self._tokens = min(self._tokens + (now - self._last) * limit, max(limit, count))
                    self._last = now
                    if limit <= 0 or self._tokens >= count:
                        if limit > 0:
                            self._tokens -= count
                        self._serving += 1
                        return True
                    self._cond.wait(min((count - self._tokens) / limit, 0.2))
            finally:
                self._cond.notify_all()


class MemoryState:
    OK = "ok"
    SOFT = "soft"
    HARD = "hard"


@dataclass
class MemoryGuard:
    """Compares the process's resident memory with the soft and hard limits (in MiB)."""

    soft_limit_mb: int
    hard_limit_mb: int
    reader: Callable[[], int] | None = None
    last_rss_mb: float = 0.0
    _process: psutil.Process | None = field(default=None, init=False, repr=False)

    def rss_mb(self) -> float:
        if self.reader is not None:
            rss = self.reader()
        else:
            if self._process is None:  # one handle: building one reads /proc for the start time
                self._process = psutil.Process()
            rss = self._process.memory_info().rss
        self.last_rss_mb = rss / 1_048_576
        return self.last_rss_mb

    def state(self) -> str:
        rss = self.rss_mb()
        if rss >= self.hard_limit_mb:
            return MemoryState.HARD
        if rss >= self.soft_limit_mb:
            return MemoryState.SOFT
        return MemoryState.OK


class CircuitBreaker:
    """Trips when the failure rate over the last ``window`` documents passes ``threshold``, or after
    ``consecutive`` whole-commit failures in a row. Once tripped it stays tripped."""

    def __init__(self, threshold: float, window: int, consecutive: int) -> None:
        self.threshold = threshold
        self.window = window
        self.consecutive = consecutive
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=window)
        self._failures_in_window = 0
        self._commit_failures = 0
        self._lock = threading.Lock()
        self.reason: str | None = None

    def record(self, ok: int, failed: int) -> None:
        with self._lock:
            for outcome in [True] * ok + [False] * failed:
                if len(self._outcomes) == self.window and not self._outcomes[0]:
                    self._failures_in_window -= 1
                self._outcomes.append(outcome)
                if not outcome:
                    self._failures_in_window += 1
            full = len(self._outcomes) >= min(self.window, 20)
            rate = self._failures_in_window / max(len(self._outcomes), 1)
            if self.reason is None and full and rate > self.threshold:
                self.reason = (
                    f"failure rate {rate:.0%} over the last {len(self._outcomes)} documents "
                    f"is above {self.threshold:.0%}"
                )

    def commit_failed(self) -> None:
        with self._lock:
            self._commit_failures += 1
            if self.reason is None and self._commit_failures >= self.consecutive:
                self.reason = f"{self._commit_failures} commits failed in a row"

    def commit_succeeded(self) -> None:
        with self._lock:
            self._commit_failures = 0

    @property
    def tripped(self) -> bool:
        return self.reason is not None


class FailureBudget:
    """``--max-failures``: a count ("100") or a percentage of documents processed ("0.5%").

    A percentage is judged once at least ``min_sample`` documents were processed, and at the end.
    """

    def __init__(self, spec: str, min_sample: int = 100) -> None:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", spec.strip())
        if not match:
            raise ValueError(f"bad failure budget {spec!r}")
        self.spec = spec
        self.value = float(match.group(1))
        self.percent = bool(match.group(2))
        self.min_sample = min_sample

    def exceeded(self, failed: int, processed: int, *, final: bool = False) -> bool:
        if not self.percent:
            return failed > self.value
        if processed < self.min_sample and not final:
            return False
        return failed > processed * self.value / 100


class AdaptiveBatch:
    """Batch size between ``minimum`` and ``maximum``: halves on deadline/size errors, grows back
    by a quarter after ``grow_after`` healthy commits."""

    def __init__(self, start: int, minimum: int, maximum: int, grow_after: int = 10) -> None:
        self.size = start
        self.minimum = minimum
        self.maximum = maximum
        self.grow_after = grow_after
        self._healthy = 0
        self._lock = threading.Lock()
        self.shrinks = 0

    def shrink(self) -> int:
        with self._lock:
            self.size = max(self.minimum, self.size // 2)
            self._healthy = 0
            self.shrinks += 1
            return self.size

    def healthy(self) -> None:
        with self._lock:
            self._healthy += 1
            if self._healthy >= self.grow_after and self.size < self.maximum:
                self.size = min(self.maximum, max(self.size + 1, int(self.size * 1.25)))
                self._healthy = 0

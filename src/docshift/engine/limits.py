"""The guards that keep a run within bounds: write rate (with Firestore's 500/50/5 ramp), memory
(the resident size, and the bytes of documents held), failure rate (circuit breaker), the failure
budget, and the adaptive batch size.

Each is small, thread-safe, and takes its clock as an argument so tests can drive time.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from docshift.store.base import Document
from docshift.store.semantics import document_size
from docshift.values import Value

__all__ = [
    "AdaptiveBatch",
    "CircuitBreaker",
    "DocumentCost",
    "FailureBudget",
    "MemoryBudget",
    "MemoryGuard",
    "MemoryState",
    "RateLimiter",
    "resident_size",
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


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or ``None`` on other C libraries.

    Freed memory of a threaded process stays in the C allocator's per-thread arenas, so the
    resident size keeps what the largest batches once needed. ``malloc_trim`` hands the free pages
    back to the operating system. Measured over 2,000 documents of 200 KiB with a soft limit of
    100 MiB (scripts/bench.py, case 3): a peak of 136 MiB without trimming, 98-101 MiB with it.
    A trim takes about 1 ms (36 ms the first time on a heap of 500 MiB) and releases the GIL.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


@dataclass
class MemoryGuard:
    """Compares the process's resident memory with the soft and hard limits (in MiB).

    Above the soft limit it first gives freed memory back to the operating system (at most once
    every ``trim_every`` seconds) and measures again: memory the process no longer uses is no
    reason to slow it down.
    """

    soft_limit_mb: int
    hard_limit_mb: int
    reader: Callable[[], int] | None = None
    last_rss_mb: float = 0.0
    trim: Callable[[], object] | None = field(default_factory=_malloc_trim)
    trim_every: float = 0.2
    _process: psutil.Process | None = field(default=None, init=False, repr=False)
    _trimmed_at: float = field(default=-1e9, init=False, repr=False)

    def rss_mb(self) -> float:
        if self.reader is not None:
            rss = self.reader()
        else:
            if self._process is None:  # one handle: building one reads /proc for the start time
                self._process = psutil.Process()
            rss = self._process.memory_info().rss
        self.last_rss_mb = rss / 1_048_576
        return self.last_rss_mb

    def idle_mb(self) -> float:
        """The resident size with freed memory given back: what a run starts from."""
        if self.trim is not None:
            self.trim()
        return self.rss_mb()

    def state(self) -> str:
        rss = self.rss_mb()
        now = time.monotonic()
        if rss >= self.soft_limit_mb and self.trim is not None and now - self._trimmed_at >= self.trim_every:
            self._trimmed_at = now
            self.trim()
            rss = self.rss_mb()
        if rss >= self.hard_limit_mb:
            return MemoryState.HARD
        if rss >= self.soft_limit_mb:
            return MemoryState.SOFT
        return MemoryState.OK


def resident_size(value: Value) -> int:
    """Bytes the Python objects of a decoded value occupy (containers and what they hold)."""
    size = sys.getsizeof(value)
    kind = type(value)
    if kind is dict:
        return size + sum(sys.getsizeof(key) + resident_size(item) for key, item in value.items())
    if kind is list or kind is tuple:
        return size + sum(resident_size(item) for item in value)
    return size


class DocumentCost:
    """The memory a document costs while a run holds it, estimated from its stored size.

    While held, a document's decoded values live once; while its batch is in a writer they live
    again as the transform's copy and the before-image being encoded for the journal, next to the
    JSON text of that before-image and the encoded write. So the cost is ``copies`` times the
    decoded size plus ``encoded`` times the stored size. How large the decoded values are for a
    stored byte depends on the data (about 1 for long strings, 10 for arrays of numbers), so the
    ratio is measured on a sample of the documents read: the first few, then one in
    ``sample_every``; a moving average follows the collection as it changes.
    """

    copies = 2.0
    encoded = 3.0
    overhead = 512
    """Per document: the Document object, its path and times."""

    def __init__(self, sample_every: int = 64, first: int = 8) -> None:
        self.sample_every = sample_every
        self.first = first
        self.ratio = 2.0
        """Decoded bytes per stored byte, as measured so far (a prior until the first sample)."""
        self._seen = itertools.count()
        self._sampled = 0
        self._lock = threading.Lock()

    def __call__(self, doc: Document) -> int:
        stored = doc.size if doc.size is not None else document_size(doc.path, doc.data)
        seen = next(self._seen)
        if seen < self.first or seen % self.sample_every == 0:
            measured = resident_size(doc.data) / max(stored, 1)
            with self._lock:
                self._sampled += 1
                weight = max(1.0 / self._sampled, 0.1)
                self.ratio += (measured - self.ratio) * weight
        return int(stored * (self.copies * self.ratio + self.encoded)) + self.overhead


class MemoryBudget:
    """Bytes of documents a run holds at once: read ahead, queued, in a writer, being journalled.

    Counting bytes, not documents, is what bounds memory when documents are large: 300 documents
    of 200 KiB are 60 MB before they are copied and encoded. Readers take each document's cost
    (:class:`DocumentCost`) before holding it and cut a batch at ``batch_bytes``; a batch's cost is
    given back once a writer is done with it. Whatever the budget, one document is always let in
    when nothing is held, so a run never waits for ever.

    Above the soft memory limit the budget is ``paused``: a batch being read may be finished (up
    to ``batch_bytes``) but none is started while anything is held, so at most one batch is in
    memory until the resident size falls.
    """

    def __init__(self, capacity: int, parts: int) -> None:
        self.capacity = max(capacity, 0)
        self.batch_bytes = max(self.capacity // max(parts, 1), 1)
        self.held = 0
        self.peak = 0
        self.paused = False
        self._cond = threading.Condition()

    def _fits(self, cost: int, batch: int) -> bool:
        """Whether ``cost`` more fits, for a reader holding ``batch`` bytes in its own open batch."""
        if self.held == 0:
            return True
        if batch and batch + cost > self.batch_bytes:
            return False
        if self.paused:
            return batch > 0
        return self.held + cost <= self.capacity

    def _take(self, cost: int) -> None:
        self.held += cost
        self.peak = max(self.peak, self.held)

    def try_acquire(self, cost: int, batch: int) -> bool:
        """Take ``cost`` for a document joining the caller's open batch of ``batch`` bytes."""
        with self._cond:
            if not self._fits(cost, batch):
                return False
            self._take(cost)
            return True

    def acquire(self, cost: int, stop: threading.Event) -> bool:
        """Take ``cost`` for a document starting a batch, waiting until it fits; ``False`` if
        ``stop`` was set meanwhile."""
        with self._cond:
            while not self._fits(cost, 0):
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._take(cost)
            return True

    def release(self, cost: int) -> None:
        if not cost:
            return
        with self._cond:
            self.held -= cost
            self._cond.notify_all()

    def pause(self) -> None:
        with self._cond:
            self.paused = True

    def resume(self) -> None:
        with self._cond:
            self.paused = False
            self._cond.notify_all()


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

    def shrink(self) -> int:
        with self._lock:
            self.size = max(self.minimum, self.size // 2)
            self._healthy = 0
            return self.size

    def healthy(self) -> None:
        with self._lock:
            self._healthy += 1
            if self._healthy >= self.grow_after and self.size < self.maximum:
                self.size = min(self.maximum, max(self.size + 1, int(self.size * 1.25)))
                self._healthy = 0

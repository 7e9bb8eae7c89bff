"""The guards that keep a run within bounds: write rate (with Firestore's 500/50/5 ramp, and the
adaptive rate the store's answers set), memory (the resident size, and the bytes of documents
held), failure rate (circuit breaker), the failure budget, and the adaptive batch size.

Each is small, thread-safe, and takes its clock as an argument so tests can drive time.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import math
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
    "AdaptiveRate",
    "CircuitBreaker",
    "CommitWindow",
    "DocumentCost",
    "FailureBudget",
    "MemoryBudget",
    "MemoryGuard",
    "MemoryState",
    "RateLimiter",
    "resident_size",
]

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class AdaptiveRate:
    """The write rate the store's answers allow: additive increase, multiplicative decrease.

    Unset (0) until the store first refuses a request for load (RESOURCE_EXHAUSTED, ABORTED,
    UNAVAILABLE). A refusal sets the rate to ``DECREASE`` times the lower of the rate in force and
    the writes the store accepted over the last ``WINDOW`` seconds, at most once every ``EPOCH``
    seconds (the requests in flight when the store first refused are refused for the same reason,
    and say nothing new). The rate refused at becomes the ceiling. Each accepted request then
    raises the rate by ``GROW`` of the ceiling per second; past the ceiling, that growth doubles
    every ``DOUBLE_EVERY`` seconds without a refusal, so a store that takes more again (its limit
    rose) is found in seconds, not minutes.

    The SRE book's client-side throttling (which Beam's FirestoreIO uses) rejects requests locally
    with a probability that lets up to ``K`` times the accepted requests through (Beam's K is
    1.25): up to a fifth of the requests sent may be refused. Steering a rate instead keeps the
    refused requests to about one per probe, a few in a hundred or fewer, and gives a number to
    show: the rate settled on (``settled``: the writes per second the store took when it last
    refused, which the rate then stays just under, probing a little above now and then).
    """

    DECREASE = 0.9
    EPOCH = 1.0
    WINDOW = 2.0
    GROW = 0.01
    DOUBLE_EVERY = 5.0
    START = 500.0
    """Writes per second to start from when the store refuses before anything was measured."""

    def __init__(self, clock: Clock = time.monotonic, floor: float = 1.0) -> None:
        self._clock = clock
        self.floor = floor
        self.rate = 0.0
        """Writes per second; 0: the store never refused, nothing to keep to."""
        self.ceiling = 0.0
        self.refusals = 0
        """Requests the store refused for load."""
        self.settled = 0.0
        self.refusing = 0
        """Times in a row the rate came down with no request accepted in between: a store that
        accepts some writes is throttling, one that accepts none is refusing them (its quota used
        up), and lowering the rate further will not change that."""
        self._accepted: collections.deque[tuple[float, int]] = collections.deque()
        self._first = clock()
        self._decreased_at = -1e18
        self._updated_at = self._first
        self._probe_since: float | None = None
        self._lock = threading.Lock()

    def accepted(self, writes: int) -> None:
        """The store accepted a request of ``writes``: measured, and the rate grows."""
        with self._lock:
            now = self._clock()
            self.refusing = 0
            self._accepted.append((now, writes))
            while self._accepted and self._accepted[0][0] < now - self.WINDOW:
                self._accepted.popleft()
            self._grow(now)

    def refused(self) -> bool:
        """The store refused a request for load: the rate comes down (once per ``EPOCH``).
        True while it still can (above ``floor``): the request is worth resending at it."""
        with self._lock:
            now = self._clock()
            self.refusals += 1
            if now - self._decreased_at >= self.EPOCH:
                sent = [level for level in (self.rate, self._throughput(now)) if level > 0]
                base = min(sent) if sent else self.START
                self.ceiling = base
                self.settled = base if sent else 0.0
                self.rate = max(self.floor, base * self.DECREASE)
                self.refusing += 1
                self._decreased_at = self._updated_at = now
                self._probe_since = None
            return self.rate > self.floor

    def _throughput(self, now: float) -> float:
        """Writes per second the store accepted over the last ``WINDOW`` (0: too soon to tell)."""
        span = min(self.WINDOW, now - self._first)
        if span < self.WINDOW / 4:
            return 0.0
        return sum(writes for at, writes in self._accepted if at >= now - span) / span

    def _grow(self, now: float) -> None:
        if not self.rate:
            return
        elapsed = now - self._updated_at
        self._updated_at = now
        step = self.ceiling * self.GROW * elapsed
        if self.rate >= self.ceiling:
            if self._probe_since is None:
                self._probe_since = now
            step *= 2.0 ** ((now - self._probe_since) / self.DOUBLE_EVERY)
        self.rate += step


class CommitWindow:
    """How many batches a run keeps in flight (read, being decided, or being committed), from
    the commit latency observed: Little's law.

    A writer spends part of each batch preparing it (transform, diff, journal: CPU) and part
    waiting for its commit (the store's round trip). ``floor`` writers keep the process busy when
    the store is near (the emulator on the same machine, measured); a store ``latency`` seconds
    away holds ``rate x latency`` documents more in its commits, where ``rate`` is the documents
    per second the run gets through. So the window is ``floor + round(rate x latency / batch)``
    (``batch``: documents per commit), at most ``cap``. A limited write rate (the token bucket's
    ``limit``: a cap, the 500/50/5 ramp, the adaptive rate the store's refusals set) needs only
    ``limit x latency / batch + 1`` batches in flight, one being prepared: the lower wins, since
    more would only wait for tokens while holding their documents.

    The latency is the least a commit took over the last ``LATENCY_WINDOW`` seconds: the round trip
    and the store's own work, without the time commits spent queued behind each other. A store
    that is busy (not far) answers later the more commits wait in it; counting that wait would
    ask for more commits in flight, which wait longer still, up to the cap. The rate is the
    documents committed over the last ``WINDOW`` seconds. So the figure follows the store as it
    changes: a route that gets longer raises the least latency within seconds, and one that gets
    shorter lowers it. With ``cap <= floor`` it is fixed at ``cap`` (the ``concurrency`` setting).
    """

    WINDOW = 2.0
    LATENCY_WINDOW = 5.0
    SMOOTHING = 0.3
    """Weight of each new commit's size in the moving average of documents per commit."""

    def __init__(
        self,
        floor: int,
        cap: int,
        *,
        rate_limit: Callable[[], float] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.cap = max(cap, 1)
        self.floor = max(min(floor, self.cap), 1)
        self.rate_limit = rate_limit
        """The write rate in force (writes per second, 0: unlimited), asked at each decision."""
        self._clock = clock
        self._latencies: collections.deque[tuple[float, float]] = collections.deque()
        """(when, seconds) of recent commits, each faster than every later one: the first is the least."""
        self.batch: float | None = None
        """Documents per commit, as observed so far."""
        self._done: collections.deque[tuple[float, int]] = collections.deque()
        self._first = clock()
        self.active = 0
        """Batches taken by a writer and not finished."""
        self.peak = self.floor
        """The largest window decided so far."""
        self._closed = False
        self._cond = threading.Condition()

    @property
    def fixed(self) -> bool:
        return self.cap <= self.floor

    def committed(self, writes: int, seconds: float) -> None:
        """A commit of ``writes`` documents took ``seconds``: the latency and rate are measured."""
        if writes <= 0:
            return
        with self._cond:
            now = self._clock()
            latencies = self._latencies
            while latencies and latencies[-1][1] >= seconds:
                latencies.pop()
            latencies.append((now, seconds))
            while latencies[0][0] < now - self.LATENCY_WINDOW:
                latencies.popleft()
            size = self.batch
            self.batch = writes if size is None else size + (writes - size) * self.SMOOTHING
            self._done.append((now, writes))
            while self._done and self._done[0][0] < now - self.WINDOW:
                self._done.popleft()
            self._cond.notify_all()

    @property
    def latency(self) -> float | None:
        """The least seconds a commit took over the last ``LATENCY_WINDOW`` (None: none yet)."""
        with self._cond:
            return self._latencies[0][1] if self._latencies else None

    def rate(self) -> float:
        """Documents per second committed over the last ``WINDOW`` (0: too soon to tell)."""
        with self._cond:
            return self._rate(self._clock())

    def _rate(self, now: float) -> float:
        span = min(self.WINDOW, now - self._first)
        if span < self.WINDOW / 8 or not self._done:
            return 0.0
        return sum(writes for at, writes in self._done if at > now - span) / span

    @property
    def size(self) -> int:
        """The window now: batches a run keeps in flight."""
        with self._cond:
            return self._size(self._clock())

    def _size(self, now: float) -> int:
        if self.fixed:
            return self.cap
        batch = self.batch
        if not self._latencies or not batch:
            return self.floor
        latency = self._latencies[0][1]
        # Half a commit's worth of latency or more adds a batch (round half up): less is not worth a writer.
        window = self.floor + math.floor(self._rate(now) * latency / batch + 0.5)
        limit = self.rate_limit() if self.rate_limit is not None else 0.0
        if limit > 0:
            window = min(window, math.ceil(limit * latency / batch) + 1)
        window = max(1, min(window, self.cap))
        self.peak = max(self.peak, window)
        return window

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait until the window has room for one more batch; False if ``stop`` was set (or the
        window closed) meanwhile."""
        with self._cond:
            while not self._closed and self.active >= self._size(self._clock()):
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.05)
            if self._closed:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """No batch starts any more: whoever waits is let go."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RateLimiter:
    """Token bucket in operations per second, optionally ramping 500 -> +50% every 5 minutes.

    ``limit`` is what applies now: the lowest of the ramp's level, ``cap`` and the adaptive rate
    (:class:`AdaptiveRate`, with ``adaptive``); 0 means unlimited. ``set_cap`` changes the cap live
    (``docshift throttle``); ``pause``/``resume`` stop writing. ``sleep`` replaces the wait for
    tokens (a test's simulated clock advances by it instead of waiting).
    """

    RAMP_START = 500.0
    RAMP_FACTOR = 1.5
    RAMP_EVERY = 300.0

    def __init__(
        self,
        cap: float = 0.0,
        *,
        ramp: bool = False,
        adaptive: bool = False,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._cap = cap
        self.ramp = ramp
        self.adaptive = AdaptiveRate(clock) if adaptive else None
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
        levels = [level for level in (self.ramp_limit, self._cap, self.adaptive_limit) if level > 0]
        return min(levels) if levels else 0.0

    @property
    def ramp_limit(self) -> float:
        """The 500/50/5 ramp's level now; 0 without the ramp."""
        if not self.ramp:
            return 0.0
        steps = int((self._clock() - self._started) // self.RAMP_EVERY)
        return self.RAMP_START * self.RAMP_FACTOR**steps

    @property
    def adaptive_limit(self) -> float:
        """The rate the store's answers set (:class:`AdaptiveRate`); 0 while it has set none."""
        return self.adaptive.rate if self.adaptive is not None else 0.0

    def accepted(self, count: int) -> None:
        """The store accepted a request of ``count`` writes."""
        if self.adaptive is not None:
            self.adaptive.accepted(count)

    @property
    def refusing(self) -> int:
        """Times in a row the adaptive rate came down with nothing accepted in between
        (:attr:`AdaptiveRate.refusing`); 0 without the adaptive rate."""
        return self.adaptive.refusing if self.adaptive is not None else 0

    def refused(self) -> bool:
        """The store refused a request for load: the adaptive rate comes down, and the tokens
        saved up at the old rate are dropped, so what is sent next waits for the new one. True
        while resending at the lowered rate is worth it (see :meth:`AdaptiveRate.refused`)."""
        if self.adaptive is None:
            return False
        lowered = self.adaptive.refused()
        with self._cond:
            self._tokens = min(self._tokens, 0.0)
            self._last = self._clock()
            self._cond.notify_all()
        return lowered

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
                    if limit <= 0 or self._tokens >= count - 1e-6:  # a float short of it is enough
                        if limit > 0:
                            self._tokens -= count
                        self._serving += 1
                        return True
                    self._wait(min((count - self._tokens) / limit, 0.2))
            finally:
                self._cond.notify_all()

    def _wait(self, seconds: float) -> None:
        """Wait for tokens (called holding the lock): on the condition, or with ``sleep``
        (the lock let go meanwhile)."""
        if self._sleep is None:
            self._cond.wait(seconds)
            return
        self._cond.release()
        try:
            self._sleep(seconds)
        finally:
            self._cond.acquire()


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
    by a quarter after ``grow_after`` healthy commits, and, with a ``target_latency`` (seconds),
    stays at what a commit can carry in that time: the target over the commit latency per write
    (a moving average), as Beam's FirestoreIO sizes its batches. A slow store then gets smaller
    requests, which its deadline does not cut and which a refusal costs less of."""

    def __init__(
        self, start: int, minimum: int, maximum: int, grow_after: int = 10, *, target_latency: float = 0.0
    ) -> None:
        self.size = start
        self.minimum = minimum
        self.maximum = maximum
        self.grow_after = grow_after
        self.target_latency = target_latency
        self.per_write: float | None = None
        """Seconds of commit latency per write, as measured so far."""
        self._healthy = 0
        self._lock = threading.Lock()

    def shrink(self) -> int:
        with self._lock:
            self.size = max(self.minimum, self.size // 2)
            self._healthy = 0
            return self.size

    def healthy(self, seconds: float | None = None, writes: int = 0) -> None:
        """A commit of ``writes`` succeeded in ``seconds``."""
        with self._lock:
            fits = self.maximum
            if self.target_latency > 0 and seconds is not None and writes > 0:
                measured = seconds / writes
                self.per_write = measured if self.per_write is None else self.per_write * 0.8 + measured * 0.2
                fits = max(
                    self.minimum, min(self.maximum, int(self.target_latency / max(self.per_write, 1e-9)))
                )
                if self.size > fits:
                    self.size = fits
                    self._healthy = 0
                    return
            self._healthy += 1
            if self._healthy >= self.grow_after and self.size < fits:
                self.size = min(fits, max(self.size + 1, int(self.size * 1.25)))
                self._healthy = 0

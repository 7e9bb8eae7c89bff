"""Stores that push back the way Firestore does under load, and a clock to run them on.

:class:`RateLimitedStore` refuses commit requests above a rate it chooses (and may change during a
run) with RESOURCE_EXHAUSTED, before anything is applied; :class:`BreakingStreams` ends every
stream with UNAVAILABLE after a number of documents, as Firestore ends a long RunQuery stream.
Both wrap any store (the in-memory one or the emulator's) and sit under the retry layer.

:class:`SimulatedClock` makes a throttled run independent of the machine's speed: give it to both
the store and the run's rate limiter (``RateLimiter(clock=clock.now, sleep=clock.sleep)``); time
then passes only while the limiter waits for its turn, so the rates both sides see are exact
whatever the machine does meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from docshift.errors import TransientError
from docshift.store.base import DelegatingStore, Document, Query, Store, Write, WriteResult
from docshift.store.semantics import error_hint
from docshift.values import Timestamp

__all__ = ["BreakingStreams", "RateLimitedStore", "Request", "SimulatedClock"]


class SimulatedClock:
    """Seconds that pass only when someone sleeps (thread-safe)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(seconds, 0.0)


@dataclass(frozen=True)
class Request:
    """One commit request the store judged: when, how many writes, and whether it took them."""

    at: float
    writes: int
    accepted: bool


@dataclass(frozen=True)
class _Fixed:
    rate: float

    def __call__(self, _now: float) -> float:
        return self.rate


def _docs(path: str) -> bool:
    return not path.startswith("_docshift")


class RateLimitedStore(DelegatingStore):
    """Accepts commit requests up to ``rate(now)`` writes per second and refuses the rest as a
    whole with RESOURCE_EXHAUSTED (nothing applied), like a token bucket holding ``burst`` seconds
    of the rate (a request larger than that is always refused).

    ``rate`` is a number or a function of the clock's time (a rate that changes mid-run). Only
    requests whose first path passes ``touches`` are judged: by default docshift's own state (the
    history, the lease) passes untouched. ``requests`` keeps every judged request.
    """

    def __init__(
        self,
        inner: Store,
        rate: float | Callable[[float], float],
        *,
        clock: Callable[[], float],
        burst: float = 1.0,
        touches: Callable[[str], bool] = _docs,
    ) -> None:
        super().__init__(inner)
        self.rate: Callable[[float], float] = rate if callable(rate) else _Fixed(rate)
        self.clock = clock
        self.burst = burst
        self.touches = touches
        self.requests: list[Request] = []
        self._tokens: float | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def _capacity(self, rate: float) -> float:
        return rate * self.burst

    def _take(self, count: int) -> bool:
        now = self.clock()
        rate = self.rate(now)
        if self._tokens is None:
            self._tokens = self._capacity(rate)
        else:
            self._tokens = min(self._tokens + (now - self._last) * rate, self._capacity(rate))
        self._last = now
        accepted = self._tokens >= count
        if accepted:
            self._tokens -= count
        self.requests.append(Request(now, count, accepted))
        return accepted

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if not writes or not self.touches(writes[0].path):
            return self.inner.commit(writes)
        with self._lock:  # judged and applied in one step, so a refused request applies nothing
            if not self._take(len(writes)):
                raise TransientError(
                    "too many writes: the store is throttling this client",
                    code="RESOURCE_EXHAUSTED",
                    hint=error_hint("RESOURCE_EXHAUSTED"),
                )
            return self.inner.commit(writes)

    def judged(self, since: float = 0.0) -> list[Request]:
        """The requests judged at or after ``since``."""
        with self._lock:
            return [request for request in self.requests if request.at >= since]


class BreakingStreams(DelegatingStore):
    """Every stream ends with UNAVAILABLE after ``every`` documents (a resumed one too), as
    Firestore ends a RunQuery stream at its lifetime. ``breaks`` counts the streams broken,
    ``streams`` the streams opened."""

    def __init__(self, inner: Store, every: int) -> None:
        super().__init__(inner)
        self.every = every
        self.breaks = 0
        self.streams = 0
        self._lock = threading.Lock()

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        with self._lock:
            self.streams += 1
        for count, doc in enumerate(self.inner.stream(query, read_time=read_time)):
            if count == self.every:
                with self._lock:
                    self.breaks += 1
                raise TransientError(
                    "the stream reached its lifetime", code="UNAVAILABLE", hint=error_hint("UNAVAILABLE")
                )
            yield doc

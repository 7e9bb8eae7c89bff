"""Counters, commit latency percentiles and throughput of a running migration (thread-safe)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["COUNTERS", "HANDLED", "FailureSamples", "RunStats", "format_ms", "handled"]

COUNTERS = (
    "read",
    "updated",
    "created",
    "deleted",
    "unchanged",
    "failed",
    "conflicts",
    "skipped",
    "rejected",
    "checked",
)
"""``rejected``: documents a validation rule refused (also counted in ``failed``); the integrity gate
judges those, so ``--max-failures`` and the circuit breaker leave them out. ``checked``: documents
the migration's inline rules were checked on (each once, however often a conflict re-read it)."""


def format_ms(seconds: float) -> str:
    """Milliseconds for a message, precise enough for small limits: 0.0005 s is "0.5", not "0"."""
    value = seconds * 1000
    if value >= 100 or value == 0:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.3g}"


HANDLED = ("updated", "created", "deleted", "unchanged", "failed")
"""The counters of documents a pass is done with (its ``processed``)."""


def handled(counters: Mapping[str, int]) -> int:
    """Documents done with, by ``counters``."""
    return sum(counters.get(name, 0) for name in HANDLED)


class RunStats:
    def __init__(self, initial: dict[str, int] | None = None, elapsed_before: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.counters.update(initial or {})
        self._latencies: collections.deque[float] = collections.deque(maxlen=4096)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._started = time.monotonic()
        self.elapsed_before = elapsed_before
        self._done_this_session = 0
        self.commits = 0

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.counters[name] = self.counters.get(name, 0) + delta

    def counts(self) -> dict[str, int]:
        """A consistent copy of the counters (a batch's counts are added all at once)."""
        with self._lock:
            return dict(self.counters)

    def processed(self, count: int) -> None:
        """``count`` more documents were fully handled (for throughput)."""
        now = time.monotonic()
        with self._lock:
            self._done_this_session += count
            self._recent.append((now, count))
            while self._recent and self._recent[0][0] < now - 5.0:
                self._recent.popleft()

    def commit_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)
            self.commits += 1

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._started)

    def percentile(self, fraction: float) -> float | None:
        with self._lock:
            ordered = sorted(self._latencies)
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            counters = dict(self.counters)
            recent = sum(count for at, count in self._recent if at >= now - 5.0)
            window = min(5.0, now - self._started) or 1e-9
            session_seconds = (now - self._started) or 1e-9
            rate_avg = self._done_this_session / session_seconds
        return {
            **counters,
            "processed": handled(counters),
            "docs_per_second_now": recent / window,
            "docs_per_second_avg": rate_avg,
            "commit_p50": self.percentile(0.50),
            "commit_p95": self.percentile(0.95),
            "commit_p99": self.percentile(0.99),
            "commits": self.commits,
            "elapsed_seconds": self.elapsed,
        }


class FailureSamples:
    """The first few distinct reasons documents failed, each with the first document that failed
    so (thread-safe): what a stop caused by failures shows; the dead-letter file holds them all."""

    def __init__(self, most: int = 3) -> None:
        self.most = most
        self.first: dict[str, str] = {}
        """reason -> the path of the first document that failed with it (the first ``most``)."""
        self.total = 0
        self.one_reason = True
        """Whether every failure so far had the same reason."""
        self._lock = threading.Lock()

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self.total += 1
            if reason not in self.first:
                self.one_reason = not self.first
                if len(self.first) < self.most:
                    self.first[reason] = path

    def describe(self) -> str:
        """``path: reason`` for each distinct reason kept, ``; ``-separated."""
        with self._lock:
            return "; ".join(f"{path}: {reason}" for reason, path in self.first.items())

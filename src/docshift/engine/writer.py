"""How writes reach the store: one batched writer for a run, its rollback and a backup's restore.

What to write is each caller's decision (the engine's guarded diff, the rollback's undo writes, the
restore's full sets), and so are its counters; the writer owns how those writes are sent:

- in requests that stay under Firestore's 10 MiB request limit (an estimate, with 20% headroom)
  and never name a document twice (:func:`request_batches`);
- paced by the run's rate limiter, which is also where a stop is noticed
  (:class:`~docshift.errors.BatchAborted`); a request the store refuses for load lowers the
  limiter's adaptive rate and is resent at it (:func:`~docshift.store.resilience.pacing`), and each
  accepted one lets the rate grow again;
- a request refused as a whole is split until the bad write is alone: one bad document fails
  alone, never its batch, and the halves do not count as more failed commits;
- every whole request that fails or succeeds feeds the circuit breaker and the adaptive batch size
  (:class:`WriteGuards`), whose size also follows the commit latency per write toward a target;
  a store that keeps failing (a transient error after the store's own retries) stops with
  :class:`~docshift.errors.EmergencyStop`, and a breaker that trips asks the run to stop
  (:meth:`~docshift.engine.controls.Controls.request_stop`);
- with a journal, every before-image is on disk (fsynced) before its request is sent, and each
  write's outcome (the update time it produced, or the delete) is journalled after it, also when a
  later request of the same call fails;
- a resent write refused by its own guard whose first send landed (its reply was lost) is told
  apart by reading the document back, and reported as applied;
- :func:`pipelined` keeps a few batches in flight for a caller that has no writer threads of its own.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from docshift.config import EngineConfig, LimitsConfig
from docshift.engine.controls import Controls
from docshift.engine.limits import AdaptiveBatch, CircuitBreaker, CommitWindow
from docshift.errors import (
    BatchAborted,
    ConflictError,
    EmergencyStop,
    LoadRefused,
    StoreError,
    TransientError,
)
from docshift.runfolder.journal import JournalEntry, JournalWriter
from docshift.store.base import Store, Write, WriteKind, WriteResult, write_landed
from docshift.store.resilience import pacing, timed_commit
from docshift.store.semantics import MAX_REQUEST_BYTES, MAX_WRITES_PER_REQUEST, document_size
from docshift.values import Value

__all__ = [
    "REQUEST_BUDGET",
    "BatchWriter",
    "Outgoing",
    "WriteGuards",
    "pipelined",
    "request_batches",
    "request_bytes",
]

REQUEST_BUDGET = int(MAX_REQUEST_BYTES * 0.8)
"""Estimated bytes per commit request (read at each cut, so a test may lower it)."""
WRITE_OVERHEAD = 64
"""Bytes a write adds to its request beyond its document: its name, precondition and framing."""
SHRINK_CODES = frozenset({"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"})
"""A request refused with these may have been too big: the batch size halves."""

T = TypeVar("T")
B = TypeVar("B")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Outgoing(Generic[T]):
    """One write to send, with the caller's own record of it (``origin``: a decision, an undo
    action, a backed-up record) and what the writer needs to know of it."""

    write: Write
    origin: T
    size: int | None = None
    """Estimated request bytes; None: measured from the write (:func:`request_bytes`)."""
    before: JournalEntry | None = None
    """Journalled, on disk, before the write is sent (the write-ahead before-image)."""
    leaves: Mapping[str, Value] | None = None
    """The whole document the write leaves, when that is not the write's own data (a masked
    update's): how a resent write is told to have landed."""


Receiver = Callable[[Sequence[Outgoing[T]], Sequence[WriteResult]], None]
"""Hears each request's writes with their results, as they come back."""


@dataclass(frozen=True)
class WriteGuards:
    """What every request of a run passes: the run's controls (rate limiter, stop), its circuit
    breaker, its adaptive batch size and, in the engine's pipeline, its commit window (how many
    batches are in flight). Shared by the writer threads of one run (thread-safe)."""

    controls: Controls
    breaker: CircuitBreaker
    sizer: AdaptiveBatch
    window: CommitWindow | None = None

    @classmethod
    def from_config(
        cls,
        engine: EngineConfig,
        limits: LimitsConfig,
        controls: Controls | None = None,
        window: CommitWindow | None = None,
    ) -> WriteGuards:
        return cls(
            controls or Controls(),
            CircuitBreaker(
                limits.breaker_failure_rate, limits.breaker_window, limits.breaker_consecutive_failures
            ),
            AdaptiveBatch(
                engine.batch_size,
                engine.min_batch_size,
                engine.max_batch_size,
                target_latency=limits.commit_latency_target_ms / 1000,
            ),
            window,
        )


class _LimiterPacer:
    """The run's rate limiter as the store layer's :class:`~docshift.store.resilience.Pacer`."""

    def __init__(self, controls: Controls) -> None:
        self.controls = controls

    def refused(self) -> bool:
        return self.controls.limiter.refused()

    def refusing(self) -> int:
        return self.controls.limiter.refusing

    def resend(self, writes: int) -> bool:
        stop = self.controls.stop
        return not stop.is_set() and self.controls.limiter.acquire(writes, stop)


class BatchWriter:
    """Sends the writes its callers decided on (see the module's rules). Thread-safe: the
    engine's writer threads share one."""

    def __init__(
        self,
        store: Store,
        guards: WriteGuards,
        *,
        journal: JournalWriter | None = None,
        latency: Callable[[float], None] | None = None,
        again: str = "resume the run",
    ) -> None:
        self.store = store
        self.guards = guards
        self.journal = journal
        self.latency = latency
        """Hears how long the store took to answer each request that succeeded, in seconds (not
        the waits for the rate limiter or a backoff between its attempts: :func:`timed_commit`)."""
        self.again = again
        """What to do once the store is reachable again, for the hint of a store that kept failing."""
        adaptive = guards.controls.limiter.adaptive is not None
        self._pacer = _LimiterPacer(guards.controls) if adaptive else None

    @property
    def batch_size(self) -> int:
        """The adaptive batch size: what a caller puts in its next batch."""
        return self.guards.sizer.size

    def admit(self, count: int) -> bool:
        """Wait until the rate limiter lets ``count`` operations through; False if the run is
        stopping (then nothing should be sent)."""
        controls = self.guards.controls
        return not controls.stop.is_set() and controls.limiter.acquire(count, controls.stop)

    def record(self, ok: int, failed: int) -> None:
        """A batch's outcomes, together, for the breaker's failure rate: recorded one by one, a
        batch's failures (known at once) would come before its writes (known after the commit),
        and a few concurrent batches with one bad document each would look like a high rate."""
        self.guards.breaker.record(ok, failed)
        self._check_breaker()

    def batches(
        self, items: Iterable[T], size_of: Callable[[T], int], path_of: Callable[[T], str]
    ) -> Iterator[list[T]]:
        """``items`` cut into batches of the adaptive size that each go in one request."""
        return request_batches(items, lambda: min(self.batch_size, MAX_WRITES_PER_REQUEST), size_of, path_of)

    def write(
        self,
        outgoing: Sequence[Outgoing[T]],
        *,
        receive: Receiver[T] | None = None,
        spans: list[tuple[int, int]] | None = None,
        paced: bool = True,
    ) -> list[WriteResult]:
        """Send ``outgoing``; one result per write, in order (a resent write found landed is ok).

        ``receive`` hears each request's results as they come: what a later request's failure
        leaves counted is what landed. ``spans`` receives the byte span of each journal member
        appended. Unpaced, the caller took the rate limiter's tokens for the whole call
        (:meth:`admit`) and every request is sent, so that the call is done all or not at all.
        """
        if self.journal is not None:
            ahead = [item.before for item in outgoing if item.before is not None]
            self.journal.append(ahead, durable=True, spans=spans)
        results: list[WriteResult] = []
        outcomes: list[JournalEntry] = []
        try:
            whole = len(outgoing)
            for request in request_batches(outgoing, lambda: whole, _weight, _path):
                answers = self._landed(request, self._send(request, paced))
                if self.journal is not None:
                    outcomes += _outcomes(request, answers)
                results += answers
                if receive is not None:
                    receive(request, answers)
        finally:  # also when a later request fails: the earlier ones landed, and a rollback needs their times
            if self.journal is not None:
                self.journal.append(outcomes, spans=spans)
        return results

    def _send(self, request: Sequence[Outgoing[T]], paced: bool, *, split: bool = False) -> list[WriteResult]:
        """Send one request; one refused as a whole is split until the bad write is alone.

        The halves of a split request do not count as more failed commits for the circuit breaker
        (nor shrink the batch again): one bad document must fail alone, not stop the run.
        """
        if paced and not self.admit(len(request)):
            raise BatchAborted
        try:
            with pacing(self._pacer if paced else None):
                results, took = timed_commit(self.store, [item.write for item in request])
        except LoadRefused as exc:
            self._commit_failed()
            raise EmergencyStop(exc.message, hint=f"{exc.hint}, then {self.again}") from None
        except TransientError as exc:
            self._commit_failed()
            raise EmergencyStop(
                f"the store kept failing ({exc.code}: {exc.message})",
                hint=f"check the store is reachable, then {self.again}",
            ) from None
        except StoreError as exc:
            if not split:
                self._commit_failed()
                if exc.code in SHRINK_CODES:
                    self.guards.sizer.shrink()
            if len(request) == 1:
                return [WriteResult(request[0].write.path, error=exc)]
            middle = len(request) // 2
            return self._send(request[:middle], paced, split=True) + self._send(
                request[middle:], paced, split=True
            )
        if self.latency is not None:
            self.latency(took)
        if self.guards.window is not None:
            self.guards.window.committed(len(request), took)
        self.guards.controls.limiter.accepted(len(request))
        self.guards.breaker.commit_succeeded()
        self.guards.sizer.healthy(took, len(request))
        return results

    def _landed(self, request: Sequence[Outgoing[T]], answers: list[WriteResult]) -> list[WriteResult]:
        """Resent writes refused by their guard: the first send may have landed, its reply lost.
        Where the store now holds exactly what was sent, that refusal was the write's own earlier
        success: reported as applied, with the update time the document has."""
        resent = [
            index
            for index, answer in enumerate(answers)
            if answer.resent and isinstance(answer.error, ConflictError)
        ]
        if not resent:
            return answers
        found = self.store.get_many([request[index].write.path for index in resent])
        for index, now in zip(resent, found, strict=True):
            item = request[index]
            if write_landed(item.write, now, item.leaves):
                answers[index] = WriteResult(item.write.path, update_time=now.update_time if now else None)
        return answers

    def _commit_failed(self) -> None:
        self.guards.breaker.commit_failed()
        self._check_breaker()

    def _check_breaker(self) -> None:
        breaker = self.guards.breaker
        if breaker.tripped:  # the first reason wins: asking again changes nothing
            self.guards.controls.request_stop(f"circuit breaker: {breaker.reason}", EmergencyStop)


def request_bytes(write: Write) -> int:
    """Estimated bytes ``write`` adds to a commit request."""
    if write.kind == WriteKind.DELETE:
        return len(write.path) + WRITE_OVERHEAD
    if write.fields is not None:
        fields = {".".join(path): value for path, value in write.fields.items()}
        return document_size(write.path, fields) + WRITE_OVERHEAD
    return document_size(write.path, write.data or {}) + WRITE_OVERHEAD


def request_batches(
    items: Iterable[T],
    most: Callable[[], int],
    size_of: Callable[[T], int],
    path_of: Callable[[T], str],
) -> Iterator[list[T]]:
    """``items`` cut into batches that each fit one commit request: at most ``most()`` items (asked
    again at each cut, so an adaptive size applies from the next batch), under
    :data:`REQUEST_BUDGET` bytes (an item alone may be more), and no document twice."""
    limit = most()
    batch: list[T] = []
    used = 0
    seen: set[str] = set()
    for item in items:
        size, path = size_of(item), path_of(item)
        if batch and (len(batch) >= limit or used + size > REQUEST_BUDGET or path in seen):
            yield batch
            batch, used, seen = [], 0, set()
            limit = most()
        batch.append(item)
        used += size
        seen.add(path)
    if batch:
        yield batch


def pipelined(
    batches: Iterable[B], work: Callable[[B], R], handle: Callable[[B, R], None], concurrency: int
) -> None:
    """Run ``work`` on up to ``concurrency`` batches at once and ``handle`` each result in order,
    in the calling thread. Taking the next batch waits while that many are in flight, so memory
    holds at most ``concurrency`` of them. On a failure the batches not started are dropped and
    those in flight finish, each handled if it succeeded (what is counted is what was done);
    then the failure is raised."""
    with ThreadPoolExecutor(max_workers=max(concurrency, 1), thread_name_prefix="docshift-writer") as pool:
        pending: deque[tuple[B, Future[R]]] = deque()
        try:
            for batch in batches:
                pending.append((batch, pool.submit(work, batch)))
                if len(pending) >= concurrency:
                    _handle_first(pending, handle)
            while pending:
                _handle_first(pending, handle)
        except BaseException:
            _drain(pending, handle)
            raise


def _handle_first(pending: deque[tuple[B, Future[R]]], handle: Callable[[B, R], None]) -> None:
    batch, future = pending[0]
    result = future.result()  # left in ``pending`` until done: a failure meanwhile still drains it
    pending.popleft()
    handle(batch, result)


def _drain(pending: deque[tuple[B, Future[R]]], handle: Callable[[B, R], None]) -> None:
    for _, future in pending:
        future.cancel()
    for batch, future in pending:
        if future.cancelled():
            continue
        with contextlib.suppress(Exception):  # the first failure is the one raised
            handle(batch, future.result())


def _path(item: Outgoing[T]) -> str:
    return item.write.path


def _weight(item: Outgoing[T]) -> int:
    return item.size if item.size is not None else request_bytes(item.write)


def _outcomes(request: Sequence[Outgoing[T]], answers: Sequence[WriteResult]) -> list[JournalEntry]:
    """The journal's outcome entries of a request's applied writes: a delete, or the update time
    the write produced (a rollback's guard)."""
    entries: list[JournalEntry] = []
    for item, answer in zip(request, answers, strict=True):
        if not answer.ok:
            continue
        if item.write.kind == WriteKind.DELETE:
            entries.append(JournalEntry("deleted", item.write.path))
        elif answer.update_time is not None:
            entries.append(JournalEntry("written", item.write.path, update_time=answer.update_time))
    return entries

"""The store layer's retries: the only place docshift retries.

Only :class:`~docshift.errors.TransientError` is retried, with exponential backoff and jitter:
whole requests, the transient writes of a partly failed commit (never the writes that succeeded),
and broken streams, which restart after the last document already yielded so nothing is repeated.
A conflict (FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS on a guarded write) or a permanent error
is never retried here.

A stream that breaks with UNAVAILABLE after it yielded documents is routine (Firestore ends a
RunQuery stream after about a minute that way): it resumes at once after the last document, and is
counted in ``stream_resumes``, not in ``retries`` nor against the attempts.

A writer that paces its requests by a rate (:func:`pacing`, with a :class:`Pacer`) is told when the
store refuses one for load (RESOURCE_EXHAUSTED, ABORTED, UNAVAILABLE as a whole request;
RESOURCE_EXHAUSTED for a write), so that its rate comes down. A request refused with
RESOURCE_EXHAUSTED or ABORTED is then resent when the pacer lets it (at the lowered rate) instead of
after a backoff, and does not count against the attempts while the rate can still come down: the
store answering "slow down" is answered by slowing down, not by giving up. A store that accepts
no request at all while the rate comes down again and again (``Pacer.refusing``, as many times in
a row as the policy's attempts) is not throttling but refusing (its quota used up): the request
fails with :class:`~docshift.errors.LoadRefused` instead of waiting for ever at an ever lower
rate. UNAVAILABLE is also a store that is down: its resends keep the backoff and the attempts.

What a commit took is what the store took to answer it (:func:`timed_commit`): each attempt the
store answered is timed here, around the store's own call, so the waits between attempts (for the
lowered rate, a backoff) are never taken for the store's latency.

A store that cannot be reached when it is opened is not retried at all: the adapter fails there at
its first connection attempt (``FirestoreStore._connect``, a :class:`~docshift.errors.PermanentError`
with code ``UNAVAILABLE``), so a wrong address or a stopped emulator is reported at once instead of
after ~13 s of backoff. Only a store that was reached and then fails (a restart, a network break
during a run) is retried here, since it is likely to come back.

A request that failed as a whole may still have been applied (the connection broke after the store
wrote, before the reply came back). Its writes' results say so (``resent``), so that the caller can
recognise a precondition refusal of the resent write as its own earlier write
(:func:`~docshift.store.base.write_landed`) rather than as someone else's change.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from docshift.errors import LoadRefused, StoreError, TransientError
from docshift.store.base import Document, Query, Store, Write, WriteResult
from docshift.values import Timestamp

__all__ = [
    "LOAD_CODES",
    "PACED_CODES",
    "Pacer",
    "RetryPolicy",
    "RetryingStore",
    "pacing",
    "timed_commit",
]

T = TypeVar("T")

LOAD_CODES = frozenset({"RESOURCE_EXHAUSTED", "ABORTED", "UNAVAILABLE"})
"""A request refused with one of these tells a pacer to lower its rate."""
PACED_CODES = frozenset({"RESOURCE_EXHAUSTED", "ABORTED"})
"""...and one refused with these is resent at the pacer's rate, not after a backoff."""
ROUTINE_STREAM_BREAK = "UNAVAILABLE"


class Pacer(Protocol):
    """What a writer that paces its requests is told of the store's refusals for load."""

    def refused(self) -> bool:
        """The store refused a request for load; True while a resend at the lowered rate is
        worth it (the rate can still come down)."""
        ...

    def refusing(self) -> int:
        """Times in a row the rate came down with no request accepted in between (from any of
        the writer's threads): a store that accepts some writes is throttling, one that accepts
        none is refusing them."""
        ...

    def resend(self, writes: int) -> bool:
        """Wait until ``writes`` may be sent again; False if the writer is stopping."""
        ...


_PACER: contextvars.ContextVar[Pacer | None] = contextvars.ContextVar("docshift_pacer", default=None)


@contextlib.contextmanager
def pacing(pacer: Pacer | None) -> Iterator[None]:
    """Commits made in this block (in this thread) tell ``pacer`` of refusals for load, and are
    resent at its rate. Only the writer's own requests are paced: the lease's heartbeat and the
    history's records keep their backoff."""
    token = _PACER.set(pacer)
    try:
        yield
    finally:
        _PACER.reset(token)


@dataclass
class _Answered:
    """Seconds the store took to answer a commit's attempts that it answered (not refused as a
    whole), summed; ``attempts`` counts them."""

    seconds: float = 0.0
    attempts: int = 0


_ANSWERED: contextvars.ContextVar[_Answered | None] = contextvars.ContextVar(
    "docshift_answered", default=None
)


def timed_commit(store: Store, writes: Sequence[Write]) -> tuple[list[WriteResult], float]:
    """``store.commit(writes)``, and the seconds the store took to answer it: the attempts the
    retry layer made, each timed around the store's own call, without the waits between them (for
    the rate limiter's lowered rate, a backoff). A store without the retry layer makes one attempt,
    and has no such waits: the call is timed whole."""
    answered = _Answered()
    token = _ANSWERED.set(answered)
    try:
        started = time.monotonic()
        results = store.commit(writes)
        took = time.monotonic() - started
    finally:
        _ANSWERED.reset(token)
    return results, answered.seconds if answered.attempts else took


def _answered(seconds: float, before: int) -> None:
    """An attempt was answered in ``seconds``; unless a retry layer under this one timed it
    already (``before``: the attempts counted when it was sent), that is the store's own time."""
    answered = _ANSWERED.get()
    if answered is not None and answered.attempts == before:
        answered.seconds += seconds
        answered.attempts += 1


def _attempts_so_far() -> int:
    answered = _ANSWERED.get()
    return answered.attempts if answered is not None else 0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    initial_wait: float = 0.1
    max_wait: float = 10.0


class RetryingStore(Store):
    """Wraps a store so transient failures are retried; counts retries for progress reports."""

    def __init__(
        self,
        inner: Store,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[TransientError], None] | None = None,
    ) -> None:
        self.inner = inner
        self.info = inner.info
        self.policy = policy or RetryPolicy()
        self._on_retry = on_retry
        self._lock = threading.Lock()
        self.retries = 0
        self.stream_resumes = 0
        """Streams resumed after a routine break (UNAVAILABLE after documents): not retries."""

    def _note_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        self._count_retry(error if isinstance(error, TransientError) else None)

    def _count_retry(self, error: TransientError | None) -> None:
        with self._lock:
            self.retries += 1
        if self._on_retry is not None and error is not None:
            self._on_retry(error)

    def _backoff(self, failures: int) -> float:
        """The wait before retry number ``failures`` (1-based), as ``_retrying`` waits."""
        policy = self.policy
        exponential = policy.initial_wait * 2.0 ** (failures - 1)
        return min(exponential + random.uniform(0, policy.initial_wait), policy.max_wait)

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(TransientError),
            # Our own backoff: wait_exponential_jitter's `multiplier` only exists in recent tenacity
            # releases (older ones call it `initial`, newer ones deprecate that), and streams use it too.
            wait=lambda state: self._backoff(state.attempt_number),
            stop=stop_after_attempt(self.policy.attempts),
            before_sleep=self._note_retry,
            reraise=True,
        )

    def _call(self, func: Callable[[], T]) -> T:
        return self._retrying()(func)

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        # The attempt budget counts failures in a row: a long stream that keeps making progress
        # between transient breaks (hours over millions of documents) must not run out of attempts.
        # A resumed stream reads at the same read_time: one snapshot, however often it breaks.
        last: str | None = query.start_after
        yielded = 0
        failures = 0
        while True:
            before = yielded
            remaining = None if query.limit is None else query.limit - yielded
            resumed = dataclasses.replace(query, start_after=last, limit=remaining)
            try:
                for doc in self.inner.stream(resumed, read_time=read_time):
                    last = doc.path
                    yielded += 1
                    failures = 0
                    yield doc
                return
            except TransientError as error:
                if error.code == ROUTINE_STREAM_BREAK and yielded > before:
                    with self._lock:  # a routine break: the stream made progress since it (re)started
                        self.stream_resumes += 1
                    continue
                failures += 1
                if failures >= self.policy.attempts:
                    raise
                self._count_retry(error)
                time.sleep(self._backoff(failures))

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        return self._call(lambda: self.inner.get_many(paths, read_time=read_time))

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        return self._call(lambda: self.inner.count(query, read_time=read_time))

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        return self._call(lambda: self.inner.list_collections(document_path, read_time=read_time))

    def partition(self, query: Query, count: int, *, read_time: Timestamp | None = None) -> list[str] | None:
        return self._call(lambda: self.inner.partition(query, count, read_time=read_time))

    def snapshot_time(self) -> Timestamp:
        return self._call(self.inner.snapshot_time)

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(writes)
        pending = list(range(len(writes)))
        unsure: set[int] = set()  # sent in a request that failed as a whole: maybe only its reply was lost
        load: list[str] = []  # the code of the last attempt's refusal for load, if it was one

        def attempt() -> None:
            nonlocal pending
            load.clear()
            before = _attempts_so_far()
            started = time.monotonic()
            try:
                answers = self.inner.commit([writes[i] for i in pending])
            except TransientError as error:
                unsure.update(pending)
                if error.code in LOAD_CODES:
                    load.append(error.code)
                raise
            _answered(time.monotonic() - started, before)
            still: list[int] = []
            first_error: TransientError | None = None
            for index, reply in zip(pending, answers, strict=True):
                answer = dataclasses.replace(reply, resent=True) if index in unsure else reply
                results[index] = answer
                if isinstance(answer.error, TransientError):
                    still.append(index)
                    first_error = first_error or answer.error
                    if answer.error.code == "RESOURCE_EXHAUSTED" and not load:
                        load.append(answer.error.code)
                    if answer.maybe_applied:  # its request's reply was lost: it may have landed
                        unsure.add(index)
            pending = still
            if first_error is not None:
                raise first_error

        pacer = _PACER.get()
        try:
            if pacer is None:
                self._call(attempt)
            else:
                self._paced(attempt, pacer, load, lambda: len(pending))
        except StoreError as error:
            if any(result is None for result in results):
                raise  # every request failed as a whole: no write has an answer to report
            # A retry of the failed writes failed as a whole (or retries ran out). Writes that were
            # applied earlier must still be reported as applied, so only the pending ones fail.
            if not isinstance(error, TransientError):
                for index in pending:
                    results[index] = WriteResult(writes[index].path, error=error, resent=index in unsure)
        return [result for result in results if result is not None]

    def _paced(
        self, attempt: Callable[[], None], pacer: Pacer, load: list[str], pending: Callable[[], int]
    ) -> None:
        """``attempt`` until it succeeds: a refusal for load tells ``pacer``, and one it can answer
        by a lower rate is resent at that rate, without counting against the attempts, unless the
        store accepted nothing while the rate came down as many times in a row."""
        failures = 0
        while True:
            try:
                attempt()
                return
            except TransientError as error:
                lowered = bool(load) and pacer.refused()
                if load and load[0] in PACED_CODES:
                    refusing = pacer.refusing()
                    if refusing >= self.policy.attempts:
                        raise LoadRefused(
                            f"the store refused every write for load ({error.code}): it accepted no "
                            f"request while the write rate came down {refusing} times in a row",
                            code=error.code,
                            hint="the project's write quota may be used up (see its quotas in the "
                            "Google Cloud console), or the store takes fewer writes than the run "
                            "sends: raise the quota or lower max_writes_per_second "
                            "(--max-writes-per-second, docshift throttle)",
                        ) from error
                    if lowered:
                        self._count_retry(error)
                        if not pacer.resend(pending()):
                            raise
                        continue
                failures += 1
                if failures >= self.policy.attempts:
                    raise
                self._count_retry(error)
                time.sleep(self._backoff(failures))

    def close(self) -> None:
        self.inner.close()

"""The store layer's retries: the only place docshift retries.

Only :class:`~docshift.errors.TransientError` is retried, with exponential backoff and jitter:
whole requests, the transient writes of a partly failed commit (never the writes that succeeded),
and broken streams, which restart after the last document already yielded so nothing is repeated.

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

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from docshift.errors import StoreError, TransientError
from docshift.store.base import Document, Query, Store, Write, WriteResult

__all__ = ["RetryPolicy", "RetryingStore"]

T = TypeVar("T")


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

    def stream(self, query: Query) -> Iterator[Document]:
        # The attempt budget counts failures in a row: a long stream that keeps making progress
        # between transient breaks (hours over millions of documents) must not run out of attempts.
        last: str | None = query.start_after
        yielded = 0
        failures = 0
        while True:
            remaining = None if query.limit is None else query.limit - yielded
            resumed = dataclasses.replace(query, start_after=last, limit=remaining)
            try:
                for doc in self.inner.stream(resumed):
                    last = doc.path
                    yielded += 1
                    failures = 0
                    yield doc
                return
            except TransientError as error:
                failures += 1
                if failures >= self.policy.attempts:
                    raise
                self._count_retry(error)
                time.sleep(self._backoff(failures))

    def get_many(self, paths: Sequence[str]) -> list[Document | None]:
        return self._call(lambda: self.inner.get_many(paths))

    def count(self, query: Query) -> int:
        return self._call(lambda: self.inner.count(query))

    def list_collections(self, document_path: str | None = None) -> list[str]:
        return self._call(lambda: self.inner.list_collections(document_path))

    def partition(self, query: Query, count: int) -> list[str] | None:
        return self._call(lambda: self.inner.partition(query, count))

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(writes)
        pending = list(range(len(writes)))
        unsure: set[int] = set()  # sent in a request that failed as a whole: maybe only its reply was lost

        def attempt() -> None:
            nonlocal pending
            try:
                answers = self.inner.commit([writes[i] for i in pending])
            except TransientError:
                unsure.update(pending)
                raise
            still: list[int] = []
            first_error: TransientError | None = None
            for index, reply in zip(pending, answers, strict=True):
                answer = dataclasses.replace(reply, resent=True) if index in unsure else reply
                results[index] = answer
                if isinstance(answer.error, TransientError):
                    still.append(index)
                    first_error = first_error or answer.error
                    if answer.maybe_applied:  # its request's reply was lost: it may have landed
                        unsure.add(index)
            pending = still
            if first_error is not None:
                raise first_error

        try:
            self._call(attempt)
        except StoreError as error:
            if any(result is None for result in results):
                raise  # every request failed as a whole: no write has an answer to report
            # A retry of the failed writes failed as a whole (or retries ran out). Writes that were
            # applied earlier must still be reported as applied, so only the pending ones fail.
            if not isinstance(error, TransientError):
                for index in pending:
                    results[index] = WriteResult(writes[index].path, error=error, resent=index in unsure)
        return [result for result in results if result is not None]

    def close(self) -> None:
        self.inner.close()

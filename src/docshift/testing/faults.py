"""Stores that fail the way a real service does, for tests of what a run does when the store fails.

Both wrap any store (the in-memory one or the emulator's) and sit under the retry layer, playing the
part of a flaky service: :class:`FaultInjectingStore` refuses writes or whole requests before anything
is applied; :class:`LostReplies` applies a request and then loses its reply, as a connection reset
after the store wrote does.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence

from docshift.errors import TransientError
from docshift.store.base import DelegatingStore, Store, Write, WriteResult
from docshift.store.semantics import error_hint

__all__ = ["FaultInjectingStore", "LostReplies"]


class FaultInjectingStore(DelegatingStore):
    """Makes a fraction of commits fail transiently, at random but repeatably (``seed``).

    ``write_failure_rate`` fails single writes (not applied, transient result);
    ``request_failure_rate`` fails whole commit requests before anything is applied.
    ``injected`` counts the failures so far; set ``enabled = False`` to switch it off mid-test.
    """

    def __init__(
        self,
        inner: Store,
        *,
        write_failure_rate: float = 0.0,
        request_failure_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.write_failure_rate = write_failure_rate
        self.request_failure_rate = request_failure_rate
        self.enabled = True
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.injected = 0

    def _roll(self, rate: float) -> bool:
        with self._lock:
            hit = self.enabled and self._random.random() < rate
            if hit:
                self.injected += 1
            return hit

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if self._roll(self.request_failure_rate):
            raise TransientError(
                "injected: the service is unavailable", code="UNAVAILABLE", hint=error_hint("UNAVAILABLE")
            )
        failed = [self._roll(self.write_failure_rate) for _ in writes]
        passed = [w for w, fail in zip(writes, failed, strict=True) if not fail]
        applied = iter(self.inner.commit(passed) if passed else [])
        return [
            WriteResult(
                w.path,
                error=TransientError(
                    "injected: aborted", code="ABORTED", path=w.path, hint=error_hint("ABORTED")
                ),
            )
            if fail
            else next(applied)
            for w, fail in zip(writes, failed, strict=True)
        ]


class LostReplies(DelegatingStore):
    """Applies a commit and then raises UNAVAILABLE, as a connection reset after the store wrote
    does: the writes landed, their reply was lost. That happens to the first commit and every
    ``every``-th after it (a resend included, but never the resend of a commit whose reply was just
    lost). Only commits whose first path passes ``touches`` count; by default docshift's own state
    (paths under ``_docshift``: history, lease) passes untouched. ``meanwhile(writes)`` runs between
    the write and the lost reply: an application writing in that moment. ``commits`` counts the
    commits that counted, ``lost`` the replies lost."""

    def __init__(
        self,
        inner: Store,
        every: int = 2,
        meanwhile: Callable[[Sequence[Write]], None] | None = None,
        touches: Callable[[str], bool] = lambda path: not path.startswith("_docshift"),
    ) -> None:
        super().__init__(inner)
        self.every = every
        self.meanwhile = meanwhile
        self.touches = touches
        self.commits = 0
        self.lost = 0
        self._just_lost: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        if not writes or not self.touches(writes[0].path):
            return results
        key = tuple(write.path for write in writes)
        with self._lock:
            self.commits += 1
            # The resend of a commit just lost gets its reply: with writers sharing the count, one
            # writer could otherwise draw every lost number and run out of retries.
            lose = (self.commits - 1) % self.every == 0 and key not in self._just_lost
            self._just_lost.discard(key)
            if lose:
                self._just_lost.add(key)
            self.lost += lose
        if not lose:
            return results
        if self.meanwhile is not None:
            self.meanwhile(writes)
        raise TransientError(
            "connection reset by peer (the write was applied)",
            code="UNAVAILABLE",
            hint=error_hint("UNAVAILABLE"),
        )

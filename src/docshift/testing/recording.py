"""A store wrapper that keeps every commit request, for tests of what was written and how often."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from docshift.store.base import DelegatingStore, Store, Write, WriteResult

__all__ = ["RecordingStore"]


class RecordingStore(DelegatingStore):
    """Passes every call to ``inner`` and keeps each commit request that reached it, in order.

    ``requests`` holds each request's writes (a request the store then refused as a whole too):
    ``commits == 0`` after a dry run says nothing was written; :meth:`sends` says how often a
    document's write was sent (a retry sends it again). Put it under a retry or fault layer to see
    what reached the store, over one to see what the engine asked for.
    """

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.requests: list[tuple[Write, ...]] = []
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        with self._lock:
            self.requests.append(tuple(writes))
        return self.inner.commit(writes)

    @property
    def commits(self) -> int:
        """How many commit requests reached the store."""
        with self._lock:
            return len(self.requests)

    def paths(self) -> list[list[str]]:
        """Each request's document paths, in order."""
        with self._lock:
            return [[write.path for write in request] for request in self.requests]

    def sends(self, path: str) -> int:
        """How many writes to ``path`` were sent, over every request."""
        return sum(request.count(path) for request in self.paths())

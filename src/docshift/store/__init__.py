"""Stores: the interface, the retry layer, and (imported lazily) Firestore.

The in-memory store, and the wrappers that record or disturb a store, are test support: they are in
:mod:`docshift.testing`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from docshift.config import Config
from docshift.store.base import (
    DELETE_FIELD,
    DelegatingStore,
    Document,
    FieldPath,
    Filter,
    Op,
    Precondition,
    Query,
    SnapshotStore,
    Store,
    StoreInfo,
    Write,
    WriteKind,
    WriteResult,
    write_landed,
)
from docshift.store.resilience import RetryingStore, RetryPolicy

__all__ = [
    "DELETE_FIELD",
    "DelegatingStore",
    "Document",
    "FieldPath",
    "Filter",
    "Op",
    "Precondition",
    "Query",
    "RetryPolicy",
    "RetryingStore",
    "SnapshotStore",
    "Store",
    "StoreInfo",
    "Write",
    "WriteKind",
    "WriteResult",
    "open_store",
    "store_for",
    "write_landed",
]


def open_store(config: Config, *, retry: RetryPolicy | None = None) -> RetryingStore:
    """The Firestore store a config points at, connected, wrapped in the one retry layer.

    A store that cannot be reached raises here (a :class:`~docshift.errors.PermanentError` with
    code ``UNAVAILABLE``, within ``connect_timeout_seconds``), before any retry."""
    from docshift.store.firestore import FirestoreStore  # deferred: importing gRPC costs ~0.3 s

    settings = config.store
    inner = FirestoreStore(
        settings.project,
        settings.database,
        emulator_host=settings.emulator_host,
        timeout=settings.timeout_seconds,
        connect_timeout=settings.connect_timeout_seconds,
        host_source=_source_of(config, "emulator_host"),
    )
    return RetryingStore(inner, retry)


def _source_of(config: Config, key: str) -> str | None:
    """Where a key's value came from, as a user would look for it (``docshift.toml``, a variable…)."""
    source = config.sources.get(key)
    if source is None or source == "default":
        return None
    if source.startswith("--") or source.isupper():
        return source
    return f"{key} in {source}"


@contextmanager
def store_for(config: Config, store: Store | None = None) -> Iterator[Store]:
    """The store a command was given, or one opened from ``config`` and closed afterwards: only a
    store the command opened itself is its to close."""
    if store is not None:
        yield store
        return
    opened = open_store(config)
    try:
        yield opened
    finally:
        opened.close()

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
    """The Firestore store a config points at, wrapped in the one retry layer."""
    from docshift.store.firestore import FirestoreStore  # deferred: importing gRPC costs ~0.3 s

    settings = config.store
    inner = FirestoreStore(
        settings.project,
        settings.database,
        emulator_host=settings.emulator_host,
        timeout=settings.timeout_seconds,
    )
    return RetryingStore(inner, retry)


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

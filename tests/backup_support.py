"""Shared by the backup tests: documents holding every Firestore value type, seeding, and exports."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest

from docshift.store import Document, Query, Store, Write
from docshift.values import GeoPoint, Reference, Timestamp, values_equal


def every_type(index: int, project: str) -> dict[str, object]:
    """One document with every value type, varied by ``index``.

    Timestamps carry nanoseconds on purpose: Firestore keeps microseconds of timestamp values, and
    a backup must keep exactly what was stored.
    """
    return {
        "i": index,
        "name": f"user {index} ü ß 🙂",
        "int_max": 2**63 - 1,
        "int_min": -(2**63),
        "float": index / 7,
        "neg_zero": -0.0,
        "nan": math.nan,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "flag": index % 2 == 0,
        "none": None,
        "at": Timestamp(1_700_000_000 + index, (index * 7919) % 1_000_000_000),
        "before_epoch": Timestamp(-62_135_596_800, 0),
        "raw": bytes([index % 256, 0, 255, 10]),
        "empty_raw": b"",
        "geo": GeoPoint(-90 + index % 180, -180.0 + (index % 360) / 2),
        "ref": Reference(f"users/u{index + 1:05d}", project, "(default)"),
        "foreign_ref": Reference("teams/t1", "demo-some-other-project", "other-db"),
        "empty_map": {},
        "empty_list": [],
        "nested": {
            "list": [1, "a", None, True, {"deep": [1.5, b"x", Timestamp(5, 6000)]}],
            "map": {"a": {"b": {"c": index}}},
        },
        "$t": "a user's field named like the codec's tag",
        "dots.and spaces": {"`back`": 1},
    }


def seed(
    store: Store, documents: Iterator[tuple[str, dict[str, object]]], batch: int = 400, threads: int = 4
) -> int:
    """Write documents in concurrent batches; every write must succeed."""

    def commit(writes: list[Write]) -> int:
        results = store.commit(writes)
        failed = [result for result in results if not result.ok]
        assert not failed, failed[:3]
        return len(results)

    def batches() -> Iterator[list[Write]]:
        writes: list[Write] = []
        for path, data in documents:
            writes.append(Write.set(path, data))
            if len(writes) >= batch:
                yield writes
                writes = []
        if writes:
            yield writes

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(commit, batches()))


def export(store: Store, collection: str) -> Iterator[Document]:
    """A collection and everything below it, in name order, streamed."""
    return store.stream(Query(collection, descendants=True))


def assert_same_documents(
    expected: Iterator[Document], actual: Iterator[Document], rename: tuple[str, str] | None = None
) -> int:
    """Paths and data equal value by value (NaN, -0.0, types); returns how many were compared."""
    count = 0
    for want, got in zip_longest(expected, actual):
        assert want is not None and got is not None, (want and want.path, got and got.path)
        path = want.path if rename is None else rename[1] + want.path[len(rename[0]) :]
        assert got.path == path
        assert values_equal(want.data, got.data), (path, want.data, got.data)
        count += 1
    return count

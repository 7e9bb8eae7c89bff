"""The benchmark's documents, shared by ``bench.py`` (which seeds them) and ``bench_baselines.py``
(whose bare-write baseline writes their migrated form), so both always mean the same documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TimestampOf = Callable[[int, int], Any]
"""Builds a timestamp value from (seconds, nanoseconds) in the caller's own value type."""


def bench_doc(index: int, timestamp: TimestampOf) -> dict[str, Any]:
    """A document of 10 fields, ~550 bytes."""
    return {
        "name": f"User Number {index:07d}",
        "email": f"user{index}@example.com",
        "age": 18 + index % 70,
        "score": index * 0.37,
        "active": index % 3 != 0,
        "created": timestamp(1_600_000_000 + index, (index * 7919) % 1_000_000 * 1000),
        "city": ["Oslo", "Lyon", "Kyoto", "Quito"][index % 4],
        "tags": ["alpha", "beta", "gamma"][: index % 4],
        "address": {"street": f"{index} Long Street Name", "zip": f"{10000 + index % 89999}"},
        "bio": ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 5)[: 240 + index % 20],
    }


def migrated(data: dict[str, Any]) -> dict[str, Any] | None:
    """The benchmark migration's change: add ``migrated``, rename ``name`` to ``full_name``
    (None: already done)."""
    if "name" not in data:
        return None
    data["full_name"] = data.pop("name")
    data["migrated"] = True
    return data

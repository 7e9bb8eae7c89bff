"""Split a target's key space into ranges read concurrently, each with its own cursor.

Firestore's PartitionQuery gives even splits for collection groups; the emulator does not implement
it, and plain collections cannot use it, so otherwise the split points come from a keys-only scan
that keeps every (total / shards)-th document name.
"""

from __future__ import annotations

from docshift.migration import Target
from docshift.runfolder.checkpoint import ShardCursor
from docshift.store.base import Query, Store

__all__ = ["plan_shards"]


def plan_shards(store: Store, target: Target, count: int) -> list[ShardCursor]:
    if count <= 1 or target.limit is not None:
        return [ShardCursor()]
    points: list[str] | None = None
    if target.group:
        points = store.partition(target.query(), count)
    if points is None:
        points = _sampled_points(store, target.query(), count)
    points = sorted(set(points), key=lambda p: tuple(p.split("/")))
    shards: list[ShardCursor] = []
    previous: str | None = None
    for point in points:
        shards.append(ShardCursor(start_after=previous, end_at=point))
        previous = point
    shards.append(ShardCursor(start_after=previous, end_at=None))
    return shards


def _sampled_points(store: Store, query: Query, count: int) -> list[str]:
    total = store.count(query)
    if total < count * 2:
        return []
    wanted = {total * i // count for i in range(1, count)}
    keys = Query(query.collection, query.group, query.filters, keys_only=True)
    return [doc.path for index, doc in enumerate(store.stream(keys), start=1) if index in wanted]

"""``Query(descendants=True)``: a collection and everything below it, in one name-ordered stream.

Run against the in-memory store and the emulator, like the store contract suite.
"""

from __future__ import annotations

import pytest

from docshift.errors import UsageError
from docshift.store import Filter, Query, Store, Write


def put_all(store: Store, paths: list[str]) -> None:
    results = store.commit([Write.set(path, {"p": path}) for path in paths])
    assert all(result.ok for result in results), results


def paths(store: Store, query: Query) -> list[str]:
    return [doc.path for doc in store.stream(query)]


def test_descendants_stream_in_pre_order_including_under_missing_documents(any_store: Store) -> None:
    put_all(
        any_store,
        [
            "users/b",
            "users/a",
            "users/a/orders/o2",
            "users/a/orders/o1",
            "users/a/orders/o1/items/i1",
            "users/ghost/notes/n1",  # users/ghost itself does not exist
            "users0/x",
            "usersz/x",
            "user/x",
            "teams/t1/users/u1",  # neighbours and a same-named group
        ],
    )
    assert paths(any_store, Query("users", descendants=True)) == [
        "users/a",
        "users/a/orders/o1",
        "users/a/orders/o1/items/i1",
        "users/a/orders/o2",
        "users/b",
        "users/ghost/notes/n1",
    ]
    assert paths(any_store, Query("users/a/orders", descendants=True)) == [
        "users/a/orders/o1",
        "users/a/orders/o1/items/i1",
        "users/a/orders/o2",
    ]
    assert paths(any_store, Query("teams/t1/users", descendants=True)) == ["teams/t1/users/u1"]
    # cursors, limits, keys-only and counts work on the whole tree
    assert paths(any_store, Query("users", descendants=True, start_after="users/a/orders/o1", limit=2)) == [
        "users/a/orders/o1/items/i1",
        "users/a/orders/o2",
    ]
    keys = list(any_store.stream(Query("users", descendants=True, keys_only=True, limit=1)))
    assert [(doc.path, doc.data) for doc in keys] == [("users/a", {})]
    assert any_store.count(Query("users", descendants=True)) == 6
    assert paths(any_store, Query("nothing", descendants=True)) == []


def test_descendants_refuse_groups_and_filters() -> None:
    with pytest.raises(UsageError):
        Query("users", group=True, descendants=True)
    with pytest.raises(UsageError):
        Query("users", filters=(Filter.parse("a", "==", 1),), descendants=True)

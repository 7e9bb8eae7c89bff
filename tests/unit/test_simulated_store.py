"""The dry run's copy-on-write view: reads see the writes made through it, the store never does."""

from __future__ import annotations

from docshift.errors import ConflictError
from docshift.store import Filter, Query, Write
from docshift.store.simulated import SimulatedStore
from docshift.testing import MemoryStore


def seeded() -> MemoryStore:
    store = MemoryStore()
    assert all(r.ok for r in store.commit([Write.set(f"users/u{n}", {"n": n}) for n in range(1, 8)]))
    return store


def test_writes_change_only_the_view_with_the_stores_semantics() -> None:
    store = seeded()
    real = {d.path: d for d in store.stream(Query("users"))}
    view = SimulatedStore(store)
    [stale] = store.get_many(["users/u2"])
    assert stale is not None
    results = view.commit(
        [
            Write.set("users/u2", {"n": 20}, update_time=stale.update_time),
            Write.delete("users/u3"),
            Write.create("users/u0", {"n": 0}),
            Write.create("users/u4", {"n": 40}),  # exists: refused, as by the store
        ]
    )
    assert [r.ok for r in results] == [True, True, True, False]
    assert isinstance(results[3].error, ConflictError)
    again = view.commit([Write.set("users/u2", {"n": 21}, update_time=stale.update_time)])
    assert isinstance(again[0].error, ConflictError)  # the guard sees the view's own write
    assert {d.path: d for d in store.stream(Query("users"))} == real  # the store is untouched
    [u0, u2, u3, u5] = view.get_many(["users/u0", "users/u2", "users/u3", "users/u5"])
    assert u0 is not None and u0.data == {"n": 0}
    assert u2 is not None and u2.data == {"n": 20} and u2.update_time == results[0].update_time
    assert u3 is None and u5 == real["users/u5"]
    streamed = [(d.path, d.data["n"]) for d in view.stream(Query("users"))]
    assert streamed == [
        ("users/u0", 0),
        ("users/u1", 1),
        ("users/u2", 20),
        ("users/u4", 4),
        ("users/u5", 5),
        ("users/u6", 6),
        ("users/u7", 7),
    ]
    assert [d.path for d in view.stream(Query("users", limit=3, start_after="users/u0"))] == [
        "users/u1",
        "users/u2",
        "users/u4",
    ]
    assert [d.path for d in view.stream(Query("users", filters=(Filter.parse("n", ">", 5),)))] == [
        "users/u2",
        "users/u6",
        "users/u7",
    ]
    assert view.count(Query("users")) == 7 and store.count(Query("users")) == 7


def test_without_retained_writes_only_the_latest_commit_is_seen() -> None:
    store = seeded()
    view = SimulatedStore(store, retain_writes=False)
    view.commit([Write.set("users/u1", {"n": 10})])
    assert view.get_many(["users/u1"])[0].data == {"n": 10}  # type: ignore[union-attr]
    view.commit([Write.set("users/u2", {"n": 20})])
    [u1, u2] = view.get_many(["users/u1", "users/u2"])
    assert u1 is not None and u1.data == {"n": 1}  # forgotten: the store's again
    assert u2 is not None and u2.data == {"n": 20}

"""One behavioural suite for the store interface, run against the in-memory store AND the emulator.

If the in-memory store ever drifts from Firestore's behaviour, its half of these tests fails.
"""

from __future__ import annotations

import pytest

from docshift.errors import ConflictError, PermanentError, UsageError
from docshift.store import DELETE_FIELD, Filter, Query, Store, Write
from docshift.values import GeoPoint, Reference, Timestamp


def put(store: Store, path: str, data: dict[str, object]) -> Timestamp:
    [result] = store.commit([Write.set(path, data)])
    assert result.ok, result.error
    assert result.update_time is not None
    return result.update_time


def paths(store: Store, query: Query) -> list[str]:
    return [doc.path for doc in store.stream(query)]


def test_set_then_read_back_keeps_values_and_times(any_store: Store) -> None:
    data = {"name": "Ada", "n": 2**63 - 1, "ok": True, "none": None, "tags": ["a", 1],
            "nested": {"empty": {}, "list": []}, "at": Timestamp(1_700_000_000, 123_456_000),
            "geo": GeoPoint(1.5, -2.25), "raw": b"\x00\xff",
            "ref": Reference("users/bob", any_store.info.project, "(default)")}
    stamp = put(any_store, "users/ada", data)
    doc = any_store.get("users/ada")
    assert doc is not None
    assert doc.data == data
    assert doc.update_time == stamp
    assert doc.create_time == stamp
    assert doc.id == "ada" and doc.collection == "users"


def test_stream_is_in_name_order_with_cursor_bounds_and_limit(any_store: Store) -> None:
    for name in ["d", "a", "c", "e", "b"]:
        put(any_store, f"items/{name}", {"v": name})
    put(any_store, "other/x", {"v": 1})
    assert paths(any_store, Query("items")) == [f"items/{n}" for n in "abcde"]
    assert paths(any_store, Query("items", start_after="items/b")) == ["items/c", "items/d", "items/e"]
    assert paths(any_store, Query("items", start_after="items/a", end_at="items/c")) == ["items/b", "items/c"]
    assert paths(any_store, Query("items", limit=2)) == ["items/a", "items/b"]
    keys = list(any_store.stream(Query("items", keys_only=True, limit=1)))
    assert keys[0].path == "items/a" and keys[0].data == {}
    assert any_store.count(Query("items")) == 5
    assert any_store.count(Query("items", start_after="items/c")) == 2


def test_collection_group_and_subcollections(any_store: Store) -> None:
    put(any_store, "users/u2/orders/o1", {"total": 5})
    put(any_store, "users/u1/orders/o2", {"total": 7})
    put(any_store, "shops/s1/orders/o3", {"total": 9})
    put(any_store, "users/u1", {"name": "x"})
    assert paths(any_store, Query("users/u1/orders")) == ["users/u1/orders/o2"]
    assert paths(any_store, Query("orders", group=True)) == [
        "shops/s1/orders/o3", "users/u1/orders/o2", "users/u2/orders/o1",
    ]
    assert paths(any_store, Query("orders", group=True, start_after="users/u1/orders/o2")) == [
        "users/u2/orders/o1",
    ]
    assert any_store.list_collections() == ["shops", "users"]
    assert any_store.list_collections("users/u1") == ["orders"]


def test_filters(any_store: Store) -> None:
    put(any_store, "f/a", {"age": 30, "tags": ["x", "y"], "city": "Oslo", "gone": None})
    put(any_store, "f/b", {"age": 20.5, "tags": ["z"], "city": "Rome"})
    put(any_store, "f/c", {"age": "old", "city": "Oslo"})

    def where(field: str, op: str, value: object) -> list[str]:
        return paths(any_store, Query("f", filters=(Filter.parse(field, op, value),)))

    assert where("city", "==", "Oslo") == ["f/a", "f/c"]
    assert where("age", ">", 25) == ["f/a"]
    assert where("age", "<=", 30) == ["f/a", "f/b"]
    assert where("city", "in", ["Rome", "Paris"]) == ["f/b"]
    assert where("tags", "array-contains", "y") == ["f/a"]
    assert where("tags", "array-contains-any", ["z", "q"]) == ["f/b"]
    assert where("gone", "==", None) == ["f/a"]
    assert where("city", "!=", "Oslo") == ["f/b"]
    both = (Filter.parse("city", "==", "Oslo"), Filter.parse("age", "==", 30))
    assert paths(any_store, Query("f", filters=both)) == ["f/a"]
    with pytest.raises(UsageError):
        Filter.parse("age", "~", 1)


def test_update_time_precondition_guards_every_kind_of_write(any_store: Store) -> None:
    first = put(any_store, "g/doc", {"v": 1})
    second = put(any_store, "g/doc", {"v": 2})  # the "application" changed it
    stale = [Write.update("g/doc", {("v",): 3}, update_time=first),
             Write.set("g/doc", {"v": 4}, update_time=first),
             Write.delete("g/doc", update_time=first)]
    for write in stale:
        [result] = any_store.commit([write])
        assert isinstance(result.error, ConflictError), write.kind
    assert any_store.get("g/doc").data == {"v": 2}  # type: ignore[union-attr]
    [ok] = any_store.commit([Write.update("g/doc", {("v",): 5}, update_time=second)])
    assert ok.ok and ok.update_time is not None and ok.update_time > second
    [gone] = any_store.commit([Write.delete("g/doc", update_time=ok.update_time)])
    assert gone.ok and any_store.get("g/doc") is None


def test_create_and_update_existence_preconditions(any_store: Store) -> None:
    put(any_store, "h/exists", {"v": 1})
    created, duplicate, missing = any_store.commit([
        Write.create("h/new", {"v": 1}),
        Write.create("h/exists", {"v": 2}),
        Write.update("h/missing", {("v",): 1}),
    ])
    assert created.ok
    assert isinstance(duplicate.error, ConflictError)
    assert isinstance(missing.error, ConflictError)
    assert any_store.get("h/missing") is None
    assert any_store.get("h/exists").data == {"v": 1}  # type: ignore[union-attr]


def test_update_touches_only_the_named_field_paths(any_store: Store) -> None:
    put(any_store, "u/1", {"keep": 1, "drop": 2, "a": {"b": 1, "c": 2}, "x.y": {"`q`": 0}})
    [result] = any_store.commit([Write.update("u/1", {
        ("drop",): DELETE_FIELD, ("a", "b"): 10, ("a", "new"): {"deep": []},
        ("x.y", "`q`"): "quoted", ("added",): None,
    })])
    assert result.ok, result.error
    assert any_store.get("u/1").data == {  # type: ignore[union-attr]
        "keep": 1, "a": {"b": 10, "c": 2, "new": {"deep": []}}, "x.y": {"`q`": "quoted"}, "added": None,
    }


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "marked-checked"])
def test_one_bad_write_does_not_fail_its_batch(any_store: Store, checked: bool) -> None:
    """Marked ``checked`` (the caller vouches for it), the store skips only its own check before
    sending: the store itself still refuses the oversized document, alone."""
    huge = {"blob": "x" * 1_100_000}
    results = any_store.commit([
        Write.set("b/1", {"v": 1}), Write.set("b/2", huge, checked=checked), Write.set("b/3", {"v": 3}),
    ])
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, PermanentError)
    assert results[1].error.path == "b/2"
    assert any_store.get("b/2") is None


def test_the_same_document_twice_in_one_request_is_refused(any_store: Store) -> None:
    with pytest.raises(PermanentError):
        any_store.commit([Write.set("d/1", {"v": 1}), Write.set("d/1", {"v": 2})])


def test_get_many_keeps_order_and_reports_missing(any_store: Store) -> None:
    put(any_store, "m/1", {"v": 1})
    put(any_store, "m/3", {"v": 3})
    docs = any_store.get_many(["m/3", "m/2", "m/1"])
    assert [d.path if d else None for d in docs] == ["m/3", None, "m/1"]


def test_bad_paths_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        Query("users/alice")
    with pytest.raises(UsageError):
        Query("")
    with pytest.raises(UsageError):
        Query("a/b/c", group=True)

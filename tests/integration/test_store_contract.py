"""One behavioural suite for the store interface, run against the in-memory store AND the emulator.

If the in-memory store ever drifts from Firestore's behaviour, its half of these tests fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest

from docshift.errors import ConflictError, PermanentError, TransientError, UsageError
from docshift.store import DELETE_FIELD, DelegatingStore, Filter, Query, RetryingStore, Store, Write
from docshift.store.firestore import FirestoreStore
from docshift.store.firestore import _pb as firestore_schema
from docshift.store.semantics import (
    EMULATOR_MAX_REQUEST_BYTES,
    MAX_DOCUMENT_BYTES,
    MAX_VALUE_BYTES,
    MAX_WRITES_PER_REQUEST,
    document_problem,
    document_size,
    field_problem,
)
from docshift.values import GeoPoint, Reference, Timestamp


def put(store: Store, path: str, data: dict[str, object]) -> Timestamp:
    [result] = store.commit([Write.set(path, data)])
    assert result.ok, result.error
    assert result.update_time is not None
    return result.update_time


def paths(store: Store, query: Query) -> list[str]:
    return [doc.path for doc in store.stream(query)]


def test_set_then_read_back_keeps_values_and_times(any_store: Store) -> None:
    data = {
        "name": "Ada",
        "n": 2**63 - 1,
        "ok": True,
        "none": None,
        "tags": ["a", 1],
        "nested": {"empty": {}, "list": []},
        "at": Timestamp(1_700_000_000, 123_456_000),
        "geo": GeoPoint(1.5, -2.25),
        "raw": b"\x00\xff",
        "ref": Reference("users/bob", any_store.info.project, "(default)"),
    }
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
        "shops/s1/orders/o3",
        "users/u1/orders/o2",
        "users/u2/orders/o1",
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
    stale = [
        Write.update("g/doc", {("v",): 3}, update_time=first),
        Write.set("g/doc", {"v": 4}, update_time=first),
        Write.delete("g/doc", update_time=first),
    ]
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
    created, duplicate, missing = any_store.commit(
        [
            Write.create("h/new", {"v": 1}),
            Write.create("h/exists", {"v": 2}),
            Write.update("h/missing", {("v",): 1}),
        ]
    )
    assert created.ok
    assert isinstance(duplicate.error, ConflictError)
    assert isinstance(missing.error, ConflictError)
    assert any_store.get("h/missing") is None
    assert any_store.get("h/exists").data == {"v": 1}  # type: ignore[union-attr]


def test_update_touches_only_the_named_field_paths(any_store: Store) -> None:
    put(any_store, "u/1", {"keep": 1, "drop": 2, "a": {"b": 1, "c": 2}, "x.y": {"`q`": 0}})
    [result] = any_store.commit(
        [
            Write.update(
                "u/1",
                {
                    ("drop",): DELETE_FIELD,
                    ("a", "b"): 10,
                    ("a", "new"): {"deep": []},
                    ("x.y", "`q`"): "quoted",
                    ("added",): None,
                },
            )
        ]
    )
    assert result.ok, result.error
    assert any_store.get("u/1").data == {  # type: ignore[union-attr]
        "keep": 1,
        "a": {"b": 10, "c": 2, "new": {"deep": []}},
        "x.y": {"`q`": "quoted"},
        "added": None,
    }


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "marked-checked"])
def test_one_bad_write_does_not_fail_its_batch(any_store: Store, checked: bool) -> None:
    """Marked ``checked`` (the caller vouches for it), the store skips only its own check before
    sending: the store itself still refuses the oversized document, alone."""
    huge = {"blob": "x" * 1_100_000}
    results = any_store.commit(
        [
            Write.set("b/1", {"v": 1}),
            Write.set("b/2", huge, checked=checked),
            Write.set("b/3", {"v": 3}),
        ]
    )
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


# ---------------------------------------------------------------------------- limits, at the boundary
# Measured on the Cloud Firestore emulator 1.19.9 (Cloud SDK 528.0.0) with scripts/store_limits.py:
# for each limit the largest value accepted, and that one more is refused. docshift's checks
# (document_problem, value_problem) refuse exactly what the store refuses: never less (a write would
# fail in the store instead of before it), never more (a document the store holds could then not be
# restored or rolled back). Cloud Firestore documents the same numbers: 1 MiB per document, 1 MiB -
# 89 bytes per value, 1,500 bytes per field name, field path and id, 20 levels of maps and arrays.


def nested(levels: int, inner: dict[str, object] | None = None) -> dict[str, object]:
    """``levels`` maps nested in each other (the innermost holds ``inner``, or one number)."""
    value: dict[str, object] = {"v": 1} if inner is None else inner
    for _ in range(levels - 1):
        value = {"m": value}
    return value


def sized(path: str, extra: int) -> dict[str, object]:
    """A document ``extra`` bytes over 1 MiB by Firestore's storage-size rules (values of at most
    1 MiB - 89 bytes each; one of them inside a map)."""
    base = {"a": "", "nested": {"b": ""}}
    room = MAX_DOCUMENT_BYTES - document_size(path, base) + extra
    return {"a": "x" * (room // 2), "nested": {"b": "y" * (room - room // 2)}}


class Limit(NamedTuple):
    accepted_path: str
    accepted: dict[str, object]
    refused_path: str
    refused: dict[str, object]
    per_field: bool = True
    """The limit is one field's (its name, path or value): the engine checks it on a changed field."""


LIMITS: dict[str, Limit] = {
    # A field holding 20 maps nested in each other is taken; 21 are refused ("contains an invalid
    # nested entity"). The document's own field map is not a level.
    "20 nested maps": Limit("l/a", {"f": nested(20)}, "l/b", {"f": nested(21)}),
    # An array is a level too: an array of 19 nested maps is taken, of 20 refused.
    "array of 19 nested maps": Limit("l/a", {"f": [nested(19)]}, "l/b", {"f": [nested(20)]}),
    # ... but an empty array adds none: [] below 20 maps is taken, [1] there is refused.
    "empty array below 20 maps": Limit(
        "l/a", {"f": nested(20, {"e": []})}, "l/b", {"f": nested(20, {"e": [1]})}
    ),
    # One string value: 1,048,487 bytes of UTF-8 are taken, 1,048,488 refused, in a map or an array
    # too ("The value of property ... is longer than 1048487 bytes").
    "string of 1,048,487 bytes": Limit(
        "l/a", {"s": "x" * (MAX_VALUE_BYTES - 2) + "é"}, "l/b", {"s": ["x" * (MAX_VALUE_BYTES - 1) + "é"]}
    ),
    "bytes of 1,048,487": Limit(
        "l/a", {"b": b"\0" * MAX_VALUE_BYTES}, "l/b", {"b": {"in": b"\0" * (MAX_VALUE_BYTES + 1)}}
    ),
    # The whole document: exactly 1,048,576 bytes by the storage-size rules are taken, one more is
    # refused ("maximum entity size is 1048576 bytes"), whatever the path and field names.
    "document of 1 MiB": Limit("l/a", sized("l/a", 0), "l/b", sized("l/b", 1), per_field=False),
    # A field name, and a field path: 1,500 bytes of UTF-8 are taken, 1,501 refused.
    "field name of 1,500 bytes": Limit("l/a", {"é" * 750: 1}, "l/b", {"é" * 750 + "x": 1}),
    "field path of 1,500 bytes": Limit(
        "l/a", {"p" * 10: {"q" * 1489: 1}}, "l/b", {"p" * 10: {"q" * 1490: 1}}
    ),
    # Each document id and collection id of the path, and of a reference value: 1,500 bytes taken,
    # 1,501 refused ("The key path element name is longer than 1500 bytes").
    "document id of 1,500 bytes": Limit(
        "l/" + "é" * 750, {"v": 1}, "l/" + "é" * 750 + "x", {"v": 1}, per_field=False
    ),
    "collection id of 1,500 bytes": Limit(
        "c" * 1500 + "/x", {"v": 1}, "c" * 1501 + "/x", {"v": 1}, per_field=False
    ),
    "reference id of 1,500 bytes": Limit(
        "l/a", {"r": Reference("c/" + "i" * 1500)}, "l/b", {"r": Reference("c/" + "i" * 1501)}
    ),
    "parent id of 1,500 bytes": Limit(
        "l/" + "p" * 1500 + "/s/x", {"v": 1}, "l/" + "p" * 1501 + "/s/x", {"v": 1}, per_field=False
    ),
}


def field_verdict(data: dict[str, object]) -> str | None:
    """docshift's check of each field as the engine makes it on the fields an update changes."""
    return next((problem for key, value in data.items() if (problem := field_problem((key,), value))), None)


@pytest.mark.parametrize("limit", list(LIMITS))
def test_at_each_limit_the_store_and_docshift_agree(any_store: Store, limit: str) -> None:
    case = LIMITS[limit]
    assert document_problem(case.accepted_path, case.accepted) is None
    problem = document_problem(case.refused_path, case.refused)
    assert problem is not None
    if case.per_field:
        assert field_verdict(case.accepted) is None
        assert field_verdict(case.refused) == problem
    # The store itself (the writes are marked checked: only the store decides).
    [taken] = any_store.commit([Write.set(case.accepted_path, case.accepted, checked=True)])
    [turned_down] = any_store.commit([Write.set(case.refused_path, case.refused, checked=True)])
    assert taken.ok, taken.error
    assert isinstance(turned_down.error, PermanentError), turned_down
    assert any_store.get(case.refused_path) is None
    # Unchecked, docshift refuses it before sending, with its own message.
    [before] = any_store.commit([Write.set(case.refused_path, case.refused)])
    assert isinstance(before.error, PermanentError) and before.error.message == problem


def test_a_document_name_over_cloud_firestores_6_kib_is_taken_by_the_emulator_and_docshift(
    any_store: Store,
) -> None:
    """Cloud Firestore documents 6 KiB per document name; the emulator takes longer names (7,514
    bytes here: five ids of 1,500 bytes). docshift does not check it: refusing would leave documents
    the emulator holds that could not be restored; on Cloud Firestore no such document can exist,
    and a write that would make one is refused by the store, alone in its request."""
    path = "/".join(["c", "i" * 1500] * 5)
    assert len(path.encode()) > 6 * 1024
    assert document_problem(path, {"v": 1}) is None
    [result] = any_store.commit([Write.set(path, {"v": 1})])
    assert result.ok, result.error
    assert any_store.get(path) is not None


@pytest.fixture
def sent_requests(
    firestore_store: RetryingStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[FirestoreStore, list[tuple[int, int]]]:
    """The adapter under the retry layer, and (writes, bytes) of every BatchWrite it sends."""
    adapter = firestore_store.inner
    assert isinstance(adapter, FirestoreStore)
    sent: list[tuple[int, int]] = []
    send = adapter._batch_write

    def watched(request: Any, **options: Any) -> Any:
        sent.append((len(request.writes), request.ByteSize()))
        return send(request, **options)

    monkeypatch.setattr(adapter, "_batch_write", watched)
    return adapter, sent


def test_one_request_carries_at_most_500_writes(
    sent_requests: tuple[FirestoreStore, list[tuple[int, int]]],
) -> None:
    """Measured: the emulator takes 40,000 writes in one BatchWrite (only its 4 MiB bound them);
    Cloud Firestore documents 500. docshift follows Cloud Firestore (more requests cost little; a
    refused one would fail a run), so what works on the emulator works there too: a commit of more
    is sent as several requests."""
    adapter, sent = sent_requests
    writes = [Write.set(f"w/{i:04d}", {"v": i}) for i in range(MAX_WRITES_PER_REQUEST * 2 + 1)]
    results = adapter.commit(writes)
    assert all(result.ok for result in results) and len(results) == 1001
    assert [writes for writes, _ in sent] == [500, 500, 1]
    assert [doc.path for doc in adapter.stream(Query("w"))][-1] == "w/1000"


def test_the_emulator_takes_requests_of_4_mib_and_docshift_sends_no_larger(
    sent_requests: tuple[FirestoreStore, list[tuple[int, int]]],
) -> None:
    """Measured: a BatchWrite request of 4,194,304 bytes is taken by the emulator, one of 4,194,305
    refused with RESOURCE_EXHAUSTED (its gRPC server's inbound limit; Cloud Firestore takes 10 MiB).
    The adapter packs each request to the store's limit, so nine documents of 1 MB go as three."""
    adapter, sent = sent_requests
    assert adapter.max_request_bytes == EMULATOR_MAX_REQUEST_BYTES

    def request(total: int) -> Any:
        writes = [Write.set(f"raw/{name}", {"s": "x" * 1_000_000}) for name in "abcd"]
        writes.append(Write.set("raw/e", {"s": ""}))
        built = firestore_schema["BatchWriteRequest"](database=adapter._database_name)
        for write in writes:
            adapter._encode_write(write, built.writes.add())
        last = built.writes[-1].update.fields["s"]
        while built.ByteSize() != total:  # the lengths' varints grow with the string
            last.string_value = "x" * (len(last.string_value) + total - built.ByteSize())
        assert built.ByteSize() == total
        return built

    adapter._batch_write(request(EMULATOR_MAX_REQUEST_BYTES), metadata=adapter._metadata, timeout=60)
    with pytest.raises(Exception) as refused:  # a grpc.RpcError (grpc stays in the adapter)
        adapter._batch_write(request(EMULATOR_MAX_REQUEST_BYTES + 1), metadata=adapter._metadata, timeout=60)
    assert refused.value.code().name == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]

    sent.clear()
    results = adapter.commit([Write.set(f"big/{i}", {"s": "x" * 1_000_000}) for i in range(9)])
    assert all(result.ok for result in results)
    assert [writes for writes, _ in sent] == [4, 4, 1]
    assert max(size for _, size in sent) <= EMULATOR_MAX_REQUEST_BYTES


def test_a_commit_split_into_requests_reports_what_landed_when_a_later_request_fails(
    firestore_store: RetryingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine documents of 1 MB go as three requests; the second fails as a whole (unreachable).
    The first one's writes were applied and are reported so, with their update times: the retry
    layer sends only the others again (a full retry would send applied guarded writes twice)."""
    adapter = firestore_store.inner
    assert isinstance(adapter, FirestoreStore)
    seen = [Write.set(f"big/{i}", {"s": str(i)}) for i in range(9)]
    old = {r.path: r.update_time for r in firestore_store.commit(seen)}
    sent: list[list[str]] = []
    send = adapter._batch_write

    def second_fails(request: Any, **options: Any) -> Any:
        sent.append([write.update.name.rsplit("/", 1)[-1] for write in request.writes])
        if len(sent) == 2:
            raise TransientError("injected: the service is unavailable", code="UNAVAILABLE")
        return send(request, **options)

    monkeypatch.setattr(adapter, "_batch_write", second_fails)
    guarded = [Write.set(f"big/{i}", {"s": "x" * 1_000_000}, update_time=old[f"big/{i}"]) for i in range(9)]
    results = firestore_store.commit(guarded)
    assert [r.ok for r in results] == [True] * 9, [r.error for r in results if not r.ok]
    assert sent == [["0", "1", "2", "3"], ["4", "5", "6", "7"], ["4", "5", "6", "7"], ["8"]]
    stored = firestore_store.get_many([f"big/{i}" for i in range(9)])
    assert [doc.update_time if doc else None for doc in stored] == [r.update_time for r in results]


def test_a_later_request_applied_whose_reply_was_lost_is_resent_and_marked_so(
    firestore_store: RetryingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the second request is applied and only its reply is lost: its resent writes
    are refused by their own guards, and are marked ``resent`` so that the engine can recognise
    them as its own landed writes (not application conflicts)."""
    adapter = firestore_store.inner
    assert isinstance(adapter, FirestoreStore)
    old = {
        r.path: r.update_time
        for r in firestore_store.commit([Write.set(f"big/{i}", {"s": str(i)}) for i in range(9)])
    }
    calls: list[int] = []
    send = adapter._batch_write

    def second_reply_lost(request: Any, **options: Any) -> Any:
        calls.append(len(request.writes))
        answer = send(request, **options)
        if len(calls) == 2:
            raise TransientError("injected: connection reset after the write", code="UNAVAILABLE")
        return answer

    monkeypatch.setattr(adapter, "_batch_write", second_reply_lost)
    guarded = [Write.set(f"big/{i}", {"s": "x" * 1_000_000}, update_time=old[f"big/{i}"]) for i in range(9)]
    results = firestore_store.commit(guarded)
    assert [r.ok for r in results] == [True] * 4 + [False] * 4 + [True]
    assert all(isinstance(r.error, ConflictError) and r.resent for r in results[4:8])
    assert not any(r.resent for r in results[:4] + results[8:])
    stored = firestore_store.get_many([f"big/{i}" for i in range(9)])
    assert all(doc is not None and doc.data == guarded[i].data for i, doc in enumerate(stored))


def test_timestamps_are_kept_at_the_microsecond_and_a_naive_datetime_as_utc(any_store: Store) -> None:
    """What docshift's as_stored and values_equal assume of the store (both stores alike)."""
    put(
        any_store,
        "t/1",
        {
            "fine": Timestamp(1_700_000_000, 123_456_789),
            "naive": datetime(2024, 5, 1, 12, 0),
            "list": [Timestamp(5, 999)],
        },
    )
    doc = any_store.get("t/1")
    assert doc is not None
    assert doc.data == {
        "fine": Timestamp(1_700_000_000, 123_456_000),
        "list": [Timestamp(5, 0)],
        "naive": Timestamp.from_datetime(datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
    }


# ----------------------------------------------------------------- reads at a read_time
# Measured on the official emulator (and kept true here, so a change of its behaviour fails): it
# honours read_time on RunQuery (plain, keys-only, filtered, all-descendants), BatchGetDocuments,
# the count aggregation and ListCollectionIds; a read at a document's update time sees it, one a
# microsecond before does not; PartitionQuery stays unimplemented, read_time or not. It refuses a
# read time in the future, before 1970, finer than a microsecond or older than seven days (any
# microsecond up to seven days back is served, where Cloud Firestore serves one hour, or whole
# minutes up to seven days with point-in-time recovery). The in-memory store answers the same from
# the versions it keeps (an hour of them, as Cloud Firestore).


def _before(stamp: Timestamp) -> Timestamp:
    micros = stamp.seconds * 1_000_000 + stamp.nanos // 1000 - 1
    return Timestamp(micros // 1_000_000, micros % 1_000_000 * 1000)


def test_reads_at_a_read_time_see_the_store_as_it_was_then(any_store: Store) -> None:
    put(any_store, "snap/a", {"v": 1, "kind": "x"})
    put(any_store, "snap/b", {"v": 1, "kind": "x"})
    then = put(any_store, "snap/d", {"v": 1, "kind": "y"})
    assert any_store.snapshot_time() >= then  # the store's own clock has passed its writes
    put(any_store, "snap/a", {"v": 2, "kind": "y"})
    put(any_store, "snap/e", {"v": 2, "kind": "x"})
    put(any_store, "snap/e/sub/1", {"v": 2})
    put(any_store, "other/z", {"v": 2})
    [deleted] = any_store.commit([Write.delete("snap/b")])
    assert deleted.ok

    def at(query: Query, when: Timestamp | None) -> list[tuple[str, object]]:
        return [(doc.path, doc.data.get("v")) for doc in any_store.stream(query, read_time=when)]

    assert at(Query("snap"), then) == [("snap/a", 1), ("snap/b", 1), ("snap/d", 1)]
    assert at(Query("snap"), None) == [("snap/a", 2), ("snap/d", 1), ("snap/e", 2)]
    assert at(Query("snap"), _before(then)) == [("snap/a", 1), ("snap/b", 1)]  # update time inclusive
    assert at(Query("snap", descendants=True), then) == [("snap/a", 1), ("snap/b", 1), ("snap/d", 1)]
    assert at(Query("sub", group=True), then) == []
    assert at(Query("snap", keys_only=True), then) == [("snap/a", None), ("snap/b", None), ("snap/d", None)]
    kind_x = Query("snap", filters=(Filter.parse("kind", "==", "x"),))
    assert at(kind_x, then) == [("snap/a", 1), ("snap/b", 1)]
    assert any_store.count(Query("snap"), read_time=then) == 3
    assert any_store.count(kind_x, read_time=then) == 2
    assert any_store.count(kind_x) == 1
    found = any_store.get_many(["snap/a", "snap/b", "snap/e"], read_time=then)
    assert [doc.data["v"] if doc else None for doc in found] == [1, 1, None]
    past_a = found[0]
    assert past_a is not None and past_a.update_time is not None and past_a.update_time <= then
    assert any_store.list_collections(read_time=then) == ["snap"]
    assert any_store.list_collections() == ["other", "snap"]
    assert any_store.list_collections("snap/e", read_time=then) == []


def test_a_stream_broken_midway_resumes_at_its_read_time(any_store: Store) -> None:
    for index in range(6):
        put(any_store, f"resumed/d{index}", {"v": 1})
    then = any_store.snapshot_time()
    breaking = _BreakOnce(any_store, after=3)
    retrying = RetryingStore(breaking)
    seen = []
    for doc in retrying.stream(Query("resumed"), read_time=then):
        seen.append((doc.path, doc.data["v"]))
        if len(seen) == 2:  # written while the stream reads: not in its snapshot
            put(any_store, "resumed/d0a", {"v": 2})
            put(any_store, "resumed/d5", {"v": 2})
    assert breaking.broke == 1 and breaking.read_times == [then, then]
    assert seen == [(f"resumed/d{index}", 1) for index in range(6)]


class _BreakOnce(DelegatingStore):
    """A stream that breaks (transiently) once after ``after`` documents; notes each read time."""

    def __init__(self, inner: Store, after: int) -> None:
        super().__init__(inner)
        self.after = after
        self.broke = 0
        self.read_times: list[Timestamp | None] = []

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Any:
        self.read_times.append(read_time)
        for index, doc in enumerate(self.inner.stream(query, read_time=read_time)):
            if index == self.after and not self.broke:
                self.broke += 1
                raise TransientError("stream reset", code="UNAVAILABLE")
            yield doc


class _Refused(NamedTuple):
    read_time: Any  # (store clock now) -> Timestamp
    code: str
    hint: str


_REFUSED = {
    "in-the-future": _Refused(
        lambda now: Timestamp(now.seconds + 5, now.nanos), "INVALID_ARGUMENT", "passed"
    ),
    "eight-days-old": _Refused(
        lambda now: Timestamp(now.seconds - 8 * 86_400, 0), "FAILED_PRECONDITION", "hour"
    ),
    "finer-than-a-microsecond": _Refused(
        lambda now: Timestamp(now.seconds - 1, 1), "INVALID_ARGUMENT", "whole microseconds"
    ),
    "the-epoch": _Refused(lambda now: Timestamp(0, 0), "INVALID_ARGUMENT", "after 1970"),
}


@pytest.mark.parametrize("case", list(_REFUSED))
def test_a_read_time_the_store_cannot_serve_is_refused_with_a_hint(any_store: Store, case: str) -> None:
    put(any_store, "refused/a", {"v": 1})
    refused = _REFUSED[case]
    when = refused.read_time(any_store.snapshot_time())
    reads = {
        "stream": lambda: list(any_store.stream(Query("refused"), read_time=when)),
        "get_many": lambda: any_store.get_many(["refused/a"], read_time=when),
        "count": lambda: any_store.count(Query("refused"), read_time=when),
    }
    for name, read in reads.items():
        with pytest.raises(PermanentError) as caught:
            read()
        assert caught.value.code == refused.code, name
        assert str(when) in caught.value.message and refused.hint in (caught.value.hint or ""), name


def test_the_emulator_serves_any_microsecond_up_to_seven_days_back_and_no_partitions(
    firestore_store: RetryingStore,
) -> None:
    put(firestore_store, "old/a", {"v": 1})
    now = firestore_store.snapshot_time()
    two_hours = Timestamp(now.seconds - 7200, 123_000)  # Cloud Firestore: only with PITR, whole minutes
    assert list(firestore_store.stream(Query("old"), read_time=two_hours)) == []
    assert firestore_store.count(Query("old"), read_time=Timestamp(now.seconds - 7 * 86_400 + 60, 0)) == 0
    with pytest.raises(PermanentError, match="too old"):
        firestore_store.count(Query("old"), read_time=Timestamp(now.seconds - 7 * 86_400 - 60, 0))
    assert firestore_store.partition(Query("old"), 4, read_time=now) is None  # unimplemented
    # ListCollectionIds alone takes a read time finer than a microsecond.
    assert firestore_store.list_collections(read_time=Timestamp(now.seconds, now.nanos + 1)) == ["old"]


def test_the_memory_store_keeps_versions_an_hour_as_cloud_firestore_does(memory_store: RetryingStore) -> None:
    put(memory_store, "old/a", {"v": 1})
    now = memory_store.snapshot_time()
    with pytest.raises(PermanentError, match="too old"):
        memory_store.count(Query("old"), read_time=Timestamp(now.seconds - 7200, 0))
    assert memory_store.count(Query("old"), read_time=Timestamp(now.seconds - 3500, 0)) == 0


def test_the_store_clock_is_the_stores_own(firestore_store: RetryingStore) -> None:
    before = put(firestore_store, "clock/a", {"v": 1})
    now = firestore_store.snapshot_time()
    after = put(firestore_store, "clock/b", {"v": 1})
    assert before <= now <= after
    assert now.nanos % 1000 == 0  # a read time the store takes as it is

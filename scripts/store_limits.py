"""Measure the Firestore emulator's limits, each at its boundary: the largest value accepted, and
that one more is refused; next to each, what docshift's own check says.

docshift's checks (``store/semantics.py``) must agree with the store exactly at every limit;
``tests/integration/test_store_contract.py`` and ``test_query_limits.py`` hold the boundary tests,
and this script is how their numbers were found (run it again after an emulator upgrade). Writes
are sent marked ``checked`` so that only the emulator decides. Usage::

    python scripts/store_limits.py            # starts its own emulator
    FIRESTORE_EMULATOR_HOST=localhost:8080 python scripts/store_limits.py
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from itertools import count
from typing import Any

from docshift.emulator import Emulator, find_emulator
from docshift.errors import PermanentError
from docshift.store.base import Filter, Query, Write
from docshift.store.firestore import FirestoreStore, _pb
from docshift.store.semantics import document_problem, document_size, query_problem
from docshift.values import Reference

Shape = Callable[[int], tuple[str, dict[str, Any]]]
"""n -> (path, data) of the document to try."""


def nested(levels: int, inner: dict[str, Any] | None = None) -> dict[str, Any]:
    """``levels`` maps nested in each other; the innermost holds ``inner`` (default: a number)."""
    value: dict[str, Any] = {"v": 1} if inner is None else inner
    for _ in range(levels - 1):
        value = {"m": value}
    return value


def largest(test: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high) for which ``test`` holds (it holds at low, not at high)."""
    assert test(low) and not test(high), (low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if test(middle):
            low = middle
        else:
            high = middle
    return low


def measure(host: str) -> None:
    store = FirestoreStore(f"demo-limits-{uuid.uuid4().hex[:8]}", emulator_host=host)
    numbers = count()

    def accepted(path: str, data: dict[str, Any]) -> bool:
        [result] = store.commit([Write.set(path, data, checked=True)])
        return result.ok

    def boundary(label: str, shape: Shape, low: int, high: int) -> None:
        def test(n: int) -> bool:
            path, data = shape(n)
            return accepted(f"{path}{next(numbers)}" if path.endswith("/d") else path, data)

        n = largest(test, low, high)
        verdicts = [document_problem(*shape(k)) for k in (n, n + 1)]
        print(f"{label}: {n:,} accepted, {n + 1:,} refused; docshift: {verdicts[0]!r} / {verdicts[1]!r}")

    try:
        boundary("maps nested in a field", lambda n: ("l/d", {"f": nested(n)}), 1, 40)
        boundary("maps nested in an array field", lambda n: ("l/d", {"f": [nested(n)]}), 1, 40)
        boundary("maps around an empty array", lambda n: ("l/d", {"f": nested(n, {"e": []})}), 1, 40)
        boundary("maps around [1]", lambda n: ("l/d", {"f": nested(n, {"e": [1]})}), 1, 40)
        boundary("bytes of one string", lambda n: ("l/d", {"s": "x" * n}), 1000, 1_100_000)
        boundary(
            "bytes of one bytes value in a map", lambda n: ("l/d", {"m": {"b": b"\0" * n}}), 1000, 1_100_000
        )

        def sized(n: int) -> tuple[str, dict[str, Any]]:
            """A document of n bytes by the storage-size rules (two strings, one in a map)."""
            path = "l/sized"
            room = n - document_size(path, {"a": "", "m": {"b": ""}})
            return path, {"a": "x" * (room // 2), "m": {"b": "y" * (room - room // 2)}}

        boundary("document size (storage-size rules)", sized, 100_000, 1_100_000)
        boundary("bytes of a field name", lambda n: ("l/d", {"n" * n: 1}), 1, 20_000)
        boundary("bytes of a field path", lambda n: ("l/d", {"p" * 10: {"q" * (n - 11): 1}}), 20, 20_000)
        boundary("bytes of a document id", lambda n: ("l/" + "i" * n, {"v": 1}), 1, 20_000)
        boundary("bytes of a collection id", lambda n: ("c" * n + "/x", {"v": 1}), 1, 20_000)
        boundary("bytes of a reference's id", lambda n: ("l/d", {"r": Reference("c/" + "i" * n)}), 1, 20_000)
        name = "/".join(["c", "i" * 1500] * 5)
        print(
            f"a document name of {len(name):,} bytes (Cloud Firestore: at most 6 KiB): "
            f"{'accepted' if accepted(name, {'v': 1}) else 'refused'}"
        )

        def raw(request: Any) -> bool:
            try:
                store._batch_write(request, metadata=store._metadata, timeout=120)
            except Exception:  # a grpc.RpcError: the refusal being measured
                return False
            return True

        for writes in (500, 501, 40_000):  # one raw request each (the adapter would split them)
            request = _pb["BatchWriteRequest"](database=store._database_name)
            prefix = f"batch{uuid.uuid4().hex[:6]}"
            for i in range(writes):
                store._encode_write(Write.set(f"{prefix}/{i}", {"v": i}), request.writes.add())
            print(
                f"{writes:,} writes in one BatchWrite request of {request.ByteSize():,} bytes: "
                f"{'accepted' if raw(request) else 'refused'}"
            )

        def request_of(total: int) -> bool:
            """One raw BatchWrite request of exactly ``total`` bytes (five writes)."""
            request = _pb["BatchWriteRequest"](database=store._database_name)
            for name in "abcde":
                write = Write.set(f"raw/{name}", {"s": "x" * (1_000_000 if name != "e" else 0)})
                store._encode_write(write, request.writes.add())
            last = request.writes[-1].update.fields["s"]
            while request.ByteSize() != total:
                last.string_value = "x" * (len(last.string_value) + total - request.ByteSize())
            return raw(request)

        size = largest(request_of, 4_100_000, 5_000_000)
        print(f"bytes in one BatchWrite request: {size:,} accepted, {size + 1:,} refused")
        query_limits(store)
    finally:
        store.close()


def query_limits(store: FirestoreStore) -> None:
    """The limits of a query's in / array-contains-any filters, next to docshift's check of them."""
    [seeded] = store.commit([Write.set("q/a", {"x": 1, "t": [1]})])
    assert seeded.ok, seeded.error

    def answered(filters: list[Filter]) -> bool:
        try:
            list(store.stream(Query("q", filters=tuple(filters))))
        except PermanentError:
            return False
        return True

    def values(op: str, n: int) -> list[Filter]:
        return [Filter.parse("t" if op == "array-contains-any" else "x", op, list(range(n)))]

    for op in ("in", "array-contains-any"):

        def accepted(k: int, op: str = op) -> bool:
            return answered(values(op, k))

        n = largest(accepted, 1, 100)
        print(
            f"values in one {op} filter: {n} accepted, {n + 1} refused; docshift: "
            f"{query_problem(values(op, n))!r} / {query_problem(values(op, n + 1))!r}"
        )

    def product(k: int) -> list[Filter]:
        return [Filter.parse("x", "in", [1, 2]), Filter.parse("y", "in", list(range(k)))]

    k = largest(lambda k: answered(product(k)), 1, 30)
    print(
        f"in 2 x in k: k = {k} accepted, {k + 1} refused (disjunctions {2 * k} / {2 * k + 2}); docshift: "
        f"{query_problem(product(k))!r} / {query_problem(product(k + 1))!r}"
    )
    two = [Filter.parse("t", "array-contains", 1), Filter.parse("u", "array-contains-any", [1])]
    print(
        f"two array filters: {'accepted' if answered(two) else 'refused'}; docshift: {query_problem(two)!r}"
    )


def main() -> None:
    location = find_emulator()
    if location.host:
        measure(location.host)
        return
    with Emulator(location) as emulator:
        assert emulator.host is not None
        measure(emulator.host)


if __name__ == "__main__":
    main()

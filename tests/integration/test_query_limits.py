"""Firestore's query limits at their boundaries, on the emulator and on the in-memory store alike:
docshift's check (``query_problem``, applied when a migration is loaded) refuses exactly what the
store refuses (``scripts/store_limits.py`` measured these)."""

from __future__ import annotations

from typing import Any

import pytest

from docshift.errors import PermanentError
from docshift.store import Filter, Query, Store, Write
from docshift.store.semantics import query_problem


def f(field: str, op: str, value: Any) -> Filter:
    return Filter.parse(field, op, value)


BOUNDARIES = [
    ("30 in values", [f("x", "in", list(range(30)))], True),
    ("31 in values", [f("x", "in", list(range(31)))], False),
    ("31 in values, all the same", [f("x", "in", [1] * 31)], False),
    ("an empty in", [f("x", "in", [])], False),
    ("30 array-contains-any values", [f("t", "array-contains-any", list(range(30)))], True),
    ("31 array-contains-any values", [f("t", "array-contains-any", list(range(31)))], False),
    ("in 2 x in 15", [f("x", "in", [1, 2]), f("y", "in", list(range(15)))], True),
    ("in 2 x in 16", [f("x", "in", [1, 2]), f("y", "in", list(range(16)))], False),
    ("in 2 (one value twice) x in 16", [f("x", "in", [1, 1]), f("y", "in", list(range(16)))], True),
    ("the same in filter twice", [f("x", "in", list(range(6))), f("x", "in", list(range(6)))], True),
    (
        "in 6 x array-contains-any 6",
        [f("x", "in", list(range(6))), f("t", "array-contains-any", list(range(6)))],
        False,
    ),
    ("in 2 x array-contains", [f("x", "in", [1, 2]), f("t", "array-contains", 1)], True),
    ("array-contains twice", [f("t", "array-contains", 1), f("u", "array-contains", 1)], False),
    (
        "array-contains and array-contains-any",
        [f("t", "array-contains", 1), f("u", "array-contains-any", [1])],
        False,
    ),
]


@pytest.mark.parametrize(("filters", "accepted"), [b[1:] for b in BOUNDARIES], ids=[b[0] for b in BOUNDARIES])
def test_the_store_and_docshift_agree_at_each_query_limit(
    any_store: Store, filters: list[Filter], accepted: bool
) -> None:
    assert all(r.ok for r in any_store.commit([Write.set("q/a", {"x": 1, "y": 1, "t": [1], "u": [1]})]))
    query = Query("q", filters=tuple(filters))
    assert (query_problem(filters) is None) is accepted
    if accepted:
        assert [d.path for d in any_store.stream(query)] == ["q/a"]
        assert any_store.count(query) == 1
        return
    with pytest.raises(PermanentError) as caught:
        list(any_store.stream(query))
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.hint
    with pytest.raises(PermanentError):
        any_store.count(query)

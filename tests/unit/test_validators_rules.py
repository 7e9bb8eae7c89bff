"""Every rule on passing and failing documents (memory store where a rule looks documents up)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from docshift.errors import UsageError
from docshift.store import Document, Write
from docshift.testing import MemoryStore
from docshift.validators import (
    Rule,
    RuleContext,
    count,
    in_range,
    length,
    matches,
    not_null,
    of_type,
    one_of,
    predicate,
    references,
    required,
    unique,
)
from docshift.validators.collection import DigestSet, digest
from docshift.values import GeoPoint, Reference, Timestamp


def check(rule: Rule, data: dict[str, Any], path: str = "users/u1") -> str | None:
    return rule.session(RuleContext()).check_batch([Document(path, data)])[0]


def run_session(rule: Rule, docs: Sequence[dict[str, Any]]) -> list[str | None]:
    session = rule.session(RuleContext())
    return session.check_batch([Document(f"users/u{i}", data) for i, data in enumerate(docs)])


# --- presence -------------------------------------------------------------------------------------


def test_required_accepts_null_but_not_a_missing_field_and_reaches_nested_fields() -> None:
    rule = required("first_name", "address.city")
    assert rule.name == "required(first_name, address.city)"
    assert check(rule, {"first_name": None, "address": {"city": "Oslo"}}) is None
    assert check(rule, {"address": {"city": "Oslo"}}) == "first_name is missing"
    assert check(rule, {"first_name": "a", "address": {}}) == "address.city is missing"
    assert check(rule, {"first_name": "a", "address": "Oslo"}) == "address.city is missing"
    with pytest.raises(UsageError):
        required()


def test_not_null_refuses_null_and_missing() -> None:
    rule = not_null("email")
    assert check(rule, {"email": ""}) is None
    assert check(rule, {"email": None}) == "email is null"
    assert check(rule, {}) == "email is missing"


def test_backticks_quote_field_names_with_dots() -> None:
    rule = required("`a.b`.c")
    assert check(rule, {"a.b": {"c": 1}}) is None
    assert check(rule, {"a": {"b": {"c": 1}}}) == "`a.b`.c is missing"


# --- types and values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "good", "bad"),
    [
        ("string", "x", b"x"),
        ("int", 3, 3.0),
        ("float", 3.0, 3),
        ("bool", False, 0),
        ("timestamp", Timestamp(1, 5), "2024-01-01"),
        ("timestamp", datetime(2024, 1, 1, tzinfo=UTC), 1_700_000_000),
        ("map", {"a": 1}, [("a", 1)]),
        ("array", [1, "a"], {"0": 1}),
        ("reference", Reference("users/u2"), "users/u2"),
        ("geopoint", GeoPoint(59.9, 10.7), {"latitude": 59.9, "longitude": 10.7}),
        ("bytes", b"\x00", "\x00"),
        ("null", None, 0),
        ("number", 1.5, "1.5"),
    ],
)
def test_of_type_each_firestore_type(type_name: str, good: Any, bad: Any) -> None:
    rule = of_type("value", type_name)
    assert check(rule, {"value": good}) is None
    message = check(rule, {"value": bad})
    assert message is not None and message.startswith("value is ")
    assert check(rule, {}) is None  # missing: a job for required()


def test_of_type_with_several_types_and_unknown_names() -> None:
    rule = of_type("age", "int", "null")
    assert rule.name == "of_type(age: int|null)"
    assert check(rule, {"age": None}) is None
    assert check(rule, {"age": "7"}) == "age is string, expected int or null"
    with pytest.raises(UsageError, match="unknown type 'integer'"):
        of_type("age", "integer")
    with pytest.raises(UsageError):
        of_type("age")


def test_one_of_is_type_strict() -> None:
    rule = one_of("status", ["active", "closed", 1])
    assert check(rule, {"status": "active"}) is None
    assert check(rule, {"status": 1}) is None
    assert check(rule, {"status": 1.0}) == "status is 1.0, not one of ['active', 'closed', 1]"
    assert check(rule, {"status": True}) is not None
    assert check(rule, {"status": None}) is not None
    with pytest.raises(UsageError):
        one_of("status", [])


def test_matches_needs_the_whole_string() -> None:
    rule = matches("email", r"[^@\s]+@[^@\s]+\.[a-z]+")
    assert check(rule, {"email": "ana@example.org"}) is None
    assert check(rule, {"email": "ana@example.org and more"}) is not None
    assert check(rule, {"email": "nope"}) == r"email 'nope' does not match [^@\s]+@[^@\s]+\.[a-z]+"
    assert check(rule, {"email": 42}) == "email is int, expected a string"
    with pytest.raises(UsageError, match="bad regular expression"):
        matches("email", "(")


def test_in_range_is_inclusive_and_numeric_only() -> None:
    rule = in_range("age", 0, 150)
    assert rule.name == "in_range(age, 0..150)"
    for good in (0, 150, 42.5):
        assert check(rule, {"age": good}) is None
    assert check(rule, {"age": -1}) == "age is -1, below the minimum 0"
    assert check(rule, {"age": 151}) == "age is 151, above the maximum 150"
    assert check(rule, {"age": math.nan}) == "age is NaN"
    assert check(rule, {"age": True}) == "age is bool, expected a number"
    assert check(rule, {"age": "7"}) == "age is string, expected a number"
    assert check(in_range("score", minimum=0.5), {"score": 0.4}) is not None
    assert check(in_range("score", maximum=1), {"score": -5}) is None
    with pytest.raises(UsageError):
        in_range("age")
    with pytest.raises(UsageError):
        in_range("age", 10, 1)


def test_length_counts_characters_or_items() -> None:
    rule = length("name", 2, 5)
    assert check(rule, {"name": "åse"}) is None  # characters, not bytes
    assert check(rule, {"name": "a"}) == "name has 1 characters, fewer than 2"
    assert check(rule, {"name": "abcdef"}) == "name has 6 characters, more than 5"
    assert check(rule, {"name": ["a", "b", "c", "d", "e", "f"]}) == "name has 6 items, more than 5"
    assert check(rule, {"name": 12}) == "name is int, expected a string or an array"
    with pytest.raises(UsageError):
        length("name")


def test_predicate_gets_a_read_only_view_and_fails_when_it_raises() -> None:
    def adult(doc: Any) -> bool:
        data = doc.data
        data["age"] = 0  # a copy: the checked data stays as it was
        return bool(doc.get("age", 0) >= 18)

    rule = predicate(adult, "must be an adult")
    assert rule.name == "predicate(adult)"
    original = {"age": 30}
    assert check(rule, original) is None and original == {"age": 30}
    assert check(rule, {"age": 12}) == "must be an adult"
    assert check(predicate(lambda doc: doc.id.startswith("u"), "id", name="ids"), {}, "users/x1") == "id"
    raising = predicate(lambda doc: doc.data["missing"], "needs missing")
    assert check(raising, {}) == "needs missing (the predicate raised KeyError: 'missing')"
    with pytest.raises(UsageError):
        predicate("not a function", "x")  # type: ignore[arg-type]


# --- collection rules -----------------------------------------------------------------------------


def test_digest_set_stays_exact_across_flushes_and_merges() -> None:
    digests = DigestSet(buffer=16)
    values = random.Random(7).sample(range(1 << 62), 2000)
    assert all(digests.add(value) for value in values)
    assert digests.size == 2000 and len(digests._runs) > 1
    assert not any(digests.add(value) for value in values)
    assert all(value in digests for value in values)
    assert (1 << 63) not in digests and "text" not in digests


def test_unique_flags_every_repeat_and_is_type_strict() -> None:
    rule = unique("email")
    assert not rule.inline
    results = run_session(
        rule,
        [
            {"email": "a"},
            {"email": "b"},
            {"email": "a"},
            {},
            {"email": None},
            {"email": None},
            {"email": 1},
            {"email": 1.0},
            {"email": "a"},
        ],
    )
    assert [r is None for r in results] == [True, True, False, True, True, True, True, True, False]
    assert results[2] == "email 'a' is not unique (an earlier document has it)"
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest(1) != digest(1.0) and digest(True) != digest(1)


class CountingStore(MemoryStore):
    """Counts lookups, to show that references are batched and cached."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[int] = []

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        self.requests.append(len(paths))
        return super().get_many(paths, read_time=read_time)


def test_references_by_reference_id_or_array_with_batched_cached_lookups() -> None:
    store = CountingStore()
    store.commit([Write.set(f"companies/c{i}", {"n": i}) for i in range(3)])
    rule = references("company", "companies")
    assert rule.name == "references(company -> companies)"
    docs = [
        {"company": "c0"},
        {"company": Reference("companies/c1")},
        {"company": ["c1", "c2"]},
        {},
        {"company": None},
        {"company": "c9"},
        {"company": Reference("teams/c1")},
        {"company": 7},
        {"company": "a/b"},
    ]
    session = rule.session(RuleContext(store=store))
    results = session.check_batch([Document(f"users/u{i}", d) for i, d in enumerate(docs)])
    assert results[:5] == [None] * 5
    assert results[5] == "company points to companies/c9, which does not exist"
    assert results[6] == "company points to teams/c1, outside companies"
    assert results[7] == "company is int 7, not a reference or a document id"
    assert results[8] is not None
    assert store.requests == [4]  # one lookup for the batch: c0, c1, c2, c9
    assert session.check_batch([Document("users/x", {"company": "c9"})])[0] is not None
    assert store.requests == [4]  # answered from the cache
    with pytest.raises(UsageError):
        references("company", "companies/c1")


@pytest.mark.parametrize(
    ("expect", "context", "failure"),
    [
        ("equal", RuleContext(phase="after", total=10, before_total=10), None),
        (
            "equal",
            RuleContext(phase="after", total=9, before_total=10),
            "expected 10 documents (10 before), found 9",
        ),
        ("minus_deleted", RuleContext(phase="after", total=7, before_total=10, deleted=3), None),
        (
            "minus_deleted",
            RuleContext(phase="after", total=10, before_total=10, deleted=3),
            "expected 7 documents (10 before - 3 deleted), found 10",
        ),
        ("plus_created", RuleContext(phase="after", total=15, before_total=10, created=5), None),
        (
            "plus_created",
            RuleContext(phase="after", total=14, before_total=10, created=5),
            "expected 15 documents (10 before + 5 created), found 14",
        ),
        (
            "plus_created",
            RuleContext(phase="after", total=15, before_total=99, target_before=10, created=5),
            None,
        ),
        (
            "equal",
            RuleContext(phase="after", total=15, before_total=99, target_before=10),
            "expected 99 documents (99 before), found 15",
        ),  # a copy: equal compares with the source
        ("equal", RuleContext(phase="after", total=9, before_total=None), None),  # nothing to compare with
        ("equal", RuleContext(phase="before", total=9, before_total=10), None),
    ],
)
def test_count_expectations(expect: str, context: RuleContext, failure: str | None) -> None:
    session = count(expect).session(context)
    assert session.check_batch([Document("users/u", {})]) == [None]
    assert session.finish() == ([failure] if failure else [])


def test_count_tolerance_and_bad_arguments() -> None:
    context = RuleContext(phase="after", total=98, before_total=100)
    assert count("equal", tolerance=2).session(context).finish() == []
    assert count("equal", tolerance=1).session(context).finish() != []
    with pytest.raises(UsageError, match="unknown expectation"):
        count("more")
    with pytest.raises(UsageError):
        count(tolerance=-1)

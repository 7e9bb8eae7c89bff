"""Field-level diffs, the update-or-set choice, and "equal data means no write"."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from docshift.engine.diff import FieldChange, field_changes, update_fields
from docshift.migration import DocView
from docshift.store import DELETE_FIELD, Write, WriteKind
from docshift.testing import MemoryStore, RecordingStore
from docshift.values import GeoPoint, Timestamp, values_equal
from tests.strategies import documents
from tests.unit.engine_support import make_migration, processor


def paths(changes: list[FieldChange]) -> set[tuple[str, ...]]:
    return {c.path for c in changes}


def apply_update(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Send the masked update the diff produces to a store and read back the result."""
    store = MemoryStore()
    [created] = store.commit([Write.set("c/d", old)])
    assert created.ok
    changes = field_changes(old, new)
    if changes:
        update = Write.update("c/d", update_fields(changes), update_time=created.update_time)
        [result] = store.commit([update])
        assert result.ok, result.error
    doc = store.get("c/d")
    assert doc is not None
    return doc.data


def test_nested_maps_are_diffed_by_path() -> None:
    old = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "x": 1}
    new = {"a": {"b": 1, "c": {"d": 2, "e": 4}}, "x": 1}
    [change] = field_changes(old, new)
    assert change.path == ("a", "c", "e") and change.old == 3 and change.new == 4
    assert not change.added and not change.removed
    assert change.describe() == "~ a.c.e: 3 -> 4"
    assert apply_update(old, new) == new


def test_deleted_and_added_fields_top_level_and_nested() -> None:
    old = {"keep": 1, "gone": "x", "m": {"gone": True, "stay": 2}}
    new = {"keep": 1, "m": {"stay": 2, "fresh": [1]}, "top": None}
    changes = {c.path: c for c in field_changes(old, new)}
    assert set(changes) == {("gone",), ("m", "gone"), ("m", "fresh"), ("top",)}
    assert changes[("gone",)].removed and changes[("gone",)].old == "x"
    assert changes[("m", "gone")].removed
    assert changes[("m", "fresh")].added and changes[("m", "fresh")].new == [1]
    assert changes[("top",)].added and changes[("top",)].new is None  # null is a value, not absence
    assert changes[("gone",)].describe() == "- gone: 'x'"
    assert changes[("top",)].describe() == "+ top: None"
    assert update_fields(list(changes.values()))[("gone",)] is DELETE_FIELD
    assert apply_update(old, new) == new


def test_field_names_with_dots_and_backticks_stay_one_segment() -> None:
    old = {"a.b": 1, "a": {"b": 2}, "`q`": {"x.y": 1}}
    new = {"a.b": 10, "a": {"b": 2}, "`q`": {"x.y": 2}}
    assert paths(field_changes(old, new)) == {("a.b",), ("`q`", "x.y")}
    assert apply_update(old, new) == new  # a.b did not become a nested a -> b


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (1, "1"),
        (1, 1.0),
        (True, 1),
        (0, False),
        (0.0, -0.0),
        ({"k": 1}, [1]),
        ({"k": 1}, "k"),
        ([1, 2], [2, 1]),
        ([1], [1, 1]),
        (None, 0),
        (b"a", "a"),
        (Timestamp(1, 0), 1),
        (GeoPoint(1.0, 2.0), GeoPoint(1.0, 2.5)),
    ],
)
def test_type_changes_are_changes(old: Any, new: Any) -> None:
    [change] = field_changes({"v": old}, {"v": new})
    assert change.path == ("v",) and change.old == old and type(change.new) is type(new)
    assert values_equal(apply_update({"v": old}, {"v": new}), {"v": new})


def test_a_map_emptied_or_filled_is_replaced_as_a_whole() -> None:
    assert [c.path for c in field_changes({"m": {"a": 1}}, {"m": {}})] == [("m",)]
    assert values_equal(apply_update({"m": {"a": 1}}, {"m": {}}), {"m": {}})
    assert values_equal(apply_update({"m": {}}, {"m": {"a": 1}}), {"m": {"a": 1}})


@pytest.mark.parametrize(
    "data",
    [
        {"nan": math.nan, "list": [math.nan, 1.0], "m": {"nan": math.nan}},
        {"a": {"b": {"c": []}}, "t": Timestamp(5, 6), "e": {}},
    ],
)
def test_equal_data_has_no_changes(data: dict[str, Any]) -> None:
    assert field_changes(data, dict(data)) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=documents(micros_only=True), new=documents(micros_only=True))
def test_applying_the_diff_gives_exactly_the_new_data(old: dict[str, Any], new: dict[str, Any]) -> None:
    changes = field_changes(old, new)
    assert (changes == []) == values_equal(old, new)
    assert values_equal(apply_update(old, new), new)


# ------------------------------------------------------------------ what the engine decides to send
def source_doc(store: MemoryStore, data: dict[str, Any]) -> Any:
    store.commit([Write.set("users/a", data)])
    doc = store.get("users/a")
    assert doc is not None
    return doc


def test_a_small_change_to_a_wide_document_is_a_masked_update(tmp_path: Path) -> None:
    store = MemoryStore()
    data = {f"f{i}": i for i in range(20)} | {"m": {"x": 1, "y": 2}, "blob": "z" * 20_000}
    source = source_doc(store, data)

    def up(doc: DocView) -> Any:
        new = doc.data
        new["m"]["x"] = 5
        del new["f3"]
        return new

    decision = processor(store, make_migration(up), tmp_path).decide(source, source)
    assert decision.kind == "update"
    assert decision.write is not None and decision.write.kind == WriteKind.UPDATE
    assert decision.write.fields == {("m", "x"): 5, ("f3",): DELETE_FIELD}
    assert decision.write.precondition is not None
    assert decision.write.precondition.update_time == source.update_time


def test_rewriting_most_fields_sends_the_whole_document(tmp_path: Path) -> None:
    store = MemoryStore()
    source = source_doc(store, {"a": 1, "b": 2, "c": 3, "keep": 0})
    new = {"x": {"a": 1, "b": 2, "c": 3}, "keep": 0}
    decision = processor(store, make_migration(lambda doc: new), tmp_path).decide(source, source)
    assert decision.kind == "set"
    assert decision.write is not None and decision.write.kind == WriteKind.SET
    assert decision.write.data == new
    assert decision.write.precondition is not None
    assert decision.write.precondition.update_time == source.update_time  # still guarded


def test_returning_equal_data_is_unchanged_and_writes_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    source = source_doc(store, {"n": math.nan, "t": Timestamp(1, 2), "m": {"a": [1]}})
    recorder = RecordingStore(store)
    proc = processor(recorder, make_migration(lambda doc: doc.data), tmp_path)
    assert proc.decide(source, source).kind == "unchanged"
    counts = proc.process([source])
    assert counts == {"unchanged": 1}
    assert recorder.commits == 0

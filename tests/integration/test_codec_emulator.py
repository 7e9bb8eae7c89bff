"""Values through the real store and the file codec: emulator -> codec -> emulator is exact.

Emulator behaviours pinned here (and copied by the memory store, which runs the same tests):

* ``-0.0`` keeps its sign; NaN and the infinities are stored. A NaN's payload and sign bit are not:
  every NaN reads back as the canonical quiet NaN ``0x7ff8000000000000``.
* Timestamp *values* keep microseconds only: the nanoseconds below are truncated (never rounded).
  Document update/create times keep their microsecond resolution too.
* GeoPoints must lie in latitude -90..90, longitude -180..180; NaN and infinities are refused.
* Timestamps must lie in the years 1 to 9999.
* Field names matching ``__.+__`` are reserved (``____`` is allowed); a field path, the UTF-8 names
  joined with dots (through arrays, without backticks), may be at most 1500 bytes.
* References keep project and database; one without a project gets the store's project, an empty
  database becomes ``(default)``; the path must be a valid document path.
* A string with a lone surrogate cannot be stored (UTF-8 only).

Everything a store refuses is refused for that one write, as a PermanentError result, never as an
exception for the whole batch.
"""

from __future__ import annotations

import math
import struct
import uuid
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from docshift import codec
from docshift.errors import PermanentError
from docshift.store import DELETE_FIELD, RetryingStore, Store, Write
from docshift.testing import MemoryStore
from docshift.values import GeoPoint, Reference, Timestamp, values_equal
from tests.strategies import documents

EMULATOR_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
CANONICAL_NAN = 0x7FF8_0000_0000_0000


def put(store: Store, data: dict[str, Any], path: str | None = None) -> str:
    path = path or f"docs/{uuid.uuid4().hex}"
    [result] = store.commit([Write.set(path, data)])
    assert result.ok, result.error
    return path


def read(store: Store, path: str) -> dict[str, Any]:
    doc = store.get(path)
    assert doc is not None
    return doc.data


def through(store: Store, data: dict[str, Any]) -> dict[str, Any]:
    return read(store, put(store, data))


def refused(store: Store, data: dict[str, Any]) -> PermanentError:
    """Writes ``data`` between two good writes: only it fails, as a result; it is not stored."""
    before, bad, after = (f"docs/{uuid.uuid4().hex}" for _ in range(3))
    results = store.commit([Write.set(before, {"ok": 1}), Write.set(bad, data), Write.set(after, {"ok": 2})])
    assert [r.ok for r in results] == [True, False, True], [r.error for r in results]
    assert isinstance(results[1].error, PermanentError)
    assert results[1].error.path == bad
    assert store.get(bad) is None
    return results[1].error


def truncated(value: Any) -> Any:
    """``value`` with every Timestamp cut to whole microseconds, as Firestore stores it."""
    if isinstance(value, Timestamp):
        return Timestamp(value.seconds, value.nanos - value.nanos % 1000)
    if isinstance(value, dict):
        return {key: truncated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [truncated(item) for item in value]
    return value


# --------------------------------------------------------------------------- properties


@EMULATOR_SETTINGS
@given(doc=documents(micros_only=True))
def test_documents_round_trip_through_emulator_codec_and_emulator_again(
    firestore_store: RetryingStore, doc: dict[str, Any]
) -> None:
    path = put(firestore_store, doc)
    stored = read(firestore_store, path)
    assert values_equal(stored, doc)

    decoded = codec.loads(codec.dumps(stored))
    assert values_equal(decoded, doc)

    again = read(firestore_store, put(firestore_store, decoded))
    assert values_equal(again, doc)
    put(firestore_store, decoded, path)  # overwriting with the decoded copy changes nothing
    assert values_equal(read(firestore_store, path), doc)


@EMULATOR_SETTINGS
@given(doc=documents(micros_only=False))
def test_the_memory_store_stores_exactly_what_the_emulator_stores(
    firestore_store: RetryingStore, doc: dict[str, Any]
) -> None:
    memory = MemoryStore(project=firestore_store.info.project)
    from_emulator = through(firestore_store, doc)
    from_memory = through(memory, doc)
    assert values_equal(from_memory, from_emulator)
    assert values_equal(from_emulator, truncated(doc))
    # A backup written from either store restores to the same document.
    assert values_equal(codec.loads(codec.dumps(from_memory)), codec.loads(codec.dumps(from_emulator)))


# --------------------------------------------------------------------------- floats


def test_special_floats_are_stored_exactly(any_store: Store) -> None:
    data = {
        "neg_zero": -0.0,
        "zero": 0.0,
        "nan": math.nan,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "tiny": 5e-324,
        "max": 1.7976931348623157e308,
        "list": [-0.0, math.nan],
        "map": {"z": -0.0},
    }
    stored = through(any_store, data)
    assert values_equal(stored, data)
    assert math.copysign(1.0, stored["neg_zero"]) == -1.0
    assert math.copysign(1.0, stored["zero"]) == 1.0
    assert math.copysign(1.0, stored["map"]["z"]) == -1.0
    assert values_equal(codec.loads(codec.dumps(stored)), data)


def test_the_emulator_canonicalises_nan_payloads(firestore_store: RetryingStore) -> None:
    odd_nans = [0xFFF8_0000_0000_0001, 0x7FF0_0000_0000_0001, 0xFFF8_0000_0000_0000]
    values: list[float] = [struct.unpack("<d", struct.pack("<Q", bits))[0] for bits in odd_nans]
    assert all(math.isnan(v) for v in values)
    stored = through(firestore_store, {"nans": values})["nans"]
    assert [struct.unpack("<Q", struct.pack("<d", v))[0] for v in stored] == [CANONICAL_NAN] * 3
    assert values_equal(stored, values)  # all NaNs are one value to docshift, as to Firestore


def test_ints_and_floats_stay_distinct_types(any_store: Store) -> None:
    data = {"i": 1, "f": 1.0, "b": True, "imin": -(2**63), "imax": 2**63 - 1, "zero": 0, "zf": 0.0}
    stored = through(any_store, data)
    assert {k: type(v) for k, v in stored.items()} == {k: type(v) for k, v in data.items()}
    assert values_equal(stored, data)


# --------------------------------------------------------------------------- timestamps


def test_timestamp_values_are_truncated_to_microseconds(any_store: Store) -> None:
    data = {
        "a": Timestamp(1, 999_999_999),
        "b": Timestamp(-1, 1),
        "c": Timestamp(1_700_000_000, 123_456_789),
        "d": Timestamp(5, 1_000),
        "nested": [{"t": Timestamp(0, 999)}],
    }
    stored = through(any_store, data)
    assert stored == {
        "a": Timestamp(1, 999_999_000),
        "b": Timestamp(-1, 0),
        "c": Timestamp(1_700_000_000, 123_456_000),
        "d": Timestamp(5, 1_000),
        "nested": [{"t": Timestamp(0, 0)}],
    }
    # Files keep whatever they are given: the codec itself never truncates.
    assert codec.loads(codec.dumps(data))["a"] == Timestamp(1, 999_999_999)


def test_timestamps_at_the_ends_of_the_allowed_range(any_store: Store) -> None:
    data = {"first": Timestamp(-62_135_596_800, 0), "last": Timestamp(253_402_300_799, 999_999_000)}
    assert through(any_store, data) == data


@pytest.mark.parametrize("stamp", [Timestamp(-62_135_596_801, 999_999_000), Timestamp(253_402_300_800, 0)])
def test_timestamps_outside_years_1_to_9999_are_refused(any_store: Store, stamp: Timestamp) -> None:
    refused(any_store, {"t": stamp})


def test_datetimes_are_read_back_as_timestamps(any_store: Store) -> None:
    from datetime import UTC, datetime

    moment = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
    stored = through(any_store, {"t": moment})["t"]
    assert type(stored) is Timestamp and stored == Timestamp.from_datetime(moment)


def test_document_times_are_microsecond_timestamps(any_store: Store) -> None:
    path = put(any_store, {"v": 1})
    doc = any_store.get(path)
    assert doc is not None and doc.update_time is not None and doc.create_time is not None
    assert doc.update_time.nanos % 1000 == 0 and doc.create_time == doc.update_time


# --------------------------------------------------------------------------- geopoints and references


def test_geopoints_at_the_limits_and_negative_zero(any_store: Store) -> None:
    data = {"corners": [GeoPoint(90.0, 180.0), GeoPoint(-90.0, -180.0)], "origin": GeoPoint(-0.0, -0.0)}
    stored = through(any_store, data)
    assert values_equal(stored, data)
    assert math.copysign(1.0, stored["origin"].latitude) == -1.0


@pytest.mark.parametrize(
    "point",
    [
        GeoPoint(math.nan, 0.0),
        GeoPoint(0.0, math.nan),
        GeoPoint(90.5, 0.0),
        GeoPoint(-91.0, 0.0),
        GeoPoint(0.0, 180.5),
        GeoPoint(0.0, -math.inf),
        GeoPoint(math.inf, 0.0),
    ],
)
def test_geopoints_out_of_range_are_refused(any_store: Store, point: GeoPoint) -> None:
    message = refused(any_store, {"where": {"deep": [point]}}).message
    assert "atitude" in message or "ongitude" in message


def test_references_keep_project_database_and_path(any_store: Store) -> None:
    project = any_store.info.project
    data = {
        "same": Reference("users/a", project, "(default)"),
        "other_project": Reference("users/b", "elsewhere", "(default)"),
        "other_database": Reference("users/c/orders/o1", project, "db-2"),
        "unicode": Reference("a b/ü id", project, "(default)"),
    }
    stored = through(any_store, data)
    assert values_equal(stored, data)
    assert values_equal(codec.loads(codec.dumps(stored)), data)


def test_a_reference_without_project_or_database_gets_the_stores(any_store: Store) -> None:
    stored = through(any_store, {"r": Reference("users/a", "", ""), "s": Reference("users/b")})
    assert stored["r"] == Reference("users/a", any_store.info.project, "(default)")
    assert stored["s"] == Reference("users/b", any_store.info.project, "(default)")


@pytest.mark.parametrize("path", ["users", "a/b/c", "users//a", "a/.", "a/..", "a/__x__", "__c__/a"])
def test_references_that_are_not_document_paths_are_refused(any_store: Store, path: str) -> None:
    refused(any_store, {"r": Reference(path, any_store.info.project)})


# --------------------------------------------------------------------------- maps, names and depth


def test_maps_with_the_codecs_tag_key_round_trip_through_the_store(any_store: Store) -> None:
    data = {
        "$t": "ts",
        "v": [1, 2],
        "m": {"$t": "map", "v": {"$t": None}},
        "l": [{"$t": "bytes", "v": "AA=="}],
    }
    stored = through(any_store, data)
    assert values_equal(stored, data)
    decoded = codec.loads(codec.dumps(stored))
    assert values_equal(decoded, data)
    assert values_equal(through(any_store, decoded), data)


def test_empty_map_empty_array_null_and_missing_stay_distinct(any_store: Store) -> None:
    data: dict[str, Any] = {"map": {}, "array": [], "null": None, "nested": {"map": {}, "array": []}}
    stored = through(any_store, data)
    assert values_equal(stored, data)
    assert "missing" not in stored
    assert values_equal(codec.loads(codec.dumps(stored)), data)


AWKWARD_NAMES = [
    "a.b",
    "with space",
    "`tick`",
    "back\\slash",
    "ü",
    "日本",
    "\U0001f600",
    "$t",
    "____",
    "__x",
    "x__",
    "___",
    "1",
    "-",
    "\x00",
    ".",
    "a`b.c`d",
]


def test_awkward_field_names_round_trip(any_store: Store) -> None:
    data = {name: {name: [{name: name}]} for name in AWKWARD_NAMES}
    stored = through(any_store, data)
    assert values_equal(stored, data)
    assert values_equal(codec.loads(codec.dumps(stored)), data)


def test_updating_awkward_field_paths(any_store: Store) -> None:
    path = put(any_store, {"a.b": {"`c`": 1}, "__x": {"y__": 1}, "drop me": 1})
    [result] = any_store.commit(
        [
            Write.update(
                path,
                {
                    ("a.b", "`c`"): 2,
                    ("__x", "y__"): {"$t": "map"},
                    ("drop me",): DELETE_FIELD,
                    ("new field",): [],
                },
            )
        ]
    )
    assert result.ok, result.error
    assert values_equal(
        read(any_store, path), {"a.b": {"`c`": 2}, "__x": {"y__": {"$t": "map"}}, "new field": []}
    )


@pytest.mark.parametrize(
    "data",
    [{"__x__": 1}, {"m": {"__name__": 1}}, {"a": [{"__a b__": 1}]}, {"_____": 1}],
    ids=["top", "nested", "in-array", "five-underscores"],
)
def test_reserved_field_names_are_refused(any_store: Store, data: dict[str, Any]) -> None:
    assert "reserved" in refused(any_store, data).message


def test_an_update_naming_a_reserved_field_is_refused(any_store: Store) -> None:
    path = put(any_store, {"m": {}})
    [result] = any_store.commit([Write.update(path, {("m", "__x__"): 1})])
    assert isinstance(result.error, PermanentError)
    assert read(any_store, path) == {"m": {}}


def test_field_paths_up_to_1500_bytes(any_store: Store) -> None:
    longest = {"x" * 700: {"é" * 399 + "y": 1}}  # 700 + "." + 799 = 1500 bytes
    assert values_equal(through(any_store, longest), longest)
    assert values_equal(through(any_store, {"x" * 1500: 1}), {"x" * 1500: 1})


@pytest.mark.parametrize(
    "data",
    [{"x" * 1501: 1}, {"é" * 750 + "x": 1}, {"x" * 700: {"y" * 800: 1}}, {"x" * 800: [{"y" * 800: 1}]}],
    ids=["one-name", "multibyte", "nested", "through-array"],
)
def test_field_paths_over_1500_bytes_are_refused(any_store: Store, data: dict[str, Any]) -> None:
    refused(any_store, data)


def nest(depth: int, leaf: Any) -> Any:
    """``depth`` levels of maps and arrays around ``leaf``."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 3 == 1 else {f"k.{level}": value}
    return value


def test_values_nested_as_deep_as_firestore_allows_round_trip(any_store: Store) -> None:
    leaf = {"$t": "ts", "t": Timestamp(7, 8000), "nan": math.nan, "b": b"\x00", "r": Reference("a/b", "p")}
    # The field's own value is level 1 (the document's field map is not a level; measured in
    # test_store_contract.py), so the leaf map is level 20, and an empty array below it adds none.
    data = {"deep": nest(19, leaf), "empty": nest(19, {"e": []})}
    stored = through(any_store, data)
    assert values_equal(stored, data)
    assert values_equal(through(any_store, codec.loads(codec.dumps(stored))), data)


def test_one_level_deeper_is_refused(any_store: Store) -> None:
    assert "deeper" in refused(any_store, {"deep": nest(20, {"x": 1})}).message
    assert "deeper" in refused(any_store, {"deep": nest(20, [1])}).message
    assert "deeper" in refused(any_store, {"deep": nest(19, {"e": [1]})}).message


# --------------------------------------------------------------------------- strings, bytes, odd types


def test_strings_and_bytes_round_trip(any_store: Store) -> None:
    data = {
        "nul": "\x00",
        "max": "\U0010ffff",
        "mixed": 'a\u2028b\tc"d\\',
        "empty": "",
        "bytes": bytes(range(256)),
        "no_bytes": b"",
        "big": "x" * 100_000,
    }
    stored = through(any_store, data)
    assert values_equal(stored, data)
    assert values_equal(codec.loads(codec.dumps(stored)), data)


@pytest.mark.parametrize(
    "data",
    [{"s": "bad \ud800"}, {"bad \udc00 name": 1}, {"l": ["ok", "\udfff"]}],
    ids=["value", "field-name", "in-array"],
)
def test_strings_with_a_lone_surrogate_fail_only_their_write(any_store: Store, data: dict[str, Any]) -> None:
    assert "unicode" in refused(any_store, data).message


@pytest.mark.parametrize(
    "value", [{1, 2}, object(), frozenset(), complex(1, 1)], ids=lambda v: type(v).__name__
)
def test_values_of_unsupported_types_fail_only_their_write(any_store: Store, value: Any) -> None:
    assert "cannot store" in refused(any_store, {"x": value}).message


def test_plain_type_subclasses_and_tuples_are_read_back_as_plain_types(any_store: Store) -> None:
    class Level(IntEnum):
        HIGH = 3

    stored = through(any_store, {"level": Level.HIGH, "pair": (1, "a"), "raw": bytearray(b"xy")})
    assert stored == {"level": 3, "pair": [1, "a"], "raw": b"xy"}
    assert [type(stored["level"]), type(stored["pair"]), type(stored["raw"])] == [int, list, bytes]

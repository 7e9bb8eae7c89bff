"""The exact value codec (``docshift.codec``) and exact comparison (``docshift.values.values_equal``).

Every Firestore value must survive ``loads(dumps(x))`` exactly: Python's ``==`` is not enough, so every
assertion goes through ``values_equal`` (type-strict, NaN equal to NaN, -0.0 distinct from 0.0).
"""

from __future__ import annotations

import enum
import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docshift import codec
from docshift.errors import CodecError, DataError
from docshift.values import GeoPoint, Reference, Timestamp, type_name, values_equal
from tests.strategies import FIELD_NAMES, documents, values

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def roundtrip(value: Any) -> Any:
    return codec.loads(codec.dumps(value))


def sign(x: float) -> float:
    return math.copysign(1.0, x)


# --------------------------------------------------------------------------- property tests


@settings(max_examples=300)
@given(documents())
def test_every_generated_document_round_trips_exactly(doc: dict[str, Any]) -> None:
    encoded = codec.dumps(doc)
    decoded = codec.loads(encoded)
    assert values_equal(decoded, doc)
    # Writing the decoded document again gives byte-identical output: the format is stable.
    assert codec.dumps(decoded) == encoded
    # The JSON-able middle layer alone is exact too (no help from orjson).
    assert values_equal(codec.decode(codec.encode(doc)), doc)


@settings(max_examples=300)
@given(values())
def test_every_generated_value_round_trips_exactly_at_top_level(value: Any) -> None:
    assert values_equal(roundtrip(value), value)


@given(st.dictionaries(st.sampled_from(["$t", "v", "$", "t", "$t "]), values(), min_size=1, max_size=5))
def test_maps_using_the_tag_keys_as_field_names_round_trip(doc: dict[str, Any]) -> None:
    assert values_equal(roundtrip(doc), doc)
    assert values_equal(roundtrip({"outer": doc, "list": [doc]}), {"outer": doc, "list": [doc]})


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize("number", [INT64_MIN, INT64_MIN + 1, -1, 0, 1, 2**53 + 1, INT64_MAX - 1, INT64_MAX])
def test_int64_values_round_trip_as_exact_ints(number: int) -> None:
    back = roundtrip(number)
    assert type(back) is int and back == number
    assert values_equal(roundtrip({"n": [number]}), {"n": [number]})


@pytest.mark.parametrize("number", [INT64_MAX + 1, INT64_MIN - 1, 2**64, -(2**100)])
def test_integers_outside_int64_are_refused_with_a_codec_error(number: int) -> None:
    with pytest.raises(CodecError, match="64 bits"):
        codec.dumps({"n": number})
    assert issubclass(CodecError, DataError)


@pytest.mark.parametrize(
    "number",
    [
        0.0,
        -0.0,
        1.0,
        -1.5,
        5e-324,
        -5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        0.1,
        1e16,
        2.0**53,
        math.pi,
        math.inf,
        -math.inf,
        math.nan,
    ],
)
def test_floats_round_trip_exactly_including_specials(number: float) -> None:
    back = roundtrip(number)
    assert type(back) is float
    assert values_equal(back, number)
    if not math.isnan(number):
        assert back == number and sign(back) == sign(number)


def test_negative_zero_keeps_its_sign_inside_containers_and_geopoints() -> None:
    doc = {"z": -0.0, "list": [-0.0, 0.0], "geo": GeoPoint(-0.0, -0.0)}
    back = roundtrip(doc)
    assert sign(back["z"]) == -1.0
    assert [sign(x) for x in back["list"]] == [-1.0, 1.0]
    assert sign(back["geo"].latitude) == -1.0 and sign(back["geo"].longitude) == -1.0


def test_nan_with_a_non_canonical_payload_decodes_as_nan() -> None:
    odd_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF8_0000_0000_0001))[0]
    assert math.isnan(odd_nan)
    assert math.isnan(roundtrip(odd_nan))


def test_whole_floats_stay_floats_and_ints_stay_ints() -> None:
    back = roundtrip({"f": 3.0, "i": 3, "b": True, "zero_f": 0.0, "zero_i": 0, "false": False})
    assert {k: type(v) for k, v in back.items()} == {
        "f": float,
        "i": int,
        "b": bool,
        "zero_f": float,
        "zero_i": int,
        "false": bool,
    }


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "\x00nul",
        "line\nbreak",
        "emoji \U0001f600",
        "\U0010ffff",
        "ünï©ødé",
        '{"$t": "ts"}',
        'tab\tquote"back\\slash',
        "\u2028\u2029",
    ],
)
def test_strings_round_trip(text: str) -> None:
    assert roundtrip(text) == text
    assert roundtrip({text or "k": text}) == {text or "k": text}


@given(st.text())
def test_any_valid_unicode_string_round_trips(text: str) -> None:
    assert roundtrip({"s": text}) == {"s": text}


def test_a_string_with_a_lone_surrogate_is_a_codec_error_not_a_crash() -> None:
    with pytest.raises(CodecError):
        codec.dumps({"s": "broken \ud800 text"})
    with pytest.raises(CodecError):
        codec.dumps({"key \udc00": 1})


@pytest.mark.parametrize("raw", [b"", b"\x00", bytes(range(256)), b"\xff" * 1000, bytearray(b"abc")])
def test_bytes_round_trip(raw: bytes) -> None:
    back = roundtrip({"b": raw})["b"]
    assert type(back) is bytes
    assert back == bytes(raw)


def test_bytes_and_strings_with_equal_content_stay_distinct() -> None:
    back = roundtrip({"b": b"abc", "s": "abc"})
    assert type(back["b"]) is bytes and type(back["s"]) is str


@pytest.mark.parametrize(
    "stamp",
    [
        Timestamp(0, 0),
        Timestamp(0, 1),
        Timestamp(1_700_000_000, 123_456_789),
        Timestamp(-1, 999_999_999),
        Timestamp(-62135596800, 0),
        Timestamp(253402300799, 999_999_999),
    ],
)
def test_timestamps_keep_nanoseconds(stamp: Timestamp) -> None:
    back = roundtrip({"t": stamp})["t"]
    assert type(back) is Timestamp
    assert (back.seconds, back.nanos) == (stamp.seconds, stamp.nanos)


def test_datetimes_are_stored_as_timestamps_with_their_microseconds() -> None:
    moment = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=timezone(timedelta(hours=2)))
    back = roundtrip({"t": moment, "naive": datetime(1969, 12, 31, 23, 59, 59, 500000)})
    assert back["t"] == Timestamp.from_datetime(moment)
    assert back["t"].to_datetime() == moment.astimezone(UTC)
    assert back["naive"] == Timestamp(-1, 500_000_000)


def test_geopoints_round_trip_including_extremes() -> None:
    points = [
        GeoPoint(90.0, 180.0),
        GeoPoint(-90.0, -180.0),
        GeoPoint(0.1, -0.1),
        GeoPoint(math.nan, math.inf),
    ]
    back = roundtrip({"p": points})["p"]
    assert all(type(p) is GeoPoint for p in back)
    assert values_equal(back, points)


@pytest.mark.parametrize(
    "ref",
    [
        Reference("users/alice"),
        Reference("users/alice", "other-project", "(default)"),
        Reference("a b/ü/c.d/`e`", "p", "named-db"),
        Reference("users/x", "", ""),
    ],
)
def test_references_keep_project_database_and_path(ref: Reference) -> None:
    back = roundtrip({"r": ref})["r"]
    assert type(back) is Reference
    assert (back.project, back.database, back.path) == (ref.project, ref.database, ref.path)


# --------------------------------------------------------------------------- containers and field names


def test_empty_map_empty_list_null_and_missing_fields_are_all_distinct() -> None:
    doc: dict[str, Any] = {"empty_map": {}, "empty_list": [], "null": None, "nested": {"empty": {}}}
    back = roundtrip(doc)
    assert values_equal(back, doc)
    assert "missing" not in back and back["null"] is None
    assert type(back["empty_map"]) is dict and type(back["empty_list"]) is list
    assert not values_equal({"a": {}}, {"a": None})
    assert not values_equal({"a": {}}, {})
    assert not values_equal({"a": {}}, {"a": []})


@pytest.mark.parametrize(
    "name",
    [
        "a.b",
        "with space",
        "`back`ticks`",
        "ü",
        "日本語",
        "\U0001f600",
        "a.b.c",
        ".",
        "`",
        " ",
        "$t",
        "v",
        "__name",
        "\x00",
        "\\",
        '"',
        "a/b",
        "[0]",
    ],
)
def test_awkward_field_names_round_trip(name: str) -> None:
    doc: dict[str, Any] = {name: {name: [{name: name}]}}
    assert values_equal(roundtrip(doc), doc)


@pytest.mark.parametrize(
    "tag_value",
    ["map", "ts", "float", "bytes", "geo", "ref", "unknown", None, 5, {"$t": "ts"}, [1, 2]],
)
def test_a_user_map_key_named_like_the_tag_round_trips(tag_value: Any) -> None:
    doc = {"$t": tag_value, "v": "nan"}
    back = roundtrip(doc)
    assert values_equal(back, doc)
    assert values_equal(roundtrip({"m": {"$t": tag_value}}), {"m": {"$t": tag_value}})
    assert values_equal(roundtrip([{"$t": tag_value, "v": [0, 0]}]), [{"$t": tag_value, "v": [0, 0]}])


def nested_map(depth: int, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = {f"level {level}.`x`": value}
    return value


def nested_mixed(depth: int, leaf: Any) -> Any:
    """Alternating map / array nesting (an array may not directly hold an array)."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 == 0 else {"m": value}
    return value


@pytest.mark.parametrize("build", [nested_map, nested_mixed])
def test_values_nested_as_deep_as_firestore_allows_round_trip(build: Any) -> None:
    leaf = {"$t": "map", "t": Timestamp(1, 2), "nan": math.nan, "z": -0.0, "b": b"\x01"}
    doc = {"deep": build(18, leaf)}  # the document is level 1, so the leaf map is level 20
    assert values_equal(roundtrip(doc), doc)
    deeper = {"deep": build(200, leaf)}  # files are not limited by Firestore's depth
    assert values_equal(roundtrip(deeper), deeper)


def test_tuples_are_written_as_arrays() -> None:
    assert values_equal(roundtrip({"t": (1, "a", (2,))}), {"t": [1, "a", [2]]})
    assert type(roundtrip((1, 2))) is list


def test_subclasses_of_plain_types_are_stored_as_the_plain_type() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    back = roundtrip({"c": Color.RED, "n": Name("x")})
    assert type(back["c"]) is int and back["c"] == 1
    assert type(back["n"]) is str and back["n"] == "x"


@pytest.mark.parametrize("value", [{1, 2}, object(), complex(1, 2), frozenset()])
def test_values_firestore_cannot_store_are_refused(value: Any) -> None:
    with pytest.raises(CodecError, match="cannot store"):
        codec.dumps({"x": value})


def test_non_string_map_keys_are_a_codec_error() -> None:
    with pytest.raises(CodecError):
        codec.dumps({"m": {1: "one"}})


# --------------------------------------------------------------------------- file format


def test_plain_values_stay_plain_readable_json() -> None:
    doc = {"name": "Ada", "age": 36, "ratio": 0.5, "ok": True, "none": None, "tags": ["a", "b"]}
    raw = codec.dumps(doc)
    assert orjson.loads(raw) == doc
    assert b"\n" not in raw


def test_special_values_are_tagged_objects() -> None:
    raw = orjson.loads(
        codec.dumps(
            {
                "b": b"\x00",
                "t": Timestamp(5, 6),
                "n": math.nan,
                "i": -math.inf,
                "g": GeoPoint(1.0, 2.0),
                "r": Reference("u/a", "p", "d"),
                "m": {"$t": 1},
            }
        )
    )
    assert raw == {
        "b": {"$t": "bytes", "v": "AA=="},
        "t": {"$t": "ts", "v": [5, 6]},
        "n": {"$t": "float", "v": "nan"},
        "i": {"$t": "float", "v": "-inf"},
        "g": {"$t": "geo", "v": [1.0, 2.0]},
        "r": {"$t": "ref", "v": ["p", "d", "u/a"]},
        "m": {"$t": "map", "v": {"$t": 1}},
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"$t": "ts", "v": [1]}', "malformed 'ts'"),
        (b'{"$t": "ts", "v": [1, 1000000000]}', "malformed 'ts'"),
        (b'{"$t": "float", "v": "huge"}', "malformed 'float'"),
        (b'{"$t": "bytes", "v": "not base64!"}', "malformed 'bytes'"),
        (b'{"$t": "geo", "v": ["x", 1]}', "malformed 'geo'"),
        (b'{"$t": "ref", "v": []}', "malformed 'ref'"),
        (b'{"$t": "map", "v": [1]}', "malformed 'map'"),
        (b'{"$t": "vector", "v": [1]}', "unknown value tag 'vector'"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_damaged_input_raises_a_codec_error_naming_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message.replace("(", r"\(")):
        codec.loads(raw)


def test_loads_accepts_text_as_well_as_bytes() -> None:
    assert values_equal(codec.loads(codec.dumps({"n": math.nan}).decode()), {"n": math.nan})


# --------------------------------------------------------------------------- values_equal


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (True, 1),
        (False, 0),
        (1, 1.0),
        (0.0, -0.0),
        (0, 0.0),
        (None, False),
        ("1", 1),
        (b"a", "a"),
        ({"a": 1}, {"a": 1, "b": 2}),
        ([1, 2], [2, 1]),
        ([1], [1, 1]),
        ({"a": True}, {"a": 1}),
        (GeoPoint(0.0, 0.0), GeoPoint(-0.0, 0.0)),
        (Reference("u/a", "p"), Reference("u/a", "q")),
        (Reference("u/a", "p", "d1"), Reference("u/a", "p", "d2")),
        (Timestamp(1, 1000), Timestamp(1, 2000)),
        ({}, []),
        ({}, None),
        (math.nan, None),
        ([math.nan], [0.0]),
    ],
)
def test_values_equal_is_type_strict(a: Any, b: Any) -> None:
    assert not values_equal(a, b)
    assert not values_equal(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (math.nan, math.nan),
        (-0.0, -0.0),
        ([1, (2, 3)], (1, [2, 3])),
        (b"x", bytearray(b"x")),
        (datetime(2020, 1, 1, tzinfo=UTC), Timestamp.from_datetime(datetime(2020, 1, 1, tzinfo=UTC))),
        ({"a": {"b": [math.nan]}}, {"a": {"b": [math.nan]}}),
        (GeoPoint(math.nan, -0.0), GeoPoint(math.nan, -0.0)),
        ({"x": 1, "y": 2}, {"y": 2, "x": 1}),
    ],
)
def test_values_equal_accepts_what_firestore_would_store_identically(a: Any, b: Any) -> None:
    assert values_equal(a, b)
    assert values_equal(b, a)


@given(values())
def test_values_equal_is_reflexive(value: Any) -> None:
    assert values_equal(value, value)


@given(FIELD_NAMES)
def test_type_name_of_decoded_values_matches(name: str) -> None:
    doc: dict[str, Any] = {
        name: [None, True, 1, 1.5, "s", b"b", Timestamp(1, 0), GeoPoint(1.0, 1.0), Reference("a/b"), {}],
    }
    back = roundtrip(doc)[name]
    assert [type_name(v) for v in back] == [
        "null",
        "bool",
        "int",
        "float",
        "string",
        "bytes",
        "timestamp",
        "geopoint",
        "reference",
        "map",
    ]

"""The one exact codec for writing Firestore values to files (checkpoints, backups, dead letters, reports).

JSON cannot say bytes, NaN, infinities, nanosecond timestamps, geopoints or references, so those are
written as tagged objects ``{"$t": TAG, "v": ...}``. A map that itself has a ``"$t"`` key is wrapped as
``{"$t": "map", "v": {...}}`` so a user's field can never be mistaken for a tag. Everything else is
plain JSON, so files stay readable. ``decode(encode(x))`` is exact for every value (see
``values_equal``), including ``-0.0``, int64 extremes and empty maps versus missing ones.
"""

from __future__ import annotations

import base64
import hashlib
import math
from datetime import datetime
from typing import Any

import orjson

from docshift.errors import CodecError
from docshift.values import GeoPoint, Reference, Timestamp, Value

__all__ = ["FORMAT_VERSION", "decode", "digest", "dumps", "encode", "loads"]

FORMAT_VERSION = 1
"""Version of the tagged encoding; stored in every file format built on it."""

_TAG = "$t"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

_TYPES_HINT = (
    "store str, int, float, bool, None, bytes, datetime, dict, list or a docshift.values type "
    "(Timestamp, GeoPoint, Reference)"
)
_JSON_HINT = "a string holds a lone surrogate, or a map key is not a string: fix the value"
_FILE_HINT = "the file is damaged or was edited: restore it from a copy, or start a new run"


def encode(value: Value) -> Any:
    """Turn a docshift value into plain JSON-able data (lossless)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise CodecError(
                f"integer {value} does not fit in 64 bits; Firestore cannot store it",
                hint="store it as a string or a float",
            )
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {_TAG: "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if kind is dict:
        encoded = {key: encode(item) for key, item in value.items()}
        if _TAG in value:
            return {_TAG: "map", "v": encoded}
        return encoded
    if kind is list or kind is tuple:
        return [encode(item) for item in value]
    if kind is Timestamp:
        return {_TAG: "ts", "v": [value.seconds, value.nanos]}
    if isinstance(value, datetime):
        ts = Timestamp.from_datetime(value)
        return {_TAG: "ts", "v": [ts.seconds, ts.nanos]}
    if kind is bytes or kind is bytearray:
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if kind is GeoPoint:
        return {_TAG: "geo", "v": [encode(value.latitude), encode(value.longitude)]}
    if kind is Reference:
        return {_TAG: "ref", "v": [value.project, value.database, value.path]}
    if isinstance(value, bool | int | float | str | dict | list):  # subclasses (e.g. IntEnum)
        return encode(_base_value(value))
    raise CodecError(
        f"cannot store a value of type {type(value).__name__!r} in Firestore",
        hint=_TYPES_HINT,
    )


def _base_value(value: Any) -> Value:
    bases: tuple[type[Any], ...] = (bool, int, float, str, dict, list)
    for base in bases:
        if isinstance(value, base):
            return base(value)
    return value


def decode(data: Any) -> Value:
    """Inverse of :func:`encode`."""
    kind = type(data)
    if kind is dict:
        tag = data.get(_TAG)
        if tag is None:
            return {key: decode(item) for key, item in data.items()}
        return _decode_tagged(tag, data.get("v"))
    if kind is list:
        return [decode(item) for item in data]
    return data


def _decode_tagged(tag: str, raw: Any) -> Value:
    try:
        if tag == "map":
            return {key: decode(item) for key, item in raw.items()}
        if tag == "ts":
            return Timestamp(int(raw[0]), int(raw[1]))
        if tag == "float":
            return _SPECIAL_FLOATS[raw]
        if tag == "bytes":
            return base64.b64decode(raw, validate=True)
        if tag == "geo":
            return GeoPoint(float(decode(raw[0])), float(decode(raw[1])))
        if tag == "ref":
            return Reference(path=str(raw[2]), project=str(raw[0]), database=str(raw[1]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CodecError(f"malformed {tag!r} value {raw!r}: {exc}", hint=_FILE_HINT) from exc
    raise CodecError(
        f"unknown value tag {tag!r}; the file was written by a newer docshift?",
        hint="read it with the docshift release that wrote it",
    )


def dumps(value: Value) -> bytes:
    """Encode and serialise to compact JSON bytes (one line, no trailing newline)."""
    try:
        return orjson.dumps(encode(value))
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in a string, a non-string map key
        raise CodecError(f"cannot write value as JSON: {exc}", hint=_JSON_HINT) from None


def digest(value: Value) -> str:
    """A stable digest of ``value`` (blake2b, 16 bytes, hex) over its exact encoding with sorted
    keys, so the order a map was built in does not change it (timestamps count to the nanosecond:
    give it stored values, see ``values.as_stored``). Raises :class:`CodecError` like :func:`dumps`."""
    try:
        raw = orjson.dumps(encode(value), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise CodecError(f"cannot write value as JSON: {exc}", hint=_JSON_HINT) from None
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def loads(raw: bytes | str) -> Value:
    """Parse JSON bytes written by :func:`dumps`."""
    try:
        return decode(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"not valid JSON: {exc}", hint=_FILE_HINT) from exc

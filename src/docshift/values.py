"""docshift's own Firestore value types and exact comparison.

The engine, transforms, codec and in-memory store all work with these types so that nothing outside
the Firestore adapter ever handles a Google object. A document's data is a ``dict`` whose values are:
``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, :class:`Timestamp`, :class:`GeoPoint`,
:class:`Reference`, ``list`` of values, or ``dict`` (a map) of values.

Python's ``==`` is not good enough to decide "unchanged": ``True == 1``, ``0.0 == -0.0`` and
``nan != nan``. :func:`values_equal` compares the way Firestore stores values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "GeoPoint",
    "Reference",
    "Timestamp",
    "Value",
    "copy_data",
    "type_name",
    "values_equal",
]

Value = Any
"""A Firestore value as docshift represents it (see the module docstring)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NANOS = 1_000_000_000


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """A Firestore timestamp with full nanosecond precision (``datetime`` only keeps microseconds)."""

    seconds: int
    nanos: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.nanos < _NANOS:
            raise ValueError(f"Timestamp nanos must be in [0, 1e9), got {self.nanos}")

    @classmethod
    def from_datetime(cls, value: datetime) -> Timestamp:
        """Convert an aware (or UTC-naive) datetime; keeps its microseconds."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        seconds, rest = divmod(micros, 1_000_000)
        return cls(seconds, rest * 1000)

    @classmethod
    def now(cls) -> Timestamp:
        return cls.from_datetime(datetime.now(UTC))

    def to_datetime(self) -> datetime:
        """A UTC datetime (nanoseconds below a microsecond are dropped)."""
        return _EPOCH + timedelta(seconds=self.seconds, microseconds=self.nanos // 1000)

    def isoformat(self) -> str:
        base = self.to_datetime().strftime("%Y-%m-%dT%H:%M:%S")
        return f"{base}.{self.nanos:09d}Z"

    def __str__(self) -> str:
        try:
            return self.isoformat()
        except OverflowError:  # outside datetime's years 1 to 9999 (Firestore refuses those too)
            return f"Timestamp({self.seconds}, {self.nanos})"


@dataclass(frozen=True, slots=True)
class GeoPoint:
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Reference:
    """A reference to another document, keeping the project and database it lives in."""

    path: str
    project: str = ""
    database: str = "(default)"

    @property
    def id(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def type_name(value: Value) -> str:
    """The Firestore type of a value, as used in validation rules and error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if isinstance(value, Timestamp | datetime):
        return "timestamp"
    if isinstance(value, GeoPoint):
        return "geopoint"
    if isinstance(value, Reference):
        return "reference"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def copy_data(value: Any) -> Any:
    """Deep copy of document data: containers copied, immutable leaves shared (~10x deepcopy)."""
    kind = type(value)
    if kind is dict:
        return {key: copy_data(item) for key, item in value.items()}
    if kind is list:
        return [copy_data(item) for item in value]
    if kind is bytearray:
        return bytes(value)
    return value


_PLAIN = frozenset({str, int, bool, bytes, type(None), Timestamp, Reference})


def _float_equal(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def values_equal(a: Value, b: Value) -> bool:
    """Exact, type-strict equality: what Firestore would store is identical."""
    if a is b:  # the common case in a diff: a transform keeps most values as they were
        return True
    ta, tb = type(a), type(b)
    if ta is tb and ta in _PLAIN:
        return bool(a == b)
    if ta is dict and tb is dict:
        if a.keys() != b.keys():
            return False
        return all(values_equal(a[k], b[k]) for k in a)
    if ta in (list, tuple) and tb in (list, tuple):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is float and tb is float:
        return _float_equal(a, b)
    if isinstance(a, datetime):
        a = Timestamp.from_datetime(a)
    if isinstance(b, datetime):
        b = Timestamp.from_datetime(b)
    if type_name(a) != type_name(b):
        return False
    if isinstance(a, GeoPoint):
        return _float_equal(a.latitude, b.latitude) and _float_equal(a.longitude, b.longitude)
    return bool(a == b)

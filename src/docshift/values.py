"""docshift's own Firestore value types and exact comparison.

The engine, transforms, codec and in-memory store all work with these types so that nothing outside
the Firestore adapter ever handles a Google object. A document's data is a ``dict`` whose values are:
``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, :class:`Timestamp`, :class:`GeoPoint`,
:class:`Reference`, ``list`` of values, or ``dict`` (a map) of values.

Python's ``==`` is not good enough to decide "unchanged": ``True == 1``, ``0.0 == -0.0`` and
``nan != nan``. :func:`values_equal` compares the way Firestore stores values: timestamps at the
microsecond, the precision Firestore keeps. :func:`as_stored` gives a transform's result the form
Firestore will store it in (timestamps truncated to the microsecond), noting what it changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "GeoPoint",
    "Reference",
    "StoredForm",
    "Timestamp",
    "Value",
    "as_stored",
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

    @property
    def stored(self) -> Timestamp:
        """This timestamp as Firestore stores it: truncated to the microsecond."""
        rest = self.nanos % 1000
        return Timestamp(self.seconds, self.nanos - rest) if rest else self

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


_PLAIN = frozenset({str, int, bool, bytes, type(None), Reference})


@dataclass
class StoredForm:
    """What :func:`as_stored` changed in one document: the first field path of each kind."""

    truncated: str | None = None
    """A timestamp with nanoseconds below a microsecond (Firestore keeps microseconds)."""
    naive: str | None = None
    """A ``datetime`` without a time zone (stored as UTC)."""


def as_stored(data: dict[str, Any]) -> tuple[dict[str, Any], StoredForm | None]:
    """``data`` as Firestore will store it, and what that changed (``None``: nothing to note).

    Timestamps lose their nanoseconds below a microsecond here, once, where the write is built, so
    that what is written, journalled and compared is what the store keeps. A naive ``datetime`` is
    noted (it is stored as UTC) and left as it is. The result shares every unchanged part with
    ``data`` (which is not modified), and is ``data`` itself when nothing changed.
    """
    found: set[str] = set()
    stored = _as_stored(data, found)
    if not found:
        return stored, None
    return stored, StoredForm(
        truncated=_first_path(data, _is_fine) if "truncated" in found else None,
        naive=_first_path(data, _is_naive) if "naive" in found else None,
    )


_LEAVES = frozenset({str, int, float, bool, bytes, type(None), Reference, GeoPoint})


def _as_stored(value: Any, found: set[str]) -> Any:
    kind = type(value)
    if kind is Timestamp:
        if value.nanos % 1000:
            found.add("truncated")
            return value.stored
        return value
    if kind is dict or kind is list or kind is tuple:
        changed: dict[Any, Any] | None = None
        for key, item in value.items() if kind is dict else enumerate(value):
            if type(item) in _LEAVES:
                continue
            stored = _as_stored(item, found)
            if stored is not item:
                changed = changed if changed is not None else {}
                changed[key] = stored
        if changed is None:
            return value
        if kind is dict:
            return {**value, **changed}
        return [changed.get(index, item) for index, item in enumerate(value)]
    if isinstance(value, datetime) and value.tzinfo is None:
        found.add("naive")
    return value


def _is_fine(value: Any) -> bool:
    return type(value) is Timestamp and value.nanos % 1000 != 0


def _is_naive(value: Any) -> bool:
    return isinstance(value, datetime) and value.tzinfo is None


def _first_path(value: Any, wanted: Callable[[Any], bool], path: tuple[str | int, ...] = ()) -> str | None:
    """The dotted path of the first value ``wanted`` holds for (only walked to name it)."""
    if wanted(value):
        return _dotted(path)
    kind = type(value)
    if kind is dict or kind is list or kind is tuple:
        for key, item in value.items() if kind is dict else enumerate(value):
            found = _first_path(item, wanted, (*path, key))
            if found is not None:
                return found
    return None


def _dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _float_equal(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def values_equal(a: Value, b: Value) -> bool:
    """Exact, type-strict equality: what Firestore would store is identical (timestamps at the
    microsecond: two that differ only below it are stored as the same value)."""
    if a is b:  # the common case in a diff: a transform keeps most values as they were
        return True
    ta, tb = type(a), type(b)
    if ta is tb and ta in _PLAIN:
        return bool(a == b)
    if ta is Timestamp and tb is Timestamp:
        return bool(a.seconds == b.seconds and a.nanos // 1000 == b.nanos // 1000)
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
    if type(a) is Timestamp and type(b) is Timestamp:
        return values_equal(a, b)
    if type_name(a) != type_name(b):
        return False
    if isinstance(a, GeoPoint):
        return _float_equal(a.latitude, b.latitude) and _float_equal(a.longitude, b.longitude)
    return bool(a == b)

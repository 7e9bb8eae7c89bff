"""Firestore's limits, value order and filter semantics, shared by the engine, the in-memory store
and the adapter (which applies range filters itself to keep streams in name order).

Sizes follow Google's storage-size rules so the engine can refuse an oversized document *before*
sending it, and fail only that document instead of its whole batch. Every limit here was measured on
the emulator at its boundary (n accepted, n + 1 refused: ``scripts/store_limits.py``, and the
boundary tests in ``tests/integration/test_store_contract.py``): docshift refuses exactly what the
store refuses, so that whatever the store holds can also be backed up, restored and rolled back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from docshift.config import MAX_WRITES_PER_REQUEST  # also the bound of max_batch_size
from docshift.errors import PermanentError
from docshift.store.base import DELETE_FIELD, FieldPath, Filter, Op
from docshift.values import GeoPoint, Reference, Timestamp, Value

__all__ = [
    "EMULATOR_MAX_REQUEST_BYTES",
    "MAX_DEPTH",
    "MAX_DISJUNCTIONS",
    "MAX_DOCUMENT_BYTES",
    "MAX_FIELD_PATH_BYTES",
    "MAX_FILTER_VALUES",
    "MAX_ID_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_VALUE_BYTES",
    "MAX_WRITES_PER_REQUEST",
    "PITR_SECONDS",
    "VERSION_SECONDS",
    "apply_field_updates",
    "document_problem",
    "document_size",
    "error_hint",
    "field_problem",
    "matches",
    "order_key",
    "query_problem",
    "read_time_error",
    "read_time_problem",
    "server_side",
    "value_size",
]

VERSION_SECONDS = 3600
"""How far back Cloud Firestore serves reads at a ``read_time``: one hour of versions."""
PITR_SECONDS = 7 * 86_400
"""With point-in-time recovery on, whole minutes up to seven days back (the emulator serves any
time up to seven days back, whole minute or not: ``tests/integration/test_store_contract.py``)."""

MAX_DOCUMENT_BYTES = 1_048_576
"""A document's size by the storage-size rules (name, field names, values, + 32)."""
MAX_VALUE_BYTES = 1_048_487
"""One string (UTF-8 bytes) or bytes value, anywhere in a document: 1 MiB - 89 bytes."""
MAX_DEPTH = 20
"""Maps and arrays nested in a field: a field's own map or array is level 1. An empty array adds no
level (the emulator takes one below 20 maps, and refuses ``[1]`` there)."""
MAX_FIELD_PATH_BYTES = 1500
"""A field name, and a field's whole path (segments joined by dots), in UTF-8 bytes."""
MAX_ID_BYTES = 1500
"""Each collection id and document id of a document's path (and of a reference value), in UTF-8
bytes."""
MAX_REQUEST_BYTES = 10 * 1_048_576
"""A request to Cloud Firestore."""
EMULATOR_MAX_REQUEST_BYTES = 4 * 1_048_576
"""A request to the emulator (its gRPC server's inbound limit: 4,194,304 bytes accepted, one more
refused with RESOURCE_EXHAUSTED)."""
MAX_FILTER_VALUES = 30
"""Values in one ``in`` or ``array-contains-any`` filter, duplicates included (30 accepted, 31 refused:
"'IN' supports up to 30 comparison values"); an empty list is refused too."""
MAX_DISJUNCTIONS = 30
"""The product of the distinct values of a query's ``in`` and ``array-contains-any`` filters (an
identical filter given twice counts once): 2 x 15 accepted, 2 x 16 refused ("Too many disjunctions
after normalization")."""
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31T23:59:59Z
_RESERVED = re.compile(r"__.+__", re.DOTALL)  # field names and ids; "____" itself is allowed
_STORABLE = frozenset({type(None), bytes, bytearray, Timestamp, GeoPoint, Reference, list, tuple, dict})
_ALWAYS_STORABLE = frozenset({type(None), bool, float})


def _string_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) + 1


def _utf8_size(text: str) -> int | None:
    """Bytes in UTF-8, or ``None`` when the text cannot be stored (a lone surrogate)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def value_size(value: Value) -> int:
    """Stored size of one value in bytes (Google's storage-size rules)."""
    kind = type(value)
    if kind is str:
        return _string_size(value)
    if value is None or kind is bool:
        return 1
    if kind is int or kind is float or kind is Timestamp or isinstance(value, datetime):
        return 8
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is GeoPoint:
        return 16
    if kind is Reference:
        return _name_size(value.path)
    if kind is list or kind is tuple:
        return sum(value_size(item) for item in value)
    if kind is dict:
        return sum(_string_size(key) + value_size(item) for key, item in value.items())
    return 8


def _name_size(path: str) -> int:
    return sum(_string_size(segment) for segment in path.split("/")) + 16


def document_size(path: str, data: Mapping[str, Value]) -> int:
    return _name_size(path) + sum(_string_size(k) + value_size(v) for k, v in data.items()) + 32


def _value_problem(value: Value, depth: int, path_bytes: int = 0) -> str | None:
    """What Firestore refuses in one value at this nesting ``depth`` (a field's own value is at 1);
    ``path_bytes`` is the UTF-8 length of its field path. Each type's check is in ``_CHECKS``; a
    subclass of a plain type (an IntEnum, a StrEnum, a datetime) is stored as that type, unchecked."""
    kind = type(value)
    check = _CHECKS.get(kind)
    if check is not None:
        return check(value, depth, path_bytes)
    if kind in _STORABLE or isinstance(value, int | float | str | datetime):
        return None
    return f"cannot store a value of type {kind.__name__!r} in Firestore"


def _int_problem(value: int, depth: int, path_bytes: int) -> str | None:
    return None if _INT64_MIN <= value <= _INT64_MAX else f"integer {value} does not fit in 64 bits"


def _string_problem(value: str, depth: int, path_bytes: int) -> str | None:
    size = _utf8_size(value)
    if size is None:
        return "a string is not valid unicode (lone surrogate)"
    return _too_long("string", size) if size > MAX_VALUE_BYTES else None


def _bytes_problem(value: bytes | bytearray, depth: int, path_bytes: int) -> str | None:
    return _too_long("bytes value", len(value)) if len(value) > MAX_VALUE_BYTES else None


def _geopoint_problem(value: GeoPoint, depth: int, path_bytes: int) -> str | None:
    if not -90.0 <= value.latitude <= 90.0:  # also refuses NaN
        return f"geopoint latitude {value.latitude!r} is outside -90 to 90"
    if not -180.0 <= value.longitude <= 180.0:
        return f"geopoint longitude {value.longitude!r} is outside -180 to 180"
    return None


def _timestamp_problem(value: Timestamp, depth: int, path_bytes: int) -> str | None:
    if _MIN_SECONDS <= value.seconds <= _MAX_SECONDS:
        return None
    return f"timestamp {value} is outside the years 1 to 9999"


def _reference_problem(value: Reference, depth: int, path_bytes: int) -> str | None:
    parts = value.path.split("/")
    if len(parts) % 2 or any(
        part in ("", ".", "..") or _RESERVED.fullmatch(part) or _utf8_size(part) is None for part in parts
    ):
        return f"reference {value.path!r} is not a valid document path"
    return _name_problem(value.path, "reference")


def _array_problem(value: list[Value] | tuple[Value, ...], depth: int, path_bytes: int) -> str | None:
    if depth > MAX_DEPTH and value:  # an empty array adds no level
        return f"nesting deeper than {MAX_DEPTH} levels of maps and arrays"
    for item in value:
        if type(item) in (list, tuple):
            return "an array cannot directly contain another array"
        problem = _value_problem(item, depth + 1, path_bytes)  # arrays add no path segment
        if problem:
            return problem
    return None


def _map_problem(value: dict[str, Value], depth: int, path_bytes: int) -> str | None:
    if depth > MAX_DEPTH:
        return f"nesting deeper than {MAX_DEPTH} levels of maps and arrays"
    for key, item in value.items():
        if type(key) is str and key and key.isascii() and not key.startswith("__"):
            size = len(key)  # the common case, without the checks below
        else:
            problem = _name_problem_of_field(key)
            if problem:
                return problem
            size = _utf8_size(key) or 0  # valid unicode: checked just above
        below = path_bytes + 1 + size if path_bytes else size
        if below > MAX_FIELD_PATH_BYTES:
            return f"field path {key[:40]!r}... is longer than {MAX_FIELD_PATH_BYTES} bytes"
        if type(item) in _ALWAYS_STORABLE:
            continue
        problem = _value_problem(item, depth + 1, below)
        if problem:
            return problem
    return None


_CHECKS: dict[type, Callable[[Any, int, int], str | None]] = {
    int: _int_problem,
    str: _string_problem,
    bytes: _bytes_problem,
    bytearray: _bytes_problem,
    GeoPoint: _geopoint_problem,
    Timestamp: _timestamp_problem,
    Reference: _reference_problem,
    list: _array_problem,
    tuple: _array_problem,
    dict: _map_problem,
}
"""The check of each type that has limits (exact types: what ``_value_problem`` dispatches on)."""


def _name_problem_of_field(key: Any) -> str | None:
    if not isinstance(key, str) or key == "":
        return f"invalid field name {key!r}"
    if _utf8_size(key) is None:
        return f"field name {key!r} is not valid unicode (lone surrogate)"
    if _RESERVED.fullmatch(key):
        return f"field name {key!r} is reserved"
    return None


def _too_long(what: str, size: int) -> str:
    return f"a {what} of {size:,} bytes is longer than Firestore's {MAX_VALUE_BYTES:,} per value"


def field_problem(field_path: FieldPath, value: Value) -> str | None:
    """Why Firestore would reject ``value`` at ``field_path`` in a document (its names, the path's
    length, the value at that depth), or ``None``: the check of one changed field of an update."""
    path_bytes = 0
    for segment in field_path:
        problem = _name_problem_of_field(segment)
        if problem:
            return problem
        size = _utf8_size(segment) or 0
        path_bytes = path_bytes + 1 + size if path_bytes else size
        if path_bytes > MAX_FIELD_PATH_BYTES:
            return f"field path {segment[:40]!r}... is longer than {MAX_FIELD_PATH_BYTES} bytes"
    return _value_problem(value, len(field_path), path_bytes)


def _name_problem(path: str, what: str = "document's path") -> str | None:
    for segment in path.split("/"):
        size = _utf8_size(segment)
        if size is not None and size > MAX_ID_BYTES:
            return f"the id {segment[:40]!r}... in the {what} is longer than {MAX_ID_BYTES} bytes"
    return None


def document_problem(path: str, data: Mapping[str, Value]) -> str | None:
    """Why Firestore would reject this document, or ``None`` if it would accept it.

    The document's own field map is level 0 of the nesting: a field's map is level 1.
    """
    size = document_size(path, data)
    if size > MAX_DOCUMENT_BYTES:
        return f"document is {size} bytes, over Firestore's limit of {MAX_DOCUMENT_BYTES}"
    return _name_problem(path) or _value_problem(dict(data), 0)


_TYPE_RANK = {
    "null": 0,
    "bool": 1,
    "number": 2,
    "timestamp": 3,
    "string": 4,
    "bytes": 5,
    "reference": 6,
    "geopoint": 7,
    "array": 8,
    "map": 9,
}


def order_key(value: Value) -> tuple[Any, ...]:
    """A sort key giving Firestore's cross-type value order (numbers compare as numbers, NaN first)."""
    if value is None:
        return (0,)
    kind = type(value)
    if kind is bool:
        return (1, value)
    if kind is int or kind is float:
        if kind is float and math.isnan(value):
            return (2, 0, 0)
        return (2, 1, value)
    if kind is Timestamp:
        return (3, value.seconds, value.nanos)
    if isinstance(value, datetime):
        stamp = Timestamp.from_datetime(value)
        return (3, stamp.seconds, stamp.nanos)
    if kind is str:
        return (4, value)
    if kind is bytes or kind is bytearray:
        return (5, bytes(value))
    if kind is Reference:
        return (6, tuple(value.path.split("/")))
    if kind is GeoPoint:
        return (7, value.latitude, value.longitude)
    if kind is list or kind is tuple:
        return (8, tuple(order_key(item) for item in value))
    if kind is dict:
        return (9, tuple((key, order_key(value[key])) for key in sorted(value)))
    return (10, repr(value))


def type_rank(value: Value) -> int:
    return int(order_key(value)[0])


def _lookup(data: Mapping[str, Value], field_path: FieldPath) -> tuple[bool, Value]:
    current: Any = data
    for segment in field_path:
        if not isinstance(current, dict) or segment not in current:
            return False, None
        current = current[segment]
    return True, current


def matches(data: Mapping[str, Value], condition: Filter) -> bool:
    """Whether a document's data satisfies one filter, with Firestore's typed comparison rules."""
    present, value = _lookup(data, condition.field)
    if not present:
        return False
    op, target = condition.op, condition.value
    if op == Op.EQ:
        return order_key(value) == order_key(target)
    if op == Op.NE:
        return value is not None and order_key(value) != order_key(target)
    if op == Op.IN:
        return any(order_key(value) == order_key(item) for item in target)
    if op == Op.NOT_IN:
        return value is not None and all(order_key(value) != order_key(item) for item in target)
    if op == Op.ARRAY_CONTAINS:
        return isinstance(value, list) and any(order_key(i) == order_key(target) for i in value)
    if op == Op.ARRAY_CONTAINS_ANY:
        wanted = {order_key(item) for item in target}
        return isinstance(value, list) and any(order_key(item) in wanted for item in value)
    if type_rank(value) != type_rank(target):
        return False  # range filters only match values of the same type
    left, right = order_key(value), order_key(target)
    if op == Op.LT:
        return left < right
    if op == Op.LE:
        return left <= right
    if op == Op.GT:
        return left > right
    return left >= right


_LIST_OPS = (Op.IN, Op.ARRAY_CONTAINS_ANY)
_ARRAY_OPS = (Op.ARRAY_CONTAINS, Op.ARRAY_CONTAINS_ANY)


def query_problem(filters: Sequence[Filter]) -> str | None:
    """Why Firestore would refuse a query with these filters as a whole, or ``None``: the limits on
    its ``in`` and ``array-contains(-any)`` filters (``!=``, ``not-in`` and ranges are applied by the
    stores themselves, see :func:`server_side`, so no limit applies to them)."""
    if sum(1 for f in filters if f.op in _ARRAY_OPS) > 1:
        return "at most one array-contains or array-contains-any filter is allowed in a query"
    disjunctions = 1
    counted: set[tuple[FieldPath, Op, frozenset[str]]] = set()
    for condition in filters:
        if condition.op not in _LIST_OPS or not isinstance(condition.value, list):
            continue
        values = condition.value
        label = f"{'.'.join(condition.field)} {condition.op.value}"
        if not values:
            return f"filter {label} has an empty list: Firestore needs 1 to {MAX_FILTER_VALUES} values"
        if len(values) > MAX_FILTER_VALUES:
            return (
                f"filter {label} has {len(values)} values; Firestore takes at most {MAX_FILTER_VALUES} "
                "in one filter"
            )
        distinct = frozenset(repr(order_key(value)) for value in values)
        key = (condition.field, condition.op, distinct)
        if key not in counted:
            counted.add(key)
            disjunctions *= len(distinct)
    if disjunctions > MAX_DISJUNCTIONS:
        return (
            f"the in / array-contains-any filters combine into {disjunctions} disjunctions (the "
            f"product of their distinct values); Firestore takes at most {MAX_DISJUNCTIONS}"
        )
    return None


_HINTS = {
    "UNAVAILABLE": "the store did not answer, also after retries: check that it is running and "
    "reachable, then run the command again",
    "DEADLINE_EXCEEDED": "no answer within timeout_seconds, also after retries: raise timeout_seconds, "
    "or lower batch_size and concurrency if the store is overloaded",
    "RESOURCE_EXHAUSTED": "the store is out of quota or rate limiting, or a request was too large: "
    "lower --max-writes-per-second, --concurrency or --batch-size and try again",
    "ABORTED": "the request lost against concurrent writes, also after retries: run it again",
    "INTERNAL": "the store failed internally, also after retries: run the command again later",
    "PERMISSION_DENIED": "check the account has Cloud Datastore User access to this project and database",
    "UNAUTHENTICATED": "check the account has Cloud Datastore User access to this project and database",
    "NOT_FOUND": "check --project and --database: the database must exist (Firestore in Native mode)",
    "INVALID_ARGUMENT": "the store refused the request as invalid: check the migration's where "
    "filters and the values it writes",
    "FAILED_PRECONDITION": "the database may be in Datastore mode (docshift needs Firestore in Native "
    "mode), or the query may need an index (the message links to it)",
    "UNIMPLEMENTED": "check that --emulator-host (or FIRESTORE_EMULATOR_HOST) names a Firestore "
    "emulator, not another server",
    "UNKNOWN": "check --project and --database (lowercase letters, digits and hyphens); rerun with "
    "--debug for the traceback",
}
_CONFLICT_HINT = "the document changed, appeared or disappeared since it was read: read it again"


def error_hint(code: str, *, guarded: bool = False) -> str:
    """What to do about a store error with this gRPC status name (one text for every store)."""
    if guarded and code in ("FAILED_PRECONDITION", "NOT_FOUND", "ALREADY_EXISTS"):
        return _CONFLICT_HINT
    return _HINTS.get(code, f"the store answered {code}; rerun with --debug for the traceback")


SERVER_SIDE_OPS = frozenset({Op.EQ, Op.IN, Op.ARRAY_CONTAINS, Op.ARRAY_CONTAINS_ANY})


def server_side(condition: Filter) -> bool:
    """Whether Firestore can apply this filter without reordering results away from name order.

    Range, ``!=`` and ``not-in`` filters make Firestore sort by their field first, which would break
    name-order cursors, so stores apply those themselves with :func:`matches`.
    """
    return condition.op in SERVER_SIDE_OPS


_READ_TIME_HINTS = {
    "future": "read at a time that has passed: the store's clock is behind this machine's, or the "
    "time given is ahead; leave --read-time out to read as of now",
    "too_old": "the store keeps versions for an hour (seven days with point-in-time recovery on, in "
    "whole minutes): give a later --read-time, or leave it out to read as of now",
    "precision": "a read time is whole microseconds: drop the digits after the sixth",
    "epoch": "a read time is after 1970-01-01T00:00:00Z",
}


def read_time_problem(read_time: Timestamp, now: Timestamp, keeps_seconds: int) -> tuple[str, str] | None:
    """Why a store whose clock says ``now`` and that keeps ``keeps_seconds`` of versions refuses a
    read at ``read_time``: ``(gRPC code, message)`` with the emulator's own messages (checked in
    the order it checks them), or None."""
    if read_time.nanos % 1000:
        return "INVALID_ARGUMENT", "timestamp cannot have more than microseconds precision"
    if read_time <= Timestamp(0, 0):
        return "INVALID_ARGUMENT", "Only timestamps past epoch are supported."
    if read_time > now:
        return "INVALID_ARGUMENT", "The requested 'read_time' cannot be in the future."
    if read_time < Timestamp(now.seconds - keeps_seconds, now.nanos):
        return "FAILED_PRECONDITION", "The requested 'read_time' is too old."
    return None


def read_time_error(code: str, message: str, read_time: Timestamp) -> PermanentError | None:
    """A store's refusal of a read at ``read_time`` as docshift's error with a hint that says what
    to change; None when the refusal is not about the read time (``message`` says)."""
    lowered = message.lower()
    if "too old" in lowered:
        kind = "too_old"
    elif "future" in lowered:
        kind = "future"
    elif "precision" in lowered:
        kind = "precision"
    elif "epoch" in lowered:
        kind = "epoch"
    else:
        return None
    text = f"the store cannot read at {read_time}: {message.rstrip('.')}"
    return PermanentError(text, code=code, hint=_READ_TIME_HINTS[kind])


def apply_field_updates(
    data: dict[str, Value], fields: Mapping[FieldPath, Value], convert: Callable[[Value], Value] = lambda v: v
) -> None:
    """Apply an update's field paths to ``data`` in place, as Firestore does: missing parents are
    made, ``DELETE_FIELD`` removes a field (and makes nothing when its parent is missing); each
    value set is ``convert(value)``."""
    for field_path, value in fields.items():
        parent = data
        for segment in field_path[:-1]:
            child = parent.get(segment)
            if not isinstance(child, dict):
                if value is DELETE_FIELD:
                    break
                child = {}
                parent[segment] = child
            parent = child
        else:
            if value is DELETE_FIELD:
                parent.pop(field_path[-1], None)
            else:
                parent[field_path[-1]] = convert(value)

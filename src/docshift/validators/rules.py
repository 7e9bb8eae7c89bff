"""Declarative rules that a document, or a whole collection, must satisfy.

A rule has a ``name`` and answers per document with :meth:`Rule.check` (``None`` when it passes, else
a one-line message). Rules that need more than one document (unique values, references to other
documents, counts before and after a run) keep their state in a :class:`RuleSession`, one per scan or
per run, so a rule object declared in a migration file stays immutable and can be shared.

Value rules (``of_type``, ``one_of``, ``matches``, ``in_range``, ``length``) judge a field only when it
is present: combine them with ``required`` or ``not_null`` to demand the field. ``null`` is a value
and fails them (``of_type`` accepts it when ``"null"`` is one of the types).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from docshift.errors import UsageError
from docshift.migration import DocView
from docshift.store.base import Document, FieldPath, Store, parse_field_path
from docshift.values import Value, type_name, values_equal

__all__ = [
    "MISSING",
    "TYPE_NAMES",
    "Rule",
    "RuleContext",
    "RuleSession",
    "field_value",
    "in_range",
    "length",
    "matches",
    "not_null",
    "of_type",
    "one_of",
    "predicate",
    "required",
    "show_value",
]

TYPE_NAMES = frozenset(
    {
        "string",
        "int",
        "float",
        "bool",
        "timestamp",
        "map",
        "array",
        "reference",
        "geopoint",
        "bytes",
        "null",
        "number",
    }
)
"""Types ``of_type`` knows (``number`` is int or float), as :func:`docshift.values.type_name` names them."""

MISSING: Any = object()
"""What :func:`field_value` returns for a missing field (``None`` is a stored null)."""


def field_value(data: Mapping[str, Value], path: FieldPath) -> Any:
    """The value at a field path, or a private marker when any segment is missing."""
    current: Any = data
    for segment in path:
        if not isinstance(current, dict) or segment not in current:
            return MISSING
        current = current[segment]
    return current


def show_value(value: Value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class RuleContext:
    """What a session may need beyond the documents: the store (lookups), the scan phase, and the
    counts a count expectation compares (``None`` when unknown)."""

    store: Store | None = None
    phase: str = "inline"  # inline, before, after
    total: int | None = None
    before_total: int | None = None
    target_before: int | None = None
    """A copy's target collection before the run (``None`` in place: ``before_total`` is that)."""
    deleted: int | None = None
    created: int | None = None


class RuleSession:
    """One rule's state for one scan or run. The default asks the rule about each document."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def check_batch(self, documents: Sequence[Document]) -> list[str | None]:
        """A message (or ``None``) per document, in order. Batched so lookups can be batched."""
        return [self.rule.check(doc.path, doc.data) for doc in documents]

    def finish(self) -> list[str]:
        """Failures about the collection as a whole, known only at the end (counts)."""
        return []


class Rule:
    """Base of every rule. ``inline`` rules are also checked on each document a run writes; the
    others (unique, count) describe the whole collection and are checked by scans."""

    inline = True

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, doc_path: str, data: Mapping[str, Value]) -> str | None:
        """Why this document breaks the rule, or ``None``."""
        raise NotImplementedError

    def session(self, context: RuleContext) -> RuleSession:
        return RuleSession(self)

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


class _FieldRule(Rule):
    """A rule about one field's value, skipped when the field is missing."""

    def __init__(self, field: str, name: str) -> None:
        self.field = field
        self.path = parse_field_path(field)
        super().__init__(name)

    def check(self, doc_path: str, data: Mapping[str, Value]) -> str | None:
        value = field_value(data, self.path)
        if value is MISSING:
            return None
        return self.check_value(value)

    def check_value(self, value: Value) -> str | None:
        raise NotImplementedError


class _Required(Rule):
    def __init__(self, fields: Sequence[str], name: str | None, allow_null: bool) -> None:
        if not fields:
            raise UsageError(
                "required() needs at least one field name", hint='e.g. required("email", "name")'
            )
        self.fields = [(text, parse_field_path(text)) for text in fields]
        self.allow_null = allow_null
        kind = "required" if allow_null else "not_null"
        super().__init__(name or f"{kind}({', '.join(fields)})")

    def check(self, doc_path: str, data: Mapping[str, Value]) -> str | None:
        for text, path in self.fields:
            value = field_value(data, path)
            if value is MISSING:
                return f"{text} is missing"
            if value is None and not self.allow_null:
                return f"{text} is null"
        return None


def required(*fields: str, name: str | None = None) -> Rule:
    """Each field must be present (``null`` counts as present; see :func:`not_null`)."""
    return _Required(fields, name, allow_null=True)


def not_null(*fields: str, name: str | None = None) -> Rule:
    """Each field must be present and not ``null``."""
    return _Required(fields, name, allow_null=False)


class _OfType(_FieldRule):
    def __init__(self, field: str, types: Sequence[str], name: str | None) -> None:
        unknown = [t for t in types if t not in TYPE_NAMES]
        if not types or unknown:
            raise UsageError(
                f"of_type({field!r}): unknown type {unknown[0] if unknown else '(none given)'!r}",
                hint=f"use one or more of {', '.join(sorted(TYPE_NAMES))}",
            )
        self.types = frozenset(types) | ({"int", "float"} if "number" in types else frozenset())
        super().__init__(field, name or f"of_type({field}: {'|'.join(types)})")

    def check_value(self, value: Value) -> str | None:
        actual = type_name(value)
        if actual in self.types:
            return None
        return f"{self.field} is {actual}, expected {' or '.join(sorted(self.types - {'number'}))}"


def of_type(field: str, *types: str, name: str | None = None) -> Rule:
    """The field, when present, has one of these Firestore types (see :data:`TYPE_NAMES`)."""
    return _OfType(field, types, name)


class _OneOf(_FieldRule):
    def __init__(self, field: str, values: Iterable[Value], name: str | None) -> None:
        self.values = list(values)
        if not self.values:
            raise UsageError(
                f"one_of({field!r}) needs at least one allowed value",
                hint=f'e.g. one_of({field!r}, ["active", "closed"])',
            )
        super().__init__(field, name or f"one_of({field})")

    def check_value(self, value: Value) -> str | None:
        if any(values_equal(value, allowed) for allowed in self.values):
            return None
        return f"{self.field} is {show_value(value)}, not one of {show_value(self.values)}"


def one_of(field: str, values: Iterable[Value], *, name: str | None = None) -> Rule:
    """The field, when present, equals one of ``values`` (type-strict: ``1`` is not ``1.0``)."""
    return _OneOf(field, values, name)


class _Matches(_FieldRule):
    def __init__(self, field: str, pattern: str, flags: int, name: str | None) -> None:
        try:
            self.pattern = re.compile(pattern, flags)
        except re.error as exc:
            raise UsageError(
                f"matches({field!r}): bad regular expression {pattern!r}: {exc}",
                hint='fix the pattern (Python\'s re syntax; a raw string r"..." keeps backslashes)',
            ) from None
        super().__init__(field, name or f"matches({field}, {pattern})")

    def check_value(self, value: Value) -> str | None:
        if not isinstance(value, str):
            return f"{self.field} is {type_name(value)}, expected a string"
        if self.pattern.fullmatch(value):
            return None
        return f"{self.field} {show_value(value)} does not match {self.pattern.pattern}"


def matches(field: str, pattern: str, *, flags: int = 0, name: str | None = None) -> Rule:
    """The field, when present, is a string matching ``pattern`` in full (``re.fullmatch``)."""
    return _Matches(field, pattern, flags, name)


class _InRange(_FieldRule):
    def __init__(self, field: str, minimum: float | None, maximum: float | None, name: str | None) -> None:
        if minimum is None and maximum is None:
            raise UsageError(
                f"in_range({field!r}) needs a minimum, a maximum or both",
                hint=f"e.g. in_range({field!r}, minimum=0) or in_range({field!r}, 0, 120)",
            )
        if minimum is not None and maximum is not None and minimum > maximum:
            raise UsageError(
                f"in_range({field!r}): minimum {minimum} is above maximum {maximum}",
                hint="swap them",
            )
        self.minimum, self.maximum = minimum, maximum
        low = "" if minimum is None else str(minimum)
        high = "" if maximum is None else str(maximum)
        super().__init__(field, name or f"in_range({field}, {low}..{high})")

    def check_value(self, value: Value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{self.field} is {type_name(value)}, expected a number"
        if isinstance(value, float) and math.isnan(value):
            return f"{self.field} is NaN"
        if self.minimum is not None and value < self.minimum:
            return f"{self.field} is {value}, below the minimum {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.field} is {value}, above the maximum {self.maximum}"
        return None


def in_range(
    field: str, minimum: float | None = None, maximum: float | None = None, *, name: str | None = None
) -> Rule:
    """The field, when present, is a number (int or float, not bool) within the inclusive bounds."""
    return _InRange(field, minimum, maximum, name)


class _Length(_FieldRule):
    def __init__(self, field: str, minimum: int | None, maximum: int | None, name: str | None) -> None:
        if minimum is None and maximum is None:
            raise UsageError(
                f"length({field!r}) needs a minimum, a maximum or both",
                hint=f"e.g. length({field!r}, minimum=1) or length({field!r}, 1, 80)",
            )
        self.minimum, self.maximum = minimum, maximum
        low = "" if minimum is None else str(minimum)
        high = "" if maximum is None else str(maximum)
        super().__init__(field, name or f"length({field}, {low}..{high})")

    def check_value(self, value: Value) -> str | None:
        if not isinstance(value, str | list):
            return f"{self.field} is {type_name(value)}, expected a string or an array"
        size, unit = len(value), "characters" if isinstance(value, str) else "items"
        if self.minimum is not None and size < self.minimum:
            return f"{self.field} has {size} {unit}, fewer than {self.minimum}"
        if self.maximum is not None and size > self.maximum:
            return f"{self.field} has {size} {unit}, more than {self.maximum}"
        return None


def length(
    field: str, minimum: int | None = None, maximum: int | None = None, *, name: str | None = None
) -> Rule:
    """The field, when present, is a string (length in characters) or an array (in items) within
    the inclusive bounds."""
    return _Length(field, minimum, maximum, name)


class _Predicate(Rule):
    def __init__(self, function: Callable[[DocView], object], message: str, name: str | None) -> None:
        if not callable(function):
            raise UsageError(
                f"predicate() needs a function, got {type(function).__name__}",
                hint="pass a function of the document, e.g. "
                'predicate(lambda doc: "id" in doc.data, "has an id")',
            )
        self.function = function
        self.message = message
        super().__init__(name or f"predicate({getattr(function, '__name__', 'check')})")

    def check(self, doc_path: str, data: Mapping[str, Value]) -> str | None:
        try:
            passed = self.function(DocView(Document(doc_path, dict(data))))
        except Exception as exc:
            return f"{self.message} (the predicate raised {type(exc).__name__}: {exc})"
        return None if passed else self.message


def predicate(function: Callable[[DocView], object], message: str, *, name: str | None = None) -> Rule:
    """A custom check: ``function(doc)`` gets a read-only :class:`~docshift.migration.DocView` (as
    ``up`` does) and returns true when the document is fine; ``message`` says what is wrong.
    A predicate that raises fails the document, with the exception in the message."""
    return _Predicate(function, message, name)

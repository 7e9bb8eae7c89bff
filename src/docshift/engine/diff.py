"""Field-level differences between what was read and what a transform returned.

The engine sends exactly the changed field paths (an update with a mask), so a migration never
rewrites fields it did not touch: an application write to another field between our read and our
write would be caught by the update-time guard anyway, but a smaller write is also a cheaper one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from docshift.store.base import DELETE_FIELD, FieldPath
from docshift.values import Value, copy_data, values_equal

__all__ = ["FieldChange", "copy_data", "field_changes", "update_fields", "update_is_cheaper"]


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed field path: ``old``/``new`` are ``None`` with ``added``/``removed`` set."""

    path: FieldPath
    old: Value = None
    new: Value = None
    added: bool = False
    removed: bool = False

    def describe(self) -> str:
        name = ".".join(self.path)
        if self.added:
            return f"+ {name}: {self.new!r}"
        if self.removed:
            return f"- {name}: {self.old!r}"
        return f"~ {name}: {self.old!r} -> {self.new!r}"


def field_changes(
    old: Mapping[str, Value], new: Mapping[str, Value], prefix: FieldPath = ()
) -> list[FieldChange]:
    """The smallest set of field paths that turns ``old`` into ``new``.

    Maps present on both sides are compared key by key (nested paths); any other change replaces
    the value at its path (an empty map that becomes non-empty is replaced whole).
    """
    changes: list[FieldChange] = []
    for key, old_value in old.items():
        path = (*prefix, key)
        if key not in new:
            changes.append(FieldChange(path, old=old_value, removed=True))
            continue
        new_value = new[key]
        if new_value is old_value:
            continue
        if type(old_value) is dict and type(new_value) is dict and old_value and new_value:
            changes.extend(field_changes(old_value, new_value, path))
        elif not values_equal(old_value, new_value):
            changes.append(FieldChange(path, old=old_value, new=new_value))
    for key, new_value in new.items():
        if key not in old:
            changes.append(FieldChange((*prefix, key), new=new_value, added=True))
    return changes


def update_fields(changes: list[FieldChange]) -> dict[FieldPath, Value]:
    """The update mask and values for a :class:`~docshift.store.base.Write` update."""
    return {c.path: DELETE_FIELD if c.removed else c.new for c in changes}


def update_is_cheaper(changes: list[FieldChange], new: Mapping[str, Value]) -> bool:
    """Whether to send a masked update rather than rewrite the whole document: when fewer than
    about half of the top-level fields change. (Counting bytes exactly cost more than it saved.)"""
    touched = {change.path[0] for change in changes}
    return len(touched) * 2 <= max(len(new), 1)

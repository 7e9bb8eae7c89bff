"""Split `full_name` into `first_name` and `last_name`, and drop `full_name`."""

from __future__ import annotations

from typing import Any

from docshift import UNCHANGED, DocView
from docshift.validators import not_null, of_type

description = "split full_name into first_name and last_name"
collection = "users"
# Checked on every document written, and by `docshift validate 0001`.
rules = [of_type("first_name", "string", "null"), not_null("email")]


def up(doc: DocView) -> Any:
    data = doc.data
    if "full_name" not in data:
        return UNCHANGED  # already migrated (or never had one): idempotent
    first, _, last = str(data.pop("full_name")).partition(" ")
    data["first_name"] = first
    data["last_name"] = last or None
    return data


def down(doc: DocView) -> Any:
    data = doc.data
    if "first_name" not in data:
        return UNCHANGED
    first, last = data.pop("first_name"), data.pop("last_name", None)
    data["full_name"] = f"{first} {last}" if last else first
    return data

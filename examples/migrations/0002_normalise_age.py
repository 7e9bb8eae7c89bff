"""Store `age` as an integer everywhere (some documents hold it as text)."""

from __future__ import annotations

from typing import Any

from docshift import UNCHANGED, DocView
from docshift.validators import in_range, of_type

description = "store age as an integer"
collection = "users"
rules = [of_type("age", "int", "null"), in_range("age", 0, 150)]


def up(doc: DocView) -> Any:
    age = doc.get("age")
    if not isinstance(age, str):
        return UNCHANGED
    data = doc.data
    if age.strip().isdigit():
        data["age"] = int(age)
    else:  # not a number: kept aside for review (a null would break in_range), nothing is lost
        data["age_text"] = data.pop("age")
    return data

"""Store `age` as an integer everywhere (some documents hold it as text)."""

from __future__ import annotations

from typing import Any

from docshift import UNCHANGED, DocView

description = "store age as an integer"
collection = "users"


def up(doc: DocView) -> Any:
    age = doc.get("age")
    if not isinstance(age, str):
        return UNCHANGED
    data = doc.data
    data["age"] = int(age) if age.strip().isdigit() else None
    return data

"""Reading the integrity gate's numbers back from its message (shared by the gate tests)."""

from __future__ import annotations

import re


def gate_numbers(text: str) -> tuple[int, int]:
    """(documents checked, documents refused) as the integrity gate's message states them: the
    refused count where it is given, otherwise what its integrity score implies."""
    found = re.search(r"integrity gate: ([\d.]+)% of the ([\d,]+) documents \S+ checked", text)
    assert found is not None, text
    score, checked = float(found.group(1)), int(found.group(2).replace(",", ""))
    given = re.search(r"pass its rules \(([\d,]+) broke", text)
    refused = int(given.group(1).replace(",", "")) if given else round(checked * (100 - score) / 100)
    return checked, refused

"""The engine holds a transform's result to Firestore's limits exactly as the store does (measured
on the emulator in ``tests/integration/test_store_contract.py``): at the limit it is written, one
past it fails that document alone, for an update (changed fields checked) and a create alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from docshift.migration import DocView
from docshift.store.semantics import MAX_DEPTH, MAX_FIELD_PATH_BYTES, MAX_VALUE_BYTES
from docshift.testing import MemoryStore
from tests.unit.engine_support import export, make_migration, options, run_pipeline, seed
from tests.unit.test_engine_batch import dead_letters


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        value = {"m": value}
    return value


AT_AND_PAST: dict[str, tuple[Any, Any]] = {
    "nesting": (nested(MAX_DEPTH), nested(MAX_DEPTH + 1)),
    "array nesting": ([nested(MAX_DEPTH - 1)], [nested(MAX_DEPTH)]),
    "value bytes": ("é" * (MAX_VALUE_BYTES // 2) + "x", "é" * (MAX_VALUE_BYTES // 2 + 1)),
    "field path": ({"q" * (MAX_FIELD_PATH_BYTES - 4): 1}, {"q" * (MAX_FIELD_PATH_BYTES - 3): 1}),  # "new.q…"
}


@pytest.mark.parametrize("copy_to", [None, "copies"], ids=["update", "create"])
@pytest.mark.parametrize("limit", list(AT_AND_PAST))
def test_at_the_limit_written_one_past_it_failed_alone(
    tmp_path: Path, limit: str, copy_to: str | None
) -> None:
    at, past = AT_AND_PAST[limit]
    store = MemoryStore()
    seed(store, 20)

    def up(doc: DocView) -> Any:
        # Only n besides: a value at its limit leaves little room in a 1 MiB document.
        return {"n": doc.get("n"), "new": past if doc.get("n") % 2 else at}

    result = run_pipeline(store, make_migration(up, copy_to=copy_to), tmp_path, options(max_failures="100%"))
    written = result.counters["created" if copy_to else "updated"]
    assert (written, result.counters["failed"]) == (10, 10)
    letters = dead_letters(tmp_path)
    assert {letter["stage"] for letter in letters} == {"invalid"}
    assert {int(letter["path"][-2:]) % 2 for letter in letters} == {1}
    stored = export(store, copy_to or "users")
    assert all(doc.data["new"] == at for doc in stored.values() if doc.data["n"] % 2 == 0)

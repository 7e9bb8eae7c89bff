"""Everything the store accepts also backs up, restores, migrates and rolls back: documents at
Firestore's limits (20 nested maps, exactly 1 MiB), against the real emulator.

The limits themselves (n accepted, n + 1 refused, by docshift's checks and the emulator alike) are
measured in ``test_store_contract.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.backup import BackupOptions, backup, restore
from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, with_values
from docshift.store import RetryingStore, Store, Write, open_store
from docshift.store.semantics import MAX_DEPTH, MAX_DOCUMENT_BYTES, document_size
from tests.conftest import FAST_RETRY
from tests.integration.run_support import export
from tests.integration.test_rollback import same_data, write_migrations

BUMP = '''"""Bump n; the document keeps its size (an int for an int) and its nesting."""
description = "bump n"
collection = "limits"


def up(doc):
    data = doc.data
    data["n"] = data["n"] + 1
    return data


def down(doc):
    data = doc.data
    data["n"] = data["n"] - 1
    return data
'''


def nested(levels: int) -> dict[str, Any]:
    """``levels`` maps nested in each other, the deepest holding a value."""
    value: dict[str, Any] = {"leaf": "bottom"}
    for level in range(levels - 1):
        value = {f"l{levels - 1 - level}": value}
    return value


def deepest() -> dict[str, Any]:
    """A document with a field holding 20 nested maps: the deepest the store accepts."""
    return {"n": 0, "deep": nested(MAX_DEPTH), "list": [nested(MAX_DEPTH - 1)]}


def largest(path: str) -> dict[str, Any]:
    """A document of exactly 1 MiB by Firestore's size rules (two strings: one field value may
    hold at most 1,048,487 bytes)."""
    base = document_size(path, {"n": 0, "s": "", "t": ""})
    rest = MAX_DOCUMENT_BYTES - base
    data = {"n": 0, "s": "x" * (rest // 2), "t": "y" * (rest - rest // 2)}
    assert document_size(path, data) == MAX_DOCUMENT_BYTES
    return data


def at_the_limits() -> dict[str, dict[str, Any]]:
    """Two documents 20 maps deep, and six of exactly 1 MiB: more than one request (4 MiB on the
    emulator) can carry at once."""
    docs = {f"limits/deep{i}": deepest() for i in range(2)}
    docs.update({f"limits/big{i}": largest(f"limits/big{i}") for i in range(6)})
    return docs


def seed(store: Store, docs: dict[str, dict[str, Any]]) -> None:
    """Written as an application would (the store alone decides), one by one."""
    for path, data in docs.items():
        [result] = store.commit([Write.set(path, data, checked=True)])
        assert result.ok, result.error


@pytest.fixture
def other_store(emulator_config: Config) -> Iterator[RetryingStore]:
    other = with_values(emulator_config, {"project": f"demo-{uuid.uuid4().hex[:12]}"}, "the test")
    store = open_store(other, retry=FAST_RETRY)
    yield store
    store.close()


def test_documents_at_the_limits_back_up_and_restore_exactly(
    emulator_config: Config, firestore_store: Store, other_store: Store, tmp_path: Path
) -> None:
    docs = at_the_limits()
    seed(firestore_store, docs)
    before = export(firestore_store, ["limits"])
    manifest = backup(emulator_config, BackupOptions(["limits"], tmp_path / "b"))
    assert manifest.documents == len(docs)

    target = with_values(emulator_config, {"project": other_store.info.project}, "the test")
    report = restore(target, tmp_path / "b", verify=True)
    assert (report.written, report.failed) == (len(docs), 0), report.failures
    assert report.verification is not None and report.verification.ok
    assert same_data(export(other_store, ["limits"]), before) == []


@pytest.mark.parametrize("strategy", ["restore", "down"])
def test_documents_at_the_limits_migrate_and_roll_back_exactly(
    strategy: str, emulator_config: Config, firestore_store: Store
) -> None:
    docs = at_the_limits()
    seed(firestore_store, docs)
    before = export(firestore_store, ["limits"])
    write_migrations(emulator_config, **{"0001_bump": BUMP})

    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    counters = report.outcomes[0].result.counters
    assert counters["updated"] == len(docs) and counters.get("failed", 0) == 0
    migrated = export(firestore_store, ["limits"])
    assert all(doc.data["n"] == 1 for doc in migrated.values())

    undone = rollback(
        emulator_config,
        RollbackOptions(run_id=report.run_id, strategy=strategy, execute=True),
        store=firestore_store,
    )
    [item] = undone.items
    # Either strategy undoes the journalled documents, and each is verified against its before-image.
    assert item.counters["restored"] == item.counters["verified"] == len(docs)
    assert item.counters.get("failed", 0) == item.counters["mismatched"] == 0
    assert same_data(export(firestore_store, ["limits"]), before) == []

"""A write whose outcome was never journalled (the process died after sending it) is told landed by
the digest of what it leaves stored, journalled before it was sent, never by running ``up()``
again: the source may have changed since, or ``up()`` may not give the same result twice (a time, a
counter). The resume counts it, and the rollback undoes it, exactly.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from docshift.engine import batch
from docshift.engine.pipeline import PipelineResult
from docshift.engine.stats import COUNTERS
from docshift.engine.undo import Undoer, UndoResult, UndoRules, undo_actions
from docshift.errors import TransientError
from docshift.migration import UNCHANGED, DocView, Migration, Target
from docshift.runfolder import Checkpoint, JournalReader
from docshift.runfolder.layout import MigrationFolder
from docshift.store import DelegatingStore, Query, Store, Write, WriteResult
from docshift.testing import MemoryStore
from docshift.values import Value, values_equal
from tests.unit.engine_support import build, options, seed

COUNT = 60


class DiesAfterSending(DelegatingStore):
    """kill -9 in the moment the ``at``-th commit landed, before its reply came back: the run
    folder is copied to ``kept`` as the killed process leaves it (the commit's outcome is not
    journalled yet), and no later commit lands."""

    def __init__(self, inner: Store, at: int, folder: Path, kept: Path) -> None:
        super().__init__(inner)
        self.at, self.folder, self.kept = at, folder, kept
        self.commits = 0

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        self.commits += 1
        if self.commits > self.at:
            raise TransientError("the process was killed", code="UNAVAILABLE")
        results = self.inner.commit(writes)
        if self.commits == self.at:
            shutil.copytree(self.folder, self.kept)
            raise TransientError("the process was killed", code="UNAVAILABLE")
        return results


def killed_run(store: Store, migration: Migration, folder: Path, at: int) -> None:
    """Run until the ``at``-th commit landed, then leave ``folder`` as the kill left it."""
    kept = folder.with_name(folder.name + "-killed")
    opts = options(batch_size=20, concurrency=1, checkpoint_every_docs=1)
    build(DiesAfterSending(store, at, folder, kept), migration, folder, opts).run()
    shutil.rmtree(folder)
    kept.rename(folder)


def resume(store: Store, migration: Migration, folder: Path) -> PipelineResult:
    result = build(store, migration, folder, options(batch_size=20, concurrency=1)).run()
    assert result.error is None
    return result


def rollback(store: Store, migration: Migration, folder: Path) -> UndoResult:
    restorer = Undoer(store, UndoRules(execute=True, redo=migration.up), listings=MigrationFolder(folder))
    return restorer.run(undo_actions(folder / "before-images.jsonl.gz"), UndoResult())


def contents(store: Store, collection: str) -> dict[str, dict[str, Value]]:
    return {doc.path: doc.data for doc in store.stream(Query(collection))}


def same(a: dict[str, dict[str, Value]], b: dict[str, dict[str, Value]]) -> bool:
    return a.keys() == b.keys() and all(values_equal(a[path], b[path]) for path in a)


def counted(counters: dict[str, int]) -> dict[str, int]:
    return {name: int(counters.get(name, 0)) for name in COUNTERS}


def seeded() -> MemoryStore:
    store = MemoryStore()
    seed(store, COUNT, make=lambda i: {"n": i, "name": f"user {i}"})
    return store


def versioned(doc: DocView) -> Any:
    return {**doc.data, "version": 2}


def test_a_landed_copy_whose_source_changed_before_the_resume_is_deleted_by_the_rollback(
    tmp_path: Path,
) -> None:
    migration = Migration(
        "0001", "test", "copy", Target("users", copy_to="users_v2"), versioned, checksum="sum-0001"
    )
    store = seeded()
    folder = tmp_path / "run"
    killed_run(store, migration, folder, at=2)  # the second batch's creates landed, unconfirmed
    changed = "users/u00025"
    assert "users_v2/u00025" in contents(store, "users_v2")
    journal = folder / "before-images.jsonl.gz"
    assert not any(e.kind == "written" and e.path == "users_v2/u00025" for e in JournalReader(journal))
    store.commit([Write.set(changed, {"n": 25, "name": "renamed by the application"})])
    original = contents(store, "users")

    result = resume(store, migration, folder)

    assert result.counters["created"] + result.counters["updated"] == COUNT
    assert values_equal(
        contents(store, "users_v2")["users_v2/u00025"],
        {"n": 25, "name": "renamed by the application", "version": 2},
    )
    undone = rollback(store, migration, folder)
    assert undone.counters["conflicts"] == 0 and undone.counters["mismatched"] == 0
    assert undone.counters["deleted"] == COUNT and undone.counters["restored"] == 0
    assert contents(store, "users_v2") == {}  # the run created them all: none is left
    assert same(contents(store, "users"), original)


def stamped() -> Migration:
    """up() that stamps each document with a counter: never the same result twice."""
    counter = itertools.count()

    def up(doc: DocView) -> Any:
        if doc.get("v") == 2:
            return UNCHANGED
        return {**doc.data, "v": 2, "migrated_at": next(counter)}

    return Migration("0001", "test", "stamp", Target("users"), up, checksum="sum-0001")


def test_a_resume_and_rollback_of_a_non_deterministic_up_are_exact(tmp_path: Path) -> None:
    clean = seeded()
    clean_result = build(clean, stamped(), tmp_path / "clean", options(batch_size=20, concurrency=1)).run()
    truth = counted(clean_result.counters)
    assert truth["updated"] == COUNT
    store = seeded()
    original = contents(store, "users")
    folder = tmp_path / "run"
    killed_run(store, stamped(), folder, at=2)
    migration = stamped()  # the resumed process: its counter starts again

    result = resume(store, migration, folder)

    assert counted(result.counters) == truth
    assert all(doc["v"] == 2 for doc in contents(store, "users").values())
    undone = rollback(store, migration, folder)
    assert undone.counters["conflicts"] == 0 and undone.counters["mismatched"] == 0
    assert undone.counters["restored"] == COUNT
    assert same(contents(store, "users"), original)


def test_a_journal_without_digests_still_resumes_and_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journals written before the digest was recorded: up() of the before-image tells it."""
    migration = Migration(
        "0001", "test", "copy", Target("users", copy_to="users_v2"), versioned, checksum="sum-0001"
    )
    store = seeded()
    folder = tmp_path / "run"
    with monkeypatch.context() as older:  # the killed process wrote no digests
        older.setattr(batch, "digest_of", lambda data: None)
        killed_run(store, migration, folder, at=2)
    journal = folder / "before-images.jsonl.gz"
    assert all(entry.leaves is None for entry in JournalReader(journal))

    result = resume(store, migration, folder)

    assert counted(result.counters)["created"] == COUNT
    undone = rollback(store, migration, folder)
    assert undone.counters["conflicts"] == 0 and undone.counters["deleted"] == COUNT
    assert contents(store, "users_v2") == {}


def copying() -> Migration:
    return Migration(
        "0001", "test", "copy", Target("users", copy_to="users_v2"), versioned, checksum="sum-0001"
    )


def test_a_rollback_straight_after_the_kill_undoes_the_writes_it_never_confirmed(tmp_path: Path) -> None:
    for name, migration, collection in (("copy", copying(), "users_v2"), ("stamp", stamped(), "users")):
        store = seeded()
        original = {name: contents(store, name) for name in ("users", "users_v2")}
        folder = tmp_path / name
        killed_run(store, migration, folder, at=2)
        assert not same(contents(store, collection), original[collection])

        undone = rollback(store, migration, folder)

        assert undone.counters["conflicts"] == 0 and undone.counters["mismatched"] == 0, name
        assert all(same(contents(store, name), original[name]) for name in original), name


def test_a_rewrite_of_an_unconfirmed_copy_is_known_as_the_runs_own_output(tmp_path: Path) -> None:
    """A resume that does not settle (its checkpoint predates the journal offsets) writes a landed
    copy again after its source changed: that write's before-image is the run's own output, so the
    rollback still deletes what the run created."""
    migration = copying()
    store = seeded()
    folder = tmp_path / "run"
    killed_run(store, migration, folder, at=2)
    old = Checkpoint.load(folder / "checkpoint.json")
    old.journal, old.landed = None, {}
    old.save(folder / "checkpoint.json")
    store.commit([Write.set("users/u00025", {"n": 25, "name": "renamed by the application"})])
    original = contents(store, "users")

    resume(store, migration, folder)

    journal = folder / "before-images.jsonl.gz"
    assert [e.kind for e in JournalReader(journal) if e.path == "users_v2/u00025"] == [
        "created",
        "before",
        "written",
    ]
    undone = rollback(store, migration, folder)
    assert undone.counters["conflicts"] == 0 and undone.counters["mismatched"] == 0
    assert contents(store, "users_v2") == {}
    assert same(contents(store, "users"), original)

"""A run stopped at once with writes past its last checkpoint (kill -9, a run file that could not be
written, the store failing for good): the resume counts those writes as what they were (updated,
created, deleted), never as unchanged and never not at all, so its counts equal those of the
uninterrupted run over the same data, in the summary, the checkpoint, the history and the report;
and the journal holds every write's outcome, so the rollback is exact and guarded.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.pipeline import PipelineResult
from docshift.engine.stats import COUNTERS
from docshift.engine.undo import Undoer, UndoResult, UndoRules, undo_actions
from docshift.errors import EmergencyStop, ExitCode, TransientError
from docshift.history import History, MigrationStatus
from docshift.migration import DELETE, UNCHANGED, DocView, Migration, Target
from docshift.reports.report import collect_report
from docshift.runfolder import Checkpoint, JournalReader
from docshift.runfolder.layout import MigrationFolder
from docshift.store import DelegatingStore, Document, Filter, Query, Store, Write, WriteResult
from docshift.testing import MemoryStore
from docshift.values import Timestamp, Value, values_equal
from tests.unit.engine_support import build, dead_letters, options, seed

COUNT = 300


def prune(doc: DocView) -> Any:
    """Deletes every fifth document, leaves every seventh as it is, marks the others."""
    data = doc.data
    if data["n"] % 5 == 0:
        return DELETE
    if data["n"] % 7 == 0 or data.get("pruned"):
        return UNCHANGED
    data["pruned"] = True
    return data


def versioned(doc: DocView) -> Any:
    """A copy: every document but each fifth, with a version."""
    if doc.get("n") % 5 == 0:
        return DELETE
    return {**doc.data, "version": 2}


def retire(doc: DocView) -> Any:
    """Over the ``state == "old"`` documents: deletes every fifth, makes the others new (so the
    resume's reader does not come to a document the stopped process wrote)."""
    if doc.get("n") % 5 == 0:
        return DELETE
    return {**doc.data, "state": "new"}


CASES = {
    "in-place": (prune, Target("users")),
    "copy": (versioned, Target("users", copy_to="users_v2")),
    "filtered": (retire, Target("users", filters=(Filter.parse("state", "==", "old"),))),
}


def rules(source: Document, new_data: dict[str, Any]) -> tuple[str, str] | None:
    """An inline rule every eleventh document breaks (rejected, dead-lettered, not written)."""
    return ("eleventh", "n is 4 modulo 11") if source.data["n"] % 11 == 4 else None


def migration_of(case: str) -> Migration:
    up, target = CASES[case]
    return Migration("0001", "test", "a test migration", target, up, checksum="sum-0001")


def seeded() -> MemoryStore:
    store = MemoryStore()
    seed(store, COUNT, make=lambda i: {"n": i, "name": f"user {i}", "state": "old"})
    return store


def contents(store: Store) -> dict[str, dict[str, Value]]:
    return {doc.path: doc.data for name in ("users", "users_v2") for doc in store.stream(Query(name))}


def same(a: dict[str, dict[str, Value]], b: dict[str, dict[str, Value]]) -> bool:
    return a.keys() == b.keys() and all(values_equal(a[path], b[path]) for path in a)


def counted(counters: dict[str, int]) -> dict[str, int]:
    return {name: int(counters.get(name, 0)) for name in COUNTERS}


class Killed(DelegatingStore):
    """kill -9 just after the ``at``-th commit landed: commits are applied one at a time, and those
    after it never land (they wait until the test has taken the run folder as the killed process
    left it, then fail)."""

    def __init__(self, inner: Store, at: int) -> None:
        super().__init__(inner)
        self.at = at
        self.commits = 0
        self.landed = threading.Event()
        self.dead = threading.Event()
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        with self._lock:
            self.commits += 1
            if self.commits <= self.at:
                results = self.inner.commit(writes)
                if self.commits == self.at:
                    self.landed.set()
                return results
        self.dead.wait(30)
        raise TransientError("the process was killed", code="UNAVAILABLE")


def kill_at(store: Store, migration: Migration, folder: Path, at: int, shards: int) -> None:
    """Run ``migration`` until its ``at``-th commit landed, then leave ``folder`` as a process
    killed in that moment leaves it (the checkpoint first: the journal is never older than it)."""
    killer = Killed(store, at)
    opts = options(batch_size=20, concurrency=3, checkpoint_every_docs=1)  # a checkpoint per batch
    pipeline = build(killer, migration, folder, opts, shards=shards, check=rules)
    thread = threading.Thread(target=pipeline.run)
    thread.start()
    assert killer.landed.wait(30), "the run ended before the commit the test kills it after"
    kept = folder.with_name(folder.name + "-killed")
    kept.mkdir()
    for name in ("checkpoint.json", "before-images.jsonl.gz", "dead-letters.jsonl"):
        if (folder / name).exists():
            shutil.copy(folder / name, kept / name)
    killer.dead.set()
    thread.join(30)
    shutil.rmtree(folder)
    kept.rename(folder)


def uninterrupted(migration: Migration, tmp_path: Path) -> tuple[dict[str, int], dict[str, Any]]:
    store = seeded()
    result = build(
        store, migration, tmp_path / "clean", options(batch_size=20, concurrency=3), check=rules
    ).run()
    assert result.error is None
    return counted(result.counters), contents(store)


def resume(store: Store, migration: Migration, folder: Path) -> PipelineResult:
    return build(store, migration, folder, options(batch_size=20, concurrency=3), check=rules).run()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kills", [(1,), (2,), (5,), (9,), (4, 1), (7, 2, 1)])
def test_a_resume_after_kill_9_counts_what_the_killed_process_wrote(
    tmp_path: Path, case: str, kills: tuple[int, ...]
) -> None:
    migration = migration_of(case)
    truth, migrated = uninterrupted(migration, tmp_path)
    assert truth["rejected"] and truth["checked"] and truth["read"] == COUNT
    assert truth["created"] if case == "copy" else truth["updated"] and truth["deleted"]
    store = seeded()
    original = contents(store)
    folder = tmp_path / "run"
    for index, at in enumerate(kills):  # killed again while resuming, before the resume reached them
        kill_at(store, migration, folder, at, shards=1 + index % 2)
    assert not same(contents(store), original) and not same(contents(store), migrated)

    result = resume(store, migration, folder)

    assert result.error is None
    assert same(contents(store), migrated)
    assert counted(result.counters) == truth  # the summary
    assert counted(Checkpoint.load(folder / "checkpoint.json").counters) == truth
    handled = sum(truth[k] for k in ("updated", "created", "deleted", "unchanged", "failed", "skipped"))
    assert handled == COUNT
    letters = [letter["path"] for letter in dead_letters(folder)]
    assert len(letters) == len(set(letters)) == truth["rejected"]
    # Every write's outcome is journalled (none is left to be guessed), and the rollback is exact.
    journal = folder / "before-images.jsonl.gz"
    assert {action.kind for action in undo_actions(journal)} <= {"restore", "recreate", "delete"}
    outcomes = {entry.path for entry in JournalReader(journal) if entry.kind in ("written", "deleted")}
    assert len(outcomes) == truth["updated"] + truth["created"] + truth["deleted"]
    restorer = Undoer(store, UndoRules(execute=True), listings=MigrationFolder(tmp_path))
    undone = restorer.run(undo_actions(journal), UndoResult())
    assert undone.counters["conflicts"] == 0 and undone.counters["mismatched"] == 0
    assert same(contents(store), original)


class Unavailable(DelegatingStore):
    """A store that answers no read."""

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        raise TransientError("the store is unavailable", code="UNAVAILABLE")


def test_a_store_failing_while_the_resume_settles_stops_it_and_the_next_resume_counts_right(
    tmp_path: Path,
) -> None:
    migration = migration_of("in-place")
    truth, migrated = uninterrupted(migration, tmp_path)
    store = seeded()
    folder = tmp_path / "run"
    kill_at(store, migration, folder, 5, shards=1)
    killed = Checkpoint.load(folder / "checkpoint.json")
    journal = folder / "before-images.jsonl.gz"
    assert killed.journal is not None
    assert killed.journal.unsettled or journal.stat().st_size > killed.journal.size

    stopped = resume(Unavailable(store), migration, folder)

    assert isinstance(stopped.error, EmergencyStop) and stopped.error.exit_code == ExitCode.EMERGENCY_STOP
    assert "unavailable" in stopped.error.message
    kept = Checkpoint.load(folder / "checkpoint.json")
    assert kept.counters == killed.counters  # nothing counted, nothing read or written
    assert (kept.journal, kept.landed) == (killed.journal, killed.landed)
    result = resume(store, migration, folder)
    assert result.error is None
    assert counted(result.counters) == truth
    assert same(contents(store), migrated)


def test_a_checkpoint_without_journal_offsets_resumes_without_settling(tmp_path: Path) -> None:
    """A checkpoint written before the offsets were recorded still resumes (as it did then: the
    writes past it are found unchanged), and the checkpoints it writes have them."""
    migration = migration_of("in-place")
    _, migrated = uninterrupted(migration, tmp_path)
    store = seeded()
    folder = tmp_path / "run"
    kill_at(store, migration, folder, 5, shards=1)
    old = Checkpoint.load(folder / "checkpoint.json")
    old.journal, old.landed = None, {}
    old.save(folder / "checkpoint.json")

    result = resume(store, migration, folder)

    assert result.error is None
    assert same(contents(store), migrated)
    assert Checkpoint.load(folder / "checkpoint.json").journal is not None


# ---------------------------------------------------------------- the whole command
PRUNE = '''"""Delete every fifth user, leave every seventh, mark the others."""
from docshift import DELETE, UNCHANGED

description = "prune"
collection = "users"


def up(doc):
    data = doc.data
    if data["n"] % 5 == 0:
        return DELETE
    if data["n"] % 7 == 0 or data.get("pruned"):
        return UNCHANGED
    data["pruned"] = True
    return data
'''

COPY = '''"""Copy users into users_v2."""
description = "copy"
collection = "users"
copy_to = "users_v2"


def up(doc):
    return {**doc.data, "version": 2}
'''


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_prune.py").write_text(PRUNE, encoding="utf-8")
    (migrations / "0002_copy.py").write_text(COPY, encoding="utf-8")
    engine = EngineConfig(
        batch_size=20,
        min_batch_size=5,
        max_batch_size=20,
        concurrency=3,
        checkpoint_every_docs=40,
        checkpoint_every_seconds=3600.0,
    )
    return Config(
        store=StoreConfig(project="memory"),
        engine=engine,
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


class FailsForGood(DelegatingStore):
    """The store stops answering after ``after`` commits of the run: the commit that breaks it is
    applied but its reply never comes, and no later commit lands. docshift's own state (history,
    lease) is left alone, so that the run's record of the stop can be read."""

    def __init__(self, inner: Store, after: int) -> None:
        super().__init__(inner)
        self.after = after
        self.commits = 0
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if writes and writes[0].path.startswith("_docshift"):
            return self.inner.commit(writes)
        with self._lock:
            self.commits += 1
            number = self.commits
        if number < self.after:
            return self.inner.commit(writes)
        if number == self.after:
            self.inner.commit(writes)
        raise TransientError("the store is unavailable", code="UNAVAILABLE")


def views(config: Config, store: Store, run_id: str) -> dict[str, dict[str, dict[str, int]]]:
    """Each migration's counts as the checkpoint, the history and the report tell them."""
    folder = config.runs_dir / run_id
    history = History(store, config.store.state_prefix).all()
    report = {row["migration"]: row["counters"] for row in collect_report(folder)["migrations"]}
    told: dict[str, dict[str, dict[str, int]]] = {}
    for migration_id, label in (("0001", "0001_prune"), ("0002", "0002_copy")):
        assert history[migration_id].status is MigrationStatus.APPLIED
        told[label] = {
            "checkpoint": counted(Checkpoint.load(folder / label / "checkpoint.json").counters),
            "history": counted(dict(history[migration_id].counts)),
            "report": counted(report[label]),
        }
    return told


def test_a_resume_after_the_store_failed_for_good_counts_what_was_written(config: Config) -> None:
    clean_store = seeded()
    clean = run_migrations(config, RunOptions(execute=True), store=clean_store)
    truth = views(config, clean_store, clean.run_id)
    assert truth["0001_prune"]["history"]["deleted"] == COUNT // 5
    for after in (1, 3, 6, 12, 17):
        store = seeded()
        original = contents(store)
        with pytest.raises(EmergencyStop) as stopped:
            run_migrations(config, RunOptions(execute=True), store=FailsForGood(store, after))
        assert stopped.value.exit_code == ExitCode.EMERGENCY_STOP
        run_id = str(stopped.value.resume_command).split()[-1]

        resumed = run_migrations(config, RunOptions(execute=True, resume=run_id), store=store)

        assert same(contents(store), contents(clean_store)), after
        told = views(config, store, run_id)
        assert told == truth, after
        summary = {o.migration.label: counted(o.result.counters) for o in resumed.outcomes}
        assert all(summary[label] == truth[label]["checkpoint"] for label in summary), after
        undone = rollback(config, RollbackOptions(to="0", execute=True), store=store)
        assert all(
            item.counters["conflicts"] == 0 and item.counters["mismatched"] == 0 for item in undone.items
        ), after
        assert same(contents(store), original), after
        shutil.rmtree(config.runs_dir)

"""Restore plans and the Undoer on the memory store: the journal's edge cases, conflicts, resumes.

Journals come from real engine runs where possible (``run_pipeline``), and are written by hand only
to stage what a killed process leaves behind (a before-image without its ``written`` entry, a torn
last gzip member).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from docshift import codec
from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, load_run_info, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine import writer as writer_module
from docshift.engine.controls import Controls
from docshift.engine.limits import AdaptiveBatch, CircuitBreaker
from docshift.engine.undo import Undoer, UndoResult, UndoRules, undo_actions
from docshift.engine.writer import WriteGuards
from docshift.errors import RollbackConflicts, RunStopped, TransientError, UsageError
from docshift.history import History, MigrationStatus
from docshift.lock import read_lease
from docshift.migration import DELETE, UNCHANGED, DocView
from docshift.runfolder.checkpoint import Checkpoint
from docshift.runfolder.journal import JournalEntry, JournalReader, JournalWriter, _members
from docshift.runfolder.layout import MigrationFolder
from docshift.store import Document, Store, Write, WriteResult
from docshift.testing import MemoryStore
from docshift.values import Timestamp, Value, values_equal
from tests.unit.engine_support import (
    StoreWrapper,
    export,
    make_migration,
    options,
    run_pipeline,
    seed,
    split_name,
)

JOURNAL = "before-images.jsonl.gz"


# ---------------------------------------------------------------------------- helpers
def restorer(
    store: Store,
    folder: Path,
    *,
    execute: bool = True,
    batch_size: int = 40,
    stop: threading.Event | None = None,
    on_batch: Callable[[UndoResult], None] | None = None,
    own_writes: dict[str, tuple[Timestamp, Timestamp | None]] | None = None,
    **rules: Any,
) -> Undoer:
    """An Undoer writing batches of ``batch_size`` (fixed); ``rules`` are :class:`UndoRules` fields."""
    controls = Controls()
    if stop is not None:
        controls.stop = stop
    guards = WriteGuards(controls, CircuitBreaker(0.1, 200, 5), AdaptiveBatch(batch_size, 1, batch_size))
    return Undoer(
        store,
        UndoRules(execute, **rules),
        listings=MigrationFolder(folder),
        guards=guards,
        on_batch=on_batch,
        own_writes=own_writes,
    )


def undo(store: Store, journal: Path, folder: Path, start_after: int = -1, **kwargs: Any) -> UndoResult:
    return restorer(store, folder, **kwargs).run(undo_actions(journal, start_after), UndoResult())


def conflicts(folder: Path) -> list[dict[str, Any]]:
    path = folder / "conflicts.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def same_data(actual: dict[str, Document], expected: dict[str, Document]) -> list[str]:
    problems = sorted(set(actual) ^ set(expected))
    problems += [p for p in set(actual) & set(expected) if not values_equal(actual[p].data, expected[p].data)]
    return problems


def actions(journal: Path, start_after: int = -1) -> list[tuple[str, str]]:
    return [(a.kind, a.path) for a in undo_actions(journal, start_after)]


class AppWritesBeforeCommit(StoreWrapper):
    """The application changes chosen documents just before docshift's commit that includes them
    (once per document), so that commit's guard fails for them."""

    def __init__(self, inner: Store, paths: set[str], change: dict[str, Value] | None = None) -> None:
        super().__init__(inner)
        self.pending = set(paths)
        self.change = change or {"app": "edited"}

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        hit = [w.path for w in writes if w.path in self.pending and w.precondition is not None]
        for path in hit:
            self.pending.discard(path)
            [doc] = self.inner.get_many([path])
            data = {**(doc.data if doc else {}), **self.change}
            assert all(r.ok for r in self.inner.commit([Write.set(path, data)]))
        return self.inner.commit(writes)


def add_flag(doc: DocView) -> Any:
    data = doc.data
    if data.get("flag"):
        return UNCHANGED
    data["flag"] = True
    return data


def delete_every_fifth(doc: DocView) -> Any:
    return DELETE if doc.data["n"] % 5 == 0 else UNCHANGED


# ---------------------------------------------------------------------------- plans from real runs
def test_restore_undoes_updates_deletes_and_creates_of_a_real_run(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 120)
    before = export(store)

    def mixed(doc: DocView) -> Any:
        n = doc.data["n"]
        if n % 4 == 0:
            return DELETE
        if n % 4 == 1:
            return {**doc.data, "touched": n}
        return UNCHANGED

    run_pipeline(store, make_migration(mixed), tmp_path / "run")
    journal = tmp_path / "run" / JOURNAL
    planned = actions(journal)
    assert sorted(kind for kind, _ in planned) == ["recreate"] * 30 + ["restore"] * 30
    assert len({path for _, path in planned}) == 60
    result = undo(store, journal, tmp_path / "rb")
    assert result.counters["restored"] == 30 and result.counters["recreated"] == 30
    assert result.counters["conflicts"] == 0 and result.counters["mismatched"] == 0
    assert result.counters["verified"] == 60
    assert same_data(export(store), before) == []
    assert not (tmp_path / "rb" / "conflicts.jsonl").exists()


def test_a_dry_run_writes_nothing_and_counts_what_execute_then_does(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 100)
    before = export(store)
    run_pipeline(store, make_migration(split_name), tmp_path / "run")
    after = export(store)
    journal = tmp_path / "run" / JOURNAL
    dry = undo(store, journal, tmp_path / "dry", execute=False, samples=3)
    assert export(store) == after  # same documents, same update times
    assert dry.counters["restored"] == dry.counters["verified"] == 90  # the check is predicted too
    assert len(dry.samples) == 3
    _, kind, changes = dry.samples[0]
    assert kind == "restore" and {".".join(map(str, c.path)) for c in changes} == {
        "full_name",
        "first_name",
        "last_name",
    }
    done = undo(store, journal, tmp_path / "exec")
    assert done.counters == dry.counters
    assert same_data(export(store), before) == []


def test_conflict_retries_within_the_run_restore_the_application_state_our_write_replaced(
    tmp_path: Path,
) -> None:
    """The run's first write to u00001 was refused (the application had changed it); the run read
    it again and wrote over the application's version. Undoing the run must give back the
    application's version, not the older before-image."""
    store = MemoryStore()
    seed(store, 30)
    before = export(store)
    edited = {"users/u00001", "users/u00004"}
    result = run_pipeline(AppWritesBeforeCommit(store, edited), make_migration(add_flag), tmp_path / "run")
    assert result.counters["conflicts"] == 2
    journal = tmp_path / "run" / JOURNAL
    befores = [e for e in JournalReader(journal) if e.kind == "before" and e.path in edited]
    assert len(befores) == 4  # the refused attempt and the retry, for each
    undone = undo(store, journal, tmp_path / "rb")
    assert undone.counters["conflicts"] == 0 and undone.counters["restored"] == 30
    now = export(store)
    for path, doc in before.items():
        expected = {**doc.data, "app": "edited"} if path in edited else doc.data
        assert values_equal(now[path].data, expected), path


def test_a_document_written_twice_by_one_run_restores_the_state_before_the_first_write(
    tmp_path: Path,
) -> None:
    """A run that reads its own output again (a resumed batch) journals our own output as a
    before-image: that one is skipped."""
    store = MemoryStore()
    seed(store, 10)
    before = export(store)
    journal_path = tmp_path / "run" / JOURNAL
    journal = JournalWriter(journal_path)
    [original] = store.get_many(["users/u00002"])
    assert original is not None
    journal.append(
        [JournalEntry("before", original.path, original.data, original.update_time, original.create_time)]
    )
    [first] = store.commit([Write.set(original.path, {"v": 1}, update_time=original.update_time)])
    journal.append([JournalEntry("written", original.path, update_time=first.update_time)])
    [ours] = store.get_many([original.path])
    assert ours is not None
    journal.append([JournalEntry("before", ours.path, ours.data, ours.update_time, ours.create_time)])
    [second] = store.commit([Write.set(ours.path, {"v": 2}, update_time=ours.update_time)])
    journal.append([JournalEntry("written", ours.path, update_time=second.update_time)])
    journal.close()
    [action] = undo_actions(journal_path)
    assert action.kind == "restore" and action.seq == 0 and action.guard == second.update_time
    assert undo(store, journal_path, tmp_path / "rb").counters["restored"] == 1
    assert same_data(export(store), before) == []


# ---------------------------------------------------------------------------- a killed run's journal
def killed_mid_write(tmp_path: Path, *, landed: bool) -> tuple[MemoryStore, Path, dict[str, Document]]:
    """Journal before-images for five documents, then die: with ``landed`` the commit was applied
    but its ``written`` entries never reached the journal."""
    store = MemoryStore()
    seed(store, 5)
    before = export(store)
    path = tmp_path / "run" / JOURNAL
    journal = JournalWriter(path)
    docs = list(before.values())
    journal.append([JournalEntry("before", d.path, d.data, d.update_time, d.create_time) for d in docs])
    journal.close()
    if landed:
        writes = [
            Write.set(d.path, split_name(DocView(d)), update_time=d.update_time)
            for d in docs
            if split_name(DocView(d)) is not UNCHANGED
        ]
        assert all(r.ok for r in store.commit(writes))
    return store, path, before


def test_check_actions_when_the_commit_landed_but_written_is_missing(tmp_path: Path) -> None:
    store, journal, before = killed_mid_write(tmp_path, landed=True)
    assert {kind for kind, _ in actions(journal)} == {"check"}
    # u00003 holds a solo name and u00000.. are split; the application then edits one of them.
    [doc] = store.get_many(["users/u00001"])
    assert doc is not None
    store.commit([Write.set(doc.path, {**doc.data, "app": 1})])
    result = undo(store, journal, tmp_path / "rb", redo=split_name)
    assert result.counters["restored"] == 4 and result.counters["conflicts"] == 1
    [conflict] = conflicts(tmp_path / "rb")
    assert conflict["path"] == "users/u00001" and conflict["action"] == "check"
    assert "not by this migration" in conflict["reason"]
    now = export(store)
    assert values_equal(now["users/u00001"].data, {**split_name(DocView(before["users/u00001"])), "app": 1})
    assert (
        same_data(
            {p: d for p, d in now.items() if p != "users/u00001"},
            {p: d for p, d in before.items() if p != "users/u00001"},
        )
        == []
    )
    forced = undo(store, journal, tmp_path / "forced", redo=split_name, force=True)
    assert forced.counters["conflicts"] == 0
    assert same_data(export(store), before) == []


def test_check_actions_when_the_write_never_happened(tmp_path: Path) -> None:
    store, journal, before = killed_mid_write(tmp_path, landed=False)
    result = undo(store, journal, tmp_path / "rb", redo=split_name)
    assert result.counters["unchanged"] == 5 and result.counters["restored"] == 0
    assert export(store) == before  # not even rewritten


def test_a_check_without_redo_is_a_conflict_unless_forced(tmp_path: Path) -> None:
    store, journal, before = killed_mid_write(tmp_path, landed=True)
    result = undo(store, journal, tmp_path / "rb")
    assert result.counters["conflicts"] == 5 and result.counters["restored"] == 0
    assert undo(store, journal, tmp_path / "forced", force=True).counters["restored"] == 5
    assert same_data(export(store), before) == []


def test_a_torn_last_member_is_ignored_and_its_writes_are_checked(tmp_path: Path) -> None:
    """The process died while appending the ``written`` entries of a batch whose commit landed:
    the torn member is dropped, the batch's documents become checks, and the restore is exact."""
    store = MemoryStore()
    seed(store, 20)
    before = export(store)
    run_pipeline(store, make_migration(split_name), tmp_path / "run", options(batch_size=10, concurrency=1))
    journal = tmp_path / "run" / JOURNAL
    whole = journal.read_bytes()
    entries = list(JournalReader(journal))
    members = list(_members(whole))
    last = [orjson.loads(line)["k"] for line in members[-1][1].splitlines()]
    assert last and set(last) == {"written"}  # the last batch's written entries, one member
    # Cut the file in the middle of its last member.
    end_before_last = members[-2][0]
    journal.write_bytes(whole[: end_before_last + (len(whole) - end_before_last) // 2])
    reader = JournalReader(journal)
    kept = list(reader)
    assert reader.torn_tail and len(kept) == len(entries) - len(last)
    planned = actions(journal)
    assert sorted(kind for kind, _ in planned) == ["check"] * len(last) + ["restore"] * (18 - len(last))
    result = undo(store, journal, tmp_path / "rb", redo=split_name)
    assert result.counters["restored"] == 18 and result.counters["conflicts"] == 0
    assert same_data(export(store), before) == []


def test_a_torn_before_member_means_the_commit_was_never_sent(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 3)
    before = export(store)
    path = tmp_path / JOURNAL
    journal = JournalWriter(path)
    doc = before["users/u00000"]
    journal.append([JournalEntry("before", doc.path, doc.data, doc.update_time, doc.create_time)])
    journal.close()
    intact = path.read_bytes()
    other = before["users/u00001"]
    journal = JournalWriter(path)
    journal.append([JournalEntry("before", other.path, other.data, other.update_time, other.create_time)])
    journal.close()
    path.write_bytes(path.read_bytes()[: len(intact) + 12])
    assert actions(path) == [("check", "users/u00000")]
    assert undo(store, path, tmp_path / "rb", redo=split_name).counters["unchanged"] == 1


# ---------------------------------------------------------------------------- created and deleted
def test_copy_restore_deletes_created_documents_and_a_modified_one_is_a_conflict(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 40)
    before = export(store)
    migration = make_migration(lambda doc: {**doc.data, "copied": True}, copy_to="users_v2")
    run_pipeline(store, migration, tmp_path / "run")
    assert len(export(store, "users_v2")) == 40
    journal = tmp_path / "run" / JOURNAL
    assert {kind for kind, _ in actions(journal)} == {"delete"}
    # The application edits one copy and deletes another after the run.
    store.commit([Write.set("users_v2/u00003", {"app": True}), Write.delete("users_v2/u00004")])
    dry = undo(store, journal, tmp_path / "dry", execute=False)
    assert dry.counters["conflicts"] == 1 and dry.counters["deleted"] == 38
    assert dry.counters["unchanged"] == 1  # already gone: nothing to undo
    result = undo(store, journal, tmp_path / "rb")
    assert result.counters["deleted"] == 38 and result.counters["conflicts"] == 1
    assert [c["path"] for c in conflicts(tmp_path / "rb")] == ["users_v2/u00003"]
    assert list(export(store, "users_v2")) == ["users_v2/u00003"]
    assert export(store) == before  # the source is untouched, update times included
    forced = undo(store, journal, tmp_path / "forced", force=True)
    assert forced.counters["deleted"] == 1 and export(store, "users_v2") == {}


def test_created_then_crashed_before_written_is_a_conflict_unless_forced(tmp_path: Path) -> None:
    store = MemoryStore()
    path = tmp_path / JOURNAL
    journal = JournalWriter(path)
    journal.append([JournalEntry("created", "copy/a"), JournalEntry("created", "copy/b")])
    journal.close()
    store.commit([Write.create("copy/a", {"x": 1})])  # a landed; b never did
    result = undo(store, path, tmp_path / "rb")
    assert result.counters["conflicts"] == 1 and result.counters["unchanged"] == 1
    assert "died before confirming" in conflicts(tmp_path / "rb")[0]["reason"]
    assert undo(store, path, tmp_path / "forced", force=True).counters["deleted"] == 1
    assert export(store, "copy") == {}


def test_deleted_documents_are_recreated_unless_one_exists_there_again(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 20)
    before = export(store)
    run_pipeline(store, make_migration(delete_every_fifth), tmp_path / "run")
    assert len(export(store)) == 16
    journal = tmp_path / "run" / JOURNAL
    assert sorted(actions(journal)) == [("recreate", f"users/u{n:05d}") for n in (0, 5, 10, 15)]
    store.commit([Write.create("users/u00005", {"app": "new"})])
    result = undo(store, journal, tmp_path / "rb")
    assert result.counters["recreated"] == 3 and result.counters["conflicts"] == 1
    assert conflicts(tmp_path / "rb")[0]["reason"].startswith("deleted by the migration")
    assert values_equal(export(store)["users/u00005"].data, {"app": "new"})
    forced = undo(store, journal, tmp_path / "forced", force=True)
    assert forced.counters["recreated"] == 1 and forced.counters["unchanged"] == 3
    assert same_data(export(store), before) == []


def test_a_deleted_document_whose_delete_was_in_flight_is_recreated(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 2)
    doc = export(store)["users/u00000"]
    path = tmp_path / JOURNAL
    journal = JournalWriter(path)
    journal.append([JournalEntry("before", doc.path, doc.data, doc.update_time, doc.create_time)])
    journal.close()
    store.commit([Write.delete(doc.path, update_time=doc.update_time)])  # landed, "deleted" never written
    assert undo(store, path, tmp_path / "rb").counters["recreated"] == 1
    assert values_equal(export(store)[doc.path].data, doc.data)


# ---------------------------------------------------------------------------- conflicts and force
def test_an_application_edit_after_the_run_is_a_conflict_listed_and_left_alone(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 50)
    before = export(store)
    run_pipeline(store, make_migration(add_flag), tmp_path / "run")
    [doc] = store.get_many(["users/u00010"])
    assert doc is not None
    store.commit([Write.set(doc.path, {**doc.data, "app": 2})])
    journal = tmp_path / "run" / JOURNAL
    dry = undo(store, journal, tmp_path / "dry", execute=False)
    assert dry.counters["conflicts"] == 1 and dry.counters["restored"] == 49
    [listed] = conflicts(tmp_path / "dry")
    assert listed["path"] == doc.path and listed["action"] == "restore"
    assert values_equal(codec.decode(listed["current"]), {**doc.data, "app": 2})
    assert values_equal(codec.decode(listed["before"]), before[doc.path].data)
    result = undo(store, journal, tmp_path / "rb")
    assert result.counters["conflicts"] == 1 and result.counters["mismatched"] == 0
    assert values_equal(export(store)[doc.path].data, {**doc.data, "app": 2})
    assert [c["path"] for c in conflicts(tmp_path / "rb")] == [doc.path]
    forced = undo(store, journal, tmp_path / "forced", force=True)
    assert forced.counters["restored"] == 1 and forced.counters["conflicts"] == 0
    assert forced.counters["unchanged"] == 49  # restored by the run before
    assert same_data(export(store), before) == []


def test_an_application_write_racing_the_restore_is_a_conflict_not_a_mismatch(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 30)
    run_pipeline(store, make_migration(add_flag), tmp_path / "run")
    racing = AppWritesBeforeCommit(store, {"users/u00007"}, {"app": "raced"})
    result = undo(racing, tmp_path / "run" / JOURNAL, tmp_path / "rb")
    assert result.counters["conflicts"] == 1 and result.counters["restored"] == 29
    assert result.counters["verified"] == 29 and result.counters["mismatched"] == 0
    assert export(store)["users/u00007"].data["app"] == "raced"


def test_a_document_already_back_to_its_before_image_is_unchanged_not_a_conflict(tmp_path: Path) -> None:
    """A rollback killed after its commit but before its checkpoint does that batch again: the
    documents it already restored are found equal to their before-images."""
    store = MemoryStore()
    seed(store, 60)
    before = export(store)
    run_pipeline(store, make_migration(add_flag), tmp_path / "run")
    journal = tmp_path / "run" / JOURNAL
    first = undo(store, journal, tmp_path / "rb")
    assert first.counters["restored"] == 60
    again = undo(store, journal, tmp_path / "rb")
    assert again.counters["unchanged"] == 60 and again.counters["conflicts"] == 0
    assert same_data(export(store), before) == []


def test_resume_from_a_position_does_only_the_rest(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 100)
    before = export(store)
    run_pipeline(store, make_migration(add_flag), tmp_path / "run")
    journal = tmp_path / "run" / JOURNAL
    stop = threading.Event()
    seen: list[int] = []

    def after_batch(result: UndoResult) -> None:
        seen.append(result.position)
        if len(seen) == 1:
            stop.set()

    partial = restorer(store, tmp_path / "rb", stop=stop, on_batch=after_batch, batch_size=30).run(
        undo_actions(journal), UndoResult()
    )
    assert partial.stopped and partial.counters["restored"] == 30
    rest = UndoResult(position=partial.position)
    rest.counters.update(partial.counters)
    done = restorer(store, tmp_path / "rb").run(undo_actions(journal, partial.position), rest)
    assert not done.stopped and done.counters["restored"] == 100 and done.counters["unchanged"] == 0
    assert same_data(export(store), before) == []


# ---------------------------------------------------------------------------- several migrations
def test_undoing_two_migrations_newest_first_shares_own_writes(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 50)
    before = export(store)
    first, second = make_migration(add_flag), make_migration(split_name, migration_id="0002")
    run_pipeline(store, first, tmp_path / "one")
    run_pipeline(store, second, tmp_path / "two")
    own: dict[str, Any] = {}
    newer = undo(store, tmp_path / "two" / JOURNAL, tmp_path / "rb2", own_writes=own)
    older = undo(store, tmp_path / "one" / JOURNAL, tmp_path / "rb1", own_writes=own)
    assert newer.counters["conflicts"] == older.counters["conflicts"] == 0
    assert newer.counters["restored"] == 45 and older.counters["restored"] == 50
    assert same_data(export(store), before) == []


def test_without_the_newer_restore_seen_as_ours_the_older_one_checks_the_values(tmp_path: Path) -> None:
    """A resumed rollback has lost the in-memory record of its own earlier writes: the older
    migration's restore recognises the newer one's restore by value (the document holds exactly
    what the older migration wrote)."""
    store = MemoryStore()
    seed(store, 50)
    before = export(store)
    first, second = make_migration(add_flag), make_migration(split_name, migration_id="0002")
    run_pipeline(store, first, tmp_path / "one")
    run_pipeline(store, second, tmp_path / "two")
    undo(store, tmp_path / "two" / JOURNAL, tmp_path / "rb2")
    older = undo(store, tmp_path / "one" / JOURNAL, tmp_path / "rb1", redo=add_flag)
    assert older.counters["conflicts"] == 0 and older.counters["restored"] == 50
    assert same_data(export(store), before) == []


# ---------------------------------------------------------------------------- the rollback() API
FLAG = '''"""Add a flag."""
from docshift import UNCHANGED

description = "add a flag"
collection = "users"


def up(doc):
    data = doc.data
    if data.get("flag"):
        return UNCHANGED
    data["flag"] = True
    return data
'''

PRUNE = '''"""Delete every fifth user, mark the others."""
from docshift import DELETE, UNCHANGED

description = "prune"
collection = "users"


def up(doc):
    data = doc.data
    if data["n"] % 5 == 0:
        return DELETE
    if data.get("pruned"):
        return UNCHANGED
    data["pruned"] = True
    return data
'''


@pytest.fixture
def api_config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_flag.py").write_text(FLAG, encoding="utf-8")
    (migrations / "0002_prune.py").write_text(PRUNE, encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=20, min_batch_size=10),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


class StopAfterCommits(StoreWrapper):
    """Requests a stop after ``commits`` commits of user documents (history and lease writes
    do not count)."""

    def __init__(self, inner: Store, controls: Controls, commits: int) -> None:
        super().__init__(inner)
        self.controls, self.left = controls, commits

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        if any(w.path.startswith("users/") for w in writes):
            self.left -= 1
            if self.left == 0:
                self.controls.request_stop("test stop")
        return results


def test_rollback_to_dry_run_agrees_with_execute_across_a_delete(api_config: Config) -> None:
    """0002 deleted documents 0001 had written: the dry run must see them as recreated by 0002's
    restore, not as deleted after 0001 wrote them."""
    store = MemoryStore()
    seed(store, 100)
    before = export(store)
    run_migrations(api_config, RunOptions(execute=True), store=store)
    dry = rollback(api_config, RollbackOptions(to="0"), store=store)
    assert [(i.migration.id, i.strategy) for i in dry.items] == [("0002", "restore"), ("0001", "restore")]
    assert [i.counters["conflicts"] for i in dry.items] == [0, 0]
    assert dry.items[0].counters["recreated"] == 20 and dry.items[1].counters["restored"] == 100
    done = rollback(api_config, RollbackOptions(to="0", execute=True), store=store)
    for planned, applied in zip(dry.items, done.items, strict=True):
        assert {**planned.counters, "verified": 0} == {**applied.counters, "verified": 0}
    assert [i.counters["verified"] for i in done.items] == [100, 100]
    assert same_data(export(store), before) == []


def test_rollback_stopped_midway_resumes_to_the_pre_run_data(api_config: Config) -> None:
    store = MemoryStore()
    seed(store, 200)
    before = export(store)
    report = run_migrations(api_config, RunOptions(execute=True), store=store)
    controls = Controls()
    # 0002 writes 200 documents in batches of 20: stop inside 0001's restore (after 13 commits).
    with pytest.raises(RunStopped) as stopped:
        rollback(
            api_config,
            RollbackOptions(run_id=report.run_id, strategy="restore", execute=True),
            store=StopAfterCommits(store, controls, 13),
            controls=controls,
        )
    assert stopped.value.exit_code == 10
    assert (stopped.value.resume_command or "").startswith("docshift rollback --execute --resume ")
    assert read_lease(store, "_docshift") is None
    records = History(store, "_docshift").all()
    assert records["0002"].status is MigrationStatus.ROLLED_BACK
    assert records["0001"].status is MigrationStatus.APPLIED
    resumed = rollback(api_config, RollbackOptions(resume="latest"), store=store)
    assert [i.counters["conflicts"] for i in resumed.items] == [0, 0]
    assert same_data(export(store), before) == []
    records = History(store, "_docshift").all()
    assert {r.status for r in records.values()} == {MigrationStatus.ROLLED_BACK}
    assert records["0001"].run_id == resumed.run_id


def test_rollback_with_conflicts_raises_and_does_not_mark_rolled_back(api_config: Config) -> None:
    store = MemoryStore()
    seed(store, 40)
    report = run_migrations(api_config, RunOptions(only="0001", execute=True), store=store)
    [doc] = store.get_many(["users/u00003"])
    assert doc is not None
    store.commit([Write.set(doc.path, {**doc.data, "app": True})])
    with pytest.raises(RollbackConflicts) as raised:
        rollback(
            api_config, RollbackOptions(run_id=report.run_id, strategy="restore", execute=True), store=store
        )
    assert raised.value.exit_code == 1 and "1 document(s)" in raised.value.message
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    forced = rollback(
        api_config,
        RollbackOptions(run_id=report.run_id, strategy="restore", execute=True, force=True),
        store=store,
    )
    # The first rollback restored the other 39; they are found already back.
    assert forced.items[0].counters["restored"] == 1 and forced.items[0].counters["unchanged"] == 39
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK


COPY_WITH_DOWN = '''"""Copy users into users_v2 (its down() is for in-place use only)."""
description = "copy"
collection = "users"
copy_to = "users_v2"


def up(doc):
    return {**doc.data, "version": 2}


def down(doc):
    data = doc.data
    data.pop("version", None)
    return data
'''


def test_a_copy_is_undone_by_restore_never_by_down(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_copy.py").write_text(COPY_WITH_DOWN, encoding="utf-8")
    config = Config(
        store=StoreConfig(project="memory"), migrations_dir=migrations, runs_dir=tmp_path / "runs"
    )
    store = MemoryStore()
    seed(store, 30)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    with pytest.raises(UsageError, match="down\\(\\) cannot undo a copy"):
        rollback(config, RollbackOptions(run_id=report.run_id, strategy="down"), store=store)
    done = rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    assert [(i.strategy, i.counters["deleted"]) for i in done.items] == [("restore", 30)]
    assert export(store, "users_v2") == {} and export(store) == before


def test_a_stopped_rollback_is_marked_stopped_and_the_latest_is_resumed(api_config: Config) -> None:
    store = MemoryStore()
    seed(store, 100)
    before = export(store)
    report = run_migrations(api_config, RunOptions(execute=True), store=store)
    controls = Controls()
    with pytest.raises(RunStopped):
        rollback(
            api_config,
            RollbackOptions(run_id=report.run_id, strategy="restore", execute=True),
            store=StopAfterCommits(store, controls, 1),
            controls=controls,
        )
    [folder] = [p for p in api_config.runs_dir.iterdir() if p.name != report.run_id]
    assert load_run_info(folder)["state"] == "stopped"
    resumed = rollback(api_config, RollbackOptions(resume="latest"), store=store)
    assert resumed.folder == folder and load_run_info(folder)["state"] == "finished"
    assert same_data(export(store), before) == []


class FailsOneUserCommit(StoreWrapper):
    """The ``nth`` commit of user documents fails transiently (nothing of it applied), once."""

    def __init__(self, inner: Store, nth: int) -> None:
        super().__init__(inner)
        self.left = nth

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if any(w.path.startswith("users/") for w in writes):
            self.left -= 1
            if self.left == 0:
                raise TransientError("injected: unavailable", code="UNAVAILABLE", hint="try again")
        return self.inner.commit(writes)


def test_a_store_failure_between_the_requests_of_one_undo_batch_counts_what_landed_as_restored(
    api_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch of undo writes is cut into several requests (by size); the store fails at the
    third. The requests before it landed: the rollback counts them restored (also in its saved
    checkpoint), and its resume, which finds them back at their before-image, does not count them
    again as unchanged. Every counter says what happened to each document exactly once."""
    only_flag = api_config.migrations_dir / "0002_prune.py"
    only_flag.unlink()
    store = MemoryStore()
    seed(store, 40)
    before = export(store)
    report = run_migrations(api_config, RunOptions(execute=True), store=store)
    monkeypatch.setattr(writer_module, "REQUEST_BUDGET", 600)  # a few documents per request
    with pytest.raises(RunStopped):
        rollback(
            api_config,
            RollbackOptions(run_id=report.run_id, strategy="restore", execute=True),
            store=FailsOneUserCommit(store, 3),
        )
    restored_so_far = sum(1 for path, doc in export(store).items() if "flag" not in doc.data)
    assert 0 < restored_so_far < 40
    [folder] = [f for f in api_config.runs_dir.iterdir() if f.name != report.run_id]
    saved = Checkpoint.load(folder / "0001_flag" / "checkpoint.json")
    assert saved.counters["restored"] == restored_so_far
    resumed = rollback(api_config, RollbackOptions(resume=folder.name), store=store)
    [item] = resumed.items
    assert same_data(export(store), before) == []
    assert item.counters["restored"] == 40
    assert item.counters["unchanged"] == 0
    assert item.counters["verified"] == 40

"""A rollback tells the truth, on the memory store: it is verified against the before-images
whatever down() does, it touches only the documents the run changed, a dry run of several
migrations predicts exactly what the execute does, and it works on the database the run was on."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from docshift.commands.project import new_migration
from docshift.commands.rollback import RollbackOptions, RollbackReport, rollback
from docshift.commands.run import RunOptions, load_run_info, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig, load_config, with_values
from docshift.errors import RollbackConflicts, TransientError, UsageError
from docshift.history import History, MigrationStatus
from docshift.loader import load_migrations
from docshift.store import Document, RetryingStore, RetryPolicy, Store, Write, WriteResult
from docshift.testing import MemoryStore
from docshift.values import values_equal
from tests.unit.engine_support import StoreWrapper, export, seed

PREFIX = "_docshift"

TIER = '''"""Set a tier."""
from docshift import UNCHANGED

description = "tier"
collection = "users"


def up(doc):
    data = doc.data
    if "tier" in data:
        return UNCHANGED
    data["tier"] = "free"
    return data


def down(doc):
    data = doc.data
    if "tier" not in data:
        return UNCHANGED
    del data["tier"]
    return data
'''

NO_OP_DOWN = '''"""Set a flag; its down() does nothing (as the old template's did)."""
from docshift import UNCHANGED

description = "flag"
collection = "users"


def up(doc):
    data = doc.data
    if data.get("flag"):
        return UNCHANGED
    data["flag"] = True
    return data


def down(doc):
    return UNCHANGED
'''

HALF_DOWN = '''"""Set a flag; its down() undoes it only for even n, and deletes n == 1."""
from docshift import DELETE, UNCHANGED

description = "flag"
collection = "users"


def up(doc):
    data = doc.data
    if data.get("flag"):
        return UNCHANGED
    data["flag"] = True
    return data


def down(doc):
    data = doc.data
    if data["n"] == 1:
        return DELETE
    if data["n"] == 3:
        raise ValueError("cannot undo three")
    if data["n"] % 2:
        return UNCHANGED
    data.pop("flag", None)
    return data
'''


def rename(old: str, new: str, *, with_down: bool = True, description: str = "rename") -> str:
    source = f'''"""Rename {old} to {new}."""
from docshift import UNCHANGED

description = "{description}"
collection = "users"


def up(doc):
    data = doc.data
    if "{old}" not in data:
        return UNCHANGED
    data["{new}"] = data.pop("{old}")
    return data
'''
    if with_down:
        source += f'''

def down(doc):
    data = doc.data
    if "{new}" not in data:
        return UNCHANGED
    data["{old}"] = data.pop("{new}")
    return data
'''
    return source


PRUNE = '''"""Delete every fifth user (down() cannot bring them back: restore does)."""
from docshift import DELETE, UNCHANGED

description = "prune"
collection = "users"


def up(doc):
    return DELETE if doc.data["n"] % 5 == 0 else UNCHANGED


def down(doc):
    return UNCHANGED
'''


def project(tmp_path: Path, **files: str) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir(exist_ok=True)
    for name, source in files.items():
        (migrations / f"{name}.py").write_text(source, encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=20, min_batch_size=10),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def same_data(actual: dict[str, Document], expected: dict[str, Document]) -> list[str]:
    problems = sorted(set(actual) ^ set(expected))
    problems += [p for p in set(actual) & set(expected) if not values_equal(actual[p].data, expected[p].data)]
    return problems


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def status_of(store: Store, migration_id: str) -> MigrationStatus:
    record = History(store, PREFIX).get(migration_id)
    assert record is not None
    return record.status


# ---------------------------------------------------------------------------- item 2: the template
def test_the_template_has_no_working_down_so_auto_restores_the_before_images(tmp_path: Path) -> None:
    config = project(tmp_path)
    path = new_migration(config.migrations_dir, "add a flag", collection="users")
    source = path.read_text()
    assert "# def down(" in source  # shown as an example, not defined
    source = source.replace("    return data\n", "    data['flag'] = True\n    return data\n", 1)
    path.write_text(source)
    [migration] = load_migrations(config.migrations_dir)
    assert migration.down is None
    store = MemoryStore()
    seed(store, 30)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert report.outcomes[0].result.counters["updated"] == 30
    done = rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    [item] = done.items
    assert item.strategy == "restore" and item.counters["verified"] == 30
    assert same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK


# ---------------------------------------------------------------------------- item 2: verified
def test_a_no_op_down_is_mismatched_listed_and_not_recorded_as_rolled_back(tmp_path: Path) -> None:
    config = project(tmp_path, **{"0001_flag": NO_OP_DOWN})
    store = MemoryStore()
    seed(store, 40)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    migrated = export(store)

    dry = rollback(config, RollbackOptions(run_id=report.run_id), store=store)
    [planned] = dry.items
    assert planned.strategy == "down" and planned.counters["mismatched"] == 40
    assert len(lines(planned.folder / "mismatches.jsonl")) == 40  # the dry run predicts them
    assert export(store) == migrated  # and writes nothing

    with pytest.raises(RollbackConflicts) as raised:
        rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    assert raised.value.exit_code == 1
    assert "40 document(s)" in raised.value.message and "before-image" in raised.value.message
    assert raised.value.report is not None
    [item] = raised.value.report.items
    assert item.counters["mismatched"] == 40 and item.counters["verified"] == 0
    listed = lines(item.folder / "mismatches.jsonl")
    assert sorted(r["path"] for r in listed) == sorted(migrated)
    assert all("down()" in r["reason"] for r in listed)
    assert item.folder.parent == raised.value.report.folder
    assert status_of(store, "0001") is MigrationStatus.APPLIED  # not rolled back: it was not undone
    # restore then undoes it for real
    done = rollback(
        config, RollbackOptions(run_id=report.run_id, strategy="restore", execute=True), store=store
    )
    assert done.items[0].counters["restored"] == 40 and done.items[0].counters["mismatched"] == 0
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK


def test_every_way_down_can_miss_is_a_mismatch_and_the_dry_run_predicts_each(tmp_path: Path) -> None:
    """down() that leaves a document, deletes it, or raises: each is listed with its reason; the
    documents it did undo are verified."""
    config = project(tmp_path, **{"0001_flag": HALF_DOWN})
    store = MemoryStore()
    seed(store, 10)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    dry = rollback(config, RollbackOptions(run_id=report.run_id), store=store)
    with pytest.raises(RollbackConflicts) as raised:
        rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    assert raised.value.report is not None
    [item] = raised.value.report.items
    odd = {f"users/u{n:05d}" for n in (1, 3, 5, 7, 9)}
    assert item.counters["verified"] == 5 and item.counters["mismatched"] == 5
    assert item.counters == dry.items[0].counters
    reasons = {r["path"]: r["reason"] for r in lines(item.folder / "mismatches.jsonl")}
    assert set(reasons) == odd
    assert "deleted" in reasons["users/u00001"]
    assert "ValueError: cannot undo three" in reasons["users/u00003"]
    assert "unchanged" in reasons["users/u00005"]
    now = export(store)
    assert "users/u00001" not in now  # what down() did is what happened, and it is reported
    assert (
        same_data(
            {p: d for p, d in now.items() if p not in odd}, {p: d for p, d in before.items() if p not in odd}
        )
        == []
    )


# ---------------------------------------------------------------------------- item 3: only the journal
def test_down_touches_only_the_documents_the_run_changed(tmp_path: Path) -> None:
    """100 documents, a run limited to 10; the application then sets the same field on 10 others
    and creates one: the rollback by down() undoes the 10 and touches nothing else."""
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 100)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True, limit=10), store=store)
    assert report.outcomes[0].result.counters["updated"] == 10
    app_paths = [f"users/u{n:05d}" for n in range(50, 60)]
    app_writes = [Write.set(p, {**before[p].data, "tier": "gold"}) for p in app_paths]
    app_writes.append(Write.set("users/new", {"n": 1000, "tier": "app"}))
    assert all(r.ok for r in store.commit(app_writes))
    by_app = export(store)

    dry = rollback(config, RollbackOptions(run_id=report.run_id), store=store)
    done = rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    [item] = done.items
    assert item.strategy == "down"
    assert item.counters["restored"] == item.counters["verified"] == 10
    assert sum(item.counters.values()) == 20  # restored and verified: nothing else was looked at
    assert dry.items[0].counters == item.counters
    now = export(store)
    for path in [*app_paths, "users/new"]:
        assert now[path].update_time == by_app[path].update_time and now[path].data["tier"] != "free"
    untouched = [p for p in before if p not in app_paths and int(p[-5:]) >= 10]
    assert all(now[p].update_time == before[p].update_time for p in untouched)
    assert (
        same_data(
            {p: now[p] for p in before if p not in app_paths},
            {p: before[p] for p in before if p not in app_paths},
        )
        == []
    )
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK


def test_down_leaves_a_document_the_application_changed_since_as_a_conflict(tmp_path: Path) -> None:
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 20)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    [doc] = store.get_many(["users/u00004"])
    assert doc is not None
    edited = {**doc.data, "app": "edited"}
    assert store.commit([Write.set(doc.path, edited)])[0].ok
    dry = rollback(config, RollbackOptions(run_id=report.run_id), store=store)
    with pytest.raises(RollbackConflicts) as raised:
        rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    assert raised.value.report is not None
    [item] = raised.value.report.items
    assert item.counters["conflicts"] == 1 and item.counters["restored"] == 19
    assert dry.items[0].counters == item.counters
    assert values_equal(export(store)["users/u00004"].data, edited)  # left alone
    [listed] = lines(item.folder / "conflicts.jsonl")
    assert listed["path"] == "users/u00004"
    assert status_of(store, "0001") is MigrationStatus.APPLIED
    others = {p: d for p, d in export(store).items() if p != "users/u00004"}
    assert same_data(others, {p: d for p, d in before.items() if p != "users/u00004"}) == []


def test_down_recreates_what_the_run_deleted_from_its_before_images(tmp_path: Path) -> None:
    """down() cannot see a document the run deleted: it comes back from its before-image."""
    config = project(tmp_path, **{"0001_prune": PRUNE})
    store = MemoryStore()
    seed(store, 50)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert report.outcomes[0].result.counters["deleted"] == 10
    done = rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    [item] = done.items
    assert item.strategy == "down" and item.counters["recreated"] == item.counters["verified"] == 10
    assert same_data(export(store), before) == []


def test_without_before_images_down_runs_over_the_target_and_says_it_is_unverified(tmp_path: Path) -> None:
    config = project(tmp_path, **{"0001_tier": TIER}).with_engine(backup=False)
    store = MemoryStore()
    seed(store, 30)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    done = rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    [item] = done.items
    assert item.strategy == "down" and item.pipeline is not None
    assert item.counters["updated"] == 30
    assert item.note is not None and "no before-images" in item.note and "every document" in item.note
    with pytest.raises(UsageError, match="no before-images"):
        rollback(config, RollbackOptions(run_id=report.run_id, strategy="restore"), store=store)


# ---------------------------------------------------------------------------- item 4: dry run == execute
CHAINS: dict[str, dict[str, str]] = {
    "two chained renames": {"0001_a_to_b": rename("a", "b"), "0002_b_to_c": rename("b", "c")},
    "three chained renames": {
        "0001_a_to_b": rename("a", "b"),
        "0002_b_to_c": rename("b", "c"),
        "0003_c_to_d": rename("c", "d"),
    },
    "down after restore": {"0001_a_to_b": rename("a", "b"), "0002_b_to_c": rename("b", "c", with_down=False)},
    "restore after down": {"0001_a_to_b": rename("a", "b", with_down=False), "0002_b_to_c": rename("b", "c")},
    "down over a delete": {
        "0001_a_to_b": rename("a", "b"),
        "0002_prune": PRUNE,
        "0003_b_to_c": rename("b", "c"),
    },
}


def lettered(index: int) -> dict[str, Any]:
    return {"n": index, "a": f"value {index}"} if index % 7 else {"n": index, "other": True}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_a_dry_run_of_several_migrations_counts_what_the_execute_does(chain: str, tmp_path: Path) -> None:
    config = project(tmp_path, **CHAINS[chain])
    store = MemoryStore()
    seed(store, 140, make=lettered)
    before = export(store)
    run_migrations(config, RunOptions(execute=True), store=store)
    dry = rollback(config, RollbackOptions(to="0"), store=store)
    done = rollback(config, RollbackOptions(to="0", execute=True), store=store)
    planned = [(i.migration.id, i.strategy) for i in dry.items]
    assert planned == [(i.migration.id, i.strategy) for i in done.items]
    assert [i.counters for i in dry.items] == [i.counters for i in done.items]
    assert all(i.counters["mismatched"] == i.counters["conflicts"] == 0 for i in done.items)
    assert same_data(export(store), before) == []


def test_a_dry_run_of_several_migrations_predicts_the_conflicts_and_mismatches(tmp_path: Path) -> None:
    config = project(
        tmp_path,
        **{"0001_a_to_b": rename("a", "b"), "0002_flag": NO_OP_DOWN, "0003_b_to_c": rename("b", "c")},
    )
    store = MemoryStore()
    seed(store, 60, make=lettered)
    run_migrations(config, RunOptions(execute=True), store=store)
    [doc] = store.get_many(["users/u00008"])
    assert doc is not None and store.commit([Write.set(doc.path, {**doc.data, "app": 1})])[0].ok
    dry = rollback(config, RollbackOptions(to="0"), store=store)
    with pytest.raises(RollbackConflicts) as raised:
        rollback(config, RollbackOptions(to="0", execute=True), store=store)
    report: RollbackReport | None = raised.value.report
    assert report is not None
    assert [i.counters for i in dry.items] == [i.counters for i in report.items]
    # 0003 leaves the edited document alone; 0002's down() undoes nothing (59 mismatched), so
    # 0001 finds its documents holding 0002's flag, not what 0001 wrote: conflicts, left alone.
    assert [i.counters["conflicts"] for i in report.items] == [1, 1, 51]
    assert [i.counters["mismatched"] for i in report.items] == [0, 59, 0]


# ---------------------------------------------------------------------------- item 17: the run's target
def test_a_rollback_works_on_the_database_its_run_was_on(tmp_path: Path) -> None:
    plain = project(tmp_path, **{"0001_tier": TIER})
    mydb = MemoryStore(database="mydb")
    seed(mydb, 20)
    before = export(mydb)
    report = run_migrations(
        with_values(plain, {"database": "mydb"}, "the test"), RunOptions(execute=True), store=mydb
    )
    assert load_run_info(report.folder)["database"] == "mydb"
    # A store on another database than the run's is refused, before anything is read or written.
    with pytest.raises(UsageError, match="database mydb") as wrong_store:
        rollback(plain, RollbackOptions(run_id=report.run_id, execute=True), store=MemoryStore())
    assert wrong_store.value.exit_code == 2
    # So is an explicit --database that is not the run's.
    flagged = dataclasses.replace(
        load_config({"database": "other"}, env={}, cwd=tmp_path),
        migrations_dir=plain.migrations_dir,
        runs_dir=plain.runs_dir,
    )
    with pytest.raises(UsageError, match="--database other") as refused:
        rollback(flagged, RollbackOptions(run_id=report.run_id, execute=True), store=mydb)
    assert refused.value.exit_code == 2 and refused.value.hint and "mydb" in refused.value.hint
    # Without --database the run's database is used.
    from docshift.commands.target import target_config

    assert target_config(plain, report.folder).store.database == "mydb"
    done = rollback(plain, RollbackOptions(run_id=report.run_id, execute=True), store=mydb)
    assert done.items[0].counters["restored"] == 20
    assert same_data(export(mydb), before) == []


def test_a_dry_run_through_a_run_without_before_images_sees_the_newer_undo(tmp_path: Path) -> None:
    """0001 ran with --no-backup (down() over the target is its only way back), 0002 with
    before-images: the dry run's down() over 0001's target streams what undoing 0002 would leave."""
    config = project(tmp_path, **{"0001_a_to_b": rename("a", "b"), "0002_b_to_c": rename("b", "c")})
    store = MemoryStore()
    seed(store, 80, make=lettered)
    before = export(store)
    run_migrations(config.with_engine(backup=False), RunOptions(execute=True, only="0001"), store=store)
    run_migrations(config, RunOptions(execute=True), store=store)
    dry = rollback(config, RollbackOptions(to="0"), store=store)
    done = rollback(config, RollbackOptions(to="0", execute=True), store=store)
    assert [i.pipeline is not None for i in done.items] == [False, True]
    assert [i.counters for i in dry.items] == [i.counters for i in done.items]
    assert done.items[1].counters["updated"] == 68
    assert same_data(export(store), before) == []


class LosesReplies(StoreWrapper):
    """Applies the first ``count`` commits of user documents, then raises UNAVAILABLE as if the
    connection reset before the reply: the retry layer sends them again."""

    def __init__(self, inner: Store, count: int) -> None:
        super().__init__(inner)
        self.left = count

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        if self.left > 0 and any(w.path.startswith("users/") for w in writes):
            self.left -= 1
            raise TransientError("injected: connection reset after the commit", code="UNAVAILABLE")
        return results


@pytest.mark.parametrize("chain", ["0001_tier", "0001_prune"])
def test_a_rollback_write_whose_reply_was_lost_is_counted_as_done_not_as_a_conflict(
    chain: str, tmp_path: Path
) -> None:
    config = project(tmp_path, **{chain: TIER if chain == "0001_tier" else PRUNE})
    memory = MemoryStore()
    seed(memory, 60)
    before = export(memory)
    report = run_migrations(config, RunOptions(execute=True), store=memory)
    lossy = RetryingStore(LosesReplies(memory, 2), RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.01))
    done = rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=lossy)
    [item] = done.items
    changed = 60 if chain == "0001_tier" else 12
    assert item.counters["conflicts"] == item.counters["mismatched"] == 0
    assert item.counters["restored"] + item.counters["recreated"] == item.counters["verified"] == changed
    assert same_data(export(memory), before) == []
    assert status_of(memory, "0001") is MigrationStatus.ROLLED_BACK


def test_a_conflicts_file_that_cannot_be_written_stops_the_rollback_as_a_run_file_error(
    tmp_path: Path,
) -> None:
    """Like every file of a run folder: exit 12 naming the file, not an unexpected OSError."""
    from docshift.errors import ExitCode, RunFileError

    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 20)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    [doc] = store.get_many(["users/u00004"])
    assert doc is not None and store.commit([Write.set(doc.path, {**doc.data, "app": "edited"})])[0].ok
    (config.runs_dir / "rb-1" / "0001_tier" / "conflicts.jsonl").mkdir(parents=True)  # cannot be appended to
    with pytest.raises(RunFileError) as raised:
        rollback(config, RollbackOptions(run_id=report.run_id, execute=True, rollback_id="rb-1"), store=store)
    assert raised.value.exit_code is ExitCode.EMERGENCY_STOP
    assert "conflicts.jsonl" in raised.value.message

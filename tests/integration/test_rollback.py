"""Rollback against the real emulator through the Python API: every value type back exactly (by
restore and by down), application edits as conflicts, several migrations newest first, copies,
deletes, and rollback as a run (dry run, lease, stop and resume, history, status)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from docshift import codec
from docshift.commands.rollback import RollbackOptions, RollbackReport, rollback
from docshift.commands.run import RunOptions, RunReport, run_migrations
from docshift.commands.status import status
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.errors import LockedError, RollbackConflicts, RunStopped
from docshift.history import History, MigrationStatus
from docshift.lock import LeaseLock, read_lease
from docshift.planning import StateKind
from docshift.store import Document, Query, Store, Write, WriteResult
from docshift.values import GeoPoint, Reference, Timestamp, Value, values_equal
from tests.integration.run_support import PREFIX, differences, export, seed_users
from tests.unit.engine_support import StoreWrapper

# ---------------------------------------------------------------------------- every value type
RESHAPE = '''"""Move every field but n into a nested map (and back)."""
from docshift import UNCHANGED

description = "nest the payload"
collection = "things"


def up(doc):
    data = doc.data
    if "v2" in data or data["n"] % 9 == 0:
        return UNCHANGED
    n = data.pop("n")
    return {"n": n, "v2": data, "migrated": True}


def down(doc):
    data = doc.data
    if "v2" not in data:
        return UNCHANGED
    return {**data["v2"], "n": data["n"]}
'''


def every_type(i: int, project: str) -> dict[str, Value]:
    """One document holding every Firestore value type; timestamps to the microsecond (what the
    store keeps)."""
    team = Reference(f"teams/t{i % 20}", project, "(default)")
    when = Timestamp(1_700_000_000 + i * 37, (i * 7919 % 1_000_000) * 1000)
    return {
        "n": i,
        "null": None,
        "yes": True,
        "no": False,
        "int_max": 2**63 - 1,
        "int_min": -(2**63),
        "int": i - 2500,
        "zero": 0,
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "negzero": -0.0,
        "ratio": i / 7,
        "tiny": 5e-324,
        "huge": 1.7976931348623157e308,
        "text": f"ünïcødé ✓ 日本語 🚀 {i}",
        "empty_text": "",
        "nul_char": "a\x00b",
        "bytes": bytes([i % 256, 0, 255, 10]),
        "empty_bytes": b"",
        "when": when,
        "ts_min": Timestamp(-62135596800, 0),
        "ts_max": Timestamp(253402300799, 999_999_000),
        "geo": GeoPoint(-90.0 + (i % 181), -180.0 + (i % 361) * 0.5),
        "ref": team,
        "nested": {"a": {"b": [1, "two", {"c": None, "d": [when, team]}]}, "e": []},
        "empty_map": {},
        "array": [None, True, -1, 2.5, math.nan, "s", b"\x00", when, GeoPoint(1.5, -2.5), team, {"m": {}}],
        "dotted.name": 1,
        "space name": "x",
        "`tick`": "y",
    }


def seed_things(store: Store, count: int) -> None:
    project = store.info.project
    writes = [Write.set(f"things/t{i:05d}", every_type(i, project)) for i in range(count)]
    for start in range(0, count, 250):
        assert all(r.ok for r in store.commit(writes[start : start + 250]))


def write_migrations(config: Config, **files: str) -> None:
    config.migrations_dir.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (config.migrations_dir / f"{name}.py").write_text(source, encoding="utf-8")


def same_data(actual: dict[str, Document], expected: dict[str, Document]) -> list[str]:
    """Missing or extra documents, and documents whose data differ in any field (value by value,
    type-strict: NaN equals NaN, -0.0 is not 0.0)."""
    problems = sorted(set(actual) ^ set(expected))
    problems += sorted(
        p for p in set(actual) & set(expected) if not values_equal(actual[p].data, expected[p].data)
    )
    return problems


@pytest.mark.parametrize("strategy", ["restore", "down"])
def test_every_value_type_goes_back_to_the_pre_run_export(
    strategy: str, firestore_store: Store, emulator_config: Config
) -> None:
    seed_things(firestore_store, 5000)
    write_migrations(emulator_config, **{"0001_reshape": RESHAPE})
    before = export(firestore_store, ["things"])
    assert len(before) == 5000
    sample = before["things/t00042"].data
    assert math.isnan(sample["nan"]) and math.copysign(1, sample["negzero"]) == -1  # stored as given
    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    migrated = 5000 - len(range(0, 5000, 9))
    assert report.outcomes[0].result.counters["updated"] == migrated
    after_run = export(firestore_store, ["things"])
    assert sum(1 for d in after_run.values() if "v2" in d.data) == migrated

    undone = rollback(
        emulator_config,
        RollbackOptions(run_id=report.run_id, strategy=strategy, execute=True),
        store=firestore_store,
    )
    [item] = undone.items
    assert item.strategy == strategy
    # Either way exactly the migrated documents are undone (by their before-images, or by down()
    # applied to each), and each is then found equal to its before-image.
    assert item.counters["restored"] == item.counters["verified"] == migrated
    assert item.counters["mismatched"] == item.counters["conflicts"] == item.counters["unchanged"] == 0
    final = export(firestore_store, ["things"])
    assert same_data(final, before) == []
    # Untouched documents were not written at all.
    untouched = [p for p in before if int(p[-5:]) % 9 == 0]
    assert all(final[p].update_time == before[p].update_time for p in untouched)
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    assert record.run_id == undone.run_id and record.counts == item.counters


# ---------------------------------------------------------------------------- conflicts
FLAG = '''"""Flag users."""
from docshift import UNCHANGED

description = "flag"
collection = "users"


def up(doc):
    data = doc.data
    if data.get("flag"):
        return UNCHANGED
    data["flag"] = True
    return data
'''


def conflict_lines(report: RollbackReport) -> list[dict[str, Any]]:
    [item] = report.items
    path = item.folder / "conflicts.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_an_application_edit_is_a_conflict_in_dry_run_and_execute_and_force_overwrites_it(
    firestore_store: Store, emulator_config: Config
) -> None:
    seed_users(firestore_store, 300)
    write_migrations(emulator_config, **{"0001_flag": FLAG})
    before = export(firestore_store, ["users"])
    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    edited = "users/u000123"
    [doc] = firestore_store.get_many([edited])
    assert doc is not None
    app_data = {**doc.data, "plan": "edited by the app"}
    assert firestore_store.commit([Write.set(edited, app_data)])[0].ok
    options = RollbackOptions(run_id=report.run_id, strategy="restore")

    dry = rollback(emulator_config, options, store=firestore_store)
    assert dry.items[0].counters["conflicts"] == 1 and dry.items[0].counters["restored"] == 299
    [listed] = conflict_lines(dry)
    assert listed["path"] == edited and "changed after the migration wrote it" in listed["reason"]
    assert values_equal(codec.decode(listed["current"]), app_data)
    assert values_equal(codec.decode(listed["before"]), before[edited].data)

    with pytest.raises(RollbackConflicts) as raised:
        rollback(
            emulator_config,
            RollbackOptions(run_id=report.run_id, strategy="restore", execute=True),
            store=firestore_store,
        )
    assert raised.value.exit_code == 1 and "conflicts.jsonl" in (raised.value.hint or "")
    now = export(firestore_store, ["users"])
    assert values_equal(now[edited].data, app_data)  # left alone
    others = {p: d for p, d in now.items() if p != edited}
    assert same_data(others, {p: d for p, d in before.items() if p != edited}) == []
    [execute_folder] = [
        p for p in emulator_config.runs_dir.iterdir() if p.name not in (report.run_id, dry.run_id)
    ]
    [listed] = [
        orjson.loads(line)
        for line in (execute_folder / "0001_flag" / "conflicts.jsonl").read_bytes().splitlines()
    ]
    assert listed["path"] == edited
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED  # not clean: not rolled back

    forced = rollback(
        emulator_config,
        RollbackOptions(run_id=report.run_id, strategy="restore", execute=True, force=True),
        store=firestore_store,
    )
    assert forced.items[0].counters["restored"] == 1 and forced.items[0].counters["unchanged"] == 299
    assert same_data(export(firestore_store, ["users"]), before) == []
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK


# ---------------------------------------------------------------------------- several migrations
TIER = '''"""Derive a tier from the plan, overwriting the plan field's neighbour."""
from docshift import UNCHANGED

description = "tier"
collection = "users"


def up(doc):
    data = doc.data
    tier = "paid" if data.get("plan") in ("pro", "team", "enterprise") else "free"
    if data.get("tier") == tier:
        return UNCHANGED
    data["tier"] = tier
    data["age"] = data.get("age")
    return data
'''

ARCHIVE = '''"""Delete inactive users."""
from docshift import DELETE, UNCHANGED

description = "archive"
collection = "users"


def up(doc):
    return DELETE if doc.get("active") is False else UNCHANGED
'''

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"


def test_rollback_to_undoes_several_migrations_newest_first(
    firestore_store: Store, emulator_config: Config
) -> None:
    """0001 (examples) runs alone; 0002 (examples), 0003 and 0004 run later on the same documents.
    --to 0001 undoes 0004, 0003, 0002 in that order: each older restore meets documents the newer
    ones just restored, which must not be conflicts; 0004 deleted documents the others wrote."""
    seed_users(firestore_store, 800)
    write_migrations(
        emulator_config,
        **{
            "0001_split_full_name": (EXAMPLES / "0001_split_full_name.py").read_text(),
            "0002_normalise_age": (EXAMPLES / "0002_normalise_age.py").read_text(),
            "0003_tier": TIER,
            "0004_archive": ARCHIVE,
        },
    )
    run_migrations(emulator_config, RunOptions(execute=True, only="0001"), store=firestore_store)
    after_first = export(firestore_store, ["users"])
    later = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    assert [o.migration.id for o in later.outcomes] == ["0002", "0003", "0004"]
    deleted = later.outcomes[2].result.counters["deleted"]
    assert deleted > 50 and len(export(firestore_store, ["users"])) == 800 - deleted

    migrated = export(firestore_store, ["users"])
    dry = rollback(emulator_config, RollbackOptions(to="0001"), store=firestore_store)
    assert [(i.migration.id, i.strategy) for i in dry.items] == [
        ("0004", "restore"),
        ("0003", "restore"),
        ("0002", "restore"),
    ]
    assert [i.counters["conflicts"] for i in dry.items] == [0, 0, 0]
    assert dry.items[0].counters["recreated"] == deleted
    assert differences(export(firestore_store, ["users"]), migrated) == []  # the dry run wrote nothing

    done = rollback(emulator_config, RollbackOptions(to="0001", execute=True), store=firestore_store)
    for planned, applied in zip(dry.items, done.items, strict=True):
        assert {**planned.counters, "verified": 0} == {**applied.counters, "verified": 0}
        assert applied.counters["mismatched"] == 0
    assert same_data(export(firestore_store, ["users"]), after_first) == []
    records = History(firestore_store, PREFIX).all()
    assert records["0001"].status is MigrationStatus.APPLIED
    assert {records[i].status for i in ("0002", "0003", "0004")} == {MigrationStatus.ROLLED_BACK}
    assert {records[i].run_id for i in ("0002", "0003", "0004")} == {done.run_id}
    # Nothing left to undo after 0001.
    assert rollback(emulator_config, RollbackOptions(to="0001"), store=firestore_store).items == []


# ---------------------------------------------------------------------------- copies and deletes
COPY = '''"""Copy users into users_v2 with a version."""
description = "copy"
collection = "users"
copy_to = "users_v2"


def up(doc):
    return {**doc.data, "version": 2}
'''


def test_restore_of_a_copy_deletes_the_created_targets_and_leaves_the_source(
    firestore_store: Store, emulator_config: Config
) -> None:
    seed_users(firestore_store, 400)
    # One target existed before the run: the copy overwrote it, the restore puts it back.
    assert firestore_store.commit([Write.set("users_v2/u000007", {"legacy": True})])[0].ok
    write_migrations(emulator_config, **{"0001_copy": COPY})
    before = export(firestore_store, ["users", "users_v2"])
    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    counters = report.outcomes[0].result.counters
    assert counters["created"] == 399 and counters["updated"] == 1
    assert len(export(firestore_store, ["users_v2"])) == 400

    done = rollback(
        emulator_config, RollbackOptions(run_id=report.run_id, execute=True), store=firestore_store
    )
    [item] = done.items
    assert item.strategy == "restore"  # auto: the copy has no down()
    assert item.counters["deleted"] == 399 and item.counters["restored"] == 1
    assert item.counters["verified"] == 400 and item.counters["mismatched"] == 0
    after = export(firestore_store, ["users", "users_v2"])
    assert differences(after, before) != []  # users_v2/u000007 was rewritten: new update time
    assert same_data(after, before) == []
    users = export(firestore_store, ["users"])
    assert differences(users, {p: d for p, d in before.items() if p.startswith("users/")}) == []


def test_restore_recreates_the_documents_a_migration_deleted(
    firestore_store: Store, emulator_config: Config
) -> None:
    seed_users(firestore_store, 500)
    write_migrations(emulator_config, **{"0001_archive": ARCHIVE})
    before = export(firestore_store, ["users"])
    inactive = {p for p, d in before.items() if d.data.get("active") is False}
    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    assert report.outcomes[0].result.counters["deleted"] == len(inactive) > 50
    assert set(export(firestore_store, ["users"])) == set(before) - inactive
    done = rollback(
        emulator_config, RollbackOptions(run_id=report.run_id, execute=True), store=firestore_store
    )
    assert done.items[0].counters["recreated"] == len(inactive)
    after = export(firestore_store, ["users"])
    assert same_data(after, before) == []
    # A limit, documented: a recreated document has a new create time.
    assert all(after[p].create_time != before[p].create_time for p in inactive)


# ---------------------------------------------------------------------------- rollback is a run
class StopAfterCommits(StoreWrapper):
    """Requests a stop (as Ctrl-C would) after ``commits`` commits of user documents."""

    def __init__(self, inner: Store, controls: Controls, commits: int) -> None:
        super().__init__(inner)
        self.controls, self.left = controls, commits

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        if any(w.path.startswith("users/") for w in writes):
            self.left -= 1
            if self.left == 0:
                self.controls.request_stop("stopped by the test")
        return results


def run_examples(firestore_store: Store, config: Config, count: int) -> tuple[dict[str, Document], RunReport]:
    seed_users(firestore_store, count)
    write_migrations(
        config,
        **{
            "0001_split_full_name": (EXAMPLES / "0001_split_full_name.py").read_text(),
            "0002_normalise_age": (EXAMPLES / "0002_normalise_age.py").read_text(),
        },
    )
    before = export(firestore_store, ["users", "teams"])
    return before, run_migrations(config, RunOptions(execute=True), store=firestore_store)


def test_rollback_dry_run_writes_nothing_and_execute_needs_the_lease(
    firestore_store: Store, emulator_config: Config
) -> None:
    _, report = run_examples(firestore_store, emulator_config, 300)
    everything = export(firestore_store, [*firestore_store.list_collections()])
    dry = rollback(
        emulator_config, RollbackOptions(run_id=report.run_id, strategy="restore"), store=firestore_store
    )
    assert sum(i.counters["restored"] for i in dry.items) > 250
    assert differences(export(firestore_store, [*firestore_store.list_collections()]), everything) == []
    assert not any(dry.folder.glob("*/checkpoint.json"))  # a dry run keeps no checkpoint

    holder = LeaseLock(firestore_store, PREFIX, run_id="someone-else")
    with holder, pytest.raises(LockedError) as locked:
        rollback(
            emulator_config,
            RollbackOptions(run_id=report.run_id, strategy="restore", execute=True),
            store=firestore_store,
        )
    assert locked.value.exit_code == 6 and "someone-else" in locked.value.message
    assert (
        differences(
            export(firestore_store, ["users"]),
            {p: d for p, d in everything.items() if p.startswith("users/")},
        )
        == []
    )


def test_rollback_stopped_midway_resumes_and_is_recorded(
    firestore_store: Store, emulator_config: Config
) -> None:
    before, report = run_examples(firestore_store, emulator_config, 1500)
    controls = Controls()
    stopping = StopAfterCommits(firestore_store, controls, 3)  # batches of 300: inside 0002 or 0001
    started = time.monotonic()
    with pytest.raises(RunStopped) as stopped:
        rollback(
            emulator_config,
            RollbackOptions(run_id=report.run_id, strategy="restore", execute=True),
            store=stopping,
            controls=controls,
        )
    assert stopped.value.exit_code == 10 and "stopped by the test" in stopped.value.message
    rollback_id = (stopped.value.resume_command or "").split()[-1]
    assert stopped.value.resume_command == f"docshift rollback --execute --resume {rollback_id}"
    assert read_lease(firestore_store, PREFIX) is None
    partly = export(firestore_store, ["users"])
    assert same_data(partly, {p: d for p, d in before.items() if p.startswith("users/")}) != []

    resumed = rollback(emulator_config, RollbackOptions(resume=rollback_id), store=firestore_store)
    assert resumed.run_id == rollback_id and resumed.execute
    assert [i.migration.id for i in resumed.items] == ["0002", "0001"]
    assert all(i.counters["conflicts"] == i.counters["mismatched"] == 0 for i in resumed.items)
    assert same_data(export(firestore_store, ["users", "teams"]), before) == []
    first = report.outcomes[0].result.counters["updated"]
    assert resumed.items[1].counters["restored"] == first  # counts carried over the stop
    records = History(firestore_store, PREFIX).all()
    for item in resumed.items:
        record = records[item.migration.id]
        assert record.status is MigrationStatus.ROLLED_BACK and record.run_id == rollback_id
        assert record.counts == item.counters
        assert [e.status for e in record.events][-1] is MigrationStatus.ROLLED_BACK
    states = {s.migration_id: s for s in status(emulator_config, firestore_store).states}
    assert {states[i].kind for i in ("0001", "0002")} == {StateKind.ROLLED_BACK}
    assert status(emulator_config, firestore_store).exit_code == 9  # rolled back: runnable again
    assert time.monotonic() - started < 60
    # Nothing left to resume.
    with pytest.raises(Exception, match="no unfinished rollback"):
        rollback(emulator_config, RollbackOptions(resume="latest"), store=firestore_store)
    assert list(firestore_store.stream(Query(f"{PREFIX}_lock"))) == []

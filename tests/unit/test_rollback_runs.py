"""A migration applied over several runs is rolled back whole, on the memory store: a ``--limit``
run and then a full run, an interrupted or failed run and then a new one. Every run's journal is
undone (newest run first, in one rollback), whichever way the rollback is named; a document both
runs changed gets its oldest before-image back; the dry run counts what the execute does; a
rollback stopped or killed midway resumes to the same end; and no contributing run can be missed
(a folder that is not there, a history that no longer names it) without saying so."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from docshift.commands.rollback import RollbackItem, RollbackOptions, RollbackReport, rollback
from docshift.commands.run import RunOptions, load_run_info, run_migrations
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.hooks import Checkpointed, RunHooks
from docshift.errors import EmergencyStop, RollbackConflicts, RunStopped, StageFailed, UsageError
from docshift.history import EventKind, History, HistoryEvent, HistoryRecord, MigrationStatus
from docshift.loader import load_migrations
from docshift.runfolder.atomic import read_versioned, write_versioned
from docshift.runfolder.checkpoint import Checkpoint
from docshift.store import Store, Write, WriteResult
from docshift.testing import MemoryStore, RecordingHooks
from docshift.values import Timestamp
from tests.unit.engine_support import StoreWrapper, export, seed
from tests.unit.test_rollback_truth import PREFIX, TIER, lines, project, same_data, status_of
from tests.unit.test_run_outcomes import STAGES, tier_config

VISITS = '''"""Count a visit (not idempotent: a second run counts again); down() takes one away."""
description = "visits"
collection = "users"


def up(doc):
    data = doc.data
    data["visits"] = data.get("visits", 0) + 1
    return data


def down(doc):
    data = doc.data
    visits = data.get("visits", 0) - 1
    if visits > 0:
        data["visits"] = visits
    else:
        data.pop("visits", None)
    return data
'''


def record_of(store: Store, migration_id: str = "0001") -> HistoryRecord:
    record = History(store, PREFIX).get(migration_id)
    assert record is not None
    return record


def limited_then_full(config: Config, store: Store, limit: int = 10) -> tuple[str, str]:
    """Run A (``--limit``, partial), then run B (the rest): the migration's two runs."""
    first = run_migrations(config, RunOptions(execute=True, limit=limit), store=store)
    assert record_of(store).status is MigrationStatus.PARTIAL
    second = run_migrations(config, RunOptions(execute=True), store=store)
    assert second.run_id != first.run_id
    assert record_of(store).status is MigrationStatus.APPLIED
    return first.run_id, second.run_id


def named(how: str, first: str, second: str) -> RollbackOptions:
    if how == "--to":
        return RollbackOptions(to="0")
    return RollbackOptions(run_id=second if how == "newest run" else first)


def counters(report: RollbackReport) -> list[dict[str, int]]:
    return [item.counters for item in report.items]


def restored(item: RollbackItem) -> int:
    return item.counters["restored"] + item.counters["recreated"] + item.counters["deleted"]


# ---------------------------------------------------------------------------- a limited run, then a full one
@pytest.mark.parametrize("strategy", ["auto", "restore"])
@pytest.mark.parametrize("how", ["--to", "newest run", "oldest run"])
def test_a_migration_finished_by_a_second_run_is_rolled_back_whole(
    how: str, strategy: str, tmp_path: Path
) -> None:
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 100)
    before = export(store)
    first, second = limited_then_full(config, store)

    options = dataclasses.replace(named(how, first, second), strategy=strategy)
    dry = rollback(config, options, store=store)
    done = rollback(config, dataclasses.replace(options, execute=True), store=store)

    assert same_data(export(store), before) == []
    [item] = done.items
    assert item.counters["restored"] == item.counters["verified"] == 100
    assert item.counters["conflicts"] == item.counters["mismatched"] == 0
    assert counters(dry) == counters(done)
    record = record_of(store)
    assert record.status is MigrationStatus.ROLLED_BACK
    assert record.counts["restored"] == record.counts["verified"] == 100
    assert item.source_runs == (second, first)  # newest first
    assert [(run, part["restored"]) for run, part in item.by_run] == [(second, 90), (first, 10)]
    assert record.runs == ()
    plan = load_run_info(done.folder)["plan"]
    assert plan == [
        {
            "migration": "0001",
            "runs": [second, first],
            "strategy": item.strategy,
            "by": "journal",
            "known": True,
        }
    ]
    assert load_run_info(done.folder)["order"] == [["0001", second], ["0001", first]]
    checkpoint = Checkpoint.load(item.folder / "checkpoint.json")
    assert checkpoint.finished and checkpoint.counters["restored"] == 100
    # the next run starts a new application, on every document again
    again = run_migrations(config, RunOptions(execute=True), store=store)
    assert again.outcomes[0].result.counters["updated"] == 100
    assert record_of(store).runs == (again.run_id,)


# ---------------------------------------------------------------------------- stopped, then a new run
def _slow(config: Config) -> Config:
    return config.with_engine(batch_size=10, min_batch_size=10, concurrency=1, checkpoint_every_docs=10)


class StopAtFirstCheckpoint(RunHooks):
    def __init__(self, controls: Controls, stop_class: type[RunStopped]) -> None:
        self.controls, self.stop_class = controls, stop_class

    def checkpointed(self, event: Checkpointed) -> None:
        # The first checkpoint that holds progress (one is saved before the first write, too).
        if any(cursor is not None for cursor in event.cursors):
            self.controls.request_stop("interrupted by the test", self.stop_class)


@pytest.mark.parametrize("stop_class", [RunStopped, EmergencyStop], ids=["interrupted", "failed"])
def test_a_stopped_run_finished_by_a_new_run_is_rolled_back_whole(
    stop_class: type[RunStopped], tmp_path: Path
) -> None:
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 200)
    before = export(store)
    controls = Controls()
    with pytest.raises(stop_class):
        run_migrations(
            _slow(config),
            RunOptions(execute=True),
            store=store,
            controls=controls,
            hooks=StopAtFirstCheckpoint(controls, stop_class),
        )
    stopped = record_of(store)
    assert stopped.status in (MigrationStatus.INTERRUPTED, MigrationStatus.FAILED)
    changed_first = sum(1 for d in export(store).values() if d.data.get("tier") == "free")
    assert 0 < changed_first < 200
    finished = run_migrations(config, RunOptions(execute=True), store=store)  # a new run, not a resume
    assert record_of(store).status is MigrationStatus.APPLIED

    dry = rollback(config, RollbackOptions(run_id=finished.run_id), store=store)
    done = rollback(config, RollbackOptions(run_id=finished.run_id, execute=True), store=store)
    assert same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK
    [item] = done.items
    assert item.counters["restored"] == item.counters["verified"] == 200
    assert item.counters["mismatched"] == item.counters["conflicts"] == 0
    assert counters(dry) == counters(done)
    assert item.source_runs == (finished.run_id, stopped.run_id)
    assert [part["restored"] for _, part in item.by_run] == [200 - changed_first, changed_first]


# ---------------------------------------------------------------------------- a document both runs changed
@pytest.mark.parametrize("strategy", ["restore", "down"])
def test_a_document_both_runs_changed_gets_its_oldest_before_image_back(
    strategy: str, tmp_path: Path
) -> None:
    """up() counts a visit: the limited run counts one on 10 documents, the full run one more on
    every document. Undoing the full run gives those 10 the limited run's output, which undoing
    the limited run (the rollback's own write, not an application change) takes back further."""
    config = project(tmp_path, **{"0001_visits": VISITS})
    store = MemoryStore()
    seed(store, 60)
    before = export(store)
    first, second = limited_then_full(config, store)
    twice = [p for p, d in export(store).items() if d.data["visits"] == 2]
    assert len(twice) == 10

    dry = rollback(config, RollbackOptions(to="0", strategy=strategy), store=store)
    done = rollback(config, RollbackOptions(to="0", strategy=strategy, execute=True), store=store)
    assert same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK
    [item] = done.items
    assert item.strategy == strategy
    assert item.counters["conflicts"] == item.counters["mismatched"] == item.counters["unchanged"] == 0
    assert item.counters["restored"] == item.counters["verified"] == 70
    assert counters(dry) == counters(done)
    # each run's journal, each verified against that run's before-images: the full run's 60 (10 of
    # them back to the limited run's output), then the limited run's 10 (back to the original)
    assert [(run, part["restored"], part["verified"]) for run, part in item.by_run] == [
        (second, 60, 60),
        (first, 10, 10),
    ]


def test_several_migrations_each_applied_over_several_runs(tmp_path: Path) -> None:
    """Two migrations over a limited and a full run, the second once more over 5 documents: the
    second's runs are undone first (newest first), then the first's, on what those left."""
    visits_two = VISITS.replace('"visits"', '"visits2"').replace(
        'description = "visits2"', 'description = "more visits"'
    )
    config = project(tmp_path, **{"0001_visits": VISITS, "0002_more": visits_two})
    store = MemoryStore()
    seed(store, 50)
    before = export(store)
    run_migrations(config, RunOptions(execute=True, limit=10), store=store)  # both partial
    run_migrations(config, RunOptions(execute=True), store=store)  # both finished
    run_migrations(config, RunOptions(execute=True, only="0002", limit=5), store=store)  # 0002 counts 5 again
    dry = rollback(config, RollbackOptions(to="0"), store=store)
    done = rollback(config, RollbackOptions(to="0", execute=True), store=store)
    assert same_data(export(store), before) == []
    assert {status_of(store, m) for m in ("0001", "0002")} == {MigrationStatus.ROLLED_BACK}
    assert [i.migration.id for i in done.items] == ["0002", "0001"]
    assert counters(dry) == counters(done)
    assert all(i.counters["conflicts"] == i.counters["mismatched"] == 0 for i in done.items)
    assert [len(i.source_runs) for i in done.items] == [3, 2]


def test_a_conflict_then_the_rollback_again_reports_only_the_application_s_change(tmp_path: Path) -> None:
    """The application changed one document after both runs: the rollback leaves it (conflict) and
    undoes the rest. Run again, the documents both runs changed are back at their oldest
    before-image already: the newer run's journal leaves them to the older run's (which finds them
    back), and only the application's change is a conflict; --force then finishes it."""
    config = project(tmp_path, **{"0001_visits": VISITS})
    store = MemoryStore()
    seed(store, 40)
    before = export(store)
    limited_then_full(config, store)
    [edited] = store.get_many(["users/u00030"])
    assert edited is not None and store.commit([Write.set(edited.path, {**edited.data, "app": 1})])[0].ok
    for _ in range(2):
        dry = rollback(config, RollbackOptions(to="0", strategy="restore"), store=store)
        with pytest.raises(RollbackConflicts) as raised:
            rollback(config, RollbackOptions(to="0", strategy="restore", execute=True), store=store)
        report = raised.value.report
        assert report is not None and counters(dry) == counters(report)
        [item] = report.items
        assert item.counters["conflicts"] == 1 and "1 document(s) changed" in raised.value.message
        assert [c["path"] for c in lines(item.folder / "conflicts.jsonl")] == ["users/u00030"]
        assert (
            same_data(
                {p: d for p, d in export(store).items() if p != edited.path},
                {p: d for p, d in before.items() if p != edited.path},
            )
            == []
        )
        assert status_of(store, "0001") is MigrationStatus.APPLIED
    assert [part["unchanged"] for _, part in item.by_run] == [39, 10]  # the second time: all back
    forced = RollbackOptions(to="0", strategy="restore", execute=True, force=True)
    done = rollback(config, forced, store=store)
    assert done.items[0].counters["conflicts"] == done.items[0].counters["mismatched"] == 0
    assert same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK


# ---------------------------------------------------------------------------- resume midway
class StopAfterCommits(StoreWrapper):
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


class Killed(BaseException):
    """The process dies: nothing after the commit runs (no checkpoint, no run.json)."""


class KillAfterCommits(StoreWrapper):
    def __init__(self, inner: Store, commits: int) -> None:
        super().__init__(inner)
        self.left = commits

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        if any(w.path.startswith("users/") for w in writes):
            self.left -= 1
            if self.left == 0:
                raise Killed
        return results


# 60 documents in batches of 20: the full run's journal is undone in commits 1-3 (the 10 documents
# both runs changed are in commit 1), the limited run's in commit 4. Stopped after commit 3: between
# the two runs' journals; killed in commit 3: the full run's journal done, not yet checkpointed.
@pytest.mark.parametrize(
    ("way", "commits"),
    [
        ("stopped", 1),
        ("stopped", 2),
        ("stopped", 3),
        ("killed", 1),
        ("killed", 2),
        ("killed", 3),
        ("killed", 4),
    ],
)
def test_a_rollback_of_several_runs_resumed_midway_ends_as_an_uninterrupted_one(
    way: str, commits: int, tmp_path: Path
) -> None:
    config = project(tmp_path, **{"0001_visits": VISITS})
    store = MemoryStore()
    seed(store, 60)
    before = export(store)
    first, second = limited_then_full(config, store)
    options = RollbackOptions(run_id=second, strategy="restore", execute=True, rollback_id="rollback-1")
    controls = Controls()
    if way == "stopped":
        with pytest.raises(RunStopped) as raised:
            rollback(config, options, store=StopAfterCommits(store, controls, commits), controls=controls)
        assert raised.value.resume_command == "docshift rollback --execute --resume rollback-1"
    else:
        with pytest.raises(Killed):
            rollback(config, options, store=KillAfterCommits(store, commits))
    assert status_of(store, "0001") is MigrationStatus.APPLIED  # not yet

    done = rollback(config, RollbackOptions(resume="latest", execute=True), store=store)
    assert same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK
    [item] = done.items
    assert item.counters["conflicts"] == item.counters["mismatched"] == 0
    info = read_versioned(config.runs_dir / "rollback-1" / "run.json", "docshift-run", 1)
    assert info["plan"][0]["runs"] == [second, first]
    by_run = dict(item.by_run)
    if way == "stopped":  # stopped between batches: the counts are those of an uninterrupted rollback
        assert by_run == {
            second: {**by_run[second], "restored": 60, "verified": 60, "unchanged": 0},
            first: {**by_run[first], "restored": 10, "verified": 10, "unchanged": 0},
        }
    else:  # the batch in flight is redone and found undone already
        assert by_run[second]["restored"] + by_run[second]["unchanged"] == 60
        assert by_run[first]["restored"] + by_run[first]["unchanged"] == 10


def test_a_rollback_recorded_by_an_older_docshift_resumes_from_its_plan(tmp_path: Path) -> None:
    """run.json's plan as ``[id, run, strategy]`` and a checkpoint with one position: read as before."""
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 60)
    before = export(store)
    applied = run_migrations(config, RunOptions(execute=True), store=store)
    controls = Controls()
    with pytest.raises(RunStopped):
        rollback(
            config,
            RollbackOptions(run_id=applied.run_id, execute=True, rollback_id="old"),
            store=StopAfterCommits(store, controls, 1),
            controls=controls,
        )
    folder = config.runs_dir / "old"
    info = read_versioned(folder / "run.json", "docshift-run", 1)
    write_versioned(
        folder / "run.json", "docshift-run", 1, {**info, "plan": [["0001", applied.run_id, "down"]]}
    )
    path = folder / "0001_tier" / "checkpoint.json"
    checkpoint = Checkpoint.load(path)
    assert checkpoint.undo is not None
    [step] = checkpoint.undo.steps
    typed = ("dead_letter_bytes", "journal", "landed", "scope", "stages", "undo")  # format 2's
    body = {k: v for k, v in checkpoint.to_json().items() if k not in typed}
    extra = {"kind": checkpoint.undo.strategy, "of_run": step.run, "position": step.position}
    write_versioned(path, "docshift-checkpoint", 1, {**body, "extra": extra})
    done = rollback(config, RollbackOptions(resume="old", execute=True), store=store)
    assert done.items[0].counters["restored"] == done.items[0].counters["verified"] == 60
    assert same_data(export(store), before) == []


def test_a_canary_run_s_stage_rollback_after_a_limited_run_is_not_a_rolled_back_migration(
    tmp_path: Path,
) -> None:
    """A canary run's failed gate undoes its own stages; the limited run's documents stay migrated,
    so the migration is not recorded rolled back: it stays failed, its runs name the limited run,
    and a rollback then undoes that one."""
    config = tier_config(tmp_path, fail_from=5)  # stage 2 (1-10%) fails half its documents
    store = MemoryStore()
    seed(store, 600)
    before = export(store)
    limited = run_migrations(config, RunOptions(execute=True, limit=30), store=store)
    migrated_first = {p for p, d in export(store).items() if d.data.get("tier")}
    assert migrated_first and record_of(store).status is MigrationStatus.PARTIAL
    hooks = RecordingHooks()
    with pytest.raises(StageFailed):
        run_migrations(config, RunOptions(execute=True, stages=STAGES), store=store, hooks=hooks)
    assert {p for p, d in export(store).items() if d.data.get("tier")} == migrated_first  # stages undone
    record = record_of(store)
    assert record.status is MigrationStatus.FAILED  # not rolled back: the limited run's writes remain
    assert record.runs == (limited.run_id,)
    warnings = hooks.warnings()
    command = f"docshift rollback {limited.run_id} --execute"
    assert any("not rolled back" in w and command in w for w in warnings)
    done = rollback(config, RollbackOptions(to="0", execute=True), store=store)
    assert done.items[0].source_runs == (limited.run_id,)
    assert same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK


# ---------------------------------------------------------------------------- no run missed, or said so
def test_a_contributing_run_whose_folder_is_missing_is_refused_with_a_hint(tmp_path: Path) -> None:
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 50)
    before = export(store)
    first, second = limited_then_full(config, store)
    migrated = export(store)
    shutil.rmtree(config.runs_dir / first)
    for options in (RollbackOptions(run_id=second), RollbackOptions(to="0", execute=True)):
        with pytest.raises(UsageError) as refused:
            rollback(config, options, store=store)
        assert refused.value.exit_code == 2
        assert f"run {first} applied 0001_tier" in refused.value.message
        assert refused.value.hint and "copy that run's folder" in refused.value.hint
        assert "--strategy down" in refused.value.hint
    assert export(store) == migrated and status_of(store, "0001") is MigrationStatus.APPLIED
    # down() over the whole target undoes every run's writes; it says it cannot verify that
    done = rollback(config, RollbackOptions(run_id=second, strategy="down", execute=True), store=store)
    [item] = done.items
    assert item.pipeline is not None and item.note is not None
    assert f"the folder of run {first} is not in runs_dir" in item.note and "cannot be verified" in item.note
    assert same_data(export(store), before) == []


def test_a_run_whose_application_was_rolled_back_and_applied_again_is_refused(tmp_path: Path) -> None:
    """Undoing the old run's journal now would undo part of the new application and record all of
    it as rolled back."""
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 50)
    old = run_migrations(config, RunOptions(execute=True, limit=10), store=store)
    rollback(config, RollbackOptions(run_id=old.run_id, execute=True), store=store)
    new = run_migrations(config, RunOptions(execute=True), store=store)
    migrated = export(store)
    with pytest.raises(UsageError) as refused:
        rollback(config, RollbackOptions(run_id=old.run_id, execute=True), store=store)
    assert refused.value.exit_code == 2 and "rolled back already" in refused.value.message
    assert refused.value.hint and f"docshift rollback {new.run_id}" in refused.value.hint
    assert export(store) == migrated and status_of(store, "0001") is MigrationStatus.APPLIED


def test_more_runs_than_the_history_keeps_events_for_are_all_undone(tmp_path: Path) -> None:
    """30 limited runs write 60 events (the history keeps 50): the record's runs still name all.
    Each counts a visit on the same 2 documents; undone newest first, they get the original back."""
    config = project(tmp_path, **{"0001_visits": VISITS})
    store = MemoryStore()
    seed(store, 80)
    before = export(store)
    ids = [run_migrations(config, RunOptions(execute=True, limit=2), store=store).run_id for _ in range(30)]
    assert [d.data.get("visits") for d in export(store).values()][:3] == [30, 30, None]
    record = record_of(store)
    assert len(record.events) == 50 and record.events[0].run_id != ids[0]  # the first runs dropped out
    dry = rollback(config, RollbackOptions(run_id=ids[-1], strategy="restore"), store=store)
    done = rollback(config, RollbackOptions(run_id=ids[-1], strategy="restore", execute=True), store=store)
    assert same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK
    [item] = done.items
    assert item.counters["restored"] == item.counters["verified"] == 60
    assert counters(dry) == counters(done)
    assert record.runs == tuple(ids)
    assert item.source_runs == tuple(reversed(ids))
    assert [part["restored"] for _, part in item.by_run] == [2] * 30


def _as_older_docshift_wrote_it(store: Store, events: int) -> None:
    """The record without ``runs``, with ``events`` events (the last ones of its runs)."""
    history = History(store, PREFIX)
    record = record_of(store)
    kept = [
        HistoryEvent(
            EventKind.STARTED if i % 2 == 0 else EventKind.PARTIAL,
            MigrationStatus.RUNNING if i % 2 == 0 else MigrationStatus.PARTIAL,
            Timestamp(1_700_000_000 + i),
            f"older-{i // 2}",
            "u@h",
            record.checksum,
        )
        for i in range(events - len(record.events))
    ]
    old = dataclasses.replace(record, runs=None, events=(*kept, *record.events))
    data = old.to_data()
    del data["runs"]
    assert store.commit([Write.set(history._path("0001"), data)])[0].ok
    assert record_of(store).runs is None


def test_an_older_record_whose_events_were_cut_is_refused_not_half_undone(tmp_path: Path) -> None:
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 40)
    before = export(store)
    limited_then_full(config, store)
    _as_older_docshift_wrote_it(store, 50)
    assert record_of(store).application_runs() is None
    migrated = export(store)
    with pytest.raises(UsageError) as refused:
        rollback(config, RollbackOptions(to="0", execute=True), store=store)
    assert refused.value.exit_code == 2 and "no longer names every run" in refused.value.message
    assert refused.value.hint and "--strategy down" in refused.value.hint
    assert export(store) == migrated
    done = rollback(config, RollbackOptions(to="0", strategy="down", execute=True), store=store)
    assert done.items[0].pipeline is not None and same_data(export(store), before) == []
    assert status_of(store, "0001") is MigrationStatus.ROLLED_BACK


def test_an_older_record_with_all_its_events_names_its_runs_from_them(tmp_path: Path) -> None:
    config = project(tmp_path, **{"0001_tier": TIER})
    store = MemoryStore()
    seed(store, 40)
    before = export(store)
    first = run_migrations(config, RunOptions(execute=True, limit=10), store=store)
    _as_older_docshift_wrote_it(store, 2)
    second = run_migrations(config, RunOptions(execute=True), store=store)
    done = rollback(config, RollbackOptions(to="0", execute=True), store=store)
    assert same_data(export(store), before) == []
    assert restored(done.items[0]) == 40
    assert record_of(store).status is MigrationStatus.ROLLED_BACK
    assert done.items[0].source_runs == (second.run_id, first.run_id)  # derived, then kept


def test_a_run_that_started_a_migration_but_wrote_none_of_it_has_nothing_to_undo(tmp_path: Path) -> None:
    """Killed after the history said running, before its journal existed (the journal is opened
    before any write): nothing of that run is left, and nothing is run over the target for it."""
    config = project(tmp_path, **{"0001_tier": TIER, "0002_b_to_c": TIER.replace('"tier"', '"plan"')})
    store = MemoryStore()
    seed(store, 30)
    before = export(store)
    applied = run_migrations(config, RunOptions(execute=True, only="0001"), store=store)
    second = {m.id: m for m in load_migrations(config.migrations_dir)}["0002"]
    History(store, PREFIX).start(second, applied.run_id)  # as the killed process left it
    done = rollback(config, RollbackOptions(to="0", execute=True), store=store)
    assert [(i.migration.id, i.pipeline is None, restored(i)) for i in done.items] == [
        ("0002", True, 0),
        ("0001", True, 30),
    ]
    assert same_data(export(store), before) == []
    assert {status_of(store, m) for m in ("0001", "0002")} == {MigrationStatus.ROLLED_BACK}


def test_steps_undoes_the_n_newest_applied_migrations_and_records_the_to_it_means(tmp_path: Path) -> None:
    """`--steps N` is `--to` the migration below the N newest applied (one rolled back earlier is
    not a step); more steps than are applied is refused with a hint, and nothing changes."""
    three = {
        "0001_visits": VISITS,
        "0002_more": VISITS.replace('"visits"', '"visits2"'),
        "0003_most": VISITS.replace('"visits"', '"visits3"'),
    }
    config = project(tmp_path, **three)
    store = MemoryStore()
    seed(store, 30)
    run_migrations(config, RunOptions(execute=True), store=store)
    rollback(config, RollbackOptions(to="0002", execute=True), store=store)  # 0003 rolled back
    after_one = export(store)
    with pytest.raises(UsageError, match=r"--steps 3: 2 migration\(s\) are applied here") as refused:
        rollback(config, RollbackOptions(steps=3, execute=True), store=store)
    assert refused.value.hint and same_data(export(store), after_one) == []
    with pytest.raises(UsageError, match="one of them"):
        rollback(config, RollbackOptions(to="0001", steps=1), store=store)
    done = rollback(config, RollbackOptions(steps=1, execute=True), store=store)
    assert [item.migration.id for item in done.items] == ["0002"]
    assert [status_of(store, m) for m in ("0001", "0002", "0003")] == [
        MigrationStatus.APPLIED,
        MigrationStatus.ROLLED_BACK,
        MigrationStatus.ROLLED_BACK,
    ]
    info = load_run_info(done.folder)
    assert info["steps"] == 1 and info["to"] == "0001"
    everything = rollback(config, RollbackOptions(steps=1, execute=True), store=store)
    assert [item.migration.id for item in everything.items] == ["0001"]
    assert load_run_info(everything.folder)["to"] == "0"

"""``history``, ``stamp`` and ``repair`` as library calls on the memory store: what they record, what
they refuse, and how ``status``, ``run``, drift and rollback then treat the migrations."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from docshift.cli.history import _confirm_stamp
from docshift.commands.history import history
from docshift.commands.repair import RepairOptions, repair
from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.commands.stamp import StampOptions, StampPlan, stamp
from docshift.commands.status import status
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.errors import (
    ConfirmationRequired,
    ConflictError,
    DriftError,
    ExitCode,
    LockedError,
    TransientError,
    UsageError,
)
from docshift.history import EventKind, History, MigrationStatus, current_user
from docshift.loader import load_migrations
from docshift.lock import LeaseLock, read_lease
from docshift.planning import StateKind, check_drift, migration_states
from docshift.store import DelegatingStore, Store, Write, WriteResult
from docshift.testing import MemoryStore
from docshift.values import Timestamp
from tests.unit.engine_support import export, seed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"
PREFIX = "_docshift"
THIRD = """description = "tag users"
collection = "users"


def up(doc):
    return {**doc.data, "tagged": True}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for name in ("0001_split_full_name.py", "0002_normalise_age.py"):
        shutil.copy(EXAMPLES / name, migrations)
    (migrations / "0003_tag_users.py").write_text(THIRD, encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory", emulator_host="memory"),
        engine=EngineConfig(batch_size=50, min_batch_size=10),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def states(config: Config, store: Store) -> list[StateKind]:
    return [s.kind for s in status(config, store=store).states]


def edit(config: Config, name: str = "0001_split_full_name.py") -> None:
    path = config.migrations_dir / name
    path.write_text(path.read_text(encoding="utf-8") + "\n# a comment added after it ran\n", encoding="utf-8")


# --- the stored events ------------------------------------------------------------------------


def test_events_record_kind_counts_and_error_and_a_record_written_before_them_still_reads(
    config: Config,
) -> None:
    store = MemoryStore()
    seed(store, 30)
    report = run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    [event_start, event_applied] = History(store, PREFIX).get("0001").events  # type: ignore[union-attr]
    assert (event_start.kind, event_start.counts) == (EventKind.STARTED, None)
    assert event_applied.kind is EventKind.APPLIED and event_applied.run_id == report.run_id
    assert event_applied.counts is not None and event_applied.counts["updated"] == 27

    history_store = History(store, PREFIX)
    two = {m.id: m for m in load_migrations(config.migrations_dir)}["0002"]
    history_store.start(two, "run-x")
    history_store.finish("0002", MigrationStatus.FAILED, {"read": 3, "failed": 3}, error="boom")
    failed = history_store.get("0002")
    assert failed is not None and failed.events[-1].error == "boom"
    assert failed.events[-1].counts == {"read": 3, "failed": 3}

    # A record as docshift wrote it before events had kinds and counts: a run that applied it, then
    # `run --allow-drift` accepting an edited file (the checksum changes with no run starting).
    old_events = [
        {
            "status": "running",
            "at": Timestamp(1_700_000_000),
            "run_id": "r1",
            "user": "u@h",
            "checksum": "aaa",
        },
        {
            "status": "applied",
            "at": Timestamp(1_700_000_100),
            "run_id": "r1",
            "user": "u@h",
            "checksum": "aaa",
        },
        {
            "status": "applied",
            "at": Timestamp(1_700_000_200),
            "run_id": "r2",
            "user": "v@h",
            "checksum": "bbb",
        },
    ]
    data = {
        "migration_id": "0009",
        "description": "old",
        "checksum": "bbb",
        "status": "applied",
        "started_at": Timestamp(1_700_000_000),
        "finished_at": Timestamp(1_700_000_100),
        "run_id": "r1",
        "user": "u@h",
        "docshift_version": "0.0.9",
        "counts": {"read": 5, "updated": 4},
        "previous_checksums": ["aaa"],
        "error": None,
        "name": "old",
        "file": "migrations/0009_old.py",
        "checkpoint": None,
        "events": old_events,
        "overrides": {},
    }
    assert store.commit([Write.set(f"{PREFIX}_history/0009", data)])[0].ok
    old = History(store, PREFIX).get("0009")
    assert old is not None and old.runs is None
    assert [e.kind for e in old.events] == [EventKind.STARTED, EventKind.APPLIED, EventKind.DRIFT_ACCEPTED]
    assert old.events[2].previous_checksum == "aaa" and old.events[2].checksum == "bbb"
    assert all(e.counts is None for e in old.events)  # not recorded back then: unknown, not zero
    shown = history(config, "0009", store=store).to_json()["migrations"][0]
    assert [e["event"] for e in shown["events"]] == ["started", "applied", "drift_accepted"]
    assert shown["events"][1]["counts"] is None and shown["state"] == "applied"


def test_an_event_from_a_newer_docshift_with_unknown_keys_still_reads(config: Config) -> None:
    store = MemoryStore()
    migration = load_migrations(config.migrations_dir)[0]
    History(store, PREFIX).start(migration, "run-a")
    path = f"{PREFIX}_history/0001"
    data = dict(store.get(path).data)  # type: ignore[union-attr]
    data["events"] = [{**data["events"][0], "shard_map": {"a": 1}}]
    assert store.commit([Write.set(path, data)])[0].ok
    [event] = History(store, PREFIX).get("0001").events  # type: ignore[union-attr]
    assert event.kind is EventKind.STARTED and event.run_id == "run-a"


# --- history ----------------------------------------------------------------------------------


def test_history_lists_each_migrations_events_and_one_migration_by_id_or_label(config: Config) -> None:
    store = MemoryStore()
    seed(store, 20)
    first = run_migrations(config, RunOptions(execute=True, to="0002"), store=store)
    rollback(config, RollbackOptions(to="0001", execute=True), store=store)
    every = history(config, store=store)
    assert [m.migration_id for m in every.migrations] == ["0001", "0002"]
    two = every.migrations[1]
    assert [e.kind for e in two.events] == [EventKind.STARTED, EventKind.APPLIED, EventKind.ROLLED_BACK]
    assert two.state == "rolled back" and two.events[0].run_id == first.run_id
    assert two.events[2].run_id != first.run_id and two.events[2].counts is not None
    for wanted in ("0002", "2", "0002_normalise_age"):
        [only] = history(config, wanted, store=store).migrations
        assert only.migration_id == "0002"
    [pending] = history(config, "0003", store=store).migrations
    assert pending.record is None and pending.state == "pending" and pending.events == ()
    with pytest.raises(UsageError, match="no migration '0042'") as caught:
        history(config, "0042", store=store)
    assert caught.value.hint
    assert history(config, store=MemoryStore()).migrations == []


def test_history_reads_even_when_a_migration_file_does_not_load(config: Config) -> None:
    store = MemoryStore()
    seed(store, 5)
    run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    (config.migrations_dir / "0003_tag_users.py").write_text("def up(doc:\n", encoding="utf-8")
    [only] = history(config, "0001", store=store).migrations
    assert only.state == "applied"


def test_a_running_record_whose_run_holds_no_lease_shows_interrupted(config: Config) -> None:
    store = MemoryStore()
    migration = load_migrations(config.migrations_dir)[0]
    History(store, PREFIX).start(migration, "run-gone")
    assert history(config, "0001", store=store).migrations[0].state == "interrupted"
    with LeaseLock(store, PREFIX, run_id="run-gone"):
        assert history(config, "0001", store=store).migrations[0].state == "running"


# --- stamp ------------------------------------------------------------------------------------


def test_stamp_marks_applied_without_writing_data_and_run_status_and_rollback_treat_it_so(
    config: Config,
) -> None:
    store = MemoryStore()
    seed(store, 20)
    before = export(store)
    with pytest.raises(UsageError, match="would leave older migration") as refused:
        stamp(config, StampOptions("0002", "already migrated by hand"), store=store)
    assert refused.value.hint is not None and "--include-older" in refused.value.hint
    assert History(store, PREFIX).all() == {}

    seen: list[StampPlan] = []

    def confirm(plan: StampPlan) -> bool:
        seen.append(plan)
        return True

    options = StampOptions("0002", "already migrated by hand", include_older=True)
    result = stamp(config, options, confirm=confirm, store=store)
    assert [i.migration.id for i in seen[0].items] == ["0001", "0002"]
    assert [r.migration_id for r in result.records] == ["0001", "0002"] and result.edit_id
    assert export(store) == before  # no data written
    assert read_lease(store, PREFIX) is None  # the lease was taken and released
    records = History(store, PREFIX).all()
    for record in records.values():
        assert record.status is MigrationStatus.STAMPED and record.run_id == result.edit_id
        [event] = record.events
        assert event.kind is EventKind.STAMPED and event.reason == "already migrated by hand"
        assert event.user == current_user() and event.checksum == record.checksum
    migrations = {m.id: m for m in load_migrations(config.migrations_dir)}
    assert records["0002"].checksum == migrations["0002"].checksum

    assert states(config, store) == [StateKind.STAMPED, StateKind.STAMPED, StateKind.PENDING]
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert [o.migration.id for o in report.outcomes] == ["0003"]  # the stamped ones are skipped
    assert status(config, store=store).exit_code is ExitCode.OK

    with pytest.raises(UsageError, match="0002_normalise_age is stamped") as caught:
        rollback(config, RollbackOptions(to="0000"), store=store)
    assert caught.value.hint is not None and "--to 0002" in caught.value.hint
    rollback(config, RollbackOptions(to="0002", execute=True), store=store)  # the later one only
    assert states(config, store) == [StateKind.STAMPED, StateKind.STAMPED, StateKind.ROLLED_BACK]


def test_stamp_with_nothing_to_do_and_a_dry_run_record_nothing(config: Config) -> None:
    store = MemoryStore()
    dry = stamp(config, StampOptions("0001", "adopting", dry_run=True), store=store)
    assert [i.migration.id for i in dry.plan.items] == ["0001"] and not dry.recorded
    assert History(store, PREFIX).all() == {}
    stamp(config, StampOptions("1", "adopting"), store=store)
    again = stamp(config, StampOptions("0001", "adopting"), store=store)
    assert again.plan.empty and not again.recorded and again.plan.target_state is StateKind.STAMPED
    assert len(History(store, PREFIX).get("0001").events) == 1  # type: ignore[union-attr]
    refused = stamp(config, StampOptions("0001", "adopting"), confirm=lambda plan: False, store=MemoryStore())
    assert not refused.recorded and not refused.confirmed


@pytest.mark.parametrize("reason", ["", "   "])
def test_stamp_and_repair_need_a_reason(config: Config, reason: str) -> None:
    for call in (
        lambda: stamp(config, StampOptions("0001", reason), store=MemoryStore()),
        lambda: repair(config, RepairOptions("0001", reason), store=MemoryStore()),
    ):
        with pytest.raises(UsageError, match="needs a reason") as caught:
            call()
        assert caught.value.hint is not None and "--reason" in caught.value.hint


def test_stamp_refuses_what_a_run_wrote_part_of_and_names_the_way_out(config: Config) -> None:
    store = MemoryStore()
    seed(store, 20)
    run_migrations(config, RunOptions(execute=True, to="0001", limit=5), store=store)
    assert states(config, store)[0] is StateKind.PARTIAL
    for options in (StampOptions("0001", "x"), StampOptions("0002", "x", include_older=True)):
        with pytest.raises(UsageError, match="0001_split_full_name is partial") as caught:
            stamp(config, options, store=store)
        assert caught.value.hint is not None and "docshift rollback" in caught.value.hint
    assert History(store, PREFIX).get("0002") is None
    with pytest.raises(UsageError, match="no migration '0042'"):
        stamp(config, StampOptions("0042", "x"), store=store)


def test_a_rolled_back_migration_can_be_stamped_and_its_old_run_is_then_not_rolled_back(
    config: Config,
) -> None:
    store = MemoryStore()
    seed(store, 20)
    first = run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    rollback(config, RollbackOptions(run_id=first.run_id, execute=True), store=store)
    stamp(config, StampOptions("0001", "fixed by the support script"), store=store)
    record = History(store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.STAMPED and record.runs == ()
    kinds = [e.kind for e in record.events]
    assert kinds == [EventKind.STARTED, EventKind.APPLIED, EventKind.ROLLED_BACK, EventKind.STAMPED]
    before = export(store)
    with pytest.raises(UsageError, match="is stamped"):
        rollback(config, RollbackOptions(run_id=first.run_id, execute=True), store=store)
    assert export(store) == before


def test_stamp_refuses_while_a_run_holds_the_lease(config: Config) -> None:
    store = MemoryStore()
    with LeaseLock(store, PREFIX, run_id="someone-else"), pytest.raises(LockedError):
        stamp(config, StampOptions("0001", "x"), store=store)
    assert History(store, PREFIX).all() == {}


@pytest.mark.parametrize("meanwhile", ["a run started it", "someone else stamped it"])
def test_stamp_refuses_when_the_history_changed_while_it_was_confirmed(
    config: Config, meanwhile: str
) -> None:
    store = MemoryStore()
    migration = load_migrations(config.migrations_dir)[0]

    def confirm_slowly(plan: StampPlan) -> bool:
        if meanwhile == "a run started it":
            History(store, PREFIX).start(migration, "run-started-meanwhile")
        else:
            History(store, PREFIX).stamp(migration, "stamp-meanwhile", "their reason")
        return True

    with pytest.raises(ConflictError, match="changed while you confirmed") as caught:
        stamp(config, StampOptions("0001", "my reason"), confirm=confirm_slowly, store=store)
    assert caught.value.hint
    record = History(store, PREFIX).get("0001")
    assert record is not None and len(record.events) == 1  # not overwritten, nothing added
    assert record.events[0].run_id in ("run-started-meanwhile", "stamp-meanwhile")


class FailingHistoryWrites(DelegatingStore):
    """Fails (transiently, not applied) every history write after the first ``allowed``."""

    def __init__(self, inner: Store, allowed: int) -> None:
        super().__init__(inner)
        self.allowed = allowed

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if any(w.path.startswith(f"{PREFIX}_history/") for w in writes):
            if self.allowed <= 0:
                raise TransientError("injected: the service is unavailable", code="UNAVAILABLE")
            self.allowed -= 1
        return self.inner.commit(writes)


def test_a_stamp_that_fails_midway_says_what_it_stamped_and_a_second_one_finishes(config: Config) -> None:
    memory = MemoryStore()
    failing = FailingHistoryWrites(memory, allowed=1)
    options = StampOptions("0003", "adopting", include_older=True)
    with pytest.raises(TransientError) as caught:
        stamp(config, options, store=failing)
    assert (
        "while stamping 0002_normalise_age; stamped before it: 0001_split_full_name" in caught.value.message
    )
    assert caught.value.hint is not None and "run the same stamp again" in caught.value.hint
    assert list(History(memory, PREFIX).all()) == ["0001"]  # what the error says, no more
    assert read_lease(memory, PREFIX) is None
    done = stamp(config, options, store=memory)
    assert [r.migration_id for r in done.records] == ["0002", "0003"]
    assert states(config, memory) == [StateKind.STAMPED] * 3


def test_on_cloud_firestore_stamp_asks_and_without_a_terminal_refuses(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = Config(
        store=StoreConfig(project="my-project"),
        migrations_dir=config.migrations_dir,
        runs_dir=config.runs_dir,
    )
    monkeypatch.delenv("DOCSHIFT_ASSUME_YES", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    store = MemoryStore()
    with pytest.raises(ConfirmationRequired, match="refusing to record 1 migration"):
        stamp(
            cloud, StampOptions("0001", "x"), confirm=lambda p: _confirm_stamp(cloud, p, False), store=store
        )
    assert History(store, PREFIX).all() == {}
    stamp(cloud, StampOptions("0001", "x"), confirm=lambda p: _confirm_stamp(cloud, p, True), store=store)
    assert History(store, PREFIX).get("0001") is not None


# --- repair -----------------------------------------------------------------------------------


def test_repair_accepts_the_edited_file_and_the_drift_is_gone(config: Config) -> None:
    store = MemoryStore()
    seed(store, 20)
    first = run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    applied = History(store, PREFIX).get("0001")
    assert applied is not None
    edit(config)
    with pytest.raises(DriftError) as drift:
        check_drift(
            migration_states(load_migrations(config.migrations_dir), History(store, PREFIX).all()), False
        )
    assert drift.value.hint is not None and "docshift repair 0001" in drift.value.hint
    assert status(config, store=store).exit_code is ExitCode.DRIFT

    before = export(store)
    dry = repair(config, RepairOptions("0001", "comment only", dry_run=True), store=store)
    assert not dry.recorded and History(store, PREFIX).get("0001") == applied
    result = repair(config, RepairOptions("0001", "comment only"), store=store)
    assert export(store) == before
    record = History(store, PREFIX).get("0001")
    new_checksum = load_migrations(config.migrations_dir)[0].checksum
    assert record is not None and record.checksum == new_checksum
    assert record.previous_checksums == (applied.checksum,)
    assert record.status is MigrationStatus.APPLIED and record.run_id == first.run_id  # still its run
    event = record.events[-1]
    assert (event.kind, event.previous_checksum, event.checksum) == (
        EventKind.REPAIRED,
        applied.checksum,
        new_checksum,
    )
    assert event.reason == "comment only" and event.run_id == result.edit_id
    assert (
        check_drift(
            migration_states(load_migrations(config.migrations_dir), History(store, PREFIX).all()), False
        )
        == []
    )
    assert states(config, store)[0] is StateKind.APPLIED

    with pytest.raises(UsageError, match="did not change since it was applied") as unchanged:
        repair(config, RepairOptions("0001", "again"), store=store)
    assert unchanged.value.hint
    # A rollback of a repaired migration still undoes its run's writes.
    rollback(config, RollbackOptions(run_id=first.run_id, execute=True), store=store)
    assert export(store).keys() == before.keys()
    assert states(config, store)[0] is StateKind.ROLLED_BACK


def test_repair_refuses_what_is_not_applied_or_has_no_file(config: Config) -> None:
    store = MemoryStore()
    seed(store, 20)
    with pytest.raises(UsageError, match="never ran here") as never:
        repair(config, RepairOptions("0001", "x"), store=store)
    assert never.value.hint is not None and "docshift stamp 0001" in never.value.hint
    run_migrations(config, RunOptions(execute=True, to="0001", limit=5), store=store)
    edit(config)
    with pytest.raises(UsageError, match="is partial, not applied") as partial:
        repair(config, RepairOptions("0001", "x"), store=store)
    assert partial.value.hint
    run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    (config.migrations_dir / "0001_split_full_name.py").unlink()
    with pytest.raises(UsageError, match="its file is gone") as gone:
        repair(config, RepairOptions("0001", "x"), store=store)
    assert gone.value.hint is not None and "restore" in gone.value.hint


def test_a_stamped_migration_whose_file_was_edited_drifts_and_can_be_repaired(config: Config) -> None:
    store = MemoryStore()
    stamp(config, StampOptions("0001", "adopting"), store=store)
    edit(config)
    assert states(config, store)[0] is StateKind.DRIFTED
    repair(config, RepairOptions("0001", "comment"), store=store)
    record = History(store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.STAMPED
    assert [e.kind for e in record.events] == [EventKind.STAMPED, EventKind.REPAIRED]
    assert states(config, store)[0] is StateKind.STAMPED


def test_run_allow_drift_records_a_drift_accepted_event(config: Config) -> None:
    store = MemoryStore()
    seed(store, 10)
    run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    edit(config)
    report = run_migrations(config, RunOptions(execute=True, to="0002", allow_drift=True), store=store)
    event = History(store, PREFIX).get("0001").events[-1]  # type: ignore[union-attr]
    assert event.kind is EventKind.DRIFT_ACCEPTED and event.run_id == report.run_id
    assert event.previous_checksum and event.previous_checksum != event.checksum


def test_a_repair_whose_write_fails_changes_nothing_and_releases_the_lease(config: Config) -> None:
    store = MemoryStore()
    seed(store, 10)
    run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    applied = History(store, PREFIX).get("0001")
    edit(config)
    with pytest.raises(TransientError):
        repair(config, RepairOptions("0001", "comment"), store=FailingHistoryWrites(store, allowed=0))
    assert History(store, PREFIX).get("0001") == applied
    assert read_lease(store, PREFIX) is None
    assert status(config, store=store).exit_code is ExitCode.DRIFT

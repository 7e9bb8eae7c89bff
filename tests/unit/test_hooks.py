"""The run's lifecycle hooks, on the memory store: the null default, the fan-out, document checks
combined from several hooks, how each event is written and read back, and validation's after-scan
taken at its migration's end."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from docshift.commands.observe import Observation
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.batch import DeadLetter, DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    AllChecks,
    Checkpointed,
    ControlApplied,
    EngineState,
    FanOutHooks,
    HealthIssue,
    HealthReported,
    MigrationEnded,
    MigrationStarted,
    PassFinished,
    PassStarted,
    PassStats,
    PassStopped,
    Progressed,
    RunEnded,
    RunHooks,
    RunResumed,
    RunStarted,
    ScanStarted,
    StageEntered,
    StagesRolledBack,
    TotalKnown,
    Warned,
    combine_checks,
    deliver,
)
from docshift.errors import LockedError, StoreError, ValidationFailed
from docshift.lock import LeaseLock
from docshift.reports.events import encode_event, event_fields, parse_event
from docshift.runfolder import DeadLetterFile
from docshift.store import Query, Store, Write
from docshift.store.base import DelegatingStore, Document
from docshift.testing import MemoryStore, RecordingHooks
from docshift.validators import RunValidation
from docshift.values import Timestamp

USERS = """
from docshift import UNCHANGED
from docshift.validators import required

collection = "users"
rules = [required("first_name")]

def up(doc):
    data = doc.data
    if "full_name" not in data:
        return UNCHANGED
    first, _, last = data.pop("full_name").partition(" ")
    return {**data, "first_name": first, "last_name": last}
"""

ORDERS = """
from docshift.validators import required

collection = "orders"
rules = [required("total")]

def up(doc):
    return {**doc.data, "total": doc.get("amount", 0)}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_users.py").write_text(textwrap.dedent(USERS), encoding="utf-8")
    (migrations / "0002_orders.py").write_text(textwrap.dedent(ORDERS), encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=20, min_batch_size=10, concurrency=2),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def seeded(users: int = 100, orders: int = 60) -> MemoryStore:
    store = MemoryStore()
    writes = [Write.set(f"users/u{i:04d}", {"full_name": f"First{i} Last{i}", "n": i}) for i in range(users)]
    writes += [Write.set(f"orders/o{i:04d}", {"amount": i}) for i in range(orders)]
    for start in range(0, len(writes), 400):
        store.commit(writes[start : start + 400])
    return store


# --------------------------------------------------------------------------- null, fan-out, checks
def test_the_null_hooks_do_nothing_at_every_step(config: Config) -> None:
    """The base class is the default everywhere: every step is a no-op that gives no check."""
    store = seeded()
    recorded = RecordingHooks()
    report = run_migrations(config, RunOptions(execute=True), store=seeded(), hooks=recorded)
    null = RunHooks()
    for event in recorded.events:
        assert deliver(null, event) is None  # type: ignore[arg-type]
    assert {type(event) for event in recorded.events} >= {RunStarted, MigrationStarted, MigrationEnded}
    again = run_migrations(config, RunOptions(execute=True), store=store)  # no hooks: the null ones
    assert [o.result.counters["updated"] for o in again.outcomes] == [
        o.result.counters["updated"] for o in report.outcomes
    ]


def test_fan_out_gives_every_step_of_a_run_to_every_hook_in_order(config: Config) -> None:
    first, second = RecordingHooks(), RecordingHooks()
    run_migrations(config, RunOptions(execute=True), store=seeded(), hooks=FanOutHooks(first, second))
    assert first.events == second.events
    lifecycle = [
        (type(e).__name__, getattr(e, "migration", None))
        for e in first.events
        if isinstance(
            e, RunStarted | MigrationStarted | PassStarted | PassFinished | MigrationEnded | RunEnded
        )
    ]
    labels = [(name, m.label if hasattr(m, "label") else m) for name, m in lifecycle]
    assert labels == [
        ("RunStarted", None),
        ("MigrationStarted", "0001_users"),
        ("PassStarted", "0001_users"),
        ("PassFinished", "0001_users"),
        ("MigrationEnded", "0001_users"),
        ("MigrationStarted", "0002_orders"),
        ("PassStarted", "0002_orders"),
        ("PassFinished", "0002_orders"),
        ("MigrationEnded", "0002_orders"),
        ("RunEnded", None),
    ]
    [ended] = first.of(RunEnded)
    assert (ended.state, ended.exit_code, ended.raised) == ("finished", 0, None)
    assert all(event.status == "applied" and event.finished for event in first.of(MigrationEnded))


class _Refuses(RunHooks):
    """Hooks whose check refuses the users whose ``n`` ends in ``digit``, and hear of settled batches."""

    def __init__(self, digit: int) -> None:
        self.digit = digit
        self.settled: list[int] = []

    def migration_started(self, event: MigrationStarted) -> DocumentCheck | None:
        if event.migration.target.collection != "users":
            return None
        hooks = self

        class Check:
            def __call__(self, source: Document, new_data: dict[str, Any]) -> tuple[str, str] | None:
                if int(new_data["n"]) % 10 == hooks.digit:
                    return f"not {hooks.digit}", f"n ends in {hooks.digit}"
                return None

            def settled(self, counts: Mapping[str, int], letters: Sequence[DeadLetter]) -> None:
                hooks.settled.append(int(counts.get("checked", 0)))

        return Check()


def test_the_document_checks_of_two_hooks_combine(config: Config) -> None:
    """Each hook's check judges every document (the first refusal decides) and each one hears of
    every settled batch."""
    store = seeded()
    threes, sevens = _Refuses(3), _Refuses(7)
    report = run_migrations(
        config, RunOptions(execute=True), store=store, hooks=FanOutHooks(threes, sevens, RunHooks())
    )
    users = report.outcomes[0].result.counters
    assert users["rejected"] == users["failed"] == 20 and users["updated"] == 80
    letters = list(DeadLetterFile(report.folder / "0001_users" / "dead-letters.jsonl"))
    assert sorted({str(letter["rule"]) for letter in letters}) == ["not 3", "not 7"]
    assert {int(str(letter["path"])[-1]) for letter in letters} == {3, 7}
    for doc in store.stream(Query("users")):
        assert ("first_name" in doc.data) == (int(doc.data["n"]) % 10 not in (3, 7))
    assert sum(threes.settled) == sum(sevens.settled) == users["checked"] == 100
    assert report.outcomes[1].result.counters["rejected"] == 0  # neither checks orders


def test_combining_checks() -> None:
    def check(source: Document, new_data: dict[str, Any]) -> tuple[str, str] | None:
        return None

    assert combine_checks([]) is None and combine_checks([None, None]) is None
    assert combine_checks([None, check]) is check
    both = combine_checks([check, check])
    assert isinstance(both, AllChecks) and both.checks == (check, check)
    assert both(Document("users/u1", {}), {}) is None


def test_a_run_refused_before_it_starts_has_neither_start_nor_end(config: Config) -> None:
    store = seeded()
    recorded = RecordingHooks()
    with pytest.raises(LockedError), LeaseLock(store, config.store.state_prefix, run_id="someone-else"):
        run_migrations(config, RunOptions(execute=True), store=store, hooks=recorded)
    assert recorded.events == []


# --------------------------------------------------------------------------- written and read back
STATS = PassStats(300, 120.0, 80.0, 0.01, 0.02, None, 7, 3.5)
COUNTS = {"read": 300, "updated": 270, "unchanged": 30, "failed": 0}
WRITTEN: list[tuple[object, str, dict[str, Any]]] = [
    (RunResumed("r1", {"config": {"batch_size": 50}}, {}), "resume", {"run_id": "r1"}),
    (
        PassStarted("0001_x", 2, True, {"updated": 4}),
        "start",
        {"migration": "0001_x", "shards": 2, "execute": True, "counters": {"updated": 4}},
    ),
    (
        PassStarted("rollback 0001_x", 1, False, {}, strategy="restore", runs=("r1",)),
        "start",
        {"strategy": "restore", "runs": ["r1"]},
    ),
    (
        Progressed("0001_x", COUNTS, STATS, EngineState(100, 0.0, 81.5, False), retries=2),
        "progress",
        {
            **COUNTS,
            "migration": "0001_x",
            "processed": 300,
            "docs_per_second_now": 120.0,
            "docs_per_second_avg": 80.0,
            "commit_p50": 0.01,
            "commit_p95": 0.02,
            "commit_p99": None,
            "commits": 7,
            "elapsed_seconds": 3.5,
            "batch_size": 100,
            "write_limit": 0.0,
            "memory_mb": 81.5,
            "paused": False,
            "retries": 2,
        },
    ),
    (Progressed("rollback", {"restored": 5}), "progress", {"migration": "rollback", "restored": 5}),
    (
        Checkpointed("0001_x", "running", ("users/a", None)),
        "checkpoint",
        {"migration": "0001_x", "state": "running", "cursors": ["users/a", None]},
    ),
    (
        StageEntered("0001_x", 2, "stage 2 of 4", stages=4),
        "stage",
        {"migration": "0001_x", "stage": 2, "stages": 4, "message": "stage 2 of 4"},
    ),
    (StageEntered("0001_x", 2, "paused", paused=True), "stage", {"paused": True}),
    (Warned("careful"), "warning", {"message": "careful"}),
    (
        ControlApplied("throttle", "http", 50.0),
        "control",
        {"action": "throttle", "source": "http", "ops_per_second": 50.0},
    ),
    (ControlApplied("pause", "file"), "control", {"action": "pause", "source": "file"}),
    (TotalKnown("0001_x", 2000), "total", {"migration": "0001_x", "total": 2000}),
    (
        PassFinished("0001_x", COUNTS, STATS),
        "finish",
        {**COUNTS, "migration": "0001_x", "processed": 300, "reason": None},
    ),
    (
        PassFinished("0001_x", COUNTS, STATS, stages=4),
        "finish",
        {"stages": 4, "elapsed_seconds": 3.5},
    ),
    (
        PassStopped("0001_x", COUNTS, STATS, "interrupted by SIGTERM", retries=0),
        "stop",
        {"reason": "interrupted by SIGTERM", "retries": 0},
    ),
    (PassFinished("rollback 0001_x", {"restored": 3}), "finish", {"restored": 3, "reason": None}),
    (
        StagesRolledBack("0001_x", {"updated": 9}, {"restored": 9}, 1.5),
        "rolled_back",
        {"migration": "0001_x", "updated": 9, "rollback": {"restored": 9}, "elapsed_seconds": 1.5},
    ),
    (ScanStarted("0001_x", "after"), "validation_scan", {"migration": "0001_x", "phase": "after"}),
    (
        HealthReported(
            70, "DEGRADED", (HealthIssue("critical", "bad", "0001_x"),), "/runs/r1/validation.json"
        ),
        "validation",
        {
            "score": 70,
            "status": "DEGRADED",
            "issues": [{"severity": "critical", "message": "bad", "migration": "0001_x"}],
            "file": "/runs/r1/validation.json",
        },
    ),
    (
        RunEnded("stopped", 10, "interrupted", "resume it", folder=Path("/runs/r1")),
        "end",
        {"state": "stopped", "exit_code": 10, "error": "interrupted", "hint": "resume it"},
    ),
]


@pytest.mark.parametrize(
    ("event", "kind", "fields"), WRITTEN, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(WRITTEN)]
)
def test_every_event_is_written_as_its_kind_with_its_fields_and_read_back(
    event: object, kind: str, fields: dict[str, Any]
) -> None:
    """The JSON lines `docshift monitor`, the report and users' scripts read: the kind name, the
    fields at the top level, nothing that only means something inside the process."""
    line = encode_event(event, at=12.5)
    assert line is not None
    document = orjson.loads(line)
    assert document["event"] == kind and document["at"] == 12.5
    assert {k: document[k] for k in fields} == fields
    assert set(document) == {"event", "at", *event_fields(event)}
    logged = parse_event(line)
    assert logged is not None and logged.at == 12.5 and logged.event == event


def test_steps_that_only_mean_something_inside_the_process_are_not_written(tmp_path: Path) -> None:
    store = seeded()
    recorded = RecordingHooks()
    run_migrations(
        Config(store=StoreConfig(project="memory"), migrations_dir=tmp_path, runs_dir=tmp_path / "runs"),
        RunOptions(),
        store=store,
        hooks=recorded,
    )
    assert recorded.events == []  # no migration: the run never started
    assert encode_event(RunStarted("r1", tmp_path)) is None
    assert encode_event(RunEnded("finished", 0, raised=None, folder=tmp_path)) is not None
    assert parse_event(b'{"event": "no such kind", "at": 1.0}') is None
    assert parse_event(b'{"event": "total", "at": 1.0}') is None  # fields missing: not a docshift line


# --------------------------------------------------------------------------- validation's after-scan
def test_each_after_scan_is_taken_at_its_migrations_end_before_the_run_ends(config: Config) -> None:
    """The last migration's after-scan too: at its end, before the run's end finishes validation
    (it was taken by ``finish()`` after ``run()`` returned)."""
    store = seeded()
    seen = RecordingHooks()
    validation = RunValidation(config, store, hooks=seen, controls=Controls(), execute=True, scans=True)
    run_migrations(config, RunOptions(execute=True), store=store, hooks=FanOutHooks(validation, seen))
    steps = [
        (type(e).__name__, e.phase if isinstance(e, ScanStarted) else None, getattr(e, "migration", None))
        for e in seen.events
        if isinstance(e, ScanStarted | MigrationEnded | HealthReported | RunEnded)
    ]
    labels = [(name, phase, getattr(m, "label", m)) for name, phase, m in steps]
    assert labels == [
        ("ScanStarted", "before", "0001_users"),
        ("ScanStarted", "after", "0001_users"),
        ("MigrationEnded", None, "0001_users"),
        ("ScanStarted", "before", "0002_orders"),
        ("ScanStarted", "after", "0002_orders"),
        ("MigrationEnded", None, "0002_orders"),
        ("HealthReported", None, None),
        ("RunEnded", None, None),
    ]
    assert validation.outcome is not None and validation.finish(None) is validation.outcome
    assert [(r.label, r.phase) for r in validation.outcome.reports if r.phase == "after"] == [
        ("0001_users", "after"),
        ("0002_orders", "after"),
    ]


class _OrdersUnreadable(DelegatingStore):
    """The second migration's target cannot be counted (its shards cannot be planned)."""

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        if query.collection == "orders":
            raise StoreError("the store kept failing", code="UNAVAILABLE")
        return self.inner.count(query, read_time=read_time)


def test_a_finished_migration_is_after_scanned_even_when_the_next_one_cannot_start(config: Config) -> None:
    """Before, a migration's after-scan waited for the next migration's check (or for a run that
    ended well): a next one that failed before its check left the finished one unscanned."""
    config = config.with_engine(shards=2)
    store: Store = _OrdersUnreadable(seeded())
    seen = RecordingHooks()
    validation = RunValidation(config, store, hooks=seen, controls=Controls(), execute=True, scans=True)
    with pytest.raises(StoreError):
        run_migrations(config, RunOptions(execute=True), store=store, hooks=FanOutHooks(validation, seen))
    assert [(e.migration, e.phase) for e in seen.of(ScanStarted)] == [
        ("0001_users", "before"),
        ("0001_users", "after"),
    ]
    [folder] = config.runs_dir.iterdir()
    assert (folder / "0001_users" / "validation-after.json").is_file()
    outcome = validation.outcome
    assert outcome is not None and [r.passed for r in outcome.reports if r.phase == "after"] == [True]
    [ended] = seen.of(RunEnded)
    assert isinstance(ended.raised, StoreError) and ended.folder == folder


# --------------------------------------------------------------------------- the observation's end
def test_an_observation_writes_one_end_the_commands(config: Config) -> None:
    """The run's own end is held back from the log, the status and the display: they get how the
    command ended (here: an after-scan verdict raised after the run), once."""
    store = seeded()
    shown = RecordingHooks()
    controls = Controls()
    with Observation(config, store, controls, display=shown) as seen:
        run_migrations(
            config,
            RunOptions(execute=True, run_id=seen.run_id),
            store=store,
            hooks=seen.hooks,
            controls=controls,
        )
        seen.ended_by = ValidationFailed("after-scan: 3 documents break a rule")
    assert seen.folder is not None
    ends = [orjson.loads(line) for line in (seen.folder / "events.jsonl").read_bytes().splitlines()]
    ends = [line for line in ends if line["event"] == "end"]
    assert [(e["state"], e["exit_code"], e["error"]) for e in ends] == [
        ("finished", 14, "after-scan: 3 documents break a rule")
    ]
    [ended] = shown.of(RunEnded)
    assert ended.exit_code == 14 and isinstance(ended.raised, ValidationFailed)
    assert seen.status.ended == {
        "state": "finished",
        "exit_code": 14,
        "error": "after-scan: 3 documents break a rule",
        "hint": None,
    }

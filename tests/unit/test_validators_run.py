"""Inline checks, the integrity gate, scans and health in ``run_migrations()`` on the memory store."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.controls import Controls
from docshift.engine.hooks import FanOutHooks, HealthReported, MigrationStarted
from docshift.errors import EmergencyStop
from docshift.runfolder import Checkpoint, DeadLetterFile, read_versioned
from docshift.store import Query, Write
from docshift.testing import MemoryStore, RecordingHooks
from docshift.validators import HealthStatus, RunValidation
from tests.gate_message import gate_numbers

MIGRATION = """
from docshift import UNCHANGED
from docshift.validators import count, in_range, required

collection = "users"
rules = [required("first_name"), in_range("age", 0, 150), count("equal")]

def up(doc):
    data = doc.data
    if "full_name" not in data:
        return UNCHANGED
    first, _, last = data.pop("full_name").partition(" ")
    return {**data, "first_name": first, "last_name": last}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_split.py").write_text(textwrap.dedent(MIGRATION), encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=20, min_batch_size=10, concurrency=2),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def seed(store: MemoryStore, total: int, bad_per_100: int) -> set[str]:
    """``total`` users; ``bad_per_100`` of every 100 get an age the rules refuse."""
    bad = set()
    writes = []
    for i in range(total):
        path = f"users/u{i:04d}"
        age = -1 if i % 100 < bad_per_100 else 30
        if age < 0:
            bad.add(path)
        writes.append(Write.set(path, {"full_name": f"First{i} Last{i}", "age": age}))
    for start in range(0, total, 400):
        store.commit(writes[start : start + 400])
    return bad


def test_three_percent_bad_finishes_with_dead_letters_and_a_warning(config: Config) -> None:
    store = MemoryStore()
    bad = seed(store, 500, bad_per_100=3)
    progress = RecordingHooks()
    controls = Controls()
    validation = RunValidation(config, store, hooks=progress, controls=controls, execute=True)
    report = run_migrations(
        config,
        RunOptions(execute=True),
        store=store,
        hooks=FanOutHooks(validation, progress),
        controls=controls,
    )
    outcome = validation.finish(report.folder)
    [result] = [o.result for o in report.outcomes]
    assert result.error is None and result.state == "finished"
    assert result.counters["rejected"] == result.counters["failed"] == 15
    assert result.counters["updated"] == 485
    letters = list(DeadLetterFile(report.folder / "0001_split" / "dead-letters.jsonl"))
    assert {letter["path"] for letter in letters} == bad
    rules = {(letter["stage"], letter["rule"]) for letter in letters}
    assert rules == {("validate", "in_range(age, 0..150)")}
    assert letters[0]["error"] == "age is -1, below the minimum 0"
    for doc in store.stream(Query("users")):
        assert ("full_name" in doc.data) == (doc.path in bad)  # refused documents were not written
    warnings = progress.warnings()
    assert len(warnings) == 1 and "15 of 500 documents checked broke a rule" in warnings[0]
    assert "integrity 97.0%" in warnings[0] and "dead-letters.jsonl" in warnings[0]
    assert outcome.health.score == 95 and outcome.health.status is HealthStatus.HEALTHY
    saved = read_versioned(report.folder / "validation.json", "docshift-run-validation", 1)
    assert saved["health"]["score"] == 95 and saved["gate"] is None
    inline = read_versioned(report.folder / "0001_split" / "validation-inline.json", "docshift-validation", 1)
    assert inline["checked"] == 500 and inline["failed"] == 15 and inline["rules"][1]["failures"] == 15
    assert len(progress.of(HealthReported)) == 1


def test_fifteen_percent_bad_stops_at_the_gate_with_the_checkpoint_kept(config: Config) -> None:
    store = MemoryStore()
    seed(store, 1000, bad_per_100=15)
    controls = Controls()
    validation = RunValidation(config, store, controls=controls, execute=True)
    with pytest.raises(EmergencyStop, match="integrity gate") as stopped:
        run_migrations(
            config,
            RunOptions(execute=True),
            store=store,
            hooks=validation,
            controls=controls,
        )
    assert validation.gate is not None and "below integrity_critical 90%" in validation.gate
    run_id = (stopped.value.resume_command or "").split()[-1]
    checkpoint = Checkpoint.load(config.runs_dir / run_id / "0001_split" / "checkpoint.json")
    assert checkpoint.state == "stopped" and checkpoint.counters["read"] < 1000
    outcome = validation.finish(config.runs_dir / run_id, stopped.value)
    assert outcome.health.status is HealthStatus.CRITICAL
    assert [issue.severity.value for issue in outcome.health.issues] == ["critical"]


@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_a_gate_stop_counts_the_same_documents_in_its_message_files_and_record(
    config: Config, concurrency: int
) -> None:
    """The gate judges the batches settled behind the cursor, so its message, validation-inline.json,
    the checkpoint's counters and the dead letters hold the same documents checked and refused
    (batches a stop left unfinished are done again on resume, and counted then)."""
    config = dataclasses.replace(config, engine=dataclasses.replace(config.engine, concurrency=concurrency))
    store = MemoryStore()
    seed(store, 2000, bad_per_100=15)
    controls = Controls()
    validation = RunValidation(config, store, controls=controls, execute=True)
    with pytest.raises(EmergencyStop) as stopped:
        run_migrations(
            config,
            RunOptions(execute=True),
            store=store,
            hooks=validation,
            controls=controls,
        )
    run_id = (stopped.value.resume_command or "").split()[-1]
    folder = config.runs_dir / run_id / "0001_split"
    validation.finish(folder.parent, stopped.value)
    checked, refused = gate_numbers(stopped.value.message)
    counters = Checkpoint.load(folder / "checkpoint.json").counters
    inline = read_versioned(folder / "validation-inline.json", "docshift-validation", 1)
    letters = list(DeadLetterFile(folder / "dead-letters.jsonl"))
    assert checked >= 50 and refused > 0
    assert (inline["checked"], inline["failed"]) == (checked, refused)
    assert len(letters) == refused == inline["rules"][1]["failures"]
    assert (counters.get("checked"), counters["rejected"]) == (checked, refused)
    assert validation.gate is not None and validation.gate in stopped.value.message


def test_the_gate_needs_a_minimum_sample_and_never_stops_a_dry_run(config: Config) -> None:
    store = MemoryStore()
    seed(store, 300, bad_per_100=15)
    validation = RunValidation(config, store, controls=Controls(), execute=False)
    report = run_migrations(config, RunOptions(), store=store, hooks=validation)
    assert report.outcomes[0].result.error is None and report.outcomes[0].result.counters["rejected"] == 45
    outcome = validation.finish(report.folder)
    assert validation.gate is None and outcome.health.issues[0].severity.value == "critical"
    few = MemoryStore()
    seed(few, 40, bad_per_100=50)  # 50% bad, but only 40 documents: below the gate's sample
    controls = Controls()
    validation = RunValidation(config, few, controls=controls, execute=True)
    run_migrations(config, RunOptions(execute=True), store=few, hooks=validation, controls=controls)
    assert validation.gate is None


def test_validate_scans_before_and_after_and_compares_counts(config: Config) -> None:
    store = MemoryStore()
    seed(store, 120, bad_per_100=0)
    controls = Controls()
    validation = RunValidation(config, store, controls=controls, execute=True, scans=True)
    report = run_migrations(
        config,
        RunOptions(execute=True),
        store=store,
        hooks=validation,
        controls=controls,
    )
    outcome = validation.finish(report.folder)
    phases = {r.phase: r for r in outcome.reports}
    assert set(phases) == {"before", "inline", "after"}
    assert phases["before"].failed == 120  # nothing had first_name yet
    assert phases["after"].failed == 0 and phases["after"].passed and outcome.after_failed == []
    assert phases["after"].rules[2].note is None and phases["after"].rules[2].collection_failures == []
    assert (report.folder / "0001_split" / "validation-before.json").is_file()
    assert (report.folder / "0001_split" / "validation-after.json").is_file()
    assert outcome.health.score == 100


def test_a_resumed_run_keeps_the_first_before_scan(config: Config, tmp_path: Path) -> None:
    from docshift.loader import load_migrations
    from docshift.validators.scan import save_report, scan

    store = MemoryStore()
    seed(store, 30, bad_per_100=0)
    [migration] = load_migrations(config.migrations_dir)
    previous = tmp_path / "runs" / "earlier"
    first = scan(store, migration, phase="before")
    first.total = 29  # what the first session counted, before the data moved on
    save_report(first, previous / migration.label / "validation-before.json")
    seen = RecordingHooks()
    validation = RunValidation(config, store, hooks=seen, execute=True, scans=True, previous=previous)
    assert validation.migration_started(MigrationStarted(migration, "run-2", execute=True)) is not None
    assert seen.events == []  # no second before-scan
    assert validation.states[migration.label].baseline.before_total == 29


def test_a_resumed_dry_run_is_validated_as_a_dry_run(config: Config) -> None:
    """A dry run writes nothing, so its gate never stops it (nothing to roll back): resumed, it is
    still a dry run, validated as one."""
    from docshift.commands.run import result_of, run
    from docshift.engine.hooks import Checkpointed, RunHooks
    from docshift.errors import RunStopped

    store = MemoryStore()
    seed(store, 400, bad_per_100=15)
    controls = Controls()

    class StopAtFirstCheckpoint(RunHooks):
        def checkpointed(self, event: Checkpointed) -> None:
            controls.request_stop("stopped by the test")

    options = RunOptions(execute=False, scans=True, auto_rollback=True)
    with pytest.raises(RunStopped) as stopped:
        run(config, options, store=store, hooks=StopAtFirstCheckpoint(), controls=controls)
    stopped_result = result_of(stopped.value)
    assert stopped_result is not None
    run_id = stopped_result.run.run_id
    result = run(config, dataclasses.replace(options, resume=run_id), store=store)
    assert result.run.run_id == run_id and not result.run.execute
    assert all("full_name" in doc.data for doc in store.stream(Query("users")))  # nothing written

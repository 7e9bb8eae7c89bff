"""What a run records as its outcome, on the memory store: ``applied`` only when every target document
was processed (no --limit cut, no --sample, every canary stage passed), ``partial`` and
``interrupted`` otherwise; a resume keeps the run's own settings; a rolled-back run is closed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, load_run_info, rate_limiter, resume_run, run_migrations
from docshift.commands.status import state_label, status
from docshift.config import Config, EngineConfig, LimitsConfig, StoreConfig, load_config
from docshift.engine.batch import DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    Checkpointed,
    MigrationStarted,
    PassEnded,
    PassFinished,
    RunResumed,
    StageEntered,
    Warned,
)
from docshift.engine.sampling import bucket
from docshift.errors import EmergencyStop, ExitCode, RunStopped, StageFailed, UsageError
from docshift.history import History, MigrationStatus
from docshift.loader import load_migrations
from docshift.lock import lease_path
from docshift.planning import StateKind
from docshift.runfolder import Checkpoint, read_versioned, write_versioned
from docshift.runfolder.record import read_run
from docshift.store import DelegatingStore, Store
from docshift.store.base import Write, WriteResult
from docshift.testing import MemoryStore, RecordingHooks, RecordingStore
from tests.unit.engine_support import assert_data, expected_after, export, seed, split_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"
PREFIX = "_docshift"

TIER = '''
"""Give every user a tier; documents in buckets from FAIL_FROM on cannot be migrated."""
from typing import Any
from docshift import DocView, UNCHANGED
from docshift.engine.sampling import bucket

description = "add tier"
collection = "users"
FAIL_FROM = {fail_from}


def up(doc: DocView) -> Any:
    if "tier" in doc:
        return UNCHANGED
    if bucket(doc.path) >= FAIL_FROM:
        raise ValueError("this one cannot be migrated")
    return {{**doc.data, "tier": "silver"}}
'''


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", migrations)
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=50, min_batch_size=10),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def tier_config(tmp_path: Path, fail_from: float = 101) -> Config:
    migrations = tmp_path / "tier-migrations"
    migrations.mkdir()
    (migrations / "0001_tier.py").write_text(TIER.format(fail_from=fail_from), encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(
            batch_size=10, min_batch_size=10, concurrency=2, checkpoint_every_docs=10, max_failures="100%"
        ),
        limits=LimitsConfig(breaker_failure_rate=1.0),  # the stage gates decide, not the breaker
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def record_of(store: Store, migration_id: str = "0001") -> Any:
    record = History(store, PREFIX).get(migration_id)
    assert record is not None
    return record


def test_a_limited_run_is_partial_pending_and_the_next_run_processes_the_rest(config: Config) -> None:
    store = MemoryStore()
    seed(store, 100)
    before = export(store)
    progress = RecordingHooks()
    limited = run_migrations(config, RunOptions(execute=True, limit=10), store=store, hooks=progress)
    [outcome] = limited.outcomes
    assert outcome.status is MigrationStatus.PARTIAL
    record = record_of(store)
    assert record.status is MigrationStatus.PARTIAL
    assert record.counts["read"] == 10 and record.counts["updated"] == 9
    warnings = progress.warnings()
    assert any("partial" in w and "--limit 10" in w and "docshift run --execute" in w for w in warnings)
    report = status(config, store)
    [state] = report.states
    assert state.kind is StateKind.PARTIAL and state.runnable
    assert state_label(state, report.lease) == "partial"
    assert report.exit_code is ExitCode.PENDING
    assert report.to_json()["migrations"][0]["status"] == "partial"

    rest = run_migrations(config, RunOptions(execute=True), store=store)
    assert [o.migration.id for o in rest.outcomes] == ["0001"]
    assert rest.outcomes[0].result.counters["read"] == 100
    assert rest.outcomes[0].result.counters["updated"] == 81  # the first ten were done already
    assert_data(store, expected_after(before, split_name))
    assert record_of(store).status is MigrationStatus.APPLIED
    assert status(config, store).exit_code is ExitCode.OK


def test_a_sampled_run_is_partial_until_a_full_run(config: Config) -> None:
    store = MemoryStore()
    seed(store, 200)
    before = export(store)
    sampled = run_migrations(config, RunOptions(execute=True, sample_percent=30), store=store)
    assert sampled.outcomes[0].status is MigrationStatus.PARTIAL
    assert record_of(store).status is MigrationStatus.PARTIAL
    assert status(config, store).exit_code is ExitCode.PENDING
    run_migrations(config, RunOptions(execute=True), store=store)
    assert_data(store, expected_after(before, split_name))
    assert record_of(store).status is MigrationStatus.APPLIED


@pytest.mark.parametrize("limit", [60, 61, 500])
def test_a_limit_that_reaches_every_document_is_applied(config: Config, limit: int) -> None:
    """Derived from what was processed: a limit the collection does not exceed leaves nothing out."""
    store = MemoryStore()
    seed(store, 60)
    report = run_migrations(config, RunOptions(execute=True, limit=limit), store=store)
    assert report.outcomes[0].status is MigrationStatus.APPLIED
    assert record_of(store).status is MigrationStatus.APPLIED


def test_a_limit_one_short_of_the_collection_is_partial(config: Config) -> None:
    store = MemoryStore()
    seed(store, 60)
    run_migrations(config, RunOptions(execute=True, limit=59), store=store)
    assert record_of(store).status is MigrationStatus.PARTIAL


def test_a_resumed_limited_run_killed_before_its_history_was_written_is_partial(config: Config) -> None:
    """Killed after the final checkpoint of a --limit run, before the history said so."""
    store = MemoryStore()
    seed(store, 100)
    report = run_migrations(config, RunOptions(execute=True, limit=10), store=store)
    [migration] = load_migrations(config.migrations_dir)
    history = History(store, PREFIX)
    history.start(migration, report.run_id)  # as the killed process left it: running
    info = read_versioned(report.folder / "run.json", "docshift-run", 1)
    write_versioned(report.folder / "run.json", "docshift-run", 1, {**info, "state": "running"})
    run_migrations(config, RunOptions(execute=True, resume=report.run_id), store=store)
    record = history.get("0001")
    assert record is not None and record.status is MigrationStatus.PARTIAL
    assert record.counts["read"] == 10


def _stop_after_first_checkpoint(
    controls: Controls,
    stop_class: type[RunStopped] = RunStopped,
) -> RecordingHooks:
    class StopAtFirstCheckpoint(RecordingHooks):
        def checkpointed(self, event: Checkpointed) -> None:
            super().checkpointed(event)
            controls.request_stop("interrupted by SIGINT", stop_class)

    return StopAtFirstCheckpoint()


def _slow(config: Config) -> Config:
    return Config(
        store=config.store,
        engine=EngineConfig(batch_size=10, min_batch_size=10, concurrency=1, checkpoint_every_docs=10),
        migrations_dir=config.migrations_dir,
        runs_dir=config.runs_dir,
    )


def test_a_run_stopped_by_a_signal_is_interrupted_not_failed(config: Config) -> None:
    store = MemoryStore()
    seed(store, 400)
    before = export(store)
    controls = Controls()
    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            _slow(config),
            RunOptions(execute=True),
            store=store,
            controls=controls,
            hooks=_stop_after_first_checkpoint(controls),
        )
    assert stopped.value.exit_code is ExitCode.INTERRUPTED
    record = record_of(store)
    assert record.status is MigrationStatus.INTERRUPTED
    assert stopped.value.resume_command is not None and stopped.value.resume_command in (record.error or "")
    report = status(config, store)
    [state] = report.states
    assert state.kind is StateKind.INTERRUPTED and state.runnable
    assert state_label(state, report.lease) == "interrupted"
    assert report.exit_code is ExitCode.PENDING
    run_migrations(config, RunOptions(execute=True, resume="latest"), store=store)
    assert_data(store, expected_after(before, split_name))
    assert record_of(store).status is MigrationStatus.APPLIED


def test_an_emergency_stop_is_failed(config: Config) -> None:
    store = MemoryStore()
    seed(store, 400)
    controls = Controls()
    with pytest.raises(EmergencyStop):
        run_migrations(
            _slow(config),
            RunOptions(execute=True),
            store=store,
            controls=controls,
            hooks=_stop_after_first_checkpoint(controls, EmergencyStop),
        )
    assert record_of(store).status is MigrationStatus.FAILED


def _stopped_with(tmp_path: Path, store: Store, flags: dict[str, Any], **options: Any) -> str:
    """A run started with ``flags`` (as given on the command line), stopped at its first checkpoint."""
    config = _cli_config(tmp_path, flags)
    controls = Controls(rate_limiter(config, store))
    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            config,
            RunOptions(execute=True, **options),
            store=store,
            controls=controls,
            hooks=_stop_after_first_checkpoint(controls),
        )
    assert stopped.value.resume_command is not None
    return stopped.value.resume_command.split()[-1]


def _cli_config(tmp_path: Path, flags: dict[str, Any]) -> Config:
    """Resolved as the CLI resolves it: flags over docshift.toml over defaults."""
    (tmp_path / "docshift.toml").write_text(
        'migrations_dir = "migrations"\nruns_dir = "runs"\nproject = "memory"\n'
        "min_batch_size = 10\ncheckpoint_every_docs = 10\n",
        encoding="utf-8",
    )
    return load_config(flags, env={}, cwd=tmp_path)


def test_a_resume_continues_with_the_run_s_own_settings(config: Config, tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 300)
    before = export(store)
    flags = {
        "max_writes_per_second": 5000.0,
        "batch_size": 10,
        "concurrency": 1,
        "shards": 2,
        "max_failures": "7%",
        "backup": False,
    }
    run_id = _stopped_with(tmp_path, store, flags)
    plain = _cli_config(tmp_path, {})  # the resume is given none of those flags
    resumed = resume_run(plain, RunOptions(execute=True, resume=run_id))
    assert resumed.run_id == run_id and resumed.overrides == {}
    engine, limits = resumed.config.engine, resumed.config.limits
    assert (
        limits.max_writes_per_second,
        engine.batch_size,
        engine.concurrency,
        engine.shards,
        engine.max_failures,
        engine.backup,
    ) == (5000.0, 10, 1, 2, "7%", False)
    assert rate_limiter(resumed.config, store).limit == 5000.0
    assert resumed.config.sources["max_writes_per_second"] == f"run {run_id}"
    progress = RecordingHooks()
    run_migrations(plain, RunOptions(execute=True, resume=run_id), store=store, hooks=progress)
    assert_data(store, expected_after(before, split_name))
    [event] = progress.of(RunResumed)
    assert event.run_id == run_id and event.overrides == {}
    assert event.settings["config"]["max_writes_per_second"] == 5000.0
    folder = plain.runs_dir / run_id
    assert not (folder / "0001_split_full_name" / "before-images.jsonl.gz").exists()  # backup stayed off
    info = load_run_info(folder)
    assert info["settings"]["config"]["max_failures"] == "7%"
    assert [r["overrides"] for r in info["resumes"]] == [{}]


def test_a_flag_given_on_the_resume_overrides_it_and_is_recorded(config: Config, tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 300)
    run_id = _stopped_with(tmp_path, store, {"max_writes_per_second": 5000.0, "batch_size": 10})
    faster = _cli_config(tmp_path, {"max_writes_per_second": 8000.0})
    resumed = resume_run(faster, RunOptions(execute=True, resume=run_id))
    assert resumed.overrides == {"max_writes_per_second": {"was": 5000.0, "now": 8000.0}}
    assert resumed.config.limits.max_writes_per_second == 8000.0
    assert resumed.config.engine.batch_size == 10  # not given: the run's own
    assert any("--max-writes-per-second 8000" in line and "5000" in line for line in resumed.describe())
    run_migrations(faster, RunOptions(execute=True, resume=run_id), store=store)
    info = load_run_info(plain_folder := faster.runs_dir / run_id)
    assert info["resumes"][-1]["overrides"] == {"max_writes_per_second": {"was": 5000.0, "now": 8000.0}}
    assert info["settings"]["config"]["max_writes_per_second"] == 8000.0
    record = record_of(store)
    assert record.status is MigrationStatus.APPLIED
    assert record.overrides == {"max_writes_per_second": {"was": 5000.0, "now": 8000.0}}
    # A later resume without the flag keeps the overridden value: it is the run's setting now.
    assert (
        resume_run(
            _cli_config(tmp_path, {}), RunOptions(execute=True, resume=run_id)
        ).config.limits.max_writes_per_second
        == 8000.0
    )
    assert plain_folder.is_dir()


def test_a_resume_keeps_the_run_s_limit_and_refuses_another_scope(config: Config, tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 300)
    run_id = _stopped_with(tmp_path, store, {"batch_size": 10}, limit=50)
    plain = _cli_config(tmp_path, {})
    assert resume_run(plain, RunOptions(execute=True, resume=run_id)).options.limit == 50
    with pytest.raises(UsageError, match="--limit") as refused:
        resume_run(plain, RunOptions(execute=True, resume=run_id, limit=80))
    assert refused.value.hint and "new run" in refused.value.hint
    with pytest.raises(UsageError, match="--stages"):
        resume_run(plain, RunOptions(execute=True, resume=run_id, stages=(50.0, 100.0)))
    report = run_migrations(plain, RunOptions(execute=True, resume=run_id), store=store)
    assert report.outcomes[0].result.counters["read"] == 50
    assert record_of(store).status is MigrationStatus.PARTIAL


def test_a_rolled_back_run_cannot_be_resumed_even_with_force(config: Config) -> None:
    store = MemoryStore()
    seed(store, 400)
    before = export(store)
    controls = Controls()
    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            _slow(config),
            RunOptions(execute=True),
            store=store,
            controls=controls,
            hooks=_stop_after_first_checkpoint(controls, EmergencyStop),
        )
    assert stopped.value.resume_command is not None
    run_id = stopped.value.resume_command.split()[-1]
    rollback(config, RollbackOptions(run_id=run_id, strategy="restore", execute=True), store=store)
    assert record_of(store).status is MigrationStatus.ROLLED_BACK
    for force in (False, True):
        with pytest.raises(UsageError, match=f"run {run_id} was rolled back") as refused:
            run_migrations(config, RunOptions(execute=True, resume=run_id, force=force), store=store)
        assert refused.value.exit_code is ExitCode.USAGE
        assert refused.value.hint and "docshift run --execute" in refused.value.hint
    assert {p: d.data for p, d in export(store).items()} == {p: d.data for p, d in before.items()}
    assert record_of(store).status is MigrationStatus.ROLLED_BACK
    run_migrations(config, RunOptions(execute=True), store=store)  # a new run applies it, all of it
    assert_data(store, expected_after(before, split_name))
    assert record_of(store).status is MigrationStatus.APPLIED


class RolledBackWhileTheResumeStarts(DelegatingStore):
    """The first read of the lease document (the resume is about to take it) lets a rollback of
    the run go first, as another process would: it takes the free lease, undoes the run's writes,
    records the migration rolled back and releases the lease."""

    def __init__(self, inner: Store, rollback_first: Any) -> None:
        super().__init__(inner)
        self.rollback_first = rollback_first
        self.rolled_back = False

    def get_many(self, paths: Any, *, read_time: Any = None) -> Any:
        if lease_path(PREFIX) in paths and not self.rolled_back:
            self.rolled_back = True
            self.rollback_first()
        return self.inner.get_many(paths, read_time=read_time)


def test_a_resume_reads_the_history_it_decides_from_only_once_it_holds_the_lease(config: Config) -> None:
    """A rollback that lands while the resume starts is seen: the resume refuses, writing nothing."""
    store = MemoryStore()
    seed(store, 400)
    before = export(store)
    controls = Controls()
    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            _slow(config),
            RunOptions(execute=True),
            store=store,
            controls=controls,
            hooks=_stop_after_first_checkpoint(controls, EmergencyStop),
        )
    assert stopped.value.resume_command is not None
    run_id = stopped.value.resume_command.split()[-1]

    def rollback_first() -> None:
        rollback(config, RollbackOptions(run_id=run_id, strategy="restore", execute=True), store=store)

    recorded = RecordingStore(store)
    racing = RolledBackWhileTheResumeStarts(recorded, rollback_first)
    with pytest.raises(UsageError, match=f"run {run_id} was rolled back"):
        run_migrations(config, RunOptions(execute=True, resume=run_id), store=racing)
    assert racing.rolled_back
    assert {path for request in recorded.paths() for path in request} <= {lease_path(PREFIX)}
    assert {p: d.data for p, d in export(store).items()} == {p: d.data for p, d in before.items()}
    assert record_of(store).status is MigrationStatus.ROLLED_BACK


# --------------------------------------------------------------------------- canary stages

STAGES = (1.0, 10.0, 50.0, 100.0)


def _tier_done(store: Store) -> set[str]:
    return {path for path, doc in export(store).items() if doc.data.get("tier") == "silver"}


def _stop_in_stage(controls: Controls, stage: int) -> RecordingHooks:
    """Stops the run at the first checkpoint of ``stage`` (1-based) that has handled documents."""

    class StopInStage(RecordingHooks):
        current = 0

        def stage(self, event: StageEntered) -> None:
            super().stage(event)
            if not event.paused:
                self.current = event.stage

        def checkpointed(self, event: Checkpointed) -> None:
            super().checkpointed(event)
            if self.current == stage and any(event.cursors):
                controls.request_stop("interrupted by SIGTERM")

    return StopInStage()


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_a_staged_run_stopped_in_a_stage_resumes_its_stages_and_applies_only_at_the_end(
    tmp_path: Path,
    stage: int,
) -> None:
    config = tier_config(tmp_path)
    store = MemoryStore()
    seed(store, 2000)
    controls = Controls()
    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            config,
            RunOptions(execute=True, stages=STAGES),
            store=store,
            controls=controls,
            hooks=_stop_in_stage(controls, stage),
        )
    assert stopped.value.resume_command is not None
    run_id = stopped.value.resume_command.split()[-1]
    saved = Checkpoint.load(config.runs_dir / run_id / "0001_tier" / "checkpoint.json")
    assert saved.stages is not None and saved.stages.stage == stage - 1 and not saved.covers_target
    assert record_of(store).status is MigrationStatus.INTERRUPTED
    done = _tier_done(store)
    assert all(bucket(p) < STAGES[stage - 1] for p in done) and (done or stage == 1)
    # The resume is given no --stages: the stages are the run's.
    progress = RecordingHooks()
    report = run_migrations(config, RunOptions(execute=True, resume=run_id), store=store, hooks=progress)
    stages_run = [event.stage for event in progress.of(StageEntered)]
    assert stages_run == list(range(stage, len(STAGES) + 1))
    assert _tier_done(store) == set(export(store))
    record = record_of(store)
    assert record.status is MigrationStatus.APPLIED
    assert record.counts["updated"] + record.counts["unchanged"] == 2000
    assert report.outcomes[0].status is MigrationStatus.APPLIED
    assert status(config, store).exit_code is ExitCode.OK


class _DiesOnRestore(DelegatingStore):
    """The process dies (an exception nothing catches) at the ``after``-th commit of the rollback."""

    def __init__(self, inner: Store, after: int) -> None:
        super().__init__(inner)
        self.rolling_back = False
        self.after = after

    def commit(self, writes: Any) -> list[WriteResult]:
        if self.rolling_back:
            self.after -= 1
            if self.after < 0:
                raise _Killed
        return self.inner.commit(writes)


class _Killed(BaseException):
    pass


def test_a_stage_rollback_cut_short_is_finished_by_the_resume(tmp_path: Path) -> None:
    config = tier_config(tmp_path, fail_from=5)  # stage 2 (1-10%) fails half its documents
    memory = MemoryStore()
    seed(memory, 2000)
    before = {p: d.data for p, d in export(memory).items()}
    store = _DiesOnRestore(memory, after=1)

    class Watch(RecordingHooks):
        def warning(self, event: Warned) -> None:
            super().warning(event)
            if "rolling back" in event.message:
                store.rolling_back = True

    engine = EngineConfig(
        batch_size=10, min_batch_size=10, concurrency=1, checkpoint_every_docs=10, max_failures="100%"
    )
    config = Config(
        store=config.store, engine=engine, migrations_dir=config.migrations_dir, runs_dir=config.runs_dir
    )
    with pytest.raises(_Killed):
        run_migrations(config, RunOptions(execute=True, stages=STAGES), store=store, hooks=Watch())
    [folder] = config.runs_dir.glob("*/0001_tier")
    assert _tier_done(memory), "the rollback was cut short before it restored everything"
    assert record_of(memory).status is MigrationStatus.RUNNING  # as a killed process leaves it
    with pytest.raises(StageFailed, match="rolled back"):
        run_migrations(config, RunOptions(execute=True, resume=folder.parent.name), store=memory)
    assert {p: d.data for p, d in export(memory).items()} == before
    assert record_of(memory).status is MigrationStatus.ROLLED_BACK
    with pytest.raises(UsageError, match="rolled back"):
        run_migrations(config, RunOptions(execute=True, resume=folder.parent.name), store=memory)


def test_a_stage_done_but_not_yet_gated_when_killed_gets_its_gate_on_resume(tmp_path: Path) -> None:
    """Killed after stage 3's documents were all handled, before its gate ran: the resume runs that
    gate (here it fails: half of stage 3 cannot be migrated) instead of going on to stage 4."""
    config = tier_config(tmp_path, fail_from=30)
    store = MemoryStore()
    seed(store, 1000)
    before = {p: d.data for p, d in export(store).items()}

    class DieAfterStage3(RecordingHooks):
        current = 0

        def stage(self, event: StageEntered) -> None:
            super().stage(event)
            self.current = event.stage

        def pass_ended(self, event: PassEnded) -> None:
            super().pass_ended(event)
            if isinstance(event, PassFinished) and self.current == 3 and event.stages is None:
                raise _Killed

    with pytest.raises(_Killed):
        run_migrations(config, RunOptions(execute=True, stages=STAGES), store=store, hooks=DieAfterStage3())
    [path] = config.runs_dir.glob("*/0001_tier/checkpoint.json")
    saved = Checkpoint.load(path)
    assert saved.finished and saved.stages is not None and saved.stages.stage == 2 and not saved.covers_target
    progress = RecordingHooks()
    with pytest.raises(StageFailed, match=r"stage 3 .*failed its gate"):
        run_migrations(
            config, RunOptions(execute=True, resume=path.parent.parent.name), store=store, hooks=progress
        )
    assert not [event for event in progress.of(StageEntered) if event.stage == 4]
    assert {p: d.data for p, d in export(store).items()} == before
    assert record_of(store).status is MigrationStatus.ROLLED_BACK


def test_a_stage_rollback_stopped_by_a_signal_is_not_rolled_back_until_the_resume_finishes_it(
    tmp_path: Path,
) -> None:
    config = tier_config(tmp_path, fail_from=5)
    store = MemoryStore()
    seed(store, 2000)
    before = {p: d.data for p, d in export(store).items()}
    controls = Controls()

    class StopTheRollback(RecordingHooks):
        def warning(self, event: Warned) -> None:
            super().warning(event)
            if "rolling back" in event.message:
                controls.request_stop("interrupted by SIGTERM")

    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            config,
            RunOptions(execute=True, stages=STAGES),
            store=store,
            controls=controls,
            hooks=StopTheRollback(),
        )
    assert not isinstance(stopped.value, StageFailed)
    assert stopped.value.exit_code is ExitCode.INTERRUPTED and stopped.value.resume_command is not None
    assert _tier_done(store), "nothing was written before the gate failed"
    assert record_of(store).status is MigrationStatus.INTERRUPTED  # not rolled back: it is not
    run_id = stopped.value.resume_command.split()[-1]
    with pytest.raises(StageFailed, match="finished by this resume"):
        run_migrations(config, RunOptions(execute=True, resume=run_id), store=store)
    assert {p: d.data for p, d in export(store).items()} == before
    assert record_of(store).status is MigrationStatus.ROLLED_BACK


def test_a_resume_cannot_turn_the_before_images_off(config: Config, tmp_path: Path) -> None:
    """Its rollback would undo what the first process wrote and leave what the resume wrote."""
    store = MemoryStore()
    seed(store, 300)
    run_id = _stopped_with(tmp_path, store, {"batch_size": 10})
    with pytest.raises(UsageError, match="cannot stop saving them") as refused:
        resume_run(_cli_config(tmp_path, {"backup": False}), RunOptions(execute=True, resume=run_id))
    assert refused.value.hint and "without --no-backup" in refused.value.hint


def _open_files_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open (its file descriptors' targets)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


def test_a_staged_run_leaves_no_file_of_its_folder_open_and_makes_each_check_once(tmp_path: Path) -> None:
    """Only the stages' pipelines open the migration's journal and dead letters, and they close
    them; the run asks for each migration's document check once (a check factory may scan)."""
    config = tier_config(tmp_path)
    store = MemoryStore()
    seed(store, 300)
    asked: list[str] = []

    class AskedForChecks(RecordingHooks):
        def migration_started(self, event: MigrationStarted) -> DocumentCheck | None:
            asked.append(event.migration.id)
            return super().migration_started(event)

    report = run_migrations(
        config, RunOptions(execute=True, stages=STAGES), store=store, hooks=AskedForChecks()
    )
    assert report.outcomes[0].status is MigrationStatus.APPLIED
    assert _open_files_under(config.runs_dir) == []
    assert asked == ["0001"]


def test_a_stage_rollback_leaves_a_document_changed_since_alone_and_says_so(tmp_path: Path) -> None:
    """The stages are undone by the rollback's own mechanism: a document the application changed
    after a stage wrote it is a conflict, left alone and listed in the migration's conflicts.jsonl
    (as ``docshift rollback`` lists it), and the migration is not recorded as rolled back."""
    config = tier_config(tmp_path, fail_from=5)  # stage 2 (1-10%) fails half its documents
    store = MemoryStore()
    seed(store, 2000)
    before = {p: d.data for p, d in export(store).items()}
    changed: list[str] = []

    class ApplicationWrites(RecordingHooks):
        def warning(self, event: Warned) -> None:
            super().warning(event)
            if "rolling back every stage" in event.message:
                path = sorted(_tier_done(store))[0]
                [result] = store.commit([Write.set(path, {**export(store)[path].data, "tier": "gold"})])
                assert result.ok
                changed.append(path)

    with pytest.raises(StageFailed, match="left alone") as failed:
        run_migrations(
            config, RunOptions(execute=True, stages=STAGES), store=store, hooks=ApplicationWrites()
        )
    [folder] = config.runs_dir.glob("*/0001_tier")
    assert not failed.value.undone and failed.value.run_state == "conflicts"
    assert str(folder / "conflicts.jsonl") in failed.value.message and "--force" in (failed.value.hint or "")
    listed = [json.loads(line)["path"] for line in (folder / "conflicts.jsonl").read_text().splitlines()]
    assert listed == changed and not (folder / "rollback-conflicts.jsonl").exists()
    now = {p: d.data for p, d in export(store).items()}
    assert now[changed[0]]["tier"] == "gold"  # the application's change is kept
    assert {p: d for p, d in now.items() if p not in changed} == {
        p: d for p, d in before.items() if p not in changed
    }
    assert record_of(store).status is not MigrationStatus.ROLLED_BACK
    assert load_run_info(folder.parent)["state"] == "conflicts"  # closed: nothing to resume
    with pytest.raises(UsageError, match="left documents alone") as refused:
        run_migrations(config, RunOptions(execute=True, resume=folder.parent.name), store=store)
    assert "--force" in (refused.value.hint or "")
    # Every view of the run reads the same: the migration failed, it was not rolled back.
    [migration] = read_run(folder.parent).migrations
    assert migration.state == "failed" and migration.rollback is not None
    assert migration.rollback["conflicts"] == 1


MARK = '''
"""Mark every user (the migration before the staged one in the same run)."""
from typing import Any
from docshift import DocView, UNCHANGED

description = "mark users"
collection = "users"


def up(doc: DocView) -> Any:
    if "marked" in doc:
        return UNCHANGED
    return {**doc.data, "marked": True}
'''


def test_a_run_whose_later_migration_s_stages_were_undone_is_not_recorded_rolled_back(tmp_path: Path) -> None:
    """Two migrations in one staged run: the first passes every stage and stays applied, the
    second's gate fails and its stages are undone. The run did not undo everything it wrote, so
    every view says it was partly rolled back (closed: no resume); `docshift rollback RUN_ID`
    then undoes the first migration too."""
    config = tier_config(tmp_path, fail_from=5)
    migrations = config.migrations_dir
    (migrations / "0001_tier.py").rename(migrations / "0002_tier.py")
    (migrations / "0001_mark.py").write_text(MARK, encoding="utf-8")
    store = MemoryStore()
    seed(store, 2000)
    before = {p: d.data for p, d in export(store).items()}

    with pytest.raises(StageFailed) as failed:
        run_migrations(config, RunOptions(execute=True, stages=STAGES), store=store)
    assert failed.value.undone
    assert failed.value.run_state == "partly_rolled_back"
    assert "0001_mark" in failed.value.message and "stays applied" in failed.value.message
    assert failed.value.hint is not None and "docshift rollback" in failed.value.hint
    [run_folder] = config.runs_dir.iterdir()
    run_id = run_folder.name
    assert all(d.data.get("marked") is True for d in export(store).values())
    assert not any("tier" in d.data for d in export(store).values())
    record = read_run(run_folder)
    assert record.state == load_run_info(run_folder)["state"] == "partly_rolled_back"
    assert [(m.label, m.state) for m in record.migrations] == [
        ("0001_mark", "finished"),
        ("0002_tier", "rolled_back"),
    ]
    assert record_of(store, "0001").status is MigrationStatus.APPLIED
    assert record_of(store, "0002").status is MigrationStatus.ROLLED_BACK
    with pytest.raises(UsageError):  # closed: the next run starts anew
        run_migrations(config, RunOptions(execute=True, resume=run_id), store=store)

    rollback(config, RollbackOptions(run_id=run_id, strategy="restore", execute=True), store=store)
    assert {p: d.data for p, d in export(store).items()} == before
    assert record_of(store, "0001").status is MigrationStatus.ROLLED_BACK

"""``--runner beam``: migrations as Apache Beam pipelines, against the emulator.

The same migrations over the same data with the single-process engine and with Beam (in-process,
and two worker processes) must leave identical stores and counters, and roll back to the export
taken before the run; a bundle that fails after some writes is retried by the runner with its first
attempt's before-images kept; a pipeline killed midway resumes exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from docshift.beam import ConfiguredStore, PartitionDone
from docshift.commands.rollback import RollbackOptions, run_rollback
from docshift.commands.run import RunOptions, rate_limiter, result_of, run
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.controls import Controls
from docshift.errors import EmergencyStop, RunStopped
from docshift.history import History, MigrationStatus
from docshift.loader import load_migrations
from docshift.runfolder.journal import JournalReader
from docshift.runfolder.layout import RunFolder
from docshift.store import DelegatingStore, Document, Query, Store, Write, WriteResult, open_store
from docshift.values import values_equal
from tests.conftest import IN_PROCESS_LIMITS
from tests.integration.run_support import (
    DOCSHIFT,
    EXAMPLES,
    apply_migrations,
    data_differences,
    differences,
    docshift,
    export,
    project_folder,
    seed_bystanders,
    seed_users,
)

COUNT = 240
COLLECTIONS = ("users", "audit", "users/u000001/orders")


def _config(host: str, folder: Path, project: str) -> Config:
    project_folder(folder)
    return Config(
        store=StoreConfig(project=project, emulator_host=host),
        migrations_dir=folder / "migrations",
        runs_dir=folder / "runs",
        engine=EngineConfig(batch_size=20),
        limits=IN_PROCESS_LIMITS,
    )


def _seeded(host: str, folder: Path) -> tuple[Config, Store]:
    config = _config(host, folder, f"demo-{os.urandom(6).hex()}")
    store = open_store(config)
    seed_users(store, COUNT)
    seed_bystanders(store)
    # Breaks 0001's rule not_null("email"): refused, a dead letter in either runner.
    assert all(r.ok for r in store.commit([Write.set("users/u000100x", {"full_name": "No Mail"})]))
    return config, store


def _letters(config: Config, run_id: str) -> list[tuple[str, str, str, str]]:
    found = []
    for files in RunFolder.of(config.runs_dir, run_id).migrations():
        for line in files.dead_letters.read_bytes().splitlines() if files.dead_letters.exists() else []:
            record = orjson.loads(line)
            found.append((files.label, record["path"], record["stage"], record["error"]))
    return sorted(found)


def _counters(result: Any) -> list[dict[str, int]]:
    return [dict(outcome.result.counters) for outcome in result.outcomes]


def _canonical(value: Any) -> str:
    """Map fields in name order (a store keeps no order of them)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_canonical(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_canonical(item) for item in value) + "]"
    return repr(value)


def _same_data(store: Store, config: Config, other: Store, other_config: Config) -> list[str]:
    """Paths whose data differ between two projects' stores (references name their own project)."""
    mine, theirs = export(store, COLLECTIONS), export(other, COLLECTIONS)
    ours, its = config.store.project, other_config.store.project
    found = sorted(set(mine) ^ set(theirs))
    for path in set(mine) & set(theirs):
        a, b = _canonical(mine[path].data).replace(ours, "P"), _canonical(theirs[path].data).replace(its, "P")
        if a != b:
            found.append(f"{path}: {a} != {b}")
    return found


@pytest.mark.parametrize(
    "beam_options",
    [
        pytest.param((), id="in-process"),
        pytest.param(("direct_running_mode=multi_processing", "direct_num_workers=2"), id="two-processes"),
    ],
)
def test_beam_leaves_what_the_engine_leaves_and_rolls_back_to_the_export(
    emulator_host: str, tmp_path: Path, beam_options: tuple[str, ...]
) -> None:
    engine_config, engine_store = _seeded(emulator_host, tmp_path / "engine")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    try:
        before = export(beam_store, COLLECTIONS)
        assert not _same_data(beam_store, beam_config, engine_store, engine_config)
        by_engine = run(engine_config, RunOptions(execute=True, shards=4), store=engine_store)
        by_beam = run(
            beam_config,
            RunOptions(execute=True, shards=4, runner="beam", beam_options=beam_options),
            store=beam_store,
        )
        assert by_beam.state == by_engine.state == "finished"
        assert _counters(by_beam) == _counters(by_engine)
        assert sum(c["updated"] for c in _counters(by_beam)) > 0
        assert _counters(by_beam)[0]["rejected"] == 1
        assert _letters(beam_config, by_beam.run_id) == _letters(engine_config, by_engine.run_id)
        assert len(_letters(beam_config, by_beam.run_id)) == 1
        assert not _same_data(beam_store, beam_config, engine_store, engine_config)
        assert differences(export(beam_store, COLLECTIONS), before, times=False)  # it did migrate
        history = History(beam_store, beam_config.store.state_prefix)
        assert all(record.status is MigrationStatus.APPLIED for record in history.all().values())
        folder = RunFolder.of(beam_config.runs_dir, by_beam.run_id)
        for files in folder.migrations():
            metrics = files.beam_metrics.read_bytes()
            assert b"runner_metrics" in metrics
            assert files.attempt_journals() and not files.journal.exists()
        # The runner's committed metrics count what the partitions' records count.
        for files in folder.migrations():
            body = orjson.loads(files.beam_metrics.read_bytes())
            assert body["runner_metrics"] == body["records"]

        run_rollback(
            beam_config,
            RollbackOptions(run_id=by_beam.run_id, execute=True, strategy="restore"),
            store=beam_store,
        )
        assert not differences(export(beam_store, COLLECTIONS), before, times=False)
    finally:
        engine_store.close()
        beam_store.close()


class _FailingOnce(DelegatingStore):
    """Commits ``after`` requests, then fails the next one once (an unexpected error: the bundle
    fails after some of its writes landed), then commits again."""

    armed = True

    def __init__(self, inner: Store, after: int) -> None:
        super().__init__(inner)
        self.after = after

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if _FailingOnce.armed:
            if self.after <= 0:
                _FailingOnce.armed = False
                raise RuntimeError("injected: the worker died after some writes")
            self.after -= 1
        return self.inner.commit(writes)


def test_a_bundle_that_fails_after_some_writes_is_retried_and_keeps_its_first_before_images(
    emulator_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine_config, engine_store = _seeded(emulator_host, tmp_path / "engine")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    opened = ConfiguredStore.__call__
    _FailingOnce.armed = True
    monkeypatch.setattr(ConfiguredStore, "__call__", lambda self: _FailingOnce(opened(self), after=3))
    try:
        before = export(beam_store, COLLECTIONS)
        by_engine = run(engine_config, RunOptions(execute=True, shards=2), store=engine_store)
        # The bundle-based DirectRunner retries a failed bundle (up to 4 times), as Dataflow does.
        options = ("runner=BundleBasedDirectRunner",)
        by_beam = run(
            beam_config,
            RunOptions(execute=True, shards=2, runner="beam", beam_options=options),
            store=beam_store,
        )
        assert not _FailingOnce.armed  # the fault fired
        assert by_beam.state == "finished"
        assert _counters(by_beam) == _counters(by_engine)
        assert not _same_data(beam_store, beam_config, engine_store, engine_config)
        files = RunFolder.of(beam_config.runs_dir, by_beam.run_id).migrations()[0]
        retried = [p for p in range(2) if len(files.attempt_journals(p)) > 1]
        assert len(retried) == 1
        first, *later = files.attempt_journals(retried[0])
        kept = [entry for entry in JournalReader(first) if entry.kind == "before"]
        landed = {entry.path for entry in JournalReader(first) if entry.kind == "written"}
        assert len(landed) >= 3 * 10  # three commits landed before the failure, journalled first
        originals = {path: doc.data for path, doc in before.items()}
        assert all(values_equal(entry.data, originals[entry.path]) for entry in kept)
        # The retry wrote none of those again: found migrated, they were counted once, as updated.
        again = {entry.path for entry in JournalReader(later) if entry.kind == "before"}
        assert again and not again & landed

        run_rollback(
            beam_config,
            RollbackOptions(run_id=by_beam.run_id, execute=True, strategy="restore"),
            store=beam_store,
        )
        assert not differences(export(beam_store, COLLECTIONS), before, times=False)
    finally:
        engine_store.close()
        beam_store.close()


KILL_COUNT = 600
PARTITIONS = 8


def _changed_by_each(docs: dict[str, Any]) -> list[int]:
    """How many documents each example migration changes, applied in order in Python."""
    state = dict(docs)
    changed = []
    for migration in load_migrations(EXAMPLES):
        state_before = apply_migrations(state, [])
        after = apply_migrations(state, [migration])
        changed.append(sum(1 for path in after if not values_equal(after[path], state_before[path])))
        state = {path: Document(path, data) for path, data in after.items()}
    return changed


def test_kill_9_of_the_pipeline_midway_then_resume_is_exact(
    emulator_host: str, project_id: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    cwd = project_folder(tmp_path / "project")
    config = Config(store=StoreConfig(project=project_id, emulator_host=emulator_host))
    store = open_store(config)
    try:
        seed_users(store, KILL_COUNT)
        before = export(store, ["users"])
        expected = apply_migrations(before, load_migrations(EXAMPLES))
        env = {**cli_env, "DOCSHIFT_BATCH_SIZE": "10", "DOCSHIFT_MIN_BATCH_SIZE": "5"}
        args = [
            *("run", "--execute", "--yes", "--runner", "beam", "--shards", str(PARTITIONS)),
            *(
                "--beam-option",
                "direct_running_mode=multi_processing",
                "--beam-option",
                "direct_num_workers=2",
            ),
            *("--max-writes-per-second", "100"),
        ]
        with (tmp_path / "first.log").open("w") as log:
            process = subprocess.Popen(
                [DOCSHIFT, *args], cwd=cwd, env=env, stdout=log, stderr=log, start_new_session=True
            )
        try:
            records = cwd / ".docshift" / "runs"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and process.poll() is None:
                if len(list(records.glob("*/0001_*/partitions/*.json"))) >= 2:
                    break
                time.sleep(0.05)
            assert process.poll() is None, (tmp_path / "first.log").read_text()
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        [folder] = records.glob("*/run.json")
        run_id = folder.parent.name
        finished = len(list(records.glob("*/0001_*/partitions/*.json")))
        assert 2 <= finished < PARTITIONS  # killed midway: some partitions finished, some not
        assert data_differences(export(store, ["users"]), expected)  # not done yet

        resumed = docshift(cwd, env, "run", "--execute", "--yes", "--resume", run_id, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert not data_differences(export(store, ["users"]), expected)
        history = History(store, config.store.state_prefix)
        records_now = history.all()
        changed = _changed_by_each(before)
        for migration, count in zip(load_migrations(EXAMPLES), changed, strict=True):
            record = records_now[migration.id]
            assert record.status is MigrationStatus.APPLIED
            assert record.counts["read"] == KILL_COUNT
            assert record.counts["updated"] == count
            assert record.counts["failed"] == 0
        # Nothing written twice that was not a conflict: one landed write per document.
        files = RunFolder(folder.parent).migrations()[0]
        writes: dict[str, set[Any]] = {}
        for entry in JournalReader(files.journal_files()):
            if entry.kind == "written":
                writes.setdefault(entry.path, set()).add(entry.update_time)
        assert len(writes) == changed[0]
        assert all(len(times) == 1 for times in writes.values())

        undone = docshift(cwd, env, "rollback", run_id, "--execute", "--yes", timeout=300)
        assert undone.returncode == 0, undone.stdout + undone.stderr
        assert not differences(export(store, ["users"]), before, times=False)
    finally:
        store.close()


def test_a_failed_pipeline_stops_the_run_and_its_resume_finishes_exactly(
    emulator_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FnApi DirectRunner does not retry a failed bundle: the pipeline fails, the run stops
    with what failed and how to go on, and the resume migrates only what is left."""
    engine_config, engine_store = _seeded(emulator_host, tmp_path / "engine")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    opened = ConfiguredStore.__call__
    _FailingOnce.armed = True
    monkeypatch.setattr(ConfiguredStore, "__call__", lambda self: _FailingOnce(opened(self), after=4))
    try:
        before = export(beam_store, COLLECTIONS)
        by_engine = run(engine_config, RunOptions(execute=True, shards=4), store=engine_store)
        chosen = RunOptions(execute=True, shards=4, runner="beam")
        with pytest.raises(EmergencyStop, match="the Beam pipeline failed") as stopped:
            run(beam_config, chosen, store=beam_store)
        assert "injected: the worker died after some writes" in stopped.value.message
        assert stopped.value.hint and "resume" in stopped.value.hint
        result = result_of(stopped.value)
        assert result is not None and result.resume_command
        history = History(beam_store, beam_config.store.state_prefix)
        assert history.all()["0001"].status is MigrationStatus.FAILED

        resumed = run(beam_config, RunOptions(execute=True, resume=result.run_id), store=beam_store)
        assert resumed.state == "finished"
        assert _counters(resumed) == _counters(by_engine)
        assert not _same_data(beam_store, beam_config, engine_store, engine_config)
        assert all(r.status is MigrationStatus.APPLIED for r in history.all().values())
        undo = RollbackOptions(run_id=result.run_id, execute=True, strategy="restore")
        run_rollback(beam_config, undo, store=beam_store)
        assert not differences(export(beam_store, COLLECTIONS), before, times=False)
    finally:
        engine_store.close()
        beam_store.close()


def test_a_stop_reaches_the_workers_and_the_run_resumes(emulator_host: str, tmp_path: Path) -> None:
    engine_config, engine_store = _seeded(emulator_host, tmp_path / "engine")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    slow = dataclasses.replace(beam_config.limits, max_writes_per_second=150.0)
    beam_config = dataclasses.replace(beam_config, limits=slow)
    controls = Controls(rate_limiter(beam_config, beam_store))
    folder = beam_config.runs_dir

    def stop_after_a_partition() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(folder.glob("*/0001_*/partitions/*.json")):
            time.sleep(0.05)
        controls.request_stop("stopped by the test")

    try:
        by_engine = run(engine_config, RunOptions(execute=True, shards=4), store=engine_store)
        stopper = threading.Thread(target=stop_after_a_partition)
        stopper.start()
        chosen = RunOptions(execute=True, shards=4, runner="beam")
        with pytest.raises(RunStopped, match="stopped by the test") as stopped:
            run(beam_config, chosen, store=beam_store, controls=controls)
        stopper.join()
        result = result_of(stopped.value)
        assert result is not None and result.resume_command
        done = list(folder.glob("*/0001_*/partitions/*.json"))
        assert 1 <= len(done) < 4
        resumed = run(beam_config, RunOptions(execute=True, resume=result.run_id), store=beam_store)
        assert resumed.state == "finished"
        assert _counters(resumed) == _counters(by_engine)
        assert not _same_data(beam_store, beam_config, engine_store, engine_config)
    finally:
        engine_store.close()
        beam_store.close()


class _LeaseLostMidway(DelegatingStore):
    """A worker's store: once ``finished()`` says a partition is done, the run's lease is lost to
    another run (the event the heartbeat sets); that commit waits until the run asked its workers
    to stop (``stop_files()``), then lands, as a batch in flight does."""

    controls: Controls | None = None
    finished: Callable[[], bool] | None = None
    stop_files: Callable[[], bool] | None = None
    fired = False

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        cls = _LeaseLostMidway
        lost = cls.controls.lease_lost if cls.controls is not None else None
        if not cls.fired and lost is not None and cls.finished is not None and cls.finished():
            cls.fired = True
            lost.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and cls.stop_files is not None and not cls.stop_files():
                time.sleep(0.05)
        return self.inner.commit(writes)

    @classmethod
    def arm(cls, controls: Controls, finished: Callable[[], bool], stop_files: Callable[[], bool]) -> None:
        cls.controls, cls.fired = controls, False
        cls.finished, cls.stop_files = finished, stop_files


FIXED_BATCHES = EngineConfig(batch_size=20, min_batch_size=20, max_batch_size=20)


def test_a_beam_run_that_loses_the_lease_stops_its_workers_and_says_what_landed(
    emulator_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, store = _seeded(emulator_host, tmp_path / "beam")
    config = dataclasses.replace(config, engine=FIXED_BATCHES)
    controls = Controls(rate_limiter(config, store))
    runs = config.runs_dir
    _LeaseLostMidway.arm(
        controls,
        lambda: bool(list(runs.glob("*/0001_*/partitions/*.json"))),
        lambda: bool(list(runs.glob("*/0001_*/beam-stop"))),
    )
    opened = ConfiguredStore.__call__
    monkeypatch.setattr(ConfiguredStore, "__call__", lambda self: _LeaseLostMidway(opened(self)))
    try:
        chosen = RunOptions(execute=True, shards=4, runner="beam", to="0001")
        with pytest.raises(EmergencyStop, match="the lease was lost to another run") as stopped:
            run(config, chosen, store=store, controls=controls)
        assert _LeaseLostMidway.fired
        [folder] = runs.glob("*/run.json")
        files = RunFolder(folder.parent).migrations()[0]
        records = [PartitionDone.read(path) for path in sorted(files.path.glob("partitions/*.json"))]
        assert len(records) == 1  # the partition finished before; the others were stopped
        finished = records[0].counters["updated"]
        migrated = sum(1 for doc in store.stream(Query("users")) if "first_name" in doc.data)
        record = History(store, config.store.state_prefix).all()[load_migrations(EXAMPLES)[0].id]
        landed = dict(record.landed or {}).get("updated", 0)
        # One batch of the partition in flight landed (of 20 documents); the later ones are untouched.
        assert 0 < landed <= 20
        assert migrated == finished + landed
        assert f"{landed} updated landed after the cursor" in stopped.value.message
    finally:
        store.close()


def test_the_command_line_refuses_a_beam_dry_run_with_a_hint(cli_env: dict[str, str], tmp_path: Path) -> None:
    cwd = project_folder(tmp_path / "project")
    refused = docshift(cwd, cli_env, "run", "--runner", "beam")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--runner beam executes a run" in refused.stderr and "hint:" in refused.stderr
    assert "Traceback" not in refused.stderr
    malformed = docshift(cwd, cli_env, "run", "--execute", "--yes", "--runner", "beam", "--beam-option", "x")
    assert malformed.returncode == 2, malformed.stdout + malformed.stderr
    assert "is not KEY=VALUE" in malformed.stderr and "hint:" in malformed.stderr
    assert not list((cwd / ".docshift").glob("runs/*/run.json"))  # refused before any run started
    help_text = docshift(cwd, cli_env, "run", "--help").stdout
    assert "--runner [engine|beam]" in help_text and "--beam-option KEY=VALUE" in help_text


def test_the_transforms_fit_in_a_users_own_pipeline(emulator_host: str, tmp_path: Path) -> None:
    """ReadPartitions in a pipeline of one's own: every document of the target, once."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from docshift.beam import Partition, ReadPartitions, ShippedMigration
    from docshift.engine.sharding import plan_shards

    config, store = _seeded(emulator_host, tmp_path / "project")
    try:
        [migration, _] = load_migrations(config.migrations_dir)
        shards = plan_shards(store, migration.target, 3)
        partitions = [Partition(i, s.start_after, s.end_at) for i, s in enumerate(shards)]
        assert len(partitions) == 3
        expected = sorted(export(store, ["users"]))
        with beam.Pipeline() as pipeline:
            paths = (
                pipeline
                | beam.Create(partitions)
                | ReadPartitions(ShippedMigration.of(migration), ConfiguredStore(config))
                | beam.Map(lambda doc: doc.path)
            )
            assert_that(paths, equal_to(expected))
    finally:
        store.close()

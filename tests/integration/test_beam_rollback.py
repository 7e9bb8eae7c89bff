"""``docshift rollback RUN_ID --runner beam``: a Beam run's undo as a Beam pipeline, against the emulator.

The same Beam run over the same data, rolled back in this process and by a Beam pipeline
(in-process, and two worker processes), must leave the export taken before the run, with the same
counts, the same history and the same lifecycle; a partition whose undo fails after some writes is
retried by the runner and counts what landed once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from docshift.beam import ConfiguredStore
from docshift.commands.rollback import RollbackOptions, RollbackReport, rollback, run_rollback
from docshift.commands.run import RunOptions, rate_limiter, run
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.errors import EmergencyStop, UsageError
from docshift.history import History, MigrationStatus
from docshift.runfolder.layout import UNDO_PARTITION_FORMAT, RunFolder
from docshift.runfolder.record import read_info
from tests.integration.run_support import differences, docshift, export, project_folder
from tests.integration.test_beam import COLLECTIONS, FIXED_BATCHES, _FailingOnce, _LeaseLostMidway, _seeded


def _counts(report: RollbackReport) -> list[tuple[str, dict[str, int]]]:
    return [(item.migration.id, dict(item.counters)) for item in report.items]


@pytest.mark.parametrize(
    "beam_options",
    [
        pytest.param((), id="in-process"),
        pytest.param(("direct_running_mode=multi_processing", "direct_num_workers=2"), id="two-processes"),
    ],
)
def test_a_beam_rollback_leaves_the_export_and_counts_what_the_in_process_one_counts(
    emulator_host: str, tmp_path: Path, beam_options: tuple[str, ...]
) -> None:
    here_config, here_store = _seeded(emulator_host, tmp_path / "here")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    try:
        before = {"here": export(here_store, COLLECTIONS), "beam": export(beam_store, COLLECTIONS)}
        runs = {}
        for name, config, store in (("here", here_config, here_store), ("beam", beam_config, beam_store)):
            runs[name] = run(config, RunOptions(execute=True, shards=4, runner="beam"), store=store)
            assert runs[name].state == "finished"
        assert differences(export(beam_store, COLLECTIONS), before["beam"], times=False)

        in_process = run_rollback(
            here_config,
            RollbackOptions(run_id=runs["here"].run_id, execute=True, strategy="restore"),
            store=here_store,
        )
        by_beam = run_rollback(
            beam_config,
            RollbackOptions(
                run_id=runs["beam"].run_id,
                execute=True,
                strategy="restore",
                runner="beam",
                beam_options=beam_options,
            ),
            store=beam_store,
        )
        assert not differences(export(here_store, COLLECTIONS), before["here"], times=False)
        assert not differences(export(beam_store, COLLECTIONS), before["beam"], times=False)
        assert _counts(by_beam) == _counts(in_process)
        assert sum(c["restored"] + c["deleted"] for _, c in _counts(by_beam)) > 0
        assert all(c["verified"] > 0 for _, c in _counts(by_beam))
        history = History(beam_store, beam_config.store.state_prefix)
        assert all(r.status is MigrationStatus.ROLLED_BACK for r in history.all().values())
        # The undo went partition by partition, each partition's record saying it finished.
        folder = RunFolder(by_beam.folder)
        assert read_info(folder.path)["runner"] == "beam"
        for files in folder.migrations():
            source = RunFolder.of(beam_config.runs_dir, runs["beam"].run_id).migration(files.label)
            partitions = source.journalled_partitions()
            assert partitions
            assert all(files.undo_partition(runs["beam"].run_id, p).is_file() for p in partitions)

    finally:
        here_store.close()
        beam_store.close()


def test_a_partition_whose_undo_fails_after_some_writes_is_retried_and_counted_once(
    emulator_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here_config, here_store = _seeded(emulator_host, tmp_path / "here")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    try:
        before = export(beam_store, COLLECTIONS)
        runs = [
            run(config, RunOptions(execute=True, shards=2, runner="beam"), store=store)
            for config, store in ((here_config, here_store), (beam_config, beam_store))
        ]
        in_process = run_rollback(
            here_config,
            RollbackOptions(run_id=runs[0].run_id, execute=True, strategy="restore"),
            store=here_store,
        )
        opened = ConfiguredStore.__call__
        _FailingOnce.armed = True
        monkeypatch.setattr(ConfiguredStore, "__call__", lambda self: _FailingOnce(opened(self), after=2))
        # The bundle-based DirectRunner retries a failed bundle, as Dataflow does.
        by_beam = run_rollback(
            beam_config,
            RollbackOptions(
                run_id=runs[1].run_id,
                execute=True,
                strategy="restore",
                runner="beam",
                beam_options=("runner=BundleBasedDirectRunner",),
            ),
            store=beam_store,
        )
        assert not _FailingOnce.armed  # the fault fired
        assert not differences(export(beam_store, COLLECTIONS), before, times=False)
        assert _counts(by_beam) == _counts(in_process)
    finally:
        here_store.close()
        beam_store.close()


def test_a_failed_beam_rollback_stops_with_a_hint_and_its_resume_finishes(
    emulator_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default DirectRunner does not retry: the rollback stops (exit 12, recorded), and its
    resume, on the runner it recorded, undoes the rest and counts what landed once."""
    here_config, here_store = _seeded(emulator_host, tmp_path / "here")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    try:
        before = export(beam_store, COLLECTIONS)
        runs = [
            run(config, RunOptions(execute=True, shards=4, runner="beam"), store=store)
            for config, store in ((here_config, here_store), (beam_config, beam_store))
        ]
        in_process = run_rollback(
            here_config,
            RollbackOptions(run_id=runs[0].run_id, execute=True, strategy="restore"),
            store=here_store,
        )
        opened = ConfiguredStore.__call__
        _FailingOnce.armed = True
        monkeypatch.setattr(ConfiguredStore, "__call__", lambda self: _FailingOnce(opened(self), after=2))
        chosen = RollbackOptions(run_id=runs[1].run_id, execute=True, strategy="restore", runner="beam")
        with pytest.raises(EmergencyStop, match="the Beam rollback failed") as stopped:
            rollback(beam_config, chosen, store=beam_store)
        assert stopped.value.hint and "resume the rollback" in stopped.value.hint
        history = History(beam_store, beam_config.store.state_prefix)
        assert not any(r.status is MigrationStatus.ROLLED_BACK for r in history.all().values())
        folder = next(p for p in beam_config.runs_dir.iterdir() if read_info(p).get("kind") == "rollback")
        resumed = rollback(beam_config, RollbackOptions(resume=folder.name, execute=True), store=beam_store)
        assert not differences(export(beam_store, COLLECTIONS), before, times=False)
        assert _counts(resumed) == _counts(in_process)
        assert all(r.status is MigrationStatus.ROLLED_BACK for r in history.all().values())
    finally:
        here_store.close()
        beam_store.close()


def test_a_beam_rollback_that_loses_the_lease_stops_its_workers(
    emulator_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, store = _seeded(emulator_host, tmp_path / "beam")
    config = dataclasses.replace(config, engine=FIXED_BATCHES)
    runs = config.runs_dir
    try:
        done = run(config, RunOptions(execute=True, shards=4, runner="beam", to="0001"), store=store)
        [source] = RunFolder.of(runs, done.run_id).migrations()
        assert len(source.journalled_partitions()) == 4

        def records() -> list[dict[str, Any]]:
            paths = runs.glob("*/0001_*/undo-partitions/*/*.json")
            return [UNDO_PARTITION_FORMAT.read(path)["step"] for path in paths]

        controls = Controls(rate_limiter(config, store))
        _LeaseLostMidway.arm(
            controls,
            lambda: any(step["finished"] for step in records()),
            lambda: bool(list(runs.glob("*/0001_*/beam-stop"))),
        )
        opened = ConfiguredStore.__call__
        monkeypatch.setattr(ConfiguredStore, "__call__", lambda self: _LeaseLostMidway(opened(self)))
        chosen = RollbackOptions(run_id=done.run_id, execute=True, strategy="restore", runner="beam")
        with pytest.raises(EmergencyStop, match="the lease was lost to another run"):
            rollback(config, chosen, store=store, controls=controls)
        assert _LeaseLostMidway.fired
        found = records()
        # The partition undone before, and the one in flight (one batch); the later ones untouched.
        assert [step["finished"] for step in sorted(found, key=lambda step: not step["finished"])] == [
            True,
            False,
        ]
        history = History(store, config.store.state_prefix)
        assert not any(r.status is MigrationStatus.ROLLED_BACK for r in history.all().values())
    finally:
        store.close()


def test_beam_rollback_refusals(tmp_path: Path) -> None:
    config = project_config(tmp_path)
    with pytest.raises(UsageError, match="--runner beam executes a rollback") as dry:
        rollback(config, RollbackOptions(run_id="x", runner="beam"))
    assert dry.value.hint
    with pytest.raises(UsageError, match="--beam-option needs --runner beam"):
        rollback(config, RollbackOptions(run_id="x", execute=True, beam_options=("a=b",)))
    with pytest.raises(UsageError, match="Beam has no such pipeline option"):
        rollback(
            config,
            RollbackOptions(run_id="x", execute=True, runner="beam", beam_options=("no_such=1",)),
        )


def project_config(tmp_path: Path) -> Config:
    folder = project_folder(tmp_path / "project")
    return Config(migrations_dir=folder / "migrations", runs_dir=folder / "runs")


def test_the_command_line_shows_and_refuses_rollback_runner_beam(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    cwd = project_folder(tmp_path / "project")
    refused = docshift(cwd, cli_env, "rollback", "RUN", "--runner", "beam")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--runner beam executes a rollback" in refused.stderr and "hint:" in refused.stderr
    assert "Traceback" not in refused.stderr
    help_text = docshift(cwd, cli_env, "rollback", "--help").stdout
    assert "--runner [engine|beam]" in help_text and "--beam-option KEY=VALUE" in help_text

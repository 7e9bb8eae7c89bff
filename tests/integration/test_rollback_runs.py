"""A migration applied over several runs is rolled back whole, against the emulator: a ``--limit``
run and then a full one (from the CLI, by ``--to`` and by the newest run's id), an interrupted run
and then a new one, a document both runs changed; the dry run counts what the execute does; and a
rollback of several runs killed midway (SIGKILL, in either run's journal) is finished by its resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, load_run_info, run_migrations
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.errors import RunStopped
from docshift.history import History, MigrationStatus
from docshift.store import Store
from tests.integration.run_support import PREFIX, docshift, export, project_folder
from tests.integration.test_rollback import StopAfterCommits
from tests.integration.test_rollback_truth import same_data, seed, write_migrations
from tests.unit.test_rollback_runs import VISITS
from tests.unit.test_rollback_truth import TIER


def status_of(store: Store) -> MigrationStatus:
    record = History(store, PREFIX).get("0001")
    assert record is not None
    return record.status


def runs_in_order(runs_dir: Path) -> list[str]:
    """The migration runs of ``runs_dir``, oldest first."""
    infos = [load_run_info(p) for p in runs_dir.iterdir() if (p / "run.json").is_file()]
    return [str(i["run_id"]) for i in sorted(infos, key=lambda i: str(i["created_at"])) if i["kind"] == "run"]


def finished_counts(stdout: str) -> dict[str, int]:
    """The counters of the last ``finish`` event of a ``--json`` rollback: the migration's total."""
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    [*_, last] = [e for e in events if e.get("event") == "finish"]
    return {k: v for k, v in last.items() if isinstance(v, int) and k not in ("at",)}


@pytest.mark.parametrize("named", ["--to 0000", "the newest run"])
def test_a_limited_run_and_a_full_run_are_rolled_back_together_from_the_cli(
    named: str, firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed(firestore_store, 100)
    before = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project", files=(), extra={"0001_tier.py": TIER})
    limited = docshift(folder, cli_env, "run", "--execute", "--limit", "10", "--quiet")
    assert limited.returncode in (0, 9), limited.stderr
    assert docshift(folder, cli_env, "run", "--execute", "--quiet").returncode == 0
    first, second = runs_in_order(folder / ".docshift" / "runs")
    target = ["--to", "0000"] if named.startswith("--to") else [second]

    dry = docshift(folder, cli_env, "rollback", *target)
    assert dry.returncode == 0, dry.stderr
    dry_json = docshift(folder, cli_env, "rollback", *target, "--json")
    assert dry_json.returncode == 0, dry_json.stderr
    undone = docshift(folder, cli_env, "rollback", *target, "--execute")
    assert undone.returncode == 0, undone.stderr + undone.stdout

    assert same_data(export(firestore_store, ["users"]), before) == []
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    assert record.counts["restored"] == record.counts["verified"] == 100
    assert record.counts["conflicts"] == record.counts["mismatched"] == 0
    predicted = finished_counts(dry_json.stdout)
    assert {k: predicted[k] for k in record.counts} == dict(record.counts)
    status = json.loads(docshift(folder, cli_env, "status", "--json").stdout)
    assert status["migrations"][0]["state"] == "rolled_back"
    # the dry run and the execute both say which runs they undo
    assert f"applied by runs {first}, {second}: undoing both, newest first" in dry.stdout
    assert f"applied by runs {first}, {second}: undoing both" in undone.stdout
    assert "total" in undone.stdout  # each run's counts, and the migration's


def test_an_interrupted_run_and_a_new_run_are_rolled_back_together(
    firestore_store: Store, emulator_config: Config
) -> None:
    seed(firestore_store, 300)
    before = export(firestore_store, ["users"])
    write_migrations(emulator_config, **{"0001_tier": TIER})
    config = emulator_config.with_engine(
        batch_size=50, min_batch_size=10, concurrency=1, checkpoint_every_docs=50
    )
    controls = Controls()
    with pytest.raises(RunStopped) as stopped:
        run_migrations(
            config,
            RunOptions(execute=True),
            store=StopAfterCommits(firestore_store, controls, 2),
            controls=controls,
        )
    assert status_of(firestore_store) is MigrationStatus.INTERRUPTED
    interrupted = (stopped.value.resume_command or "").split()[-1]
    finished = run_migrations(
        config, RunOptions(execute=True), store=firestore_store
    )  # a new run, not a resume
    assert status_of(firestore_store) is MigrationStatus.APPLIED

    dry = rollback(config, RollbackOptions(run_id=finished.run_id), store=firestore_store)
    done = rollback(config, RollbackOptions(run_id=finished.run_id, execute=True), store=firestore_store)
    assert same_data(export(firestore_store, ["users"]), before) == []
    assert status_of(firestore_store) is MigrationStatus.ROLLED_BACK
    [item] = done.items
    assert item.source_runs == (finished.run_id, interrupted)
    assert item.counters["restored"] == item.counters["verified"] == 300
    assert [i.counters for i in dry.items] == [i.counters for i in done.items]


@pytest.mark.parametrize("strategy", ["restore", "down"])
def test_a_document_both_runs_changed_gets_its_original_back_on_the_emulator(
    strategy: str, firestore_store: Store, emulator_config: Config
) -> None:
    seed(firestore_store, 120)
    before = export(firestore_store, ["users"])
    write_migrations(emulator_config, **{"0001_visits": VISITS})
    run_migrations(emulator_config, RunOptions(execute=True, limit=20), store=firestore_store)
    run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    assert sum(1 for d in export(firestore_store, ["users"]).values() if d.data["visits"] == 2) == 20

    dry = rollback(emulator_config, RollbackOptions(to="0", strategy=strategy), store=firestore_store)
    done = rollback(
        emulator_config, RollbackOptions(to="0", strategy=strategy, execute=True), store=firestore_store
    )
    assert same_data(export(firestore_store, ["users"]), before) == []
    assert status_of(firestore_store) is MigrationStatus.ROLLED_BACK
    [item] = done.items
    assert [part["restored"] for _, part in item.by_run] == [120, 20]
    assert item.counters["conflicts"] == item.counters["mismatched"] == 0
    assert [i.counters for i in dry.items] == [i.counters for i in done.items]


def killing_visits(marker: Path, n: int) -> str:
    """VISITS whose down() SIGKILLs its own process once (while ``marker`` exists), at the
    document ``n`` holding one visit: in the newer run's journal for a document only it changed,
    in the older run's for one both changed (the newer run's undo left it one visit)."""
    return VISITS.replace(
        """def down(doc):
    data = doc.data
""",
        f"""def down(doc):
    import os, signal
    data = doc.data
    marker = {str(marker)!r}
    if data["n"] == {n} and data.get("visits") == 1 and os.path.exists(marker):
        os.remove(marker)
        os.kill(os.getpid(), signal.SIGKILL)
""",
    )


@pytest.mark.parametrize(
    ("where", "n"), [("in the newer run's journal", 60), ("in the older run's journal", 3)]
)
def test_a_rollback_of_two_runs_killed_midway_is_finished_by_its_resume(
    where: str, n: int, firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed(firestore_store, 100)
    before = export(firestore_store, ["users"])
    marker = tmp_path / "kill-once"
    folder = project_folder(
        tmp_path / "project",
        "batch_size = 20\n",
        files=(),
        extra={"0001_visits.py": killing_visits(marker, n)},
    )
    assert docshift(folder, cli_env, "run", "--execute", "--limit", "10", "--quiet").returncode in (0, 9)
    assert docshift(folder, cli_env, "run", "--execute", "--quiet").returncode == 0
    first, second = runs_in_order(folder / ".docshift" / "runs")
    dry = docshift(folder, cli_env, "rollback", "--to", "0000", "--json")
    assert dry.returncode == 0, dry.stderr

    marker.write_text("")
    killed = docshift(folder, cli_env, "rollback", "--to", "0000", "--execute", "--quiet")
    assert killed.returncode == -9, killed.stderr
    assert not marker.exists()
    assert status_of(firestore_store) is MigrationStatus.APPLIED  # not rolled back: not finished
    resumed = docshift(folder, cli_env, "rollback", "--execute", "--resume")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert same_data(export(firestore_store, ["users"]), before) == []
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    assert record.counts["conflicts"] == record.counts["mismatched"] == 0
    assert f"applied by runs {first}, {second}: undoing both" in resumed.stdout
    # killed before its batch was sent: the resume's counts are an uninterrupted rollback's
    predicted: dict[str, Any] = finished_counts(dry.stdout)
    assert record.counts["restored"] == record.counts["verified"] == predicted["restored"] == 110

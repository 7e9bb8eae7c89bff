"""A rollback tells the truth, against the emulator: it touches exactly the documents the run
changed, it is verified against the before-images (a down() that undoes nothing is reported, not
recorded as rolled back), its dry run of several migrations counts what the execute does, and it
(with resume, show and report) works on the database its run was made on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.errors import RunStopped
from docshift.history import History, MigrationStatus
from docshift.store import Document, Store, Write, open_store
from docshift.values import values_equal
from tests.integration.run_support import PREFIX, docshift, export, project_folder
from tests.integration.test_rollback import StopAfterCommits
from tests.unit.test_rollback_truth import NO_OP_DOWN, TIER, rename  # the same migrations as the unit tests

PRUNE = '''"""Delete every fifth user."""
from docshift import DELETE, UNCHANGED

description = "prune"
collection = "users"


def up(doc):
    return DELETE if doc.data["n"] % 5 == 0 else UNCHANGED
'''


def seed(store: Store, count: int) -> None:
    writes = [
        Write.set(f"users/u{n:05d}", {"n": n, "a": f"value {n}"} if n % 7 else {"n": n}) for n in range(count)
    ]
    for start in range(0, count, 250):
        assert all(r.ok for r in store.commit(writes[start : start + 250]))


def same_data(actual: dict[str, Document], expected: dict[str, Document]) -> list[str]:
    problems = sorted(set(actual) ^ set(expected))
    problems += [p for p in set(actual) & set(expected) if not values_equal(actual[p].data, expected[p].data)]
    return problems


def write_migrations(config: Config, **files: str) -> None:
    config.migrations_dir.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (config.migrations_dir / f"{name}.py").write_text(source, encoding="utf-8")


# ---------------------------------------------------------------------------- items 2 and 3
def test_down_undoes_only_the_documents_the_run_changed(
    firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The issue's repro: 100 documents, `run --execute --limit 10`, the application then sets the
    migration's field on 10 other documents; `rollback RUN --execute` undoes the 10 and no more."""
    seed(firestore_store, 100)
    before = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project", files=(), extra={"0001_tier.py": TIER})
    applied = docshift(folder, cli_env, "run", "--execute", "--limit", "10", "--quiet")
    assert applied.returncode in (0, 9), applied.stderr  # 9: the rest is still pending
    [run_folder] = (folder / ".docshift" / "runs").iterdir()
    by_app = [f"users/u{n:05d}" for n in range(50, 60)]
    assert all(
        r.ok
        for r in firestore_store.commit(
            [Write.set(p, {**before[p].data, "tier": "set by the app"}) for p in by_app]
        )
    )
    app_state = export(firestore_store, ["users"])

    dry = docshift(folder, cli_env, "rollback", run_folder.name)
    undone = docshift(folder, cli_env, "rollback", run_folder.name, "--execute")
    assert undone.returncode == 0, undone.stderr
    assert dry.returncode == 0 and "would be undone by down" in dry.stdout, dry.stderr
    assert "undone by down" in undone.stdout
    now = export(firestore_store, ["users"])
    for path in by_app:  # never touched by the run: never touched by the rollback
        assert now[path].update_time == app_state[path].update_time
        assert now[path].data["tier"] == "set by the app"
    others = [p for p in before if p not in by_app]
    assert same_data({p: now[p] for p in others}, {p: before[p] for p in others}) == []
    assert all(now[p].update_time == before[p].update_time for p in others if int(p[-5:]) >= 10)
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    assert record.counts["restored"] == record.counts["verified"] == 10
    assert record.counts["conflicts"] == record.counts["mismatched"] == 0


def test_a_no_op_down_is_reported_with_exit_1_and_not_recorded_as_rolled_back(
    firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed(firestore_store, 60)
    before = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project", files=(), extra={"0001_flag.py": NO_OP_DOWN})
    assert docshift(folder, cli_env, "run", "--execute", "--quiet").returncode == 0
    [run_folder] = (folder / ".docshift" / "runs").iterdir()
    dry = docshift(folder, cli_env, "rollback", run_folder.name)
    assert dry.returncode == 0, dry.stderr
    assert "not equal to their before-images" in dry.stdout  # predicted

    refused = docshift(folder, cli_env, "rollback", run_folder.name, "--execute")
    assert refused.returncode == 1, refused.stderr
    assert "error: 60 document(s) do not equal their before-image after the rollback" in refused.stderr
    assert "mismatches.jsonl" in refused.stderr and "--strategy restore" in refused.stderr
    runs = folder / ".docshift" / "runs"
    listed = [
        json.loads(line)
        for path in runs.glob("*/0001_flag/mismatches.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(listed) == 120  # the dry run's prediction and the execute's check
    status = json.loads(docshift(folder, cli_env, "status", "--json").stdout)
    assert status["migrations"][0]["state"] == "applied"

    restored = docshift(folder, cli_env, "rollback", run_folder.name, "--execute", "--strategy", "restore")
    assert restored.returncode == 0, restored.stderr
    assert same_data(export(firestore_store, ["users"]), before) == []
    status = json.loads(docshift(folder, cli_env, "status", "--json").stdout)
    assert status["migrations"][0]["state"] == "rolled_back"


# ---------------------------------------------------------------------------- item 4
CHAINS = {
    "two chained renames": {"0001_a_to_b": rename("a", "b"), "0002_b_to_c": rename("b", "c")},
    "restore then down then restore": {
        "0001_a_to_b": rename("a", "b", with_down=False),
        "0002_b_to_c": rename("b", "c"),
        "0003_prune": PRUNE,
        "0004_c_to_d": rename("c", "d", with_down=False),
    },
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_a_dry_run_of_several_migrations_counts_what_the_execute_does(
    chain: str, firestore_store: Store, emulator_config: Config
) -> None:
    seed(firestore_store, 700)
    before = export(firestore_store, ["users"])
    write_migrations(emulator_config, **CHAINS[chain])
    run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    dry = rollback(emulator_config, RollbackOptions(to="0"), store=firestore_store)
    done = rollback(emulator_config, RollbackOptions(to="0", execute=True), store=firestore_store)
    planned = [(i.migration.id, i.strategy) for i in dry.items]
    assert planned == [(i.migration.id, i.strategy) for i in done.items]
    assert [i.counters for i in dry.items] == [i.counters for i in done.items]
    assert all(i.counters["conflicts"] == i.counters["mismatched"] == 0 for i in done.items)
    assert same_data(export(firestore_store, ["users"]), before) == []


# ---------------------------------------------------------------------------- item 17
def test_rollback_resume_show_and_report_work_on_the_database_of_the_run(
    emulator_config: Config, cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path / "project", "batch_size = 50\n", files=(), extra={"0001_tier.py": TIER})
    config = Config(
        store=dataclasses.replace(emulator_config.store, database="mydb"),
        migrations_dir=folder / "migrations",
        runs_dir=folder / ".docshift" / "runs",
        engine=emulator_config.engine,
        limits=emulator_config.limits,
    ).with_engine(batch_size=50, min_batch_size=10)
    mydb = open_store(config)
    default = open_store(emulator_config)
    try:
        seed(mydb, 300)
        seed(default, 30)  # another database of the same project: never touched
        before, untouched = export(mydb, ["users"]), export(default, ["users"])
        controls = Controls()
        with pytest.raises(RunStopped) as stopped:  # stopped midway on mydb, resumed from the CLI
            run_migrations(
                config, RunOptions(execute=True), store=StopAfterCommits(mydb, controls, 2), controls=controls
            )
        run_id = (stopped.value.resume_command or "").split()[-1]

        wrong = docshift(folder, cli_env, "--database", "other", "run", "--execute", "--resume", run_id)
        assert wrong.returncode == 2, wrong.stderr
        assert "--database other is not where run" in wrong.stderr and "database mydb" in wrong.stderr
        assert "hint: drop --database" in wrong.stderr and "Traceback" not in wrong.stderr
        resumed = docshift(folder, cli_env, "run", "--execute", "--resume", run_id, "--quiet")
        assert resumed.returncode == 0, resumed.stderr
        assert all(d.data.get("tier") == "free" for d in export(mydb, ["users"]).values())
        assert History(mydb, PREFIX).get("0001") is not None

        for command in (["show", run_id], ["report", run_id]):
            refused = docshift(folder, cli_env, "--database", "other", *command)
            assert refused.returncode == 2 and "database mydb" in refused.stderr, refused.stderr
            assert docshift(folder, cli_env, *command).returncode == 0
        assert docshift(folder, cli_env, "--database", "mydb", "show", run_id).returncode == 0

        refused = docshift(folder, cli_env, "--database", "other", "rollback", run_id, "--execute")
        assert refused.returncode == 2 and "hint:" in refused.stderr, refused.stderr
        undone = docshift(folder, cli_env, "rollback", run_id, "--execute")  # no --database
        assert undone.returncode == 0, undone.stderr + undone.stdout
        assert "database mydb" in undone.stderr
        assert same_data(export(mydb, ["users"]), before) == []
        assert export(default, ["users"]).keys() == untouched.keys()
        assert all(d.update_time == untouched[p].update_time for p, d in export(default, ["users"]).items())
        record = History(mydb, PREFIX).get("0001")
        assert record is not None and record.status is MigrationStatus.ROLLED_BACK
        assert History(default, PREFIX).get("0001") is None
    finally:
        mydb.close()
        default.close()

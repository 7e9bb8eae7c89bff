"""``docshift run`` with rules, against the emulator, as a user runs it (subprocess):

* 3% of documents break a rule: the run finishes (exit 0) with exactly those in the dead-letter
  file, each with its rule, and a warning;
* 15% break it: the integrity gate stops the run (exit 12, checkpoint kept), and with
  ``--auto-rollback`` the data ends equal to its pre-run export;
* ``--validate`` scans before and after, and a failing after-scan exits 14.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from docshift.history import History, MigrationStatus
from docshift.runfolder import Checkpoint, DeadLetterFile, read_versioned, run_folders
from docshift.store import Query, Store, Write
from docshift.values import Value, values_equal
from tests.gate_message import gate_numbers

DOCSHIFT = str(Path(sys.executable).parent / "docshift")
LABEL = "0001_split_name"

MIGRATION = '''
"""Split full_name; every user must keep a sane age and get a first name."""
from docshift import UNCHANGED
from docshift.validators import in_range, not_null

collection = "users"
rules = [not_null("first_name"), in_range("age", 0, 150)]

def up(doc):
    data = doc.data
    if "full_name" not in data:
        return UNCHANGED
    first, _, last = data.pop("full_name").partition(" ")
    return {**data, "first_name": first, "last_name": last}
'''


def docshift(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / f"{LABEL}.py").write_text(textwrap.dedent(MIGRATION))
    (tmp_path / "docshift.toml").write_text(
        'runs_dir = "runs"\nbatch_size = 50\nmin_batch_size = 10\nmax_batch_size = 50\n'
    )
    return tmp_path


def seed(store: Store, total: int, bad: set[int]) -> set[str]:
    """Users ``u0000``…; those in ``bad`` get an age the rules refuse. Returns their paths."""
    writes = [
        Write.set(
            f"users/u{i:04d}",
            {"full_name": f"First{i} Last{i}", "age": -1 if i in bad else 30, "tags": ["a", i]},
        )
        for i in range(total)
    ]
    writes.append(Write.set("teams/t1", {"name": "bystander"}))
    for start in range(0, len(writes), 400):
        assert all(result.ok for result in store.commit(writes[start : start + 400]))
    return {f"users/u{i:04d}" for i in bad}


def export(store: Store) -> dict[str, dict[str, Value]]:
    return {doc.path: doc.data for name in ("users", "teams") for doc in store.stream(Query(name))}


def run_folder(project: Path) -> Path:
    [folder] = [
        p.parent
        for p in (project / "runs").glob("*/run.json")
        if read_versioned(p, "docshift-run", 1).get("kind", "run") == "run"
    ]
    return folder


def test_three_percent_bad_documents_finish_in_the_dead_letters_with_a_warning(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    bad = seed(firestore_store, 600, set(range(16, 600, 33)))  # 3%
    assert len(bad) == 18
    result = docshift(project, cli_env, "run", "--execute")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "18 of 600 documents checked broke a rule" in result.stderr
    assert "health 95/100 HEALTHY (1 warning)" in result.stdout
    folder = run_folder(project)
    letters = list(DeadLetterFile(folder / LABEL / "dead-letters.jsonl"))
    assert {letter["path"] for letter in letters} == bad
    assert {letter["rule"] for letter in letters} == {"in_range(age, 0..150)"}
    assert all(letter["stage"] == "validate" for letter in letters)
    assert all("below the minimum 0" in letter["error"] for letter in letters)
    migrated = {doc.path: doc.data for doc in firestore_store.stream(Query("users"))}
    assert all(("full_name" in data) == (path in bad) for path, data in migrated.items())
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert record.counts["rejected"] == 18 and record.counts["updated"] == 582
    saved = read_versioned(folder / "validation.json", "docshift-run-validation", 1)
    assert saved["health"]["status"] == "HEALTHY" and saved["health"]["score"] == 95


def gate_data(store: Store) -> set[str]:
    """15% bad overall, all in the later part, so the run writes before the gate stops it. The gate
    judges settled batches, so it closes about 1,333 documents in (below 90%), plus at most the
    batches in flight (8 of 50): well before the end."""
    return seed(store, 2000, {i for i in range(800, 2000) if i % 4 == 0})


def test_fifteen_percent_bad_documents_stop_the_run_at_the_gate(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    bad = gate_data(firestore_store)
    assert len(bad) == 300
    result = docshift(project, cli_env, "run", "--execute")
    assert result.returncode == 12, result.stderr
    assert "error: integrity gate:" in result.stderr and "below integrity_critical 90%" in result.stderr
    assert "resume with `docshift run --execute --resume" in result.stderr.strip().splitlines()[-1]
    assert "health 70/100 CRITICAL" in result.stderr
    folder = run_folder(project)
    checkpoint = Checkpoint.load(folder / LABEL / "checkpoint.json")
    assert checkpoint.state == "stopped" and 800 <= checkpoint.counters["read"] < 2000
    assert checkpoint.counters["updated"] >= 800  # it wrote before the gate closed
    letters = {letter["path"] for letter in DeadLetterFile(folder / LABEL / "dead-letters.jsonl")}
    assert letters and letters <= bad
    untouched = [doc for doc in firestore_store.stream(Query("users")) if "full_name" in doc.data]
    assert len(untouched) > 150  # stopped early: the rest was never written
    # One record of what happened: the error, validation-inline.json, the checkpoint, the report, the
    # history and the dead letters count the same documents checked and refused.
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    checked, refused = gate_numbers(error)
    inline = read_versioned(folder / LABEL / "validation-inline.json", "docshift-validation", 1)
    report = read_versioned(folder / "report.json", "docshift-report", 1)
    [row] = report["migrations"]
    history = History(firestore_store, "_docshift").get("0001")
    assert history is not None
    assert (inline["checked"], inline["failed"]) == (checked, refused)
    assert (checkpoint.counters["checked"], checkpoint.counters["rejected"]) == (checked, refused)
    assert (row["counters"]["checked"], row["counters"]["rejected"]) == (checked, refused)
    assert (history.counts["checked"], history.counts["rejected"]) == (checked, refused)
    assert row["dead_letters"] == len(letters) == refused
    assert sum(rule["failures"] for rule in inline["rules"]) == refused
    assert report["state"] == report["outcome"]["state"] == "stopped"


def test_auto_rollback_after_the_gate_restores_the_pre_run_data(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    gate_data(firestore_store)
    before = export(firestore_store)
    result = docshift(project, cli_env, "run", "--execute", "--auto-rollback")
    assert result.returncode == 12, result.stderr
    assert "rolling back run" in result.stderr and "was rolled back" in result.stderr
    assert "resume with" not in result.stderr
    after = export(firestore_store)
    assert after.keys() == before.keys()
    differ = [path for path in before if not values_equal(after[path], before[path])]
    assert differ == []
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    # The run was rolled back, and every view of it says so (as for a canary stage's rollback).
    folder = run_folder(project)
    assert read_versioned(folder / "run.json", "docshift-run", 1)["state"] == "rolled_back"
    report = read_versioned(folder / "report.json", "docshift-report", 1)
    assert report["state"] == report["outcome"]["state"] == "rolled_back"
    assert "resume" not in report["commands"]
    runs = json.loads(docshift(project, cli_env, "runs", "--json").stdout)
    assert {r["run_id"]: r["state"] for r in runs}[folder.name] == "rolled_back"
    shown = json.loads(docshift(project, cli_env, "show", folder.name, "--json").stdout)
    assert shown["state"] == "rolled_back"
    # The rolled-back run is closed: no resume continues it from its old position, not even forced
    # (after fixing the migration), which would leave the documents before it undone as "applied".
    for extra in ((), ("--force",)):
        resumed = docshift(project, cli_env, "run", "--execute", "--resume", folder.name, *extra)
        assert resumed.returncode == 2, resumed.stderr
        assert f"run {folder.name} was rolled back" in resumed.stderr
        assert "hint:" in resumed.stderr and "start a new run" in resumed.stderr
    assert export(firestore_store) == after
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    assert docshift(project, cli_env, "status").returncode == 9  # rolled back: it would run again
    assert read_versioned(folder / "run.json", "docshift-run", 1)["state"] == "rolled_back"


def test_validate_flag_scans_before_and_after_and_exits_14_when_the_after_scan_fails(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    seed(firestore_store, 200, set())
    firestore_store.commit([Write.set("users/zz", {"age": 30})])  # no full_name: up leaves it alone
    result = docshift(project, cli_env, "run", "--execute", "--validate", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    scans = [(e["migration"], e["phase"]) for e in events if e["event"] == "validation_scan"]
    assert scans == [(LABEL, "before"), (LABEL, "after")]
    [health] = [e for e in events if e["event"] == "validation"]
    assert health["status"] == "HEALTHY" and health["score"] == 95  # zz fails the after-scan: 1 warning
    folder = run_folder(project)
    after: dict[str, Any] = read_versioned(folder / LABEL / "validation-after.json", "docshift-validation", 1)
    assert after["checked"] == 201 and after["failed"] == 1
    assert after["rules"][0]["examples"][0]["path"] == "users/zz"
    before = read_versioned(folder / LABEL / "validation-before.json", "docshift-validation", 1)
    assert before["failed"] == 201  # before the run nobody had a first name

    second = textwrap.dedent("""
        from docshift import UNCHANGED
        from docshift.validators import required

        collection = "teams"
        rules = [required("members")]

        def up(doc):
            return UNCHANGED
        """)
    (project / "migrations" / "0002_check_teams.py").write_text(second)
    failed = docshift(project, cli_env, "run", "--execute", "--validate")
    assert failed.returncode == 14, failed.stderr
    assert "error: after-scan 0002_check_teams after: integrity 0.0%" in failed.stderr
    assert "after-scan 0002_check_teams after" in failed.stdout and "CRITICAL" in failed.stdout
    # The run's record says how it ended: finished, with the after-scan's exit 14 and error.
    ended = run_folders(project / "runs")[0].path  # the newest run
    report = read_versioned(ended / "report.json", "docshift-report", 1)
    assert report["outcome"]["exit_code"] == 14 and report["state"] == "finished"
    assert "after-scan 0002_check_teams after" in report["outcome"]["error"]
    shown = json.loads(docshift(project, cli_env, "show", ended.name, "--json").stdout)
    assert shown["outcome"]["exit_code"] == 14

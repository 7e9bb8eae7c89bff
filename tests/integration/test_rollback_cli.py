"""``docshift rollback`` as a real subprocess against the emulator: a run killed with kill -9 rolled
back to the pre-run export, SIGTERM and --resume, conflicts and --force, the lease, and the
confirmation gate (which must refuse before anything touches the network)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from docshift.engine.undo import undo_actions
from docshift.history import History, MigrationStatus
from docshift.lock import LeaseLock, read_lease
from docshift.runfolder import Checkpoint, JournalReader
from docshift.store import Document, Store, Write
from docshift.values import values_equal
from tests.integration.run_support import (
    DOCSHIFT,
    PREFIX,
    differences,
    docshift,
    export,
    project_folder,
    seed_users,
    watch_for_start,
)

JOURNAL = "before-images.jsonl.gz"


def same_data(actual: dict[str, Document], expected: dict[str, Document]) -> list[str]:
    problems = sorted(set(actual) ^ set(expected))
    problems += sorted(
        p for p in set(actual) & set(expected) if not values_equal(actual[p].data, expected[p].data)
    )
    return problems


def status_json(folder: Path, env: dict[str, str]) -> tuple[int, dict[str, dict[str, object]]]:
    shown = docshift(folder, env, "status", "--json")
    return shown.returncode, {m["id"]: m for m in json.loads(shown.stdout)["migrations"]}


def test_a_run_killed_midway_is_rolled_back_to_the_pre_run_export(
    firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 during the first migration, before its first checkpoint (checkpoints every 60 s), with
    commits in flight: rollback by restore finds the migration from its journal alone, checks the
    writes whose outcome the journal does not know, and returns every document."""
    seed_users(firestore_store, 3000)
    before = export(firestore_store, ["users", "teams"])
    folder = project_folder(tmp_path / "project", "checkpoint_every_seconds = 60\nbatch_size = 100\n")
    process = subprocess.Popen(
        [DOCSHIFT, "run", "--execute", "--json", "--max-writes-per-second", "400"],
        cwd=folder,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    started = threading.Event()
    threading.Thread(target=watch_for_start, args=(process, started), daemon=True).start()
    assert started.wait(60), "the run never started migrating"
    [run_folder] = (folder / ".docshift" / "runs").iterdir()
    journal = run_folder / "0001_split_full_name" / JOURNAL
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(e.kind == "written" for e in JournalReader(journal)) < 400:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the kill"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)

    # Killed before any checkpoint of progress (the one saved as the migration starts claims none).
    saved = [Checkpoint.load(path) for path in run_folder.glob("*/checkpoint.json")]
    assert all(checkpoint.counters.get("read", 0) == 0 for checkpoint in saved)
    kinds = [action.kind for action in undo_actions(journal)]
    assert kinds.count("restore") >= 400
    assert kinds.count("check") >= 1, "no write was in flight at the kill"
    partly = export(firestore_store, ["users"])
    assert same_data(partly, {p: d for p, d in before.items() if p.startswith("users/")}) != []

    args = ("rollback", run_folder.name, "--execute", "--strategy", "restore")
    undone = docshift(folder, cli_env, *args)
    if undone.returncode == 6:  # the killed run's lease has not expired: remove it, as a user would
        assert "locked by" in undone.stderr
        assert docshift(folder, cli_env, "unlock", "--force", "--yes").returncode == 0
        undone = docshift(folder, cli_env, *args)
    assert undone.returncode == 0, undone.stderr
    assert "0001_split_full_name" in undone.stdout and "restore" in undone.stdout
    after = export(firestore_store, ["users", "teams"])
    assert same_data(after, before) == []
    assert (
        differences(
            {p: d for p, d in after.items() if p.startswith("teams/")},
            {p: d for p, d in before.items() if p.startswith("teams/")},
        )
        == []
    )
    code, migrations = status_json(folder, cli_env)
    assert code == 9 and migrations["0001"]["state"] == "rolled_back"
    assert migrations["0002"]["state"] == "pending"  # the kill came before it started
    assert read_lease(firestore_store, PREFIX) is None


def test_sigterm_stops_a_rollback_with_exit_10_and_resume_finishes_it(
    firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 2000)
    before = export(firestore_store, ["users", "teams"])
    folder = project_folder(tmp_path / "project", "batch_size = 100\n")
    applied = docshift(folder, cli_env, "run", "--execute", "--quiet")
    assert applied.returncode == 0, applied.stderr
    [run_folder] = (folder / ".docshift" / "runs").iterdir()

    slow = {**cli_env, "DOCSHIFT_MAX_WRITES_PER_SECOND": "400"}
    process = subprocess.Popen(
        [DOCSHIFT, "rollback", run_folder.name, "--execute", "--strategy", "restore"],
        cwd=folder,
        env=slow,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    runs = folder / ".docshift" / "runs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        any(step.position >= 0 for step in undo.steps)
        for p in runs.glob("*/0001_*/checkpoint.json")
        if p.parent.parent != run_folder
        if (undo := Checkpoint.load(p).undo) is not None
    ):
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 10, err
    [rollback_folder] = [p for p in runs.iterdir() if p != run_folder]
    resume = f"docshift rollback --execute --resume {rollback_folder.name}"
    assert f"resume with `{resume}`" in err.strip().splitlines()[-1]  # said last
    saved = Checkpoint.load(rollback_folder / "0001_split_full_name" / "checkpoint.json")
    assert saved.state == "stopped" and 0 < saved.counters["restored"] < 1800
    assert read_lease(firestore_store, PREFIX) is None
    assert (
        same_data(
            export(firestore_store, ["users"]), {p: d for p, d in before.items() if p.startswith("users/")}
        )
        != []
    )

    resumed = docshift(folder, cli_env, *resume.split()[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert same_data(export(firestore_store, ["users", "teams"]), before) == []
    records = History(firestore_store, PREFIX).all()
    for migration_id in ("0001", "0002"):
        record = records[migration_id]
        assert record.status is MigrationStatus.ROLLED_BACK and record.run_id == rollback_folder.name
        assert record.counts["conflicts"] == record.counts["mismatched"] == 0
    assert records["0001"].counts["restored"] == records["0001"].counts["verified"] > 1000
    code, migrations = status_json(folder, cli_env)
    assert code == 9 and {m["state"] for m in migrations.values()} == {"rolled_back"}
    assert {m["run_id"] for m in migrations.values()} == {rollback_folder.name}
    shown = docshift(folder, cli_env, "status")
    assert shown.stdout.count("rolled back") >= 2
    # The migrations can run again after a rollback.
    again = docshift(folder, cli_env, "run", "--execute", "--quiet")
    assert again.returncode == 0, again.stderr


def test_conflicts_exit_1_and_force_overwrites_and_a_held_lease_exits_6(
    firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 200)
    before = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project")
    assert docshift(folder, cli_env, "run", "--execute", "--quiet").returncode == 0
    [run_folder] = (folder / ".docshift" / "runs").iterdir()
    # A document only 0001 changed (0002 fixes text ages); the application edits it afterwards.
    edited = next(
        p
        for p, d in sorted(before.items())
        if "full_name" in d.data and not isinstance(d.data.get("age"), str)
    )
    [doc] = firestore_store.get_many([edited])
    assert doc is not None and "first_name" in doc.data
    app_data = {**doc.data, "first_name": "Edited"}
    assert firestore_store.commit([Write.set(edited, app_data)])[0].ok

    restore = ("--strategy", "restore")  # down() would fold the edit in: no conflict by design
    dry = docshift(folder, cli_env, "rollback", run_folder.name, *restore)
    assert dry.returncode == 0, dry.stderr
    assert "would be undone by restore" in dry.stdout and "conflicts (left alone)" in dry.stdout
    assert "dry run: nothing was written" in dry.stdout

    with LeaseLock(firestore_store, PREFIX, run_id="another-run"):
        locked = docshift(folder, cli_env, "rollback", run_folder.name, "--execute", *restore)
    assert locked.returncode == 6 and "another-run" in locked.stderr

    refused = docshift(folder, cli_env, "rollback", run_folder.name, "--execute", *restore)
    assert refused.returncode == 1
    assert "error: 1 document(s) changed after the migration wrote them and were left alone" in refused.stderr
    assert "hint:" in refused.stderr and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert "conflicts (left alone):" in refused.stdout  # the summary is still printed
    assert values_equal(export(firestore_store, ["users"])[edited].data, app_data)
    listed = [
        json.loads(line)
        for path in (folder / ".docshift" / "runs").glob("*/0001_*/conflicts.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert {r["path"] for r in listed} == {edited} and len(listed) == 2  # the dry run's and the execute's

    forced = docshift(folder, cli_env, "rollback", run_folder.name, "--execute", "--force", *restore)
    assert forced.returncode == 0, forced.stderr
    assert same_data(export(firestore_store, ["users"]), before) == []
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK


GATED = """
import os, sys

def hook(event, args):
    if event.startswith("socket.") and event not in ("socket.__new__", "socket.gethostname"):
        sys.stderr.write(f"NETWORK ACCESS: {event} {args!r}\\n")
        sys.stderr.flush()
        os._exit(99)

sys.addaudithook(hook)
from docshift.cli import main
try:
    main(sys.argv[1:])
finally:
    loaded = sorted(m for m in sys.modules if m.startswith(("grpc", "docshift.store.firestore")))
    sys.stderr.write(f"LOADED: {loaded}\\n")
"""


def test_the_confirmation_gate_refuses_cloud_firestore_without_yes_before_any_network_access(
    tmp_path: Path,
) -> None:
    cloud = {
        k: v
        for k, v in os.environ.items()
        if k != "FIRESTORE_EMULATOR_HOST" and not k.startswith("DOCSHIFT_")
    }
    folder = project_folder(tmp_path / "project")
    for args in (
        ["rollback", "20250101T000000-abcdef", "--execute"],
        ["rollback", "--execute", "--resume"],
        ["rollback", "--to", "0001", "--execute", "--strategy", "restore"],
    ):
        refused = subprocess.run(
            [sys.executable, "-c", GATED, "--project", "my-prod", *args],
            cwd=folder,
            env=cloud,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 8, refused.stderr
        assert "error: refusing to roll back migrations on Cloud Firestore (project my-prod" in refused.stderr
        assert "--yes" in refused.stderr
        assert "NETWORK ACCESS" not in refused.stderr and "LOADED: []" in refused.stderr
    # The hook does see network access: confirmed with --yes, the same command trips it.
    confirmed = subprocess.run(
        [
            sys.executable,
            "-c",
            GATED,
            "--project",
            "my-prod",
            "rollback",
            "20250101T000000-abcdef",
            "--execute",
            "--yes",
        ],
        cwd=folder,
        env={**cloud, "GCE_METADATA_HOST": "127.0.0.1:9"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert confirmed.returncode == 99 and "NETWORK ACCESS" in confirmed.stderr, confirmed.stderr


DROP_MIGRATION = '''
"""Drop the even users, mark the odd ones seen (no down(): rolled back by restore)."""
from docshift import DELETE

description = "drop even users"
collection = "users"

def up(doc):
    if doc.get("n", 0) % 2 == 0:
        return DELETE
    return {**doc.data, "seen": True}
'''


def test_a_rollback_with_conflicts_tells_one_state_and_the_same_counts_everywhere(
    firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Restore strategy: 100 deleted, 100 updated; the application then re-creates 10 of the deleted
    and edits 5 of the updated. The rollback re-creates 90 and restores 95, leaves 15 conflicts: its
    summary table, `runs`, `show`, run.json and the report all say so (state ``conflicts``), and the
    next step offered is the --force command (which then finishes the job), not a resume."""
    writes = [Write.set(f"users/u{i:03d}", {"n": i}) for i in range(200)]
    assert all(result.ok for result in firestore_store.commit(writes))
    before = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project", files=(), extra={"0001_drop.py": DROP_MIGRATION})
    assert docshift(folder, cli_env, "run", "--execute", "--quiet").returncode == 0
    [source] = (folder / ".docshift" / "runs").iterdir()
    app = [Write.set(f"users/u{i:03d}", {"n": i, "app": True}) for i in range(0, 20, 2)]  # re-created
    app += [Write.set(f"users/u{i:03d}", {"n": i, "app": True}) for i in range(1, 11, 2)]  # edited
    assert all(result.ok for result in firestore_store.commit(app))

    refused = docshift(folder, cli_env, "rollback", source.name, "--execute")
    assert refused.returncode == 1, refused.stderr
    force = f"docshift rollback {source.name} --execute --force"
    assert force in refused.stderr and "Traceback" not in refused.stderr
    [rollback] = [p for p in (folder / ".docshift" / "runs").iterdir() if p != source]
    counters = Checkpoint.load(rollback / "0001_drop" / "checkpoint.json").counters
    assert (counters["recreated"], counters["restored"], counters["conflicts"]) == (90, 95, 15)
    # The summary table printed at the end shows the restore's counts in its columns.
    row = next(line for line in refused.stderr.splitlines() if "0001_drop" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")[1:9]] == [
        "0001_drop",
        "95",
        "0",
        "90",
        "0",
        "0",
        "15",
        "0",
    ]
    runs = {r["run_id"]: r for r in json.loads(docshift(folder, cli_env, "runs", "--json").stdout)}
    listed = runs[rollback.name]
    assert listed["state"] == "conflicts"
    assert (listed["counts"]["updated"], listed["counts"]["created"], listed["counts"]["conflicts"]) == (
        95,
        90,
        15,
    )
    shown = json.loads(docshift(folder, cli_env, "show", rollback.name, "--json").stdout)
    report = json.loads((rollback / "report.json").read_text())
    run_file = json.loads((rollback / "run.json").read_text())
    assert shown["state"] == report["state"] == report["outcome"]["state"] == run_file["state"] == "conflicts"
    assert report["totals"]["created"] == 90 and report["migrations"][0]["counts"]["created"] == 90
    for commands in (shown["commands"], report["commands"]):
        assert "resume" not in commands
        assert force in commands.values()

    forced = docshift(folder, cli_env, *force.split()[1:])
    assert forced.returncode == 0, forced.stderr
    assert same_data(export(firestore_store, ["users"]), before) == []


def test_rollback_steps_undoes_the_newest_applied_migration(
    firestore_store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """`docshift rollback --steps 1 --execute` undoes only the newest applied migration; too many
    steps is a usage error (exit 2) with a hint, and changes nothing."""
    seed_users(firestore_store, 200)
    folder = project_folder(tmp_path / "project")
    ran = docshift(folder, cli_env, "run", "--execute", "--only", "0001")
    assert ran.returncode == 0, ran.stderr
    after_first = export(firestore_store, ["users", "teams"])
    ran = docshift(folder, cli_env, "run", "--execute")
    assert ran.returncode == 0, ran.stderr
    too_many = docshift(folder, cli_env, "rollback", "--steps", "3", "--execute")
    assert too_many.returncode == 2 and "--steps 3: 2 migration(s) are applied here" in too_many.stderr
    assert "hint:" in too_many.stderr
    undone = docshift(folder, cli_env, "rollback", "--steps", "1", "--execute")
    assert undone.returncode == 0, undone.stderr
    assert same_data(export(firestore_store, ["users", "teams"]), after_first) == []
    history = History(firestore_store, PREFIX)
    first, second = history.get("0001"), history.get("0002")
    assert first is not None and first.status is MigrationStatus.APPLIED
    assert second is not None and second.status is MigrationStatus.ROLLED_BACK

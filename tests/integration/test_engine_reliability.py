"""Reliability against the real emulator, with real processes: kill -9 and resume, SIGTERM, injected
store failures, an application writing during the run, and a dry run that writes nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config
from docshift.history import History, MigrationStatus
from docshift.loader import load_migrations
from docshift.lock import read_lease
from docshift.migration import UNCHANGED, DocView
from docshift.runfolder import Checkpoint, JournalReader
from docshift.store import Query, RetryingStore, RetryPolicy, Write, open_store
from docshift.testing import FaultInjectingStore
from docshift.values import values_equal
from tests.integration.run_support import (
    DOCSHIFT,
    PREFIX,
    SLOW_SPLIT,
    apply_migrations,
    data_differences,
    differences,
    docshift,
    export,
    export_all,
    project_folder,
    run_until_killed,
    seed_bystanders,
    seed_users,
    watch_for_start,
)

SUBCOLLECTIONS = ["users/u000001/orders"]


def checkpoints(folder: Path) -> list[Checkpoint]:
    return [Checkpoint.load(path) for path in sorted(folder.glob(".docshift/runs/*/*/checkpoint.json"))]


def assert_history_applied(store: RetryingStore, *ids: str) -> None:
    records = History(store, PREFIX).all()
    assert {i: records[i].status for i in ids} == dict.fromkeys(ids, MigrationStatus.APPLIED)
    assert read_lease(store, PREFIX) is None


def test_kill_9_at_random_moments_then_resume_reaches_the_uninterrupted_result(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 5000)
    bystanders = seed_bystanders(firestore_store)
    before = export_all(firestore_store, SUBCOLLECTIONS)
    folder = project_folder(tmp_path / "project", "checkpoint_every_seconds = 0.1\nbatch_size = 100\n")
    migrations = load_migrations(folder / "migrations")
    users = {path: doc for path, doc in before.items() if path.count("/") == 1 and path.startswith("users/")}
    expected = apply_migrations(users, migrations)

    seed_value = int(time.time())
    rng = random.Random(seed_value)
    # Two kills during start-up (loading, lease, history, planning), ten while migrating: seconds
    # after the migration started, short and long, in random order with random jitter.
    moments: list[float | None] = [None, None, 0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 0.2, 1.2]
    rng.shuffle(moments)
    # At 500 writes/s the twelve kills (under 10 s of migrating in all) always land before the
    # 4,864 writes of the first migration are done; the resume after the last kill finishes both.
    flags = ["--json", "--max-writes-per-second", "500"]
    kills, mid_run, progress = 0, 0, []
    for moment in moments:
        resuming = any(folder.glob(".docshift/runs/*/run.json"))
        args = ["run", "--execute", *(["--resume"] if resuming else []), *flags]
        errors = (tmp_path / f"stderr-{kills}.txt").open("w")
        process = subprocess.Popen(
            [DOCSHIFT, *args],
            cwd=folder,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
        errors.close()
        migrating = threading.Event()
        threading.Thread(target=watch_for_start, args=(process, migrating), daemon=True).start()
        if moment is None:
            time.sleep(rng.uniform(0.0, 0.5))
        else:
            migrating.wait(30)
            time.sleep(moment + rng.uniform(-0.1, 0.1))
        assert process.poll() is None, (tmp_path / f"stderr-{kills}.txt").read_text()
        mid_run += migrating.is_set()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        kills += 1
        progress.append(sum(c.counters.get("read", 0) for c in checkpoints(folder)))
    assert mid_run >= 10, f"only {mid_run} of {kills} kills landed while migrating (seed {seed_value})"
    assert progress == sorted(progress), f"a checkpoint went backwards: {progress} (seed {seed_value})"
    assert len(set(progress)) >= 4, f"resumes made little progress: {progress} (seed {seed_value})"

    # At full speed: the run's own write limit (500) would otherwise hold for the resume too.
    unlimited = ("--max-writes-per-second", "0")
    final = docshift(folder, cli_env, "run", "--execute", "--resume", "--json", *unlimited)
    if final.returncode == 6:  # locked: the killed run's lease has not expired; remove it
        assert docshift(folder, cli_env, "unlock", "--force", "--yes").returncode == 0
        final = docshift(folder, cli_env, "run", "--execute", "--resume", "--json", *unlimited)
    assert final.returncode == 0, final.stderr
    events = [json.loads(line) for line in final.stdout.splitlines()]
    assert [e["event"] for e in events if e["event"] in ("finish", "stop")][-1] == "finish"

    after = export_all(firestore_store, SUBCOLLECTIONS)
    assert data_differences({p: d for p, d in after.items() if p in users}, expected) == []
    untouched = {path: before[path] for path in before if path not in users}
    assert set(untouched) >= set(bystanders)
    assert differences({p: after[p] for p in untouched}, untouched) == []  # nothing else touched
    assert set(after) - set(before) == {f"{PREFIX}_history/0001", f"{PREFIX}_history/0002"}
    assert_history_applied(firestore_store, "0001", "0002")
    # Every before-image the first migration journalled, through all the kills, is the seeded document.
    [run_folder] = folder.glob(".docshift/runs/*/")
    journal = list(JournalReader(run_folder / "0001_split_full_name" / "before-images.jsonl.gz"))
    befores = [entry for entry in journal if entry.kind == "before"]
    changed = {path for path in users if "full_name" in users[path].data}
    assert {entry.path for entry in befores} == changed
    assert all(
        entry.data == users[entry.path].data and entry.update_time == users[entry.path].update_time
        for entry in befores
    )


def test_sigterm_drains_checkpoints_exits_10_and_the_printed_command_resumes(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 3000)
    before = export_all(firestore_store)
    folder = project_folder(tmp_path / "project", "checkpoint_every_seconds = 0.2\nbatch_size = 100\n")
    migrations = load_migrations(folder / "migrations")
    users = {path: doc for path, doc in before.items() if path.startswith("users/")}
    process = subprocess.Popen(
        [DOCSHIFT, "run", "--execute", "--max-writes-per-second", "1000"],
        cwd=folder,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(c.counters.get("updated", 0) for c in checkpoints(folder)):
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    os.kill(process.pid, signal.SIGTERM)
    signalled = time.monotonic()
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - signalled < 10  # drained, without finishing the run (checked below)
    assert process.returncode == 10, err
    assert "SIGTERM: stopping after in-flight commits" in err
    [run_folder] = folder.glob(".docshift/runs/*/")
    resume = f"docshift run --execute --resume {run_folder.name}"
    assert f"resume with `{resume}`" in err.strip().splitlines()[-1]  # said last
    [saved] = checkpoints(folder)
    assert saved.state == "stopped" and 0 < saved.counters["read"] < 3000
    assert read_lease(firestore_store, PREFIX) is None  # released on the way out
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.INTERRUPTED
    assert resume in (record.error or "")
    shown = docshift(folder, cli_env, "status")  # as the docs say: interrupted, and pending (exit 9)
    assert shown.returncode == 9, shown.stdout
    [row] = [line for line in shown.stdout.splitlines() if line.strip().startswith("0001")]
    assert "interrupted" in row and "failed" not in row
    # The checkpoint claims only what is written: everything up to its cursor is migrated.
    [shard] = saved.shards
    upto = export(firestore_store, ["users"])
    assert shard.cursor is not None
    claimed = [p for p in upto if tuple(p.split("/")) <= tuple(shard.cursor.split("/"))]
    assert len(claimed) == saved.counters["read"]
    assert all(migrations[0].up(DocView(upto[p])) is UNCHANGED for p in claimed)

    resumed = docshift(folder, cli_env, *resume.split()[1:])
    assert resumed.returncode == 0, resumed.stderr
    after = export(firestore_store, ["users", "teams"])
    expected = apply_migrations(users, migrations)
    assert data_differences({p: d for p, d in after.items() if p in users}, expected) == []
    assert_history_applied(firestore_store, "0001", "0002")


def test_a_second_signal_exits_at_once_and_the_run_still_resumes_exactly(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 2000)
    users = export(firestore_store, ["users"])
    folder = project_folder(
        tmp_path / "project",
        "checkpoint_every_seconds = 0.2\nbatch_size = 100\n",
        files=(),
        extra={"0001_slow_split.py": SLOW_SPLIT},
    )
    marker = tmp_path / "slow"
    marker.touch()
    env = {**cli_env, "SLOW_MARKER": str(marker)}
    process = subprocess.Popen(
        [DOCSHIFT, "run", "--execute", "--json"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None and process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(c.counters.get("updated", 0) for c in checkpoints(folder)):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)
    while time.monotonic() < deadline and not any("stopping after in-flight commits" in x for x in lines):
        time.sleep(0.01)
    assert process.poll() is None  # still draining: each writer is in a batch that takes 5 s
    os.kill(process.pid, signal.SIGINT)
    second = time.monotonic()
    out = process.stdout.read()
    assert process.wait(30) == 10
    assert time.monotonic() - second < 3.0  # at once, not after the drain (up to 5 s)
    reader.join(5)
    assert any("stopping at once" in line for line in lines), lines
    [run_folder] = folder.glob(".docshift/runs/*/")  # the stop at once names the run it resumes, last
    assert lines[-1].strip() == f"resume with: docshift run --execute --resume {run_folder.name}", lines
    assert all(json.loads(line) for line in out.splitlines())  # --json output stays parseable
    marker.unlink()
    resumed = docshift(folder, env, "run", "--execute", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    migrations = load_migrations(folder / "migrations")
    assert data_differences(export(firestore_store, ["users"]), apply_migrations(users, migrations)) == []
    assert_history_applied(firestore_store, "0001")


def test_sigterm_with_json_prints_the_resume_command_on_stderr(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 2000)
    folder = project_folder(tmp_path / "project", "checkpoint_every_seconds = 0.2\n")
    process = subprocess.Popen(
        [DOCSHIFT, "run", "--execute", "--json", "--max-writes-per-second", "500"],
        cwd=folder,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(c.counters.get("updated", 0) for c in checkpoints(folder)):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 10, err
    events = [json.loads(line) for line in out.splitlines()]
    [stop] = [e for e in events if e["event"] == "stop"]
    assert "SIGTERM" in stop["reason"]
    [run_folder] = folder.glob(".docshift/runs/*/")
    assert f"resume with `docshift run --execute --resume {run_folder.name}`" in err.strip().splitlines()[-1]


def test_injected_transient_failures_migrate_every_document_exactly_once(
    firestore_store: RetryingStore, emulator_config: Config, tmp_path: Path
) -> None:
    seed_users(firestore_store, 2000)
    before = export_all(firestore_store)
    project_folder(tmp_path)  # emulator_config reads tmp_path / "migrations"
    migrations = load_migrations(emulator_config.migrations_dir)
    users = {path: doc for path, doc in before.items() if path.startswith("users/")}
    faulty = FaultInjectingStore(
        firestore_store.inner, write_failure_rate=0.05, request_failure_rate=0.05, seed=5
    )
    store = RetryingStore(faulty, RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.05))
    report = run_migrations(emulator_config, RunOptions(execute=True), store=store)
    assert faulty.injected > 20 and store.retries > 10
    counters = {o.migration.id: o.result.counters for o in report.outcomes}
    changed_first = {p for p, d in users.items() if "full_name" in d.data}
    changed_second = {p for p, d in users.items() if isinstance(d.data.get("age"), str)}
    assert counters["0001"]["updated"] == len(changed_first) and counters["0001"]["failed"] == 0
    assert counters["0002"]["updated"] == len(changed_second) and counters["0002"]["failed"] == 0
    assert counters["0001"]["conflicts"] == counters["0002"]["conflicts"] == 0
    for label, changed in (("0001_split_full_name", changed_first), ("0002_normalise_age", changed_second)):
        journal = JournalReader(report.folder / label / "before-images.jsonl.gz")
        kinds = Counter((e.kind, e.path) for e in journal)
        assert {path for kind, path in kinds if kind == "before"} == changed
        assert {path for kind, path in kinds if kind == "written"} == changed
        assert set(kinds.values()) == {1}, "a document was written more than once"
    after = export(firestore_store, ["users"])
    assert data_differences(after, apply_migrations(users, migrations)) == []
    # Each changed document was written exactly once: its update time is the one the journal recorded.
    journal = JournalReader(report.folder / "0002_normalise_age" / "before-images.jsonl.gz")
    written = {e.path: e.update_time for e in journal if e.kind == "written"}
    assert all(after[path].update_time == stamp for path, stamp in written.items())
    assert_history_applied(firestore_store, "0001", "0002")


FOLD = '''
"""Fold f0..f9 into one list (the application keeps writing `token`)."""

from docshift import UNCHANGED

description = "fold the f fields into a list"
collection = "items"


def up(doc):
    data = doc.data
    if "fs" in data:
        return UNCHANGED
    return {"token": data.get("token"), "fs": [data.pop(f"f{i}") for i in range(10)], "v": 2}
'''

APP = """
import json, random, sys, time
from pathlib import Path
from docshift.config import Config, StoreConfig
from docshift.store import Write, open_store

project, host, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = open_store(Config(store=StoreConfig(project=project, emulator_host=host)))
rng = random.Random()
last, failures, seq = {}, 0, 0
stop = out.with_suffix(".stop")
while not stop.exists():
    seq += 1
    path = f"items/i{rng.randrange(count):05d}"
    token = f"app-{seq}"
    [result] = store.commit([Write.update(path, {("token",): token})])
    if result.ok:
        last[path] = token
    else:
        failures += 1
    if seq == 20:
        out.with_suffix(".ready").touch()
out.write_text(json.dumps({"last": last, "writes": seq, "failures": failures}))
"""


def test_application_writes_during_the_run_are_never_lost(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    count = 800
    rows = [
        Write.set(f"items/i{i:05d}", {"token": None, **{f"f{k}": i * 10 + k for k in range(10)}})
        for i in range(count)
    ]
    for start in range(0, count, 400):
        assert all(r.ok for r in firestore_store.commit(rows[start : start + 400]))
    # The application rewrites each of the 800 documents every ~2 s while a write limit makes a
    # retry wait its turn; with the default 5 re-reads a document now and then (seen once in ~10
    # suite runs) keeps changing through all of them and is dead-lettered by design. More re-reads
    # keep this test about losing nothing, not about that bound (tested in tests/unit).
    folder = project_folder(
        tmp_path / "project",
        "batch_size = 50\nconflict_retries = 30\n",
        files=(),
        extra={"0001_fold.py": FOLD},
    )
    record = tmp_path / "app.json"
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            APP,
            cli_env["DOCSHIFT_PROJECT"],
            cli_env["FIRESTORE_EMULATOR_HOST"],
            str(count),
            str(record),
        ],
        env=cli_env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        ready = record.with_suffix(".ready")
        while not ready.exists() and time.monotonic() < deadline and app.poll() is None:
            time.sleep(0.02)
        assert app.poll() is None, "the application process died"
        result = docshift(folder, cli_env, "run", "--execute", "--json", "--max-writes-per-second", "400")
        time.sleep(0.3)  # the application keeps writing after the run, too
        record.with_suffix(".stop").touch()
        assert app.wait(30) == 0
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
    assert result.returncode == 0, result.stderr
    [finish] = [e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "finish"]
    app_log = json.loads(record.read_text())
    assert app_log["failures"] == 0 and app_log["writes"] > 50  # it wrote all along (the conflicts: during)
    assert finish["conflicts"] > 0, "the application never raced the run: the test proved nothing"
    assert finish["failed"] == 0 and finish["updated"] == count
    docs = {doc.path: doc.data for doc in firestore_store.stream(Query("items"))}
    lost = [p for p, token in app_log["last"].items() if docs[p]["token"] != token]
    assert lost == [], f"{len(lost)} application writes lost, e.g. {lost[:3]}"
    for path, data in docs.items():
        i = int(path.rsplit("i", 1)[1])
        assert data == {"token": app_log["last"].get(path), "fs": [i * 10 + k for k in range(10)], "v": 2}


def test_a_dry_run_writes_nothing(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 1500)
    seed_bystanders(firestore_store)
    before = export_all(firestore_store, SUBCOLLECTIONS)
    folder = project_folder(tmp_path / "project")
    result = docshift(folder, cli_env, "run")
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing was written" in result.stdout
    after = export_all(firestore_store, SUBCOLLECTIONS)
    assert differences(after, before) == []  # same documents, values and update times
    assert firestore_store.list_collections() == ["audit", "teams", "users"]  # no history, no lease
    json_run = docshift(folder, cli_env, "run", "--json", "--sample", "50", "--limit", "300")
    assert json_run.returncode == 0, json_run.stderr
    assert differences(export_all(firestore_store, SUBCOLLECTIONS), before) == []


PRUNE_INACTIVE = '''"""Delete inactive users, mark the others reviewed."""
from docshift import DELETE, UNCHANGED

description = "prune inactive users"
collection = "users"


def up(doc):
    if not doc.get("active"):
        return DELETE
    data = doc.data
    if data.get("reviewed") or doc.id.endswith("7"):
        return UNCHANGED
    data["reviewed"] = True
    return data
'''


def _migrate_users(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = docshift(folder, env, "run", "--execute", "--json", *args)
    if done.returncode == 6:  # locked: the killed run's lease has not expired; remove it
        assert docshift(folder, env, "unlock", "--force", "--yes").returncode == 0
        done = docshift(folder, env, "run", "--execute", "--json", *args)
    assert done.returncode == 0, done.stderr
    return done


def test_a_resume_after_kill_9_counts_what_the_killed_process_wrote(
    firestore_store: RetryingStore, emulator_config: Config, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Killed twice with hundreds of writes past its last checkpoint (saved as each process starts):
    the resumed run's history counts equal those of a run never stopped, over the same data (seeded
    alike in another project), and not some of its writes as unchanged or its deletes not at all."""
    count = 3000
    config = "checkpoint_every_docs = 100000\ncheckpoint_every_seconds = 3600\nbatch_size = 100\n"
    migration = {"0001_prune.py": PRUNE_INACTIVE}
    other = dataclasses.replace(emulator_config.store, project=f"{emulator_config.store.project}-clean")
    retry = RetryPolicy(attempts=6, initial_wait=0.01, max_wait=0.05)
    clean_store = open_store(dataclasses.replace(emulator_config, store=other), retry=retry)
    try:
        for store in (firestore_store, clean_store):
            seed_users(store, count)
        clean_folder = project_folder(tmp_path / "clean", config, files=(), extra=migration)
        _migrate_users(clean_folder, {**cli_env, "DOCSHIFT_PROJECT": other.project})
        truth = History(clean_store, PREFIX).all()["0001"]
        expected = {doc.path: doc.data for doc in clean_store.stream(Query("users"))}
    finally:
        clean_store.close()
    assert truth.status is MigrationStatus.APPLIED
    assert truth.counts["deleted"] and truth.counts["updated"] and truth.counts["unchanged"]

    folder = project_folder(tmp_path / "project", config, files=(), extra=migration)
    for kill, moment in enumerate((1.2, 1.0)):
        run_until_killed(folder, cli_env, moment, tmp_path / f"stderr-{kill}.txt", writes_per_second=800)
        [checkpoint] = checkpoints(folder)
        written = sum(1 for doc in firestore_store.stream(Query("users")) if doc.data.get("reviewed"))
        written += count - firestore_store.count(Query("users"))
        claimed = sum(checkpoint.counters.get(kind, 0) for kind in ("updated", "deleted"))
        assert written > claimed, f"kill {kill}: {written} written, {claimed} checkpointed"

    _migrate_users(folder, cli_env, "--resume", "--max-writes-per-second", "0")

    record = History(firestore_store, PREFIX).all()["0001"]
    assert record.status is MigrationStatus.APPLIED
    names = ("read", "updated", "created", "deleted", "unchanged", "failed", "skipped")
    told = {name: truth.counts.get(name, 0) for name in names}
    assert {name: record.counts.get(name, 0) for name in names} == told
    [checkpoint] = checkpoints(folder)
    assert {name: checkpoint.counters.get(name, 0) for name in names} == told
    after = {doc.path: doc.data for doc in firestore_store.stream(Query("users"))}
    assert after.keys() == expected.keys()
    # A reference names its own project: compare everything else.
    assert all(
        values_equal(
            {k: v for k, v in after[path].items() if k != "team"},
            {k: v for k, v in expected[path].items() if k != "team"},
        )
        for path in after
    )

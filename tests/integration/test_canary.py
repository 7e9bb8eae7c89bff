"""Canary stages against the emulator: growing subsets, gates between them, and rollback of every
stage when a gate fails or a trigger fires."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from docshift.config import Config
from docshift.engine.sampling import bucket
from docshift.errors import ExitCode
from docshift.history import History, MigrationStatus
from docshift.runfolder import Checkpoint, DeadLetterFile, layout
from docshift.store import Query, Store, Write
from docshift.values import values_equal
from tests.gate_message import gate_numbers

DOCSHIFT = str(Path(sys.executable).parent / "docshift")
COUNT = 1200

MIGRATION = '''
"""Give every user a tier."""
from typing import Any
from docshift import DocView, UNCHANGED
from docshift.engine.sampling import bucket
from docshift.validators import not_null

description = "add tier"
collection = "users"
rules = [not_null("tier")]
BROKEN_FROM = {broken_from}

def up(doc: DocView) -> Any:
    if "tier" in doc:
        return UNCHANGED
    data = doc.data
    # A bug that only shows past the first stage: documents in buckets [BROKEN_FROM, 100) get None.
    data["tier"] = None if bucket(doc.path) >= BROKEN_FROM else "silver"
    return data
'''


def seed(store: Store) -> dict[str, dict[str, object]]:
    writes = [Write.set(f"users/u{i:05d}", {"n": i, "name": f"user {i}"}) for i in range(COUNT)]
    for start in range(0, COUNT, 400):
        assert all(r.ok for r in store.commit(writes[start : start + 400]))
    return export(store)


def export(store: Store) -> dict[str, dict[str, object]]:
    return {doc.path: doc.data for doc in store.stream(Query("users"))}


def assert_same(actual: dict[str, dict[str, object]], expected: dict[str, dict[str, object]]) -> None:
    assert actual.keys() == expected.keys()
    wrong = [p for p in expected if not values_equal(actual[p], expected[p])]
    assert not wrong, f"{len(wrong)} documents differ from the pre-run export, e.g. {wrong[:3]}"


def workdir(tmp_path: Path, broken_from: float) -> Path:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_tier.py").write_text(MIGRATION.format(broken_from=broken_from))
    return tmp_path


def docshift(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )


def test_all_stages_pass_and_migrate_every_document(
    firestore_store: Store,
    emulator_config: Config,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    before = seed(firestore_store)
    cwd = workdir(tmp_path, broken_from=101)  # no bug
    done = docshift(["run", "--execute", "--stages", "1%,10%,50%,100%"], cli_env, cwd)
    assert done.returncode == 0, done.stderr
    after = export(firestore_store)
    assert after.keys() == before.keys()
    assert all(after[p] == {**before[p], "tier": "silver"} for p in before)
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert record.counts["updated"] == COUNT
    for stage in ("stage 1 of 4", "stage 2 of 4", "stage 3 of 4", "stage 4 of 4"):
        assert stage in done.stderr
    # The report's working time is every stage's, not the last one's.
    [folder] = run_folders(cwd)
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    stage_seconds = [e["elapsed_seconds"] for e in events if e["event"] == "finish" and "stages" not in e]
    assert len(stage_seconds) == 4
    report = json.loads((folder / "report.json").read_text())
    assert report["duration_seconds"] == pytest.approx(sum(stage_seconds), abs=0.01)
    assert report["duration_seconds"] > max(stage_seconds)
    [listed] = json.loads(docshift(["runs", "--json"], cli_env, cwd).stdout)
    assert listed["duration_seconds"] == pytest.approx(report["duration_seconds"], abs=0.01)
    assert listed["counts"]["updated"] == COUNT and report["totals"]["updated"] == COUNT


def run_folders(cwd: Path) -> list[Path]:
    """Oldest first."""
    return [folder.path for folder in reversed(layout.run_folders(cwd / ".docshift" / "runs"))]


def test_a_stage_stopped_by_a_rule_tells_the_same_story_everywhere(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The integrity gate stops stage 2: the rejected documents are in the dead letters the hint
    names, and the error, validation-inline.json, the report, the history, `runs` and `show` all
    count the same documents (every stage's), and all say rolled_back."""
    seed(firestore_store)
    cwd = workdir(tmp_path, broken_from=5)
    stopped = docshift(["run", "--execute", "--stages", "1%,10%,50%,100%"], cli_env, cwd)
    assert stopped.returncode == ExitCode.EMERGENCY_STOP, stopped.stderr
    [folder] = run_folders(cwd)
    letters_file = folder / "0001_tier" / "dead-letters.jsonl"
    letters = list(DeadLetterFile(letters_file))
    assert letters and all(letter["stage"] == "validate" for letter in letters)
    assert str(letters_file) in stopped.stderr  # the hint names the file, which exists
    [error] = [line for line in stopped.stderr.splitlines() if line.startswith("error: ")]
    checked, refused = gate_numbers(error)
    inline = json.loads((folder / "0001_tier" / "validation-inline.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    [row] = report["migrations"]
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    assert (
        (inline["checked"], inline["failed"])
        == (checked, refused)
        == (row["counters"]["checked"], row["counters"]["rejected"])
    )
    assert len(letters) == refused == row["dead_letters"]
    assert {k: record.counts.get(k, 0) for k in row["counters"]} == row["counters"]
    first_stage = sum(1 for path in export(firestore_store) if bucket(path) < 1)
    assert row["counters"]["updated"] >= first_stage  # stage 1's updates count too
    assert row["rollback"]["restored"] == row["counters"]["updated"]
    states = {
        json.loads((folder / "run.json").read_text())["state"],
        report["state"],
        report["outcome"]["state"],
        row["state"],
        json.loads(docshift(["show", "--json"], cli_env, cwd).stdout)["state"],
        json.loads(docshift(["runs", "--json"], cli_env, cwd).stdout)[0]["state"],
    }
    assert states == {"rolled_back"}
    assert "resume" not in report["commands"]


def test_a_second_stage_breaking_a_rule_rolls_every_stage_back(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    before = seed(firestore_store)
    in_first = [p for p in before if bucket(p) < 1]
    assert in_first, "the 1% stage must hold some documents for this test to mean anything"
    cwd = workdir(tmp_path, broken_from=5)  # stage 1 (0-1%) is clean, stage 2 (1-10%) is not
    stopped = docshift(["run", "--execute", "--stages", "1%,10%,50%,100%"], cli_env, cwd)
    assert stopped.returncode == ExitCode.EMERGENCY_STOP, stopped.stderr
    assert "stage 2 (10%)" in stopped.stderr and "rolled back" in stopped.stderr
    assert "resume with" not in stopped.stderr
    assert_same(export(firestore_store), before)  # stage 1's writes were undone too
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    again = docshift(["run", "--execute", "--resume"], cli_env, cwd)
    assert again.returncode != 0


def test_auto_rollback_leaves_a_canary_run_to_its_own_stage_rollback(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The integrity gate stops stage 2 and the stages are rolled back; --auto-rollback must not roll
    the run back a second time, and the run is closed all the same."""
    before = seed(firestore_store)
    cwd = workdir(tmp_path, broken_from=5)
    stopped = docshift(["run", "--execute", "--stages", "1%,10%,50%,100%", "--auto-rollback"], cli_env, cwd)
    assert stopped.returncode == ExitCode.EMERGENCY_STOP, stopped.stderr
    assert "every stage so far was rolled back" in stopped.stderr
    assert "rolling back run" not in stopped.stderr and "auto-rollback failed" not in stopped.stderr
    assert_same(export(firestore_store), before)
    [run_json] = cwd.glob(".docshift/runs/*/run.json")
    assert json.loads(run_json.read_text())["state"] == "rolled_back"
    assert len(list(cwd.glob(".docshift/runs/*/run.json"))) == 1  # no rollback run of its own
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK


def test_the_latency_trigger_rolls_back(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    before = seed(firestore_store)
    cwd = workdir(tmp_path, broken_from=101)
    env = {
        **cli_env,
        "DOCSHIFT_STAGE_MAX_P95_MS": "0.5",
        "DOCSHIFT_BATCH_SIZE": "20",
        "DOCSHIFT_MIN_BATCH_SIZE": "20",
    }
    stopped = docshift(["run", "--execute", "--stages", "50%,100%"], env, cwd)
    assert stopped.returncode == ExitCode.EMERGENCY_STOP, stopped.stderr
    assert "p95" in stopped.stderr
    assert "is above 0.5 ms" in stopped.stderr  # the limit as given, not rounded to "0 ms"
    assert_same(export(firestore_store), before)


def test_pause_between_stages_waits_for_the_operator(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    seed(firestore_store)
    cwd = workdir(tmp_path, broken_from=101)
    command = [DOCSHIFT, "run", "--execute", "--stages", "10%,100%", "--pause-between-stages"]
    process = subprocess.Popen(
        command, env=cli_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        markers: list[Path] = []
        while time.monotonic() < deadline and not markers:
            markers = list((cwd / ".docshift" / "runs").glob("*/pause"))
            time.sleep(0.2)
        assert markers, "the run never paused after its first stage"
        tiers = sum(1 for d in export(firestore_store).values() if "tier" in d)
        assert 0 < tiers < COUNT
        time.sleep(1.5)
        assert sum(1 for d in export(firestore_store).values() if "tier" in d) == tiers  # paused
        assert process.poll() is None
        markers[0].unlink()  # the operator says go on
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert all(d.get("tier") == "silver" for d in export(firestore_store).values())


# --------------------------------------------------------------------------- kill -9 and resume

KILL_COUNT = 2000
STAGES = "1%,10%,50%,100%"


def seed_many(store: Store, count: int) -> dict[str, dict[str, object]]:
    writes = [Write.set(f"users/u{i:05d}", {"n": i, "name": f"user {i}"}) for i in range(count)]
    for start in range(0, count, 400):
        assert all(r.ok for r in store.commit(writes[start : start + 400]))
    return export(store)


class Watched:
    """``docshift … --json`` in its own process group, its events read as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as errors:
            self.process = subprocess.Popen(
                [DOCSHIFT, *args, "--json"],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
        self.events: queue.Queue[dict[str, object] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put(None)

    def wait_for(self, wanted: Callable[[dict[str, object]], bool], what: str) -> dict[str, object]:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                event = self.events.get(timeout=1)
                if event is None:
                    self.process.wait(10)
                    raise AssertionError(
                        f"the run ended (exit {self.process.returncode}) before {what}: "
                        f"{self.log.read_text()}"
                    )
                if wanted(event):
                    return event
        raise AssertionError(f"no {what} within 180 s: {self.log.read_text()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may have ended on its own (a failed test)
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def stage_checkpoint(cwd: Path) -> Checkpoint:
    [path] = cwd.glob(".docshift/runs/*/0001_tier/checkpoint.json")
    return Checkpoint.load(path)


def kill_env(cli_env: dict[str, str]) -> dict[str, str]:
    return {
        **cli_env,
        "DOCSHIFT_BATCH_SIZE": "10",
        "DOCSHIFT_MIN_BATCH_SIZE": "5",
        "DOCSHIFT_CHECKPOINT_EVERY_SECONDS": "0.2",
    }


def test_kill_9_during_every_stage_then_resume_continues_the_stages_to_applied(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Killed during stage 1, its resume killed during stage 2, that one's during stage 3, and during
    stage 4; each resume is given no --stages (they are the run's), only a faster write limit so the
    next stage is reached. The last resume finishes: every document migrated, and only then applied."""
    before = seed_many(firestore_store, KILL_COUNT)
    cwd = workdir(tmp_path, broken_from=101)
    env = kill_env(cli_env)
    # Slow enough that each stage lasts seconds: a kill at its first checkpoint lands inside it.
    rates = {1: "4", 2: "40", 3: "150", 4: "300"}
    for stage, rate in rates.items():
        args = ["run", "--execute", "--max-writes-per-second", rate]
        args += ["--stages", STAGES] if stage == 1 else ["--resume"]
        watched = Watched(args, env, cwd, tmp_path / f"stderr-{stage}.txt")
        try:
            watched.wait_for(
                lambda e, s=stage: e.get("event") == "stage" and e.get("stage") == s, f"stage {stage}"
            )
            watched.wait_for(
                lambda e: e.get("event") == "checkpoint" and any(e.get("cursors") or ()),
                f"a checkpoint in stage {stage}",
            )
        finally:
            watched.kill()
        saved = stage_checkpoint(cwd)
        assert saved.stages is not None and saved.stages.stage == stage - 1, f"killed in stage {stage}"
        assert not saved.finished, f"killed in stage {stage}"
        record = History(firestore_store, "_docshift").get("0001")
        assert record is not None and record.status is MigrationStatus.RUNNING  # as killed
        assert docshift(["status"], cli_env, cwd).returncode == ExitCode.PENDING
    done = docshift(["run", "--execute", "--resume", "--max-writes-per-second", "0"], env, cwd)
    assert done.returncode == 0, done.stderr
    after = export(firestore_store)
    assert after.keys() == before.keys()
    missed = [p for p in before if after[p] != {**before[p], "tier": "silver"}]
    assert missed == [], f"{len(missed)} documents were never migrated, e.g. {missed[:3]}"
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert record.counts["updated"] + record.counts["unchanged"] == KILL_COUNT
    assert docshift(["status"], cli_env, cwd).returncode == 0


def test_kill_9_during_the_rollback_of_a_failed_stage_then_resume_finishes_the_rollback(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    before = seed_many(firestore_store, KILL_COUNT)
    cwd = workdir(tmp_path, broken_from=5)  # stage 2 (1-10%) breaks the rule: everything is rolled back
    env = kill_env(cli_env)
    watched = Watched(
        ["run", "--execute", "--stages", STAGES, "--max-writes-per-second", "20"],
        env,
        cwd,
        tmp_path / "stderr-run.txt",
    )
    try:
        watched.wait_for(
            lambda e: e.get("event") == "warning" and "rolling back" in str(e.get("message")),
            "the rollback of the stages",
        )
        time.sleep(1.0)  # a few restore batches at 20 writes/s, of the ~100 documents written
    finally:
        watched.kill()
    rollback = stage_checkpoint(cwd).stage_rollback
    assert rollback is None or not rollback.done
    assert any("tier" in data for data in export(firestore_store).values()), "the rollback had finished"
    resumed = docshift(["run", "--execute", "--resume", "--max-writes-per-second", "0"], env, cwd)
    assert resumed.returncode == ExitCode.EMERGENCY_STOP, resumed.stderr
    assert "rolled back" in resumed.stderr and "finished by this resume" in resumed.stderr
    assert_same(export(firestore_store), before)
    record = History(firestore_store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    again = docshift(["run", "--execute", "--resume"], env, cwd)
    assert again.returncode == ExitCode.USAGE, again.stderr
    assert "hint:" in again.stderr and "new run" in again.stderr

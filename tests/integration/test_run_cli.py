"""``docshift run`` as a real subprocess against the emulator: dry-run output, --json events, exit codes."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from docshift.history import History, MigrationStatus
from docshift.store import Document, RetryingStore
from tests.integration.run_support import (
    DOCSHIFT,
    PREFIX,
    differences,
    docshift,
    export,
    export_all,
    project_folder,
    seed_users,
    where,
)

COLUMNS = ("updated", "deleted", "created", "unchanged", "failed", "conflicts", "skipped", "state")


def summary(stdout: str) -> dict[str, dict[str, Any]]:
    """The summary table's rows: migration label -> counts and state."""
    rows: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == 9 and re.fullmatch(r"\d{4,}_\w+", cells[0]):
            values = [int(c.replace(",", "")) for c in cells[1:8]] + [cells[8]]
            rows[cells[0]] = dict(zip(COLUMNS, values, strict=True))
    return rows


def shown_changes(stdout: str) -> dict[str, list[str]]:
    """The sample diffs printed by a dry run: path -> its change lines."""
    shown: dict[str, list[str]] = {}
    current: list[str] = []
    for line in stdout.splitlines():
        match = re.fullmatch(r"  (update|delete|create) (\S+)", line)
        if match:
            current = shown.setdefault(match.group(2), [])
        elif re.match(r"      [-+~] ", line):
            current.append(line.strip())
    return shown


@pytest.fixture
def seeded(firestore_store: RetryingStore) -> dict[str, Document]:
    seed_users(firestore_store, 600)
    return export(firestore_store, ["users"])


def test_dry_run_prints_field_diffs_and_counts(
    seeded: dict[str, Document], firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path)
    before = export_all(firestore_store)
    result = docshift(folder, cli_env, "run")
    assert result.returncode == 0, result.stderr
    has_name = where(seeded, lambda d: "full_name" in d)
    text_age = where(seeded, lambda d: isinstance(d.get("age"), str))
    rows = summary(result.stdout)
    assert rows["0001_split_full_name"] == {
        "updated": len(has_name),
        "deleted": 0,
        "created": 0,
        "unchanged": 600 - len(has_name),
        "failed": 0,
        "conflicts": 0,
        "skipped": 0,
        "state": "finished",
    }
    assert rows["0002_normalise_age"]["updated"] == len(text_age)
    assert rows["0002_normalise_age"]["unchanged"] == 600 - len(text_age)
    assert "would update" in result.stdout and "dry run: nothing was written" in result.stdout
    shown = shown_changes(result.stdout)
    assert len(shown) == 10  # five samples per migration
    for path, lines in shown.items():
        data = seeded[path].data
        if path in has_name and not lines[0].startswith("~ age"):
            first, _, last = data["full_name"].partition(" ")
            assert lines == [
                f"- full_name: {data['full_name']!r}",
                f"+ first_name: {first!r}",
                f"+ last_name: {(last or None)!r}",
            ]
        else:
            assert lines == [f"~ age: {data['age']!r} -> {int(data['age'])!r}"]
    # The whole plan is saved: one line per change.
    [run_folder] = (folder / ".docshift" / "runs").iterdir()
    with gzip.open(run_folder / "0001_split_full_name" / "plan.jsonl.gz") as plan:
        records = [json.loads(line) for line in plan]
    assert {r["path"] for r in records} == has_name
    assert differences(export_all(firestore_store), before) == []


def test_dry_run_limit_and_sample(
    seeded: dict[str, Document], cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path)
    limited = docshift(folder, cli_env, "run", "--only", "0001", "--limit", "40", "--quiet")
    assert limited.returncode == 0, limited.stderr
    [row] = summary(limited.stdout).values()
    first40 = dict(sorted(seeded.items())[:40])
    assert row["updated"] == len(where(first40, lambda d: "full_name" in d))
    assert row["updated"] + row["unchanged"] == 40
    sampled = docshift(folder, cli_env, "run", "--only", "0001", "--sample", "25", "--quiet")
    assert sampled.returncode == 0, sampled.stderr
    [row] = summary(sampled.stdout).values()
    assert 100 < row["skipped"] < 500 and row["updated"] + row["unchanged"] + row["skipped"] == 600
    again = docshift(folder, cli_env, "run", "--only", "0001", "--sample", "25", "--quiet")
    assert summary(again.stdout) == summary(sampled.stdout)  # the same documents every time


def test_execute_json_events_parse_and_match_the_store(
    seeded: dict[str, Document], firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path, "checkpoint_every_seconds = 0.1\n")
    result = docshift(folder, cli_env, "run", "--execute", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    assert all(isinstance(e["event"], str) and isinstance(e["at"], float) for e in events)
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == kinds.count("finish") == 2 and "stop" not in kinds
    assert kinds[0] == "start" and "checkpoint" in kinds
    finish = {e["migration"]: e for e in events if e["event"] == "finish"}
    after = export(firestore_store, ["users"])
    changed_time = {p for p in after if after[p].update_time != seeded[p].update_time}
    split = where(after, lambda d: "first_name" in d and "full_name" not in d)
    had_name = where(seeded, lambda d: "full_name" in d)
    assert finish["0001_split_full_name"]["updated"] == len(split) == len(had_name)
    fixed = {p for p in seeded if isinstance(seeded[p].data.get("age"), str)}
    assert all(not isinstance(after[p].data.get("age"), str) for p in after)
    assert finish["0002_normalise_age"]["updated"] == len(fixed)
    assert changed_time == split | fixed
    for event in finish.values():
        assert event["read"] == 600 and event["failed"] == 0 and event["reason"] is None
        assert event["processed"] == event["updated"] + event["unchanged"]
    # The history records the same counts.
    records = History(firestore_store, PREFIX).all()
    assert records["0001"].status is MigrationStatus.APPLIED
    assert records["0001"].counts["updated"] == finish["0001_split_full_name"]["updated"]
    # Checkpoint events name the cursor; the last one is the last document.
    last_checkpoint = [e for e in events if e["event"] == "checkpoint"][-1]
    assert last_checkpoint["state"] == "finished" and last_checkpoint["cursors"] == [max(seeded)]
    # Nothing left to do: a second run says so and writes nothing.
    again = docshift(folder, cli_env, "run", "--execute")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert differences(export(firestore_store, ["users"]), after) == []


def test_a_failing_migration_reports_dead_letters_and_exit_13(
    seeded: dict[str, Document], firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    source = (
        '"""Fails on every 33rd user."""\n\n'
        'description = "fails sometimes"\ncollection = "users"\n\n\n'
        "def up(doc):\n"
        "    if int(doc.id[1:]) % 33 == 0:\n"
        '        raise ValueError("no good")\n'
        '    return {**doc.data, "checked": True}\n'
    )
    folder = project_folder(tmp_path, files=(), extra={"0001_check.py": source})
    result = docshift(folder, cli_env, "run", "--execute", "--max-failures", "10")
    assert result.returncode == 13, result.stderr
    assert "more than --max-failures 10" in result.stderr
    assert "docshift run --execute --resume" in result.stderr
    [run_folder] = (folder / ".docshift" / "runs").iterdir()
    dead = run_folder / "0001_check" / "dead-letters.jsonl"
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letters and all(int(r["path"].split("/u")[1]) % 33 == 0 for r in letters)
    assert {r["error"] for r in letters} == {"ValueError: no good"}
    resumed = docshift(folder, cli_env, "run", "--execute", "--resume", "--max-failures", "100%")
    assert resumed.returncode == 0, resumed.stderr
    after = export(firestore_store, ["users"])
    failing = {p for p in seeded if int(p.split("/u")[1]) % 33 == 0}  # 19 of 600
    assert {p for p in after if after[p].data.get("checked")} == set(seeded) - failing
    lines = dead.read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(failing)


def test_resume_refuses_while_the_run_is_still_going(
    seeded: dict[str, Document], firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path, "checkpoint_every_seconds = 0.2\n", files=("0001_split_full_name.py",))
    first = subprocess.Popen(  # about 12 s of writes: a second CLI starting cold has time to be refused
        [DOCSHIFT, "run", "--execute", "--max-writes-per-second", "50"],
        cwd=folder,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(folder.glob(".docshift/runs/*/*/checkpoint.json")):
            time.sleep(0.05)
        second = docshift(folder, cli_env, "run", "--execute", "--resume")
        assert first.poll() is None, "the first run ended too soon for this test"
        assert second.returncode == 6, second.stderr
        assert "is still running" in second.stderr
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err
    after = export(firestore_store, ["users"])
    assert len(where(after, lambda d: "first_name" in d)) == len(where(seeded, lambda d: "full_name" in d))
    assert summary(out)["0001_split_full_name"]["conflicts"] == 0  # nobody else wrote meanwhile


def test_execute_with_limit_is_partial_pending_and_the_next_run_processes_the_rest(
    seeded: dict[str, Document], firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path, files=("0001_split_full_name.py",))
    limited = docshift(folder, cli_env, "run", "--execute", "--limit", "40")
    assert limited.returncode == 0, limited.stderr
    row = summary(limited.stdout)["0001_split_full_name"]
    assert row["state"] == "partial" and row["updated"] + row["unchanged"] == 40
    assert "recorded as partial, not applied" in " ".join(limited.stdout.split())
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.PARTIAL and record.counts["read"] == 40
    pending = docshift(folder, cli_env, "status")
    assert pending.returncode == 9, pending.stdout
    assert "partial" in pending.stdout and "up to date" not in pending.stdout
    now = export(firestore_store, ["users"])
    changed = [p for p, doc in now.items() if doc.update_time != seeded[p].update_time]
    assert set(changed) <= set(sorted(seeded)[:40])

    rest = docshift(folder, cli_env, "run", "--execute")
    assert rest.returncode == 0, rest.stderr
    row = summary(rest.stdout)["0001_split_full_name"]
    assert row["state"] == "applied" and row["updated"] + row["unchanged"] == 600
    after = export(firestore_store, ["users"])
    assert where(after, lambda d: "full_name" in d) == set()
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    done = docshift(folder, cli_env, "status")
    assert done.returncode == 0 and "up to date" in done.stdout


def _interrupt(folder: Path, env: dict[str, str], *args: str, after: float = 0.0) -> str:
    """Start ``docshift run ARGS``, SIGTERM it ``after`` seconds after it checkpointed progress;
    its stderr."""
    before = {p: p.stat().st_mtime_ns for p in folder.glob(".docshift/runs/*/*/checkpoint.json")}
    process = subprocess.Popen(
        [DOCSHIFT, "run", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and process.poll() is None
            and not any(
                before.get(p) != p.stat().st_mtime_ns
                for p in folder.glob(".docshift/runs/*/*/checkpoint.json")
            )
        ):
            time.sleep(0.05)
        time.sleep(after)
        assert process.poll() is None, process.communicate()
        os.kill(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 10, err
    return " ".join(err.split())


def test_a_resume_keeps_the_run_s_settings_and_a_flag_given_on_it_overrides_them(
    seeded: dict[str, Document], firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path, "checkpoint_every_seconds = 0.2\n", files=("0001_split_full_name.py",))
    first = _interrupt(
        folder,
        cli_env,
        "--execute",
        "--max-writes-per-second",
        "40",
        "--batch-size",
        "20",
        "--concurrency",
        "2",
        "--max-failures",
        "3%",
    )
    assert "write limit: 40 ops/s" in first
    [run_folder] = folder.glob(".docshift/runs/*/")
    second = _interrupt(folder, cli_env, "--execute", "--resume", after=2.5)  # none of the flags again
    assert "write limit: 40 ops/s" in second
    assert (
        f"resuming run {run_folder.name} with its own settings: write limit 40 ops/s, batch size 20, "
        "concurrency 2, shards 1, max failures 3%, backup on"
    ) in second
    assert "overrides" not in second
    events = [json.loads(line) for line in (run_folder / "events.jsonl").read_text().splitlines()]
    resumed_at = [i for i, e in enumerate(events) if e["event"] == "resume"]
    assert len(resumed_at) == 1
    limits = {e["write_limit"] for e in events[resumed_at[0] :] if e["event"] == "progress"}
    assert limits == {40}

    third = docshift(folder, cli_env, "run", "--execute", "--resume", "--max-writes-per-second", "5000")
    assert third.returncode == 0, third.stderr
    err = " ".join(third.stderr.split())
    assert "write limit: 5,000 ops/s" in err
    assert "--max-writes-per-second 5000 overrides the run's max writes per second 40" in err
    change = {"max_writes_per_second": {"was": 40.0, "now": 5000.0}}
    info = json.loads((run_folder / "run.json").read_text())
    assert info["settings"]["config"]["max_writes_per_second"] == 5000.0
    assert info["settings"]["config"]["batch_size"] == 20 and info["overrides"] == change
    assert [r["overrides"] for r in info["resumes"]] == [{}, change]
    report = json.loads((run_folder / "report.json").read_text())
    assert report["settings"]["overridden on resume"] == change
    assert report["settings"]["run"]["config"]["max_failures"] == "3%"
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED and record.overrides == change
    shown = json.loads(docshift(folder, cli_env, "status", "--json").stdout)
    assert shown["migrations"][0]["overrides"] == change
    after = export(firestore_store, ["users"])
    assert where(after, lambda d: "full_name" in d) == set()


def test_a_resume_cannot_change_what_the_run_processes(
    seeded: dict[str, Document], firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = project_folder(tmp_path, "checkpoint_every_seconds = 0.2\n", files=("0001_split_full_name.py",))
    _interrupt(folder, cli_env, "--execute", "--max-writes-per-second", "40", "--limit", "300")
    refused = docshift(folder, cli_env, "run", "--execute", "--resume", "--limit", "500")
    assert refused.returncode == 2, refused.stderr
    assert "cannot change --limit" in refused.stderr and "hint:" in refused.stderr
    staged = docshift(folder, cli_env, "run", "--execute", "--resume", "--stages", "50%,100%")
    assert staged.returncode == 2 and "cannot change --stages" in staged.stderr
    done = docshift(folder, cli_env, "run", "--execute", "--resume", "--max-writes-per-second", "0")
    assert done.returncode == 0, done.stderr
    assert "--limit 300" in done.stderr
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.PARTIAL and record.counts["read"] == 300

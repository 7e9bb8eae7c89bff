"""The run folder's disk fills up during a real run (a 128 KiB tmpfs), and signals arrive while a
finished run tears down: the CLI against the emulator, as an operator would see it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from docshift.history import History, MigrationStatus
from docshift.runfolder import JournalReader
from docshift.store import Document, RetryingStore
from docshift.values import values_equal
from tests.integration.run_support import (
    DOCSHIFT,
    PREFIX,
    apply_migrations,
    data_differences,
    docshift,
    examples,
    export,
    project_folder,
    seed_users,
)
from tests.mounts import resize, small_tmpfs

FIRST = ("0001_split_full_name.py",)


def test_a_full_runs_disk_stops_the_run_with_exit_12_saying_what_it_wrote_and_resume_and_rollback_are_exact(
    tmp_path: Path,
    cli_env: dict[str, str],
    firestore_store: RetryingStore,
) -> None:
    seed_users(firestore_store, 3000)
    original = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project", files=FIRST)
    (folder / "docshift.toml").write_text(
        'migrations_dir = "migrations"\nruns_dir = "disk/runs"\n', encoding="utf-8"
    )
    with small_tmpfs(folder / "disk", "128k"):
        full = docshift(folder, cli_env, "run", "--execute", "--yes", timeout=300)
        assert full.returncode == 12, full.stderr
        error = full.stderr[full.stderr.rindex("error: ") :]
        assert "No space left on device (ENOSPC)" in error and "no data was changed" not in full.stderr
        match = re.search(
            r"run (\S+) stopped at once: 0001_split_full_name: ([\d,]+) documents written "
            r"\(([\d,]+) updated\), each one's before-image on disk before it was sent",
            error,
        )
        assert match, error
        run_id, written = match.group(1), int(match.group(2).replace(",", ""))
        assert f"docshift run --execute --resume {run_id}" in error
        assert f"docshift rollback {run_id} --execute" in error
        now = export(firestore_store, ["users"])
        changed = {p for p in original if not values_equal(now[p].data, original[p].data)}
        assert 0 < written == len(changed) < 3000  # what it says it wrote is what the store holds
        journal = folder / "disk" / "runs" / run_id / "0001_split_full_name" / "before-images.jsonl.gz"
        images = {e.path: e for e in JournalReader(journal) if e.kind == "before"}
        assert changed <= images.keys()  # write-ahead: no document changed without its before-image
        assert all(values_equal(images[p].data or {}, original[p].data) for p in changed)
        record = History(firestore_store, PREFIX).get("0001")
        assert record is not None and record.status is not MigrationStatus.APPLIED

        resize(folder / "disk", "32m")  # the operator frees space
        resumed = docshift(folder, cli_env, "run", "--execute", "--resume", run_id, "--yes", timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        expected = apply_migrations(original, examples()[:1])
        assert data_differences(export(firestore_store, ["users"]), expected) == []

        undone = docshift(
            folder, cli_env, "rollback", run_id, "--execute", "--strategy", "restore", "--yes", timeout=300
        )
        assert undone.returncode == 0, undone.stderr
        restored = export(firestore_store, ["users"])
        assert restored.keys() == original.keys()
        assert [p for p in original if not values_equal(restored[p].data, original[p].data)] == []


def _signal_from_the_summary_until_exit(
    folder: Path, env: dict[str, str], signum: int
) -> tuple[int, int, str]:
    """Run to the end; from the moment the summary table is printed, send ``signum`` every
    millisecond until the process has exited. Returns (exit code, signals sent, stderr)."""
    process = subprocess.Popen(
        [DOCSHIFT, "run", "--execute", "--yes"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "│ 0001_split_full_name" in line and "applied" in line:
            break
    sent = 0
    while process.poll() is None:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(0.001)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, sent, stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_teardown_of_a_finished_run_does_not_change_its_exit_code(
    tmp_path: Path,
    cli_env: dict[str, str],
    firestore_store: RetryingStore,
    signum: int,
) -> None:
    seed_users(firestore_store, 200)
    original: dict[str, Document] = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project", files=FIRST)
    code, sent, stderr = _signal_from_the_summary_until_exit(folder, cli_env, signum)
    assert sent > 0  # the signals did arrive during the teardown
    assert code == 0, f"exit {code} after {sent} signals: {stderr[-2000:]}"
    assert "stopping" not in stderr and "Traceback" not in stderr
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    expected = apply_migrations(original, examples()[:1])
    assert data_differences(export(firestore_store, ["users"]), expected) == []

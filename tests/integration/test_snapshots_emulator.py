"""Pinned snapshots against the emulator, which honours read_time (see test_store_contract.py): a dry
run and a backup at a read time leave out what was written after it, and the CLI's --read-time."""

from __future__ import annotations

import shutil
from pathlib import Path

from docshift.backup.manifest import read_manifest
from docshift.backup.reader import read_records
from docshift.commands.backup import BackupOptions, backup
from docshift.commands.run import RunOptions, load_run_info, run_migrations
from docshift.config import Config
from docshift.store import Query, RetryingStore, Write
from tests.integration.run_support import EXAMPLES, docshift, project_folder


def _seed(store: RetryingStore, count: int) -> None:
    writes = [
        Write.set(f"users/u{index:03d}", {"full_name": f"First{index} Last{index}"}) for index in range(count)
    ]
    assert all(result.ok for result in store.commit(writes))


def _meanwhile(store: RetryingStore) -> None:
    writes = [
        Write.set("users/u000", {"full_name": "Changed Meanwhile"}),
        Write.set("users/z_new", {"full_name": "New Comer"}),
        Write.set("users/z_new2", {"full_name": "Late Comer"}),
        Write.delete("users/u001"),
    ]
    assert all(result.ok for result in store.commit(writes))


def test_a_dry_run_and_a_backup_at_a_read_time_leave_out_later_writes(
    emulator_config: Config, firestore_store: RetryingStore, tmp_path: Path
) -> None:
    _seed(firestore_store, 40)
    then = firestore_store.snapshot_time()
    before = {doc.path: doc.data for doc in firestore_store.stream(Query("users"))}
    _meanwhile(firestore_store)

    manifest = backup(
        emulator_config, BackupOptions(["users"], tmp_path / "backup", read_time=then), store=firestore_store
    )
    backed_up = {r.path: r.data for e in manifest.files for r in read_records(tmp_path / "backup", e)}
    assert backed_up == before and read_manifest(tmp_path / "backup").read_time == then

    emulator_config.migrations_dir.mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", emulator_config.migrations_dir)
    pinned = run_migrations(emulator_config, RunOptions(read_time=then), store=firestore_store)
    assert pinned.outcomes[0].result.counters["updated"] == 40  # live: 40 - 1 + 2
    assert pinned.read_time == then and load_run_info(pinned.folder)["read_time"] == then.isoformat()
    live = run_migrations(emulator_config, RunOptions(), store=firestore_store)  # a new one: as of now
    assert live.outcomes[0].result.counters["updated"] == 41


def test_read_time_on_the_command_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    folder = project_folder(tmp_path / "project", files=["0001_split_full_name.py"])
    dry = docshift(folder, cli_env, "run", "--read-time", "-1s")
    assert dry.returncode == 0, dry.stderr
    assert "reads: snapshot at " in dry.stdout
    backed = docshift(folder, cli_env, "backup", "users", "--out", "b", "--read-time", "-2h")
    assert backed.returncode == 0, backed.stderr
    assert "point-in-time recovery" in backed.stderr and "reads: snapshot at " in backed.stdout
    pinned = read_manifest(folder / "b").read_time
    assert pinned is not None and pinned.nanos == 0 and pinned.seconds % 60 == 0  # older than an hour
    for args, message in (
        (("run", "--execute", "--yes", "--read-time", "-1m"), "--read-time is for dry runs"),
        (("backup", "users", "--out", "c", "--read-time", "-8d"), "more than seven days"),
        (("verify", "0001", "--read-time", "soon"), "is not a time"),
        (("validate", "0001", "--read-time", "2999-01-01T00:00:00Z"), "in the future"),
    ):
        refused = docshift(folder, cli_env, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert message in refused.stderr and "hint:" in refused.stderr, refused.stderr
    executed = docshift(folder, cli_env, "run", "--execute", "--yes")
    assert executed.returncode == 0, executed.stderr
    assert "reads: live" in executed.stdout

"""``docshift init / new / status / unlock`` run as real subprocesses against the emulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from docshift.history import History, MigrationStatus
from docshift.loader import load_migrations
from docshift.lock import LeaseLock, lease_path, read_lease
from docshift.store import Store, Write
from docshift.values import Timestamp

DOCSHIFT = str(Path(sys.executable).parent / "docshift")
PREFIX = "_docshift"


def docshift(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def status_json(cwd: Path, env: dict[str, str], *flags: str) -> tuple[int, dict[str, Any]]:
    result = docshift(cwd, env, *flags, "status", "--json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture
def project(tmp_path: Path, cli_env: dict[str, str]) -> Path:
    result = docshift(tmp_path, cli_env, "init")
    assert result.returncode == 0, result.stderr
    return tmp_path


def apply(
    store: Store, folder: Path, migration_id: str, status: MigrationStatus = MigrationStatus.APPLIED
) -> None:
    """Record a migration in the history the way a run does."""
    migration = {m.id: m for m in load_migrations(folder)}[migration_id]
    history = History(store, PREFIX)
    history.start(migration, f"run-{migration_id}")
    error = "boom" if status is MigrationStatus.FAILED else None
    history.finish(migration_id, status, {"read": 4, "written": 3}, error=error)


def test_init_creates_files_and_refuses_to_overwrite(tmp_path: Path, cli_env: dict[str, str]) -> None:
    first = docshift(tmp_path, cli_env, "--project", "demo-named", "init")
    assert first.returncode == 0, first.stderr
    assert "created docshift.toml" in first.stdout and "created migrations/" in first.stdout
    assert (tmp_path / "migrations").is_dir()
    assert 'project = "demo-named"' in (tmp_path / "docshift.toml").read_text()
    before = (tmp_path / "docshift.toml").read_text()
    second = docshift(tmp_path, cli_env, "init")
    assert second.returncode == 2
    assert "docshift.toml already exists; not overwritten" in second.stderr
    assert (tmp_path / "docshift.toml").read_text() == before


def test_new_then_status_pending_then_applied(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    created = docshift(project, cli_env, "new", "split full name", "--collection", "users")
    assert created.returncode == 0, created.stderr
    assert "created migrations/0001_split_full_name.py" in created.stdout
    second = docshift(project, cli_env, "new", "Tag orders", "--collection-group", "orders")
    assert "0002_tag_orders.py" in second.stdout
    assert 'collection_group = "orders"' in (project / "migrations/0002_tag_orders.py").read_text()

    code, report = status_json(project, cli_env)
    assert code == 9
    assert report["exit_code"] == 9 and report["summary"] == {"pending": 2} and report["lease"] is None
    assert [(m["id"], m["state"], m["description"]) for m in report["migrations"]] == [
        ("0001", "pending", "split full name"),
        ("0002", "pending", "Tag orders"),
    ]
    assert report["migrations"][0]["file"] == "migrations/0001_split_full_name.py"

    table = docshift(project, cli_env, "status")
    assert table.returncode == 9
    assert "split full name" in table.stdout and "pending" in table.stdout and "2 to run" in table.stdout

    apply(firestore_store, project / "migrations", "0001")
    apply(firestore_store, project / "migrations", "0002")
    code, report = status_json(project, cli_env)
    assert code == 0 and report["summary"] == {"applied": 2}
    first = report["migrations"][0]
    assert first["state"] == "applied" and first["counts"] == {"read": 4, "written": 3}
    assert first["user"] and "@" in first["user"] and first["run_id"] == "run-0001"
    assert first["finished_at"].endswith("Z") and first["checksum"] == first["applied_checksum"]
    table = docshift(project, cli_env, "status")
    assert table.returncode == 0 and "applied" in table.stdout and "up to date" in table.stdout


def test_failed_and_interrupted_migrations_count_as_pending(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    docshift(project, cli_env, "new", "one", "--collection", "users")
    docshift(project, cli_env, "new", "two", "--collection", "users")
    folder = project / "migrations"
    apply(firestore_store, folder, "0001", MigrationStatus.FAILED)
    History(firestore_store, PREFIX).start(load_migrations(folder)[1], "dead-run")
    code, report = status_json(project, cli_env)
    assert code == 9
    assert [(m["state"], m["label"]) for m in report["migrations"]] == [
        ("failed", "failed"),
        ("running", "interrupted"),
    ]
    assert report["migrations"][0]["error"] == "boom"


def test_drift_is_reported_with_both_checksums_and_wins_over_pending(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    docshift(project, cli_env, "new", "split full name", "--collection", "users")
    folder = project / "migrations"
    apply(firestore_store, folder, "0001")
    path = folder / "0001_split_full_name.py"
    path.write_text(path.read_text().replace('collection = "users"', 'collection = "people"'))
    docshift(project, cli_env, "new", "later", "--collection", "users")  # pending as well

    code, report = status_json(project, cli_env)
    assert code == 7
    drifted = report["migrations"][0]
    assert drifted["state"] == "drifted" and drifted["drift"] is True
    assert drifted["checksum"] != drifted["applied_checksum"]
    assert report["migrations"][1]["state"] == "pending"
    table = docshift(project, cli_env, "status")
    assert table.returncode == 7
    assert "drifted" in table.stdout and "migrations/0001_split_full_name.py" in table.stdout


def test_a_bad_migration_file_fails_status_with_one_line_naming_file_and_line(
    project: Path, cli_env: dict[str, str]
) -> None:
    (project / "migrations" / "0001_bad.py").write_text(
        "collection = 'users'\nwhere = [('a', '~', 1)]\n\ndef up(doc):\n    return doc.data\n"
    )
    result = docshift(project, cli_env, "status")
    assert result.returncode == 4
    first_line = result.stderr.splitlines()[0]
    assert first_line.startswith("error: migrations/0001_bad.py:2: where: unsupported filter operator '~'")


def test_new_without_init_points_at_init(tmp_path: Path, cli_env: dict[str, str]) -> None:
    result = docshift(tmp_path, cli_env, "new", "x", "--collection", "users")
    assert result.returncode == 2
    assert "migrations does not exist" in result.stderr and "docshift init" in result.stderr


def test_status_shows_the_lease_and_each_database_its_own_history(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    docshift(project, cli_env, "new", "one", "--collection", "users")
    apply(firestore_store, project / "migrations", "0001")
    with LeaseLock(firestore_store, PREFIX, run_id="live-run"):
        code, report = status_json(project, cli_env)
        assert code == 0
        assert report["lease"]["run_id"] == "live-run" and report["lease"]["expired"] is False
        assert "lease: locked by" in docshift(project, cli_env, "status").stdout
    code, other = status_json(project, cli_env, "--database", "reporting")
    assert code == 9 and other["migrations"][0]["state"] == "pending"
    assert "database reporting" in other["where"]


def test_unlock_needs_force_and_confirmation(
    project: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    no_force = docshift(project, cli_env, "unlock")
    assert no_force.returncode == 2 and "needs --force" in no_force.stderr
    nothing = docshift(project, cli_env, "unlock", "--force")
    assert nothing.returncode == 0 and "no lease is held" in nothing.stdout

    data = {
        "owner": "ghost@box",
        "pid": 4242,
        "run_id": "stuck-run",
        "acquired_at": Timestamp(1_700_000_000),
        "expires_at": Timestamp(4_000_000_000),
    }
    assert firestore_store.commit([Write.set(lease_path(PREFIX), data)])[0].ok
    refused = docshift(project, cli_env, "unlock", "--force")
    assert refused.returncode == 8
    assert "locked by ghost@box (pid 4242, run stuck-run)" in refused.stdout
    assert "needs confirmation" in refused.stderr and "--yes" in refused.stderr
    assert read_lease(firestore_store, PREFIX) is not None
    # DOCSHIFT_ASSUME_YES is read as the config reads a boolean (as for run, rollback and restore's
    # confirmation): "y" is no answer, and is refused before anything is read.
    unclear = docshift(project, {**cli_env, "DOCSHIFT_ASSUME_YES": "y"}, "unlock", "--force")
    assert unclear.returncode == 2 and "DOCSHIFT_ASSUME_YES must be true or false" in unclear.stderr
    assert read_lease(firestore_store, PREFIX) is not None

    removed = docshift(project, {**cli_env, "DOCSHIFT_ASSUME_YES": "on"}, "unlock", "--force")
    assert removed.returncode == 0, removed.stderr
    assert "removed the lease of run stuck-run" in removed.stdout
    assert read_lease(firestore_store, PREFIX) is None
    assert firestore_store.commit([Write.set(lease_path(PREFIX), data)])[0].ok
    removed = docshift(project, cli_env, "unlock", "--force", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "removed the lease of run stuck-run" in removed.stdout
    assert read_lease(firestore_store, PREFIX) is None

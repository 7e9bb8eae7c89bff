"""Backup and restore against the real emulator: a 20,000-document round trip with subcollections,
refused tampering, --into, --verify, collection groups, named databases, and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from docshift.backup import MANIFEST_NAME
from docshift.commands.backup import BackupOptions, backup, restore, verify
from docshift.config import Config, StoreConfig, with_values
from docshift.errors import DataError
from docshift.store import (
    DelegatingStore,
    Query,
    RetryingStore,
    Store,
    Write,
    WriteResult,
    open_store,
)
from docshift.values import Timestamp
from tests.backup_support import assert_same_documents, every_type, export, seed
from tests.conftest import FAST_RETRY

DOCSHIFT = str(Path(sys.executable).parent / "docshift")


def new_project() -> str:
    return f"demo-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_config(emulator_config: Config) -> Config:
    """A second, empty project on the same emulator: where backups are restored."""
    return with_values(emulator_config, {"project": new_project()}, "the test")


@pytest.fixture
def other_store(other_config: Config) -> Iterator[RetryingStore]:
    store = open_store(other_config, retry=FAST_RETRY)
    yield store
    store.close()


def users(count: int, project: str, rich_every: int = 1) -> Iterator[tuple[str, dict[str, object]]]:
    """``count`` users; every ``rich_every``-th holds every value type (the others a few, to keep
    seeding fast); every 10th has orders, every 1000th an item below."""
    for i in range(count):
        if i % rich_every == 0:
            yield f"users/u{i:05d}", every_type(i, project)
        else:
            yield (
                f"users/u{i:05d}",
                {
                    "i": i,
                    "name": f"user {i}",
                    "score": i / 3,
                    "active": i % 3 == 0,
                    "at": Timestamp(1_700_000_000 + i, i % 1000 * 1000),
                },
            )
        if i % 10 == 0:
            yield f"users/u{i:05d}/orders/o1", {"total": i, "at": Timestamp(i, 1000)}
            yield f"users/u{i:05d}/orders/o2", {"total": -i, "tags": ["a", {"b": None}]}
        if i % 1000 == 0:
            yield f"users/u{i:05d}/orders/o1/items/i1", {"deep": True}
    yield "users/ghost/notes/n1", {"under": "a document that does not exist"}


def test_round_trip_of_20000_documents_with_subcollections(
    emulator_config: Config,
    firestore_store: Store,
    other_config: Config,
    other_store: Store,
    tmp_path: Path,
) -> None:
    project = firestore_store.info.project
    seeded = seed(firestore_store, users(20_000, project, rich_every=5))
    seed(
        firestore_store,
        iter(
            [
                ("teams/t1", {"name": "one"}),
                ("teams/t1/members/m1", {"n": 1}),
                ("elsewhere/x", {"not": "backed up"}),
            ]
        ),
    )
    assert seeded == 20_000 + 4_000 + 20 + 1

    started = time.monotonic()
    manifest = backup(
        emulator_config,
        BackupOptions(["users", "teams"], tmp_path / "b", recursive=True, docs_per_file=5_000),
    )
    backup_seconds = time.monotonic() - started
    assert manifest.documents == seeded + 2
    assert manifest.documents_in("users") == seeded and len(manifest.files) == 6

    report = restore(other_config, tmp_path / "b")  # compared below, source against target
    assert (report.written, report.failed) == (seeded + 2, 0)

    # the new project holds exactly the same documents, value by value, and nothing else
    assert assert_same_documents(export(firestore_store, "users"), export(other_store, "users")) == seeded
    assert assert_same_documents(export(firestore_store, "teams"), export(other_store, "teams")) == 2
    assert other_store.list_collections() == ["teams", "users"]
    restored = other_store.get("users/u00005")
    assert restored is not None
    assert restored.data["at"] == Timestamp(1_700_000_005, 39_000)  # as stored: 39,595 ns -> µs
    assert restored.data["ref"].project == project  # references keep the project they pointed at
    assert restored.data["foreign_ref"].database == "other-db"
    print(
        f"\n20k round trip: {manifest.documents:,} documents, backup {backup_seconds:.1f}s "
        f"({manifest.documents / backup_seconds:,.0f} docs/s), restore {report.seconds:.1f}s "
        f"({report.docs_per_second:,.0f} docs/s), {manifest.bytes / 1e6:.1f} MB"
    )


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.fixture
def small_backup(emulator_config: Config, firestore_store: Store, tmp_path: Path) -> Path:
    seed(firestore_store, users(300, firestore_store.info.project))
    backup(emulator_config, BackupOptions(["users"], tmp_path / "b", recursive=True, docs_per_file=100))
    return tmp_path / "b"


def test_a_tampered_backup_is_refused_before_anything_is_written(
    small_backup: Path,
    other_config: Config,
    other_store: Store,
) -> None:
    manifest = json.loads((small_backup / MANIFEST_NAME).read_text())
    last = manifest["files"][-1]["name"]
    flip_byte(small_backup / last, 200)
    with pytest.raises(DataError, match=f"backup file {last} does not match its manifest checksum"):
        restore(other_config, small_backup)
    assert other_store.list_collections() == []  # not even the intact files before it were written

    flip_byte(small_backup / last, 200)  # undone: the backup restores again
    manifest["files"][0]["documents"] += 1
    (small_backup / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="was edited"):
        restore(other_config, small_backup)
    assert other_store.list_collections() == []


def test_restore_into_another_collection(
    emulator_config: Config,
    firestore_store: Store,
    small_backup: Path,
) -> None:
    report = restore(emulator_config, small_backup, into="people", verify=True)
    assert report.ok and report.written == 300 + 60 + 1 + 1
    assert_same_documents(
        export(firestore_store, "users"), export(firestore_store, "people"), rename=("users", "people")
    )
    assert firestore_store.get("people/u00000/orders/o1/items/i1") is not None


class Corrupting(DelegatingStore):
    """Delegates to a real store, but one document is silently written with other data."""

    def __init__(self, inner: Store, path: str) -> None:
        super().__init__(inner)
        self.path = path

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        return self.inner.commit(
            [Write.set(w.path, {"tampered": True}) if w.path == self.path else w for w in writes]
        )


def test_verify_catches_a_difference(small_backup: Path, other_config: Config, other_store: Store) -> None:
    report = restore(other_config, small_backup, verify=True, store=Corrupting(other_store, "users/u00042"))
    assert report.failed == 0 and report.verification is not None and not report.ok
    assert (report.verification.missing, report.verification.different) == (0, 1)
    assert report.verification.samples == [("users/u00042", "field '$t' is missing")]

    restore(other_config, small_backup)  # a plain second restore repairs it
    assert verify(other_config, small_backup).ok
    other_store.commit(
        [Write.delete("users/u00010/orders/o2"), Write.set("users/u00011", {**every_type(11, "x"), "i": 12})]
    )
    found = verify(other_config, small_backup)
    assert (found.checked, found.missing, found.different) == (362, 1, 1)
    assert found.samples == [("users/u00010/orders/o2", "missing"), ("users/u00011", "field 'i' differs")]


def test_collection_group_backup(
    emulator_config: Config,
    firestore_store: Store,
    other_config: Config,
    other_store: Store,
    tmp_path: Path,
) -> None:
    seed(
        firestore_store,
        iter(
            [
                ("users/a/orders/o1", {"n": 1}),
                ("users/b/orders/o2", {"n": 2}),
                ("shops/s/orders/o3", {"n": 3}),
                ("users/a", {"name": "a"}),
                ("orders/top", {"n": 0}),
                ("users/a/orders/o1/lines/l1", {"n": 9}),
            ]
        ),
    )
    manifest = backup(emulator_config, BackupOptions(["orders"], tmp_path / "g", group=True))
    assert manifest.group and manifest.documents == 4
    restore(other_config, tmp_path / "g", verify=True)
    assert_same_documents(
        firestore_store.stream(Query("orders", group=True)), other_store.stream(Query("orders", group=True))
    )
    assert other_store.get("users/a") is None and other_store.get("users/a/orders/o1/lines/l1") is None


def test_named_databases(emulator_config: Config, firestore_store: Store, tmp_path: Path) -> None:
    named = with_values(emulator_config, {"database": "source-db"}, "the test")
    with open_store(named, retry=FAST_RETRY) as source:
        seed(source, users(50, source.info.project))
    manifest = backup(named, BackupOptions(["users"], tmp_path / "b", recursive=True))
    assert (manifest.database, manifest.documents) == ("source-db", 50 + 10 + 1 + 1)
    target = with_values(emulator_config, {"database": "copy-db"}, "the test")
    assert restore(target, tmp_path / "b", verify=True).ok
    with open_store(named) as source, open_store(target) as copy:
        assert assert_same_documents(export(source, "users"), export(copy, "users")) == 62
    assert firestore_store.list_collections() == []  # (default) was never touched


# ----------------------------------------------------------------------------------------- the CLI
def docshift(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_cli_backup_of_a_collection_with_no_documents_warns(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    seed(firestore_store, iter([("users/u1", {"n": 1})]))
    for quiet in ((), ("--quiet",)):
        out = f"b{len(quiet)}"
        made = docshift(tmp_path, cli_env, "backup", "usres", "users", "--out", out, *quiet)
        assert made.returncode == 0, made.stderr
        assert "warning: no documents found in collection 'usres'" in made.stderr
        assert "the backup holds none of it" in made.stderr and "users'" not in made.stderr
        assert made.stdout.startswith("backed up 1 documents")


def test_cli_backup_restore_verify_and_exit_codes(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    seed(firestore_store, users(200, firestore_store.info.project))
    made = docshift(
        tmp_path, cli_env, "backup", "users", "--recursive", "--out", "b", "--docs-per-file", "100"
    )
    assert made.returncode == 0, made.stderr
    assert "backed up 242 documents from collection users with subcollections" in made.stdout
    assert "into 3 file(s)" in made.stdout

    again = docshift(tmp_path, cli_env, "backup", "users", "--out", "b")
    assert again.returncode == 2 and "b is not empty" in again.stderr and "hint:" in again.stderr
    both = docshift(tmp_path, cli_env, "backup", "orders", "--group", "--recursive", "--out", "g")
    assert both.returncode == 2 and "--recursive cannot be combined with --group" in both.stderr

    other = new_project()
    restored = docshift(tmp_path, cli_env, "--project", other, "restore", "b", "--yes", "--verify")
    assert restored.returncode == 0, restored.stderr
    assert f"restored 242 of 242 documents into project {other}" in restored.stdout
    assert "verified 242 documents: 0 missing, 0 different" in restored.stdout
    assert "check: 3 file(s), 242 documents" in restored.stderr

    renamed = docshift(tmp_path, cli_env, "--project", other, "restore", "b", "--into", "people")
    assert renamed.returncode == 0, renamed.stderr  # the emulator needs no confirmation
    where = StoreConfig(project=other, emulator_host=cli_env["FIRESTORE_EMULATOR_HOST"])
    with open_store(Config(store=where)) as target:
        assert target.list_collections() == ["people", "users"]
        target.commit([Write.set("users/u00007", {"changed": True})])
    checked = docshift(tmp_path, cli_env, "--project", other, "restore", "b", "--verify-only")
    assert checked.returncode == 3
    assert "verified 242 documents: 0 missing, 1 different" in checked.stdout
    assert "error: the store does not match the backup" in checked.stderr

    flip_byte(tmp_path / "b" / "01-users-00002.jsonl.gz", 100)
    refused = docshift(tmp_path, cli_env, "--project", new_project(), "restore", "b", "--yes")
    assert refused.returncode == 3
    assert "error: backup file 01-users-00002.jsonl.gz does not match its manifest checksum" in refused.stderr
    assert "hint:" in refused.stderr and "Traceback" not in refused.stderr


def test_cli_restore_to_cloud_firestore_needs_confirmation(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    seed(firestore_store, iter([("teams/t1", {"n": 1})]))
    assert docshift(tmp_path, cli_env, "backup", "teams", "--out", "b").returncode == 0
    cloud = {
        k: v
        for k, v in os.environ.items()
        if k != "FIRESTORE_EMULATOR_HOST" and not k.startswith("DOCSHIFT_")
    }
    refused = docshift(tmp_path, cloud, "--project", "my-prod", "restore", "b")
    assert refused.returncode == 8
    assert "refusing to restore 1 document into teams" in refused.stderr
    assert "project my-prod, database (default)" in refused.stderr
    assert "--yes" in refused.stderr


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_cli_sigterm_stops_backup_and_restore_safely(
    firestore_store: Store,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    seed(firestore_store, ((f"c/d{i:05d}", {"i": i, "text": "x" * 100}) for i in range(20_000)))
    assert docshift(tmp_path, cli_env, "backup", "c", "--out", "full").returncode == 0

    partial = tmp_path / "partial"
    process = subprocess.Popen(
        [DOCSHIFT, "backup", "c", "--out", "partial", "--docs-per-file", "500"],
        cwd=tmp_path,
        env=cli_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: partial.is_dir() and any(partial.iterdir()))
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 10, err
    assert not partial.exists()  # nothing left that could pass for a backup

    other = new_project()
    where = StoreConfig(project=other, emulator_host=cli_env["FIRESTORE_EMULATOR_HOST"])
    with open_store(Config(store=where)) as target:
        process = subprocess.Popen(
            [DOCSHIFT, "--project", other, "restore", "full"],
            cwd=tmp_path,
            env=cli_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: target.count(Query("c")) > 0)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 10, err
        assert target.count(Query("c")) < 20_000
        again = docshift(tmp_path, cli_env, "--project", other, "restore", "full", "--verify")
        assert again.returncode == 0, again.stderr
        assert "verified 20,000 documents: 0 missing, 0 different" in again.stdout
        assert target.count(Query("c")) == 20_000

"""The migration history against the real emulator: records, drift, named databases."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from docshift.config import Config, with_values
from docshift.errors import DataError, DriftError
from docshift.history import History, MigrationStatus, current_user
from docshift.loader import load_migrations
from docshift.migration import Migration
from docshift.planning import StateKind, check_drift, migration_states
from docshift.store import Store, Write, open_store
from docshift.values import Timestamp

PREFIX = "_docshift"


def write_migration(
    folder: Path, name: str, collection: str = "users", body: str = "return doc.data"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        textwrap.dedent(f"""\
        description = "{name[5:-3].replace("_", " ")}"
        collection = "{collection}"

        def up(doc):
            {body}
        """)
    )
    return path


@pytest.fixture
def migrations(tmp_path: Path) -> tuple[Path, list[Migration]]:
    folder = tmp_path / "migrations"
    for name in ("0001_one.py", "0002_two.py", "0003_three.py"):
        write_migration(folder, name)
    return folder, load_migrations(folder)


def test_records_for_applied_failed_and_rolled_back_migrations(
    firestore_store: Store, migrations: tuple[Path, list[Migration]]
) -> None:
    _, (one, two, three) = migrations
    history = History(firestore_store, PREFIX)
    assert history.all() == {}

    started = history.start(one, "run-a")
    assert started.status is MigrationStatus.RUNNING and started.finished_at is None
    history.progress("0001", {"read": 5}, {"cursor": "users/e"})
    mid = history.get("0001")
    assert mid is not None and mid.counts == {"read": 5} and mid.checkpoint == {"cursor": "users/e"}
    applied = history.finish("0001", MigrationStatus.APPLIED, {"read": 10, "written": 7})

    history.start(two, "run-a")
    history.finish("0002", MigrationStatus.FAILED, {"read": 3, "failed": 3}, error="boom: too many failures")

    records = history.all()
    assert list(records) == ["0001", "0002"]
    first = records["0001"]
    assert first == applied
    assert first.status is MigrationStatus.APPLIED
    assert first.description == "one" and first.name == "one" and first.file.endswith("0001_one.py")
    assert first.checksum == one.checksum and first.run_id == "run-a"
    assert first.user == current_user() and "@" in first.user
    assert first.docshift_version
    assert first.counts == {"read": 10, "written": 7}
    assert first.finished_at is not None and first.started_at <= first.finished_at <= Timestamp.now()
    assert [e.status for e in first.events] == [MigrationStatus.RUNNING, MigrationStatus.APPLIED]
    failed = records["0002"]
    assert failed.status is MigrationStatus.FAILED and failed.error == "boom: too many failures"
    assert failed.counts == {"read": 3, "failed": 3}

    rolled = history.mark_rolled_back("0001", "run-b", {"reverted": 7})
    assert rolled.status is MigrationStatus.ROLLED_BACK and rolled.run_id == "run-b"
    assert rolled.counts == {"reverted": 7} and rolled.error is None
    assert [(e.status, e.run_id) for e in rolled.events] == [
        (MigrationStatus.RUNNING, "run-a"),
        (MigrationStatus.APPLIED, "run-a"),
        (MigrationStatus.ROLLED_BACK, "run-b"),
    ]
    assert history.get("0001") == rolled

    states = migration_states([one, two, three], history.all())
    assert [s.kind for s in states] == [StateKind.ROLLED_BACK, StateKind.FAILED, StateKind.PENDING]
    assert [s.runnable for s in states] == [True, True, True]
    stored = firestore_store.get(f"{PREFIX}_history/0001")
    assert stored is not None and isinstance(stored.data["started_at"], Timestamp)


def test_drift_is_detected_refused_and_both_checksums_kept(
    firestore_store: Store, migrations: tuple[Path, list[Migration]]
) -> None:
    folder, loaded = migrations
    history = History(firestore_store, PREFIX)
    for migration in loaded[:2]:
        history.start(migration, "run-a")
        history.finish(migration.id, MigrationStatus.APPLIED, {"written": 1})
    states = migration_states(load_migrations(folder), history.all())
    assert [s.kind for s in states] == [StateKind.APPLIED, StateKind.APPLIED, StateKind.PENDING]
    assert check_drift(states, allow_drift=False) == []

    # Re-saving with other line endings and trailing spaces is not an edit...
    path = folder / "0002_two.py"
    path.write_bytes(path.read_bytes().replace(b"\n", b"  \r\n") + b"\r\n")
    assert check_drift(migration_states(load_migrations(folder), history.all()), allow_drift=False) == []
    # ...but changing the code is.
    write_migration(folder, "0002_two.py", body="return {**doc.data, 'x': 1}")
    edited = load_migrations(folder)
    states = migration_states(edited, history.all())
    assert [s.kind for s in states] == [StateKind.APPLIED, StateKind.DRIFTED, StateKind.PENDING]
    assert states[1].drift and not states[1].runnable
    with pytest.raises(DriftError, match=r"0002_two\.py was edited after it was applied") as caught:
        check_drift(states, allow_drift=False)
    assert caught.value.hint is not None and "--allow-drift" in caught.value.hint

    allowed = check_drift(states, allow_drift=True)
    assert [s.migration_id for s in allowed] == ["0002"]
    record = history.accept_drift("0002", edited[1].checksum, "run-b")
    assert record.checksum == edited[1].checksum
    assert record.previous_checksums == (loaded[1].checksum,)
    assert record.status is MigrationStatus.APPLIED and record.events[-1].run_id == "run-b"
    assert migration_states(edited, history.all())[1].kind is StateKind.APPLIED

    # Re-running a migration whose file changed also keeps the older checksum.
    history.start(edited[1], "run-c")
    assert history.get("0002").previous_checksums == (loaded[1].checksum,)  # type: ignore[union-attr]


def test_an_applied_migration_whose_file_is_gone_is_drift(
    firestore_store: Store, migrations: tuple[Path, list[Migration]]
) -> None:
    folder, loaded = migrations
    history = History(firestore_store, PREFIX)
    history.start(loaded[0], "run-a")
    history.finish("0001", MigrationStatus.APPLIED, {})
    (folder / "0001_one.py").unlink()
    states = migration_states(load_migrations(folder), history.all())
    assert states[0].kind is StateKind.MISSING_FILE and states[0].drift and not states[0].runnable
    assert states[0].label == "0001_one"
    with pytest.raises(DriftError, match=r"0001_one\.py was run on this database but the file is gone"):
        check_drift(states, allow_drift=False)


def test_each_named_database_has_its_own_history(
    emulator_config: Config, migrations: tuple[Path, list[Migration]]
) -> None:
    _, loaded = migrations
    default = open_store(emulator_config)
    named = open_store(with_values(emulator_config, {"database": "reporting"}, "the test"))
    try:
        History(default, PREFIX).start(loaded[0], "run-default")
        History(named, PREFIX).start(loaded[1], "run-named")
        assert list(History(default, PREFIX).all()) == ["0001"]
        assert list(History(named, PREFIX).all()) == ["0002"]
        assert named.info.database == "reporting"
    finally:
        default.close()
        named.close()


def test_prefix_is_configurable(firestore_store: Store, migrations: tuple[Path, list[Migration]]) -> None:
    _, loaded = migrations
    History(firestore_store, "ops_state").start(loaded[0], "run-a")
    assert firestore_store.get("ops_state_history/0001") is not None
    assert History(firestore_store, PREFIX).all() == {}


def test_a_malformed_record_is_a_clear_data_error(firestore_store: Store) -> None:
    [result] = firestore_store.commit([Write.set(f"{PREFIX}_history/0001", {"migration_id": "0001"})])
    assert result.ok
    with pytest.raises(DataError, match=r"history document _docshift_history/0001 is malformed"):
        History(firestore_store, PREFIX).all()


def test_recording_progress_without_start_is_refused(firestore_store: Store) -> None:
    with pytest.raises(DataError, match="has no history record"):
        History(firestore_store, PREFIX).finish("0009", MigrationStatus.APPLIED, {})

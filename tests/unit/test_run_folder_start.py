"""A run's folder is made only once the run really starts: a run that fails before (no
migrations folder, a store that cannot be read) or is refused by the lock leaves nothing in
runs_dir, not even runs_dir itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.errors import DocshiftError, LockedError, StoreError, UsageError
from docshift.lock import LeaseLock
from docshift.store import DelegatingStore, Document, Query
from docshift.testing import MemoryStore
from docshift.values import Timestamp
from tests.unit.engine_support import seed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"


def _config(tmp_path: Path, *, migrations: bool = True) -> Config:
    folder = tmp_path / "migrations"
    if migrations:
        folder.mkdir()
        shutil.copy(EXAMPLES / "0001_split_full_name.py", folder)
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=50, min_batch_size=10),
        migrations_dir=folder,
        runs_dir=tmp_path / ".docshift" / "runs",
    )


class _Unreachable(DelegatingStore):
    """A store whose every read fails, as one that does not answer."""

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        raise StoreError("the store does not answer", code="UNAVAILABLE", hint="start it")

    def get(self, path: str, *, read_time: Timestamp | None = None) -> Document | None:
        raise StoreError("the store does not answer", code="UNAVAILABLE", hint="start it")


def test_a_run_without_a_migrations_folder_creates_no_runs_dir(tmp_path: Path) -> None:
    config = _config(tmp_path, migrations=False)
    for execute in (False, True):
        with pytest.raises(UsageError, match="migrations folder"):
            run(config, RunOptions(execute=execute), store=MemoryStore())
    assert not (tmp_path / ".docshift").exists()


def test_a_run_whose_store_cannot_be_read_creates_no_runs_dir(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = _Unreachable(MemoryStore())
    with pytest.raises(StoreError):
        run(config, RunOptions(execute=True), store=store)
    assert not (tmp_path / ".docshift").exists()


def test_a_run_refused_by_the_lock_leaves_no_run_folder_or_report(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = MemoryStore()
    seed(store, 20)
    with LeaseLock(store, config.store.state_prefix, run_id="another-run"), pytest.raises(LockedError):
        run(config, RunOptions(execute=True, run_id="refused"), store=store)
    assert not (tmp_path / ".docshift").exists()
    assert not any(
        doc.path.startswith("users/") and "first_name" in doc.data for doc in store.stream(Query("users"))
    )
    # Once the lock is free, the same command runs, in its own folder.
    result = run(config, RunOptions(execute=True, run_id="second"), store=store)
    assert result.state == "finished"
    assert sorted(p.name for p in config.runs_dir.iterdir()) == ["second"]
    assert (config.runs_dir / "second" / "report.html").is_file()


def test_a_rollback_refused_by_the_lock_leaves_no_rollback_folder(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = MemoryStore()
    seed(store, 20)
    run(config, RunOptions(execute=True, run_id="applied"), store=store)
    with LeaseLock(store, config.store.state_prefix, run_id="another-run"), pytest.raises(DocshiftError):
        rollback(config, RollbackOptions(run_id="applied", execute=True, rollback_id="undo"), store=store)
    assert sorted(p.name for p in config.runs_dir.iterdir()) == ["applied"]

"""A run stopped by a store failure while a later batch had landed before an earlier one failed:
its counters settled behind the cursor do not hold that batch, and every view of the stop (the
stop's message, the checkpoint, the history, the report) says beside them what landed after the
cursor; the resume counts each document once, so its totals are those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from docshift.commands.run import RunOptions, result_of, run
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.errors import EmergencyStop, TransientError
from docshift.history import History
from docshift.reports.report import collect_report
from docshift.runfolder import Checkpoint
from docshift.runfolder.record import read_run
from docshift.store import DelegatingStore, Query, Store, Write, WriteResult
from docshift.testing import MemoryStore
from tests.unit.engine_support import seed

MARK = '''"""Mark every user."""
description = "mark"
collection = "users"


def up(doc):
    return {**doc.data, "marked": True}
'''


class LaterLandsFirst(DelegatingStore):
    """The commit of the first batch (the one holding ``users/u00000``) fails only once a later
    batch's commit landed; every other commit fails too (the store is gone). docshift's own state
    (history, lease) is left alone."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.later_landed = threading.Event()
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if writes and writes[0].path.startswith("_docshift"):
            return self.inner.commit(writes)
        if any(write.path == "users/u00000" for write in writes):
            assert self.later_landed.wait(30), "no later batch was sent"
        else:
            with self._lock:
                if not self.later_landed.is_set():
                    results = self.inner.commit(writes)
                    self.later_landed.set()
                    return results
        raise TransientError("the store is unavailable", code="UNAVAILABLE")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_mark.py").write_text(MARK, encoding="utf-8")
    engine = EngineConfig(batch_size=2, min_batch_size=2, max_batch_size=2, concurrency=4)
    return Config(
        store=StoreConfig(project="memory"),
        engine=engine,
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def written(store: Store) -> int:
    return sum(1 for doc in store.stream(Query("users")) if doc.data.get("marked"))


def test_a_stop_says_what_landed_after_the_cursor_and_the_resume_counts_it_once(config: Config) -> None:
    store = MemoryStore()
    seed(store, 20, make=lambda i: {"n": i})
    with pytest.raises(EmergencyStop) as stopped:
        run(config, RunOptions(execute=True), store=LaterLandsFirst(store))
    assert written(store) == 2
    result = result_of(stopped.value)
    assert result is not None
    run_id = result.run_id
    folder = config.runs_dir / run_id / "0001_mark"

    [outcome] = result.outcomes
    assert outcome.result.counters["updated"] == 0  # behind the cursor: nothing is settled
    assert outcome.result.landed == {"updated": 2}
    assert "2 updated landed after the cursor" in str(stopped.value)
    checkpoint = Checkpoint.load(folder / "checkpoint.json")
    assert checkpoint.counters["updated"] == 0
    assert checkpoint.beyond_cursor == {"updated": 2}
    [record] = read_run(config.runs_dir / run_id).migrations
    assert record.landed == {"updated": 2}
    history = History(store, config.store.state_prefix).get("0001")
    assert history is not None and history.landed == {"updated": 2}
    [row] = collect_report(config.runs_dir / run_id)["migrations"]
    assert row["landed_after_cursor"] == {"updated": 2}
    page = (config.runs_dir / run_id / "report.html").read_text(encoding="utf-8")
    assert "besides these counts (settled behind the cursor), 2 updated landed after the cursor" in page
    assert "2 updated landed after the cursor" in str(history.error)

    resumed = run(config, RunOptions(execute=True, resume=run_id), store=store)

    [again] = resumed.outcomes
    assert again.result.counters["updated"] == 20  # each document once
    assert again.result.landed == {}
    assert Checkpoint.load(folder / "checkpoint.json").beyond_cursor == {}
    history = History(store, config.store.state_prefix).get("0001")
    assert history is not None and history.counts["updated"] == 20 and not history.landed
    [row] = collect_report(config.runs_dir / run_id)["migrations"]
    assert row["counters"]["updated"] == 20 and not row.get("landed_after_cursor")
    page = (config.runs_dir / run_id / "report.html").read_text(encoding="utf-8")
    assert "besides these counts" not in page  # the stop's own text stays in the timeline


def test_without_backup_the_stop_says_the_resume_counts_the_landed_writes_unchanged(config: Config) -> None:
    """With --no-backup there is no journal to settle from: the resume's reader finds the writes
    landed past the cursor migrated and counts them unchanged, which is what the stop says; and
    what landed there stays said beside the counts after the resume."""
    engine = dataclasses.replace(config.engine, backup=False)
    config = dataclasses.replace(config, engine=engine)
    store = MemoryStore()
    seed(store, 20, make=lambda i: {"n": i})
    with pytest.raises(EmergencyStop) as stopped:
        run(config, RunOptions(execute=True), store=LaterLandsFirst(store))
    message = str(stopped.value)
    assert "2 updated landed after the cursor" in message
    assert "counted once" not in message
    assert "no before-image journal: a resume finds them migrated and counts them unchanged" in message
    result = result_of(stopped.value)
    assert result is not None
    run_id = result.run_id
    page = (config.runs_dir / run_id / "report.html").read_text(encoding="utf-8")
    assert "a resume finds them migrated and counts them unchanged" in page
    assert "a resume counts them once" not in page

    resumed = run(config, RunOptions(execute=True, resume=run_id), store=store)

    [again] = resumed.outcomes
    assert again.result.counters["updated"] == 18 and again.result.counters["unchanged"] == 2
    assert again.result.landed == {"updated": 2}  # still said: nothing counted them as updated
    folder = config.runs_dir / run_id / "0001_mark"
    assert Checkpoint.load(folder / "checkpoint.json").beyond_cursor == {"updated": 2}
    history = History(store, config.store.state_prefix).get("0001")
    assert history is not None and history.landed == {"updated": 2}
    [row] = collect_report(config.runs_dir / run_id)["migrations"]
    assert row["landed_after_cursor"] == {"updated": 2}

"""``docshift retry``'s mechanics on the memory store: the dead letters of a run re-processed as a run
of their own (dry run, execute, gone and unmatched documents, a store fault and the resume, the
history, what ``status`` says is left, and the rollback of the retry)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from docshift.commands.operate import show_run
from docshift.commands.retry import RetryOptions, listed_paths, retry
from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, load_run_info, result_of, run
from docshift.commands.status import status
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.errors import (
    DriftError,
    EmergencyStop,
    ExitCode,
    LockedError,
    RunStopped,
    TooManyFailures,
    TransientError,
    UsageError,
)
from docshift.history import EventKind, History, MigrationStatus
from docshift.lock import lease_path
from docshift.reports.report import collect_report
from docshift.runfolder import Checkpoint
from docshift.store import DelegatingStore, Document, Query, Store, Write, WriteResult
from docshift.testing import MemoryStore, RecordingStore
from docshift.values import Timestamp, Value
from tests.unit.test_lease_ahead import AnotherRunFinishesFirst

MIGRATION = '''"""Mark people as version 2."""

from docshift import DocView

description = "mark people as version 2"
collection = "users"
where = [("kind", "==", "person")]


def up(doc: DocView) -> dict:
    data = doc.data
    if data.get("broken"):
        raise ValueError(f"cannot migrate {doc.id}: broken")
    data["v"] = 2
    return data


def down(doc: DocView) -> dict:
    data = doc.data
    data.pop("v", None)
    return data
'''

FIXED = MIGRATION.replace('raise ValueError(f"cannot migrate {doc.id}: broken")', 'data["was_broken"] = True')

BROKEN = [f"users/u{i:03d}" for i in range(3, 100, 20)]  # 5 of 100: below the breaker's rate


@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_mark_v2.py").write_text(MIGRATION, encoding="utf-8")
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=2, min_batch_size=1, max_failures="10%", checkpoint_every_docs=1),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def _seed(store: Store) -> None:
    writes = [
        Write.set(f"users/u{i:03d}", {"n": i, "kind": "person", "broken": f"users/u{i:03d}" in BROKEN})
        for i in range(100)
    ]
    assert all(result.ok for result in store.commit(writes))


def _data(store: Store) -> dict[str, dict[str, Value]]:
    return {doc.path: doc.data for doc in store.stream(Query("users"))}


def _applied_with_dead_letters(config: Config, store: Store) -> str:
    result = run(config, RunOptions(execute=True, run_id="first"), store=store)
    assert result.state == "finished" and result.outcomes[0].result.counters["failed"] == 5
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    return result.run_id


def _fix(config: Config) -> None:
    (config.migrations_dir / "0001_mark_v2.py").write_text(FIXED, encoding="utf-8")


def test_a_retry_takes_up_the_dead_letters_counts_gone_and_unmatched_and_is_recorded(config: Config) -> None:
    store = MemoryStore()
    _seed(store)
    first = _applied_with_dead_letters(config, store)
    assert listed_paths(config.runs_dir / first / "0001_mark_v2" / "dead-letters.jsonl") == BROKEN
    [left] = status(config, store=store).dead_letters["0001"]
    assert (left.run_id, left.count, left.command) == (first, 5, f"docshift retry {first}")
    # One failed document deleted since, one moved out of the target: neither is retried.
    assert all(r.ok for r in store.commit([Write.delete(BROKEN[0])]))
    assert all(r.ok for r in store.commit([Write.update(BROKEN[1], {("kind",): "robot"})]))
    before = _data(store)

    # The file was fixed: an applied migration's file changed, which a retry (as a run) refuses…
    _fix(config)
    with pytest.raises(DriftError, match="edited after it was applied"):
        retry(config, RetryOptions(run_id=first), store=store)
    # …unless told to adopt it. A dry run first: it writes nothing, and lists the changes.
    dry = retry(config, RetryOptions(run_id=first, allow_drift=True, retry_id="dry"), store=store)
    assert not dry.execute and _data(store) == before
    [outcome] = dry.outcomes
    assert outcome.result.counters["updated"] == 3 and outcome.result.counters["read"] == 3
    assert (outcome.listed, outcome.gone, outcome.unmatched) == (5, 1, 1)  # type: ignore[attr-defined]
    assert outcome.plan is not None and {s["path"] for s in outcome.plan.samples} == set(BROKEN[2:])
    assert History(store, "_docshift").get("0001").checksum != dry.outcomes[0].migration.checksum  # type: ignore[union-attr]

    done = retry(
        config, RetryOptions(run_id=first, execute=True, allow_drift=True, retry_id="again"), store=store
    )
    assert done.state == "finished" and done.run_id == "again"
    counters = done.outcomes[0].result.counters
    assert (counters["updated"], counters["failed"], counters["read"]) == (3, 0, 3)
    after = _data(store)
    assert all(after[p]["v"] == 2 and after[p]["was_broken"] for p in BROKEN[2:])
    assert after[BROKEN[1]] == before[BROKEN[1]] and BROKEN[0] not in after  # left alone
    assert {p: d for p, d in after.items() if p not in BROKEN} == {
        p: d for p, d in before.items() if p not in BROKEN
    }  # nothing else touched
    info = load_run_info(done.folder)
    assert info["kind"] == "retry" and info["retry"]["of_run"] == first
    [row] = collect_report(done.folder)["migrations"]
    assert row["retry"] == {"listed": 5, "gone": 1, "unmatched": 1, "left_out": 0}
    page = (done.folder / "report.html").read_text(encoding="utf-8")
    assert "5 dead letters listed: 3 retried, 1 gone (deleted since), 1 no longer in the target" in page
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED  # stays applied
    assert record.runs == (first, "again") and record.run_id == first
    kinds = [e.kind for e in record.events]
    assert kinds == [
        EventKind.STARTED,
        EventKind.APPLIED,
        EventKind.DRIFT_ACCEPTED,
        EventKind.RETRY_STARTED,
        EventKind.RETRIED,
    ]
    retried = record.events[-1]
    assert retried.run_id == "again" and retried.counts is not None
    assert {k: retried.counts[k] for k in ("listed", "gone", "unmatched", "updated", "failed")} == {
        "listed": 5,
        "gone": 1,
        "unmatched": 1,
        "updated": 3,
        "failed": 0,
    }
    assert status(config, store=store).dead_letters == {}  # taken up
    # Taken up once: retrying the same run again is refused (what failed again is in the retry's file).
    with pytest.raises(UsageError, match="retried by run again already"):
        retry(config, RetryOptions(run_id=first, execute=True), store=store)
    with pytest.raises(UsageError, match="left no dead letters"):
        retry(config, RetryOptions(run_id="again", execute=True), store=store)

    # Rolling the retry back undoes the migration's application: the retry's writes and the run's.
    undone = rollback(
        config,
        RollbackOptions(run_id="again", execute=True, strategy="restore", rollback_id="undo"),
        store=store,
    )
    assert [item.source_runs for item in undone.items] == [("again", first)]
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    restored = _data(store)
    assert all("v" not in data for data in restored.values())


def test_documents_that_fail_again_go_to_the_retrys_own_dead_letters(config: Config) -> None:
    store = MemoryStore()
    _seed(store)
    first = _applied_with_dead_letters(config, store)
    # Only two of them were fixed (in the data).
    assert all(r.ok for r in store.commit([Write.update(p, {("broken",): False}) for p in BROKEN[:2]]))
    # Most of them fail again: more than --max-failures 10% of the retry, which then stops…
    with pytest.raises(TooManyFailures, match="3 of 5 documents failed"):
        retry(config, RetryOptions(run_id=first, execute=True, retry_id="partly"), store=store)
    assert load_run_info(config.runs_dir / "partly")["state"] == "stopped"
    # …and finishes when resumed with a budget that allows them (a flag given on a resume overrides).
    allowing = dataclasses.replace(config, engine=dataclasses.replace(config.engine, max_failures="100%"))
    allowing = dataclasses.replace(allowing, sources={**allowing.sources, "max_failures": "--max-failures"})
    done = retry(allowing, RetryOptions(resume="partly"), store=store)
    assert done.state == "finished"
    counters = done.outcomes[0].result.counters
    assert (counters["updated"], counters["failed"]) == (2, 3)
    assert listed_paths(done.folder / "0001_mark_v2" / "dead-letters.jsonl") == BROKEN[2:]
    [left] = status(config, store=store).dead_letters["0001"]
    assert (left.run_id, left.count) == ("partly", 3)  # the first run's are taken up
    assert status(config, store=store).to_json()["migrations"][0]["dead_letters"] == [left.to_json()]


class _FailingAfter(DelegatingStore):
    """Refuses every commit to users/ after the first ``healthy`` ones: a store failing mid-run."""

    def __init__(self, inner: Store, healthy: int) -> None:
        super().__init__(inner)
        self.healthy = healthy

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if writes and writes[0].path.startswith("users/"):
            if self.healthy <= 0:
                raise TransientError("injected: the store is unavailable", code="UNAVAILABLE", hint="wait")
            self.healthy -= 1
        return self.inner.commit(writes)

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        return self.inner.get_many(paths, read_time=read_time)


def test_a_retry_stopped_by_a_store_fault_resumes_and_counts_every_document_once(config: Config) -> None:
    # One batch in flight at a time: with several, a later batch can land while an earlier one
    # fails, and the stopped run's counters count only what is settled behind its cursor (the
    # resume counts the rest from the journal).
    config = dataclasses.replace(config, engine=dataclasses.replace(config.engine, concurrency=1))
    inner = MemoryStore()
    _seed(inner)
    first = _applied_with_dead_letters(config, inner)
    _fix(config)
    failing = _FailingAfter(inner, healthy=1)  # one batch (2 documents) lands, then writes fail
    with pytest.raises(RunStopped) as stopped:
        retry(
            config,
            RetryOptions(run_id=first, execute=True, allow_drift=True, retry_id="cut"),
            store=failing,
        )
    assert isinstance(stopped.value, EmergencyStop)
    assert stopped.value.resume_command == "docshift retry --execute --resume cut"
    found = result_of(stopped.value)
    assert found is not None and found.state == "stopped"
    saved = Checkpoint.load(config.runs_dir / "cut" / "0001_mark_v2" / "checkpoint.json")
    assert saved.counters["updated"] == 2 and not saved.finished
    record = History(inner, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert record.events[-1].kind is EventKind.RETRIED and "--resume cut" in (record.events[-1].error or "")
    [left] = status(config, store=inner).dead_letters["0001"]
    assert left.command == "docshift retry --execute --resume cut"  # the unfinished retry, not a new one
    assert show_run(config, "cut")["commands"]["resume"] == "docshift retry --execute --resume cut"
    assert show_run(config, first)["commands"]["retry the documents that failed (after fixing them)"] == (
        f"docshift retry {first}"
    )
    with pytest.raises(UsageError, match="did not finish"):
        retry(config, RetryOptions(run_id=first, execute=True, allow_drift=True), store=inner)

    resumed = retry(config, RetryOptions(resume="latest"), store=inner)
    assert resumed.run_id == "cut" and resumed.state == "finished"
    counters = resumed.outcomes[0].result.counters
    assert (counters["updated"], counters["read"], counters["failed"]) == (5, 5, 0)
    data = _data(inner)
    assert all(data[p]["v"] == 2 and data[p]["was_broken"] for p in BROKEN)
    record = History(inner, "_docshift").get("0001")
    assert record is not None and record.runs == (first, "cut")
    assert [e.kind for e in record.events[-3:]] == [
        EventKind.RETRIED,
        EventKind.RETRY_STARTED,
        EventKind.RETRIED,
    ]
    assert record.events[-1].counts is not None and record.events[-1].counts["updated"] == 5
    assert status(config, store=inner).dead_letters == {}


def test_what_cannot_be_retried_is_refused_with_a_hint(config: Config) -> None:
    store = MemoryStore()
    _seed(store)
    with pytest.raises(UsageError, match="neither was given") as neither:
        retry(config, RetryOptions(), store=store)
    assert neither.value.hint
    dry = run(config, RunOptions(run_id="dry"), store=store)
    with pytest.raises(UsageError, match="was a dry run") as refused:
        retry(config, RetryOptions(run_id=dry.run_id), store=store)
    assert refused.value.hint
    with pytest.raises(UsageError, match="no run 'nope'"):
        retry(config, RetryOptions(run_id="nope"), store=store)
    with pytest.raises(UsageError, match="not `latest`") as latest:
        retry(config, RetryOptions(run_id="latest"), store=store)
    assert "docshift status" in (latest.value.hint or "")
    first = _applied_with_dead_letters(config, store)
    rollback(config, RollbackOptions(run_id=first, execute=True), store=store)
    with pytest.raises(UsageError, match="not part of what is applied"):
        retry(config, RetryOptions(run_id=first), store=store)
    assert status(config, store=store).dead_letters == {}  # rolled back: nothing is left to retry


def test_a_retry_of_a_migration_rolled_back_while_it_took_the_lease_writes_nothing(config: Config) -> None:
    """The retry read the history (0001 applied, 5 dead letters), then, before it held the lease,
    another process rolled the run back. Retrying then would migrate 3 documents of a migration that
    is rolled back: the retry re-checks the history once it holds the lease, and stops."""
    memory = MemoryStore()
    _seed(memory)
    first = _applied_with_dead_letters(config, memory)
    _fix(config)
    rolled: list[object] = []

    def roll_back() -> None:
        rolled.append(rollback(config, RollbackOptions(run_id=first, execute=True), store=memory))

    recorded = RecordingStore(memory)
    store = AnotherRunFinishesFirst(recorded, roll_back)
    with pytest.raises(LockedError) as refused:
        retry(
            config,
            RetryOptions(run_id=first, execute=True, allow_drift=True, retry_id="late"),
            store=store,
        )
    assert store.other_went_after_the_history_read == [True] and rolled
    before_late = History(memory, "_docshift").get("0001")
    assert before_late is not None and before_late.status is MigrationStatus.ROLLED_BACK
    assert refused.value.exit_code is ExitCode.LOCKED and "0001" in refused.value.message
    # The late retry wrote nothing but its lease (taken, then given back).
    assert {path for request in recorded.paths() for path in request} == {lease_path("_docshift")}
    assert not any(doc.data.get("v") == 2 for doc in memory.stream(Query("users")))

"""One batch through the engine: guarded writes, conflicts, dead letters, request-size chunks, isolation."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from docshift.errors import BatchAborted, EmergencyStop, PermanentError, TransientError
from docshift.migration import DELETE, UNCHANGED, DocView
from docshift.store import DELETE_FIELD, Document, Query, Store, Write, WriteResult
from docshift.store.semantics import MAX_DOCUMENT_BYTES, MAX_REQUEST_BYTES, document_size
from docshift.testing import MemoryStore, RecordingStore
from docshift.values import Timestamp, values_equal
from tests.unit.engine_support import (
    StoreWrapper,
    assert_data,
    dead_letters,
    expected_after,
    export,
    journal_kinds,
    make_migration,
    options,
    processor,
    run_pipeline,
    seed,
    split_name,
)


class AppWritesBeforeCommit(StoreWrapper):
    """Plays an application that writes ``path`` just before docshift's commit reaches it, ``times``
    times (0 = always): docshift's read is then stale."""

    def __init__(self, inner: Store, path: str, times: int = 1, delete: bool = False) -> None:
        super().__init__(inner)
        self.path = path
        self.left = times
        self.always = times == 0
        self.delete = delete
        self.app_writes = 0
        self._lock = threading.Lock()

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        with self._lock:
            if any(w.path == self.path for w in writes) and (self.always or self.left > 0):
                self.left -= 1
                self.app_writes += 1
                if self.delete:
                    change = Write.delete(self.path)
                else:
                    change = Write.update(self.path, {("full_name",): f"App Writer{self.app_writes}"})
                [result] = self.inner.commit([change])
                assert result.ok
        return self.inner.commit(writes)


class Counting:
    """Wraps a transform and counts its calls per path, with the data it saw."""

    def __init__(self, up: Any = split_name) -> None:
        self.up = up
        self.calls: Counter[str] = Counter()
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, doc: DocView) -> Any:
        with self._lock:
            self.calls[doc.path] += 1
            self.seen.setdefault(doc.path, []).append(doc.data)
        return self.up(doc)


def test_a_document_changed_between_read_and_write_is_read_and_transformed_again(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 120)
    target = "users/u00042"
    store = AppWritesBeforeCommit(memory, target)
    up = Counting()
    result = run_pipeline(store, make_migration(up), tmp_path)
    assert result.error is None and result.state == "finished"
    doc = memory.get(target)
    assert doc is not None
    # The application's write survived and was migrated: nothing lost, nothing left behind.
    assert doc.data["first_name"] == "App" and doc.data["last_name"] == "Writer1"
    assert "full_name" not in doc.data
    assert up.calls[target] == 2
    assert up.seen[target][1]["full_name"] == "App Writer1"
    assert result.counters["conflicts"] == 1
    assert result.counters["failed"] == 0
    assert result.counters["updated"] == 120 - 12  # every doc but the 12 without full_name
    assert dead_letters(tmp_path) == []


def test_conflicts_beyond_the_retries_go_to_the_dead_letter_file(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 60)
    before = export(memory)
    target = "users/u00011"
    store = AppWritesBeforeCommit(memory, target, times=0)
    result = run_pipeline(store, make_migration(), tmp_path, options(conflict_retries=2, max_failures="5"))
    assert result.error is None
    assert result.counters["conflicts"] == 3  # the first try and two retries
    assert result.counters["failed"] == 1
    [letter] = dead_letters(tmp_path)
    assert letter["path"] == target and letter["stage"] == "conflict"
    assert "kept changing" in letter["error"]
    doc = memory.get(target)
    assert doc is not None and doc.data["full_name"] == f"App Writer{store.app_writes}"  # the app's data
    expected = expected_after(before, split_name)
    expected[target] = doc.data
    assert_data(memory, expected)


def test_a_document_deleted_meanwhile_is_not_recreated(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 30)
    store = AppWritesBeforeCommit(memory, "users/u00005", delete=True)
    result = run_pipeline(store, make_migration(), tmp_path)
    assert result.error is None
    assert memory.get("users/u00005") is None
    assert result.counters["conflicts"] == 1 and result.counters["failed"] == 0
    assert len(export(memory)) == 29


def test_bad_transform_results_fail_alone_into_dead_letters(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 40)
    before = export(memory)

    def up(doc: DocView) -> Any:
        number = doc.get("n")
        if number == 1:
            raise ValueError("cannot parse")
        if number == 2:
            return ["not", "a", "dict"]
        if number == 4:
            half = MAX_DOCUMENT_BYTES // 2  # two values: one may hold at most 1 MiB - 89 bytes
            return {**doc.data, "blob": "x" * half, "more": "y" * half}
        if number == 5:
            return {**doc.data, "nested": [[1, 2]]}
        if number == 6:
            return {**doc.data, "huge": 2**64}
        if number == 8:
            return {**doc.data, "": "empty name"}
        if number == 9:
            return DELETE
        return split_name(doc)

    def check(source: Document, new: dict[str, Any]) -> tuple[str, str] | None:
        solo = new.get("last_name") is None and "first_name" in new
        return ("no_solo", "last name missing") if solo else None

    result = run_pipeline(
        memory,
        make_migration(up),
        tmp_path,
        options(max_failures="100", breaker_failure_rate=0.5),
        check=check,
    )
    assert result.error is None and result.state == "finished"
    letters = {letter["path"]: letter for letter in dead_letters(tmp_path)}
    stages = {path: (letter["stage"], letter.get("rule")) for path, letter in letters.items()}
    solos = {f"users/u{i:05d}" for i in range(40) if i % 10 == 3}
    assert stages == {
        "users/u00001": ("transform", None),
        "users/u00002": ("transform", None),
        "users/u00004": ("invalid", None),
        "users/u00005": ("invalid", None),
        "users/u00006": ("invalid", None),
        "users/u00008": ("invalid", None),
    } | dict.fromkeys(solos, ("validate", "no_solo"))
    assert "ValueError: cannot parse" in letters["users/u00001"]["error"]
    assert "returned list" in letters["users/u00002"]["error"]
    assert str(MAX_DOCUMENT_BYTES) in letters["users/u00004"]["error"]
    # The input is kept so the document can be fixed by hand.
    assert values_equal(letters["users/u00001"]["document"]["data"], before["users/u00001"].data)
    assert result.counters["failed"] == len(stages)
    assert result.counters["deleted"] == 1
    # Every other document is migrated; the failed ones are untouched.
    expected = expected_after(before, split_name)
    for path in letters:
        expected[path] = before[path].data
    del expected["users/u00009"]
    assert_data(memory, expected)
    for path in letters:
        doc = memory.get(path)
        assert doc is not None and doc.update_time == before[path].update_time


class RecordingRequests(StoreWrapper):
    """Records each commit request's size; reports document sizes on reads as Firestore does."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.requests: list[tuple[int, int]] = []

    def _sized(self, doc: Document) -> Document:
        return dataclasses.replace(doc, size=document_size(doc.path, doc.data))

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        return (self._sized(doc) for doc in self.inner.stream(query, read_time=read_time))

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        return [self._sized(d) if d else None for d in self.inner.get_many(paths, read_time=read_time)]

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        size = 0
        for write in writes:
            if write.data is not None:
                size += document_size(write.path, write.data)
            for path, value in (write.fields or {}).items():
                size += document_size(write.path, {".".join(path): None if value is DELETE_FIELD else value})
        self.requests.append((len(writes), size))
        return self.inner.commit(writes)


def test_commits_are_split_below_the_request_size_limit(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 40)
    store = RecordingRequests(memory)

    def grow(doc: DocView) -> Any:
        return {**doc.data, "blob": "b" * 700_000}  # 40 x 700 KB = 28 MB in one batch of 50

    result = run_pipeline(store, make_migration(grow), tmp_path, options(batch_size=50, concurrency=1))
    assert result.error is None and result.counters["updated"] == 40
    assert len(store.requests) >= 3
    assert sum(count for count, _ in store.requests) == 40
    assert max(size for _, size in store.requests) < MAX_REQUEST_BYTES
    assert all(len(doc.data["blob"]) == 700_000 for doc in export(memory).values())


class RefusesPoison(StoreWrapper):
    """Refuses a whole request that contains a poisoned path, like a store rejecting a bad value."""

    def __init__(self, inner: Store, poison: set[str]) -> None:
        super().__init__(inner)
        self.poison = poison
        self.refused = 0

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if any(w.path in self.poison for w in writes):
            self.refused += 1
            raise PermanentError("invalid value in the request", code="INVALID_ARGUMENT")
        return self.inner.commit(writes)


@pytest.mark.parametrize("poison", [{"users/u00000"}, {"users/u00063"}, {"users/u00010", "users/u00090"}])
def test_a_request_refused_as_a_whole_is_split_until_the_bad_write_is_alone(
    tmp_path: Path, poison: set[str]
) -> None:
    memory = MemoryStore()
    seed(memory, 100)
    before = export(memory)
    store = RefusesPoison(memory, poison)
    result = run_pipeline(
        store, make_migration(), tmp_path, options(batch_size=100, max_batch_size=100, max_failures="5")
    )
    assert result.error is None, result.error  # one bad document must not stop the run
    assert {letter["path"] for letter in dead_letters(tmp_path)} == poison
    assert {letter["stage"] for letter in dead_letters(tmp_path)} == {"write"}
    assert result.counters["failed"] == len(poison)
    expected = expected_after(before, split_name)
    for path in poison:
        expected[path] = before[path].data
    assert_data(memory, expected)


def test_dry_run_counts_without_writing(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 50)
    before = export(memory)
    recorder = RecordingStore(memory)
    result = run_pipeline(recorder, make_migration(), tmp_path, options(execute=False))
    assert result.error is None
    assert recorder.commits == 0
    assert export(memory) == before
    assert result.counters["updated"] == 45 and result.counters["unchanged"] == 5
    assert not (tmp_path / "before-images.jsonl.gz").exists()


def test_each_write_is_journalled_before_it_is_sent(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 30)
    before = export(memory)
    journal = tmp_path / "before-images.jsonl.gz"

    class ChecksJournal(StoreWrapper):
        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            journalled = {path for kind, path in journal_kinds(tmp_path) if kind == "before"}
            assert journal.exists() and {w.path for w in writes} <= journalled
            return self.inner.commit(writes)

    result = run_pipeline(ChecksJournal(memory), make_migration(), tmp_path)
    assert result.error is None
    kinds = journal_kinds(tmp_path)
    changed = {p for p, d in before.items() if "full_name" in d.data}
    assert {path for (kind, path) in kinds if kind == "before"} == changed
    assert {path for (kind, path) in kinds if kind == "written"} == changed
    assert all(count == 1 for count in kinds.values())
    from docshift.runfolder import JournalReader

    for entry in JournalReader(journal):
        if entry.kind == "before":
            assert entry.data == before[entry.path].data
            assert entry.update_time == before[entry.path].update_time
        else:
            doc = memory.get(entry.path)
            assert doc is not None and entry.update_time == doc.update_time


def test_a_store_that_keeps_failing_stops_the_batch_with_an_emergency_stop(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 10)

    class Down(StoreWrapper):
        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            raise TransientError("unavailable", code="UNAVAILABLE")

    proc = processor(Down(memory), make_migration(), tmp_path)
    with pytest.raises(EmergencyStop, match="kept failing"):
        proc.process(list(export(memory).values()))
    proc.writer.guards.controls.stop.set()
    with pytest.raises(BatchAborted):
        proc.process(list(export(memory).values()))


def test_unchanged_marker_and_missing_delete_write_nothing(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed(memory, 10)
    recorder = RecordingStore(memory)
    proc = processor(recorder, make_migration(lambda doc: UNCHANGED), tmp_path)
    assert proc.process(list(export(memory).values())) == {"unchanged": 10}
    assert recorder.commits == 0


def test_a_store_failure_in_a_later_request_still_journals_the_outcomes_of_the_earlier_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch sent in several requests: when the second fails for good, the first one's writes
    landed, and their update times must be in the journal (a rollback's guard needs them)."""
    import docshift.engine.writer as writer_module

    monkeypatch.setattr(writer_module, "REQUEST_BUDGET", 2_000)  # a few documents per request
    memory = MemoryStore()
    seed(memory, 40)

    class SecondRequestFails(StoreWrapper):
        sent = 0

        def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
            self.sent += 1
            if self.sent == 2:
                raise TransientError("the store kept failing", code="UNAVAILABLE")
            return self.inner.commit(writes)

    result = run_pipeline(
        SecondRequestFails(memory),
        make_migration(),
        tmp_path,
        options(batch_size=40, min_batch_size=40, concurrency=1),
    )
    assert isinstance(result.error, EmergencyStop)
    kinds = journal_kinds(tmp_path)
    landed = [path for path, doc in export(memory).items() if "first_name" in doc.data]
    assert landed, "the first request landed"
    assert all(kinds[("written", path)] == 1 for path in landed)

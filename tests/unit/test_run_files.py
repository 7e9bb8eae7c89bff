"""Run files that cannot be written: the journal is a write-ahead log, and any failure to write a
file of the run folder stops the run at once (exit 12) saying exactly what it wrote; resume and
rollback afterwards are exact, for a migration in place (updates, deletes) and for a copy (creates),
and the resumed run's counts (checkpoint, history, report) are those of a run that never stopped.

The fault injector fails the k-th call, for every k, of the primitives that write files in the
runs folder (``os.open`` for writing, ``os.write``, ``os.fsync``, ``os.replace``, ``os.mkdir``,
``os.ftruncate``), with a disk that fills up (a short write first, then every later call fails) or
a single I/O error.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from docshift.commands.rollback import RollbackOptions, rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, LimitsConfig, StoreConfig
from docshift.engine.stats import COUNTERS
from docshift.errors import ExitCode, RunFileError
from docshift.history import History
from docshift.reports.report import collect_report
from docshift.runfolder import Checkpoint, DeadLetterFile, JournalEntry, JournalReader, JournalWriter
from docshift.store import Document, Query, Write
from docshift.testing import MemoryStore
from docshift.values import values_equal

MIGRATION = '''
"""Split the name; delete the retired; a few documents fail (dead letters)."""
from docshift import DELETE, UNCHANGED

description = "split name, delete retired"
collection = "people"

def up(doc):
    data = doc.data
    if data.get("retired"):
        return DELETE
    if data.get("broken"):
        raise ValueError("cannot split this one")
    if "name" not in data:
        return UNCHANGED
    first, _, last = data.pop("name").partition(" ")
    data["first"], data["last"] = first, last
    return data
'''
DOCS = 60
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def person(index: int) -> dict[str, Any]:
    data: dict[str, Any] = {"name": f"First{index} Last{index}", "n": index}
    if index % 10 == 5:
        data["retired"] = True
    if index % 10 == 9:
        data["broken"] = True
    return data


@pytest.fixture
def fast_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory where there is one (fsync costs nothing there), else ``tmp_path``."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="docshift-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def config(fast_folder: Path) -> Config:
    tmp_path = fast_folder
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_split.py").write_text(MIGRATION, encoding="utf-8")
    engine = EngineConfig(
        batch_size=8,
        min_batch_size=2,
        max_batch_size=8,
        concurrency=2,
        checkpoint_every_docs=16,
        checkpoint_every_seconds=3600.0,
        max_failures="100%",
    )
    return Config(
        store=StoreConfig(project="memory"),
        engine=engine,
        limits=LimitsConfig(breaker_failure_rate=0.5),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def seeded() -> tuple[MemoryStore, dict[str, Document]]:
    store = MemoryStore()
    store.commit([Write.set(f"people/p{index:03d}", person(index)) for index in range(DOCS)])
    return store, {doc.path: doc for doc in store.stream(Query("people"))}


def current(store: MemoryStore) -> dict[str, dict[str, Any]]:
    """Both collections: the source, and the copy a copy migration creates."""
    return {doc.path: doc.data for name in ("people", "copies") for doc in store.stream(Query(name))}


class Faults:
    """Counts the file-writing calls aimed at ``root`` (by path, or by a descriptor opened there);
    the ``fail_at``-th one fails: with ``stays_full`` as a disk that fills up (a short write, then
    every later call fails), otherwise once (an I/O error that goes away)."""

    def __init__(
        self, root: Path, fail_at: int | None = None, *, stays_full: bool = True, code: int = errno.ENOSPC
    ) -> None:
        self.root = str(root)
        self.fail_at = fail_at
        self.stays_full = stays_full
        self.code = code
        self.calls = 0
        self.failed = False
        self.fds: set[int] = set()

    def _fault(self) -> bool:
        """Whether this call fails."""
        self.calls += 1
        if self.failed and self.stays_full:
            return True
        if self.fail_at is not None and self.calls == self.fail_at:
            self.failed = True
            return True
        return False

    def _error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))

    @contextmanager
    def installed(self) -> Iterator[Faults]:
        real: dict[str, Callable[..., Any]] = {
            name: getattr(os, name)
            for name in ("open", "close", "write", "fsync", "replace", "mkdir", "ftruncate")
        }

        def mine(path: Any) -> bool:
            return os.fspath(path).startswith(self.root)

        def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if mine(path) and flags & WRITE_FLAGS and self._fault():
                raise self._error()
            fd = int(real["open"](path, flags, *args, **kwargs))
            if mine(path):
                self.fds.add(fd)
            return fd

        def close(fd: int) -> None:
            self.fds.discard(fd)
            real["close"](fd)

        def on_path(name: str) -> Callable[..., Any]:
            def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                exists = name == "mkdir" and os.path.isdir(path)  # EEXIST, as the system would say
                if mine(path) and not exists and self._fault():
                    raise self._error()
                return real[name](path, *args, **kwargs)

            return call

        def write(fd: int, data: Any) -> int:
            if fd in self.fds and self._fault():
                if self.stays_full and len(data) > 1 and self.calls == self.fail_at:
                    return int(real["write"](fd, bytes(data)[: len(data) // 2]))  # a short write first
                raise self._error()
            return int(real["write"](fd, data))

        def on_fd(name: str) -> Callable[..., Any]:
            def call(fd: int, *args: Any) -> Any:
                if fd in self.fds and self._fault():
                    raise self._error()
                return real[name](fd, *args)

            return call

        patches = [
            mock.patch("os.open", open_),
            mock.patch("os.close", close),
            mock.patch("os.replace", on_path("replace")),
            mock.patch("os.mkdir", on_path("mkdir")),
            mock.patch("os.write", write),
            mock.patch("os.fsync", on_fd("fsync")),
            mock.patch("os.ftruncate", on_fd("ftruncate")),
        ]
        for patch in patches:
            patch.start()
        try:
            yield self
        finally:
            for patch in reversed(patches):
                patch.stop()


def written_counts(message: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for number, kind in re.findall(r"([\d,]+) (updated|created|deleted)\b", message):
        counts[kind] += int(number.replace(",", ""))
    return counts


def changed(original: dict[str, Document], now: dict[str, dict[str, Any]]) -> Counter[str]:
    """What the store says was written: updated (present, different), deleted (gone), created (new)."""
    counts: Counter[str] = Counter(created=len(now.keys() - original.keys()))
    for path, doc in original.items():
        if path not in now:
            counts["deleted"] += 1
        elif not values_equal(now[path], doc.data):
            counts["updated"] += 1
    return +counts


def journalled(folder: Path) -> dict[str, JournalEntry]:
    """The first before-image (or ``created`` entry) of each path in the run's journals."""
    images: dict[str, JournalEntry] = {}
    for path in folder.glob("*/before-images.jsonl.gz"):
        for entry in JournalReader(path):
            if entry.kind in ("before", "created"):
                images.setdefault(entry.path, entry)
    return images


def expected_after(original: dict[str, Document], copy: bool) -> dict[str, dict[str, Any]]:
    result = {path: doc.data for path, doc in original.items()} if copy else {}
    for path, doc in original.items():
        data = dict(doc.data)
        if data.get("retired"):
            continue
        if not data.get("broken"):
            first, _, last = data.pop("name").partition(" ")
            data["first"], data["last"] = first, last
        elif copy:
            continue
        result[path.replace("people/", "copies/") if copy else path] = data
    return result


def told_counts(config: Config, store: MemoryStore, run_id: str) -> dict[str, dict[str, int]]:
    """The migration's counts as its checkpoint, its history record and the report tell them."""
    folder = config.runs_dir / run_id
    [row] = collect_report(folder)["migrations"]
    record = History(store, config.store.state_prefix).all()["0001"]
    told = {
        "checkpoint": Checkpoint.load(folder / "0001_split" / "checkpoint.json").counters,
        "history": dict(record.counts),
        "report": row["counters"],
    }
    return {view: {name: int(counts.get(name, 0)) for name in COUNTERS} for view, counts in told.items()}


def calls_of_a_clean_run(config: Config) -> tuple[int, dict[str, dict[str, int]]]:
    """How many file writes a run that never stops makes, and the counts it tells."""
    store, _ = seeded()
    faults = Faults(config.runs_dir)
    with faults.installed():
        run_id = run_migrations(config, RunOptions(execute=True), store=store).run_id
    counts = told_counts(config, store, run_id)
    shutil.rmtree(config.runs_dir)
    return faults.calls, counts


def check_one_fault(
    config: Config, fail_at: int, stays_full: bool, code: int, copy: bool, truth: dict[str, dict[str, int]]
) -> None:
    store, original = seeded()
    faults = Faults(config.runs_dir, fail_at, stays_full=stays_full, code=code)
    where = f"fault at call {fail_at} ({errno.errorcode[code]}, {'stays' if stays_full else 'once'}): "
    try:
        with faults.installed():
            finished = run_migrations(config, RunOptions(execute=True), store=store)
    except RunFileError as raised:
        error: RunFileError | None = raised
    else:
        # Checkpoints follow the batches as they come back, so a run may write a file or two fewer.
        assert not faults.failed, where + "a write failed and the run did not say so"
        error = None
    if error is None:
        run_id = finished.run_id
    else:
        message = error.message
        assert error.exit_code == ExitCode.EMERGENCY_STOP, where + message
        assert "could not write" in message and "no data was changed" not in message, where + message
        now = current(store)
        # What the message says was written is what the store holds.
        assert written_counts(message) == changed(original, now), where + message
        runs = [p for p in config.runs_dir.glob("*") if (p / "run.json").exists()]
        if changed(original, now):
            # Write-ahead: every document the run changed or created is in the journal from before.
            assert len(runs) == 1, where + message
            images = journalled(runs[0])
            for path in {p for p in original if p not in now or not values_equal(now[p], original[p].data)}:
                assert path in images, where + f"{path} changed without a before-image"
                assert values_equal(images[path].data or {}, original[path].data), where + path
            for path in now.keys() - original.keys():
                assert path in images and images[path].kind == "created", where + f"{path} not journalled"
        # The disk is fixed: the resume finishes, exactly, with each failure in the dead letters once.
        if error.resume_command:
            run_id = error.resume_command.split()[-1]
            assert f"run {run_id}" in message
            assert f"docshift rollback {run_id} --execute" in (error.hint or "")
            run_migrations(config, RunOptions(execute=True, resume=run_id), store=store)
        else:
            assert not changed(original, now), where + message
            assert "nothing was written to the store" in message or "no document was written" in message
            run_id = run_migrations(config, RunOptions(execute=True), store=store).run_id
    after = current(store)
    expected = expected_after(original, copy)
    assert after.keys() == expected.keys(), where
    assert all(values_equal(after[p], expected[p]) for p in expected), where
    letters = Counter(
        letter["path"]
        for letter in DeadLetterFile(config.runs_dir / run_id / "0001_split" / "dead-letters.jsonl")
    )
    assert letters == Counter(p for p, d in original.items() if d.data.get("broken")), where
    # Counted as a run that never stopped counts: a write that landed after the last checkpoint
    # saved is updated, created or deleted, never unchanged (nor left out, for a delete).
    assert told_counts(config, store, run_id) == truth, where
    # And the rollback puts back exactly the original data.
    rollback(config, RollbackOptions(run_id=run_id, strategy="restore", execute=True), store=store)
    restored = current(store)
    assert restored.keys() == original.keys(), where  # the copies deleted again
    assert all(values_equal(restored[p], original[p].data) for p in original), where
    shutil.rmtree(config.runs_dir)


def test_a_file_write_failing_at_any_point_stops_the_run_truthfully_and_resume_and_rollback_are_exact(
    config: Config,
) -> None:
    calls, truth = calls_of_a_clean_run(config)
    total = calls + 3  # and a few more: their number varies a little
    assert total > 20  # the injector sees the run's file writes
    assert truth["history"]["deleted"] and truth["history"]["updated"] and truth["history"]["failed"]
    codes = (errno.ENOSPC, errno.EIO, errno.EROFS, errno.EACCES)
    for fail_at in range(1, total + 1):
        for stays_full in (True, False):
            check_one_fault(config, fail_at, stays_full, codes[fail_at % len(codes)], copy=False, truth=truth)


def test_the_same_for_a_copy_whose_creates_are_confirmed_by_the_resume(config: Config) -> None:
    """A copy's creates whose outcome the stopped process could not journal are recognised by the
    resume (the copy holds exactly up(source)) and journalled, so the rollback deletes them."""
    migration = config.migrations_dir / "0001_split.py"
    copying = MIGRATION.replace('collection = "people"', 'collection = "people"\ncopy_to = "copies"')
    migration.write_text(copying, encoding="utf-8")
    calls, truth = calls_of_a_clean_run(config)
    total = calls + 3
    assert truth["history"]["created"]
    codes = (errno.EIO, errno.ENOSPC)
    for fail_at in range(1, total + 1):  # one kind of fault per call, alternating, to keep it short
        check_one_fault(config, fail_at, fail_at % 2 == 0, codes[fail_at % 2], copy=True, truth=truth)


def test_journal_short_writes_are_completed(tmp_path: Path) -> None:
    """os.write may write only a part: the member is completed, never left torn before a send."""
    path = tmp_path / "journal.jsonl.gz"
    real_write = os.write

    def short(fd: int, data: Any) -> int:
        return int(real_write(fd, bytes(data)[:7]))

    writer = JournalWriter(path)
    with mock.patch("os.write", short):
        writer.append([JournalEntry("before", f"c/d{i}", {"n": i}) for i in range(50)], durable=True)
    writer.append([JournalEntry("written", "c/d0")])
    writer.close()
    assert [e.path for e in JournalReader(path)][:3] == ["c/d0", "c/d1", "c/d2"]
    assert len(list(JournalReader(path))) == 51


def test_a_failed_journal_write_breaks_the_writer_and_cuts_the_part_written(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl.gz"
    writer = JournalWriter(path)
    writer.append([JournalEntry("before", "c/a", {"n": 1})], durable=True)
    good = path.stat().st_size
    real_write = os.write
    calls = {"n": 0}

    def full(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return int(real_write(fd, bytes(data)[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch("os.write", full), pytest.raises(RunFileError, match="ENOSPC"):
        writer.append([JournalEntry("before", "c/b", {"n": 2})], durable=True)
    assert path.stat().st_size == good  # the torn member is cut off again
    with pytest.raises(RunFileError):  # broken: nothing more is appended (so nothing more is sent)
        writer.append([JournalEntry("before", "c/c", {"n": 3})], durable=True)
    writer.close()
    assert [e.path for e in JournalReader(path)] == ["c/a"]


def test_durable_appends_fsync_before_returning_and_share_one_fsync(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl.gz"
    writer = JournalWriter(path)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    with mock.patch("os.fsync", fsync):
        writer.append([JournalEntry("before", "c/a", {"n": 1})], durable=True)
        assert synced == [path.stat().st_size]  # on disk before append returns (before the send)
        writer.append([JournalEntry("written", "c/a")])
        writer.append([JournalEntry("before", "c/b", {"n": 2})])
        writer.sync()
        writer.sync()  # nothing new: no second fsync
    assert synced == [synced[0], path.stat().st_size]
    writer.close()


def test_a_journal_removed_while_the_run_writes_it_stops_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "0001_x"
    writer = JournalWriter(folder / "journal.jsonl.gz")
    writer.append([JournalEntry("before", "c/a", {"n": 1})], durable=True)
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(RunFileError, match=r"removed or replaced|No such file"):
        writer.append([JournalEntry("before", "c/b", {"n": 2})], durable=True)
    writer.close()

"""Run-state files: checkpoints, the before-image journal and the dead-letter file, read back exactly."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from docshift.errors import DataError
from docshift.runfolder import (
    Checkpoint,
    DeadLetterFile,
    JournalEntry,
    JournalMark,
    JournalReader,
    JournalWriter,
    Scope,
    ShardCursor,
    StageProgress,
    StageRollback,
    UndoProgress,
    UndoStep,
    read_versioned,
    write_versioned,
)
from docshift.runfolder.checkpoint import CHECKPOINT_VERSION
from docshift.runfolder.journal import read_members
from docshift.store import Document
from docshift.values import GeoPoint, Reference, Timestamp, values_equal
from tests.strategies import documents

RICH = {
    "name": "Ada",
    "big": 2**63 - 1,
    "neg": -(2**63),
    "f": -0.0,
    "nan": math.nan,
    "inf": -math.inf,
    "raw": b"\x00\xff",
    "at": Timestamp(1_700_000_000, 123_456_789),
    "geo": GeoPoint(1.5, -2.25),
    "ref": Reference("users/bob", "demo-p", "(default)"),
    "nested": {"a.b": [1, "x", None], "e": {}},
    "flag": True,
    "one": 1,
    "onef": 1.0,
}


# ---------------------------------------------------------------------------------------- checkpoint
def sample_checkpoint() -> Checkpoint:
    return Checkpoint(
        run_id="20240101T000000-abcdef",
        migration_id="0001",
        checksum="c" * 64,
        shards=[ShardCursor(None, "users/m", "users/k", False), ShardCursor("users/m", None, None, True)],
        counters={"read": 12, "updated": 7, "failed": 1},
        started_at=Timestamp(1_700_000_000, 5),
        elapsed_seconds=3.25,
        state="stopped",
        settings={"engine": {"batch_size": 300}, "x": [1, 2.5]},
        dead_letter_bytes=1234,
        journal=JournalMark(5000, ((10, 20), (30, 40))),
        landed={"users/é": ["updated"]},
        scope=Scope(limited=True, limit_reached=False, sample_percent=12.5),
        stages=StageProgress(
            [1.0, 10.0, 100.0], 1, 0, {"updated": 3}, 1.5, StageRollback("why", None, {"restored": 3})
        ),
        undo=UndoProgress("restore", ["r2", "r1"], [UndoStep("r2", {"restored": 1}, 7, True)]),
    )


def test_checkpoint_round_trips_every_field(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.json"
    original = sample_checkpoint()
    original.save(path)
    loaded = Checkpoint.load(path)
    assert loaded == original  # saved_at is set on the original by save()
    assert loaded.saved_at is not None
    assert loaded.shards[0].resume_after == "users/k"  # the cursor wins over the range start
    assert loaded.shards[1].resume_after == "users/m"
    assert not loaded.finished
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.json"]  # no temp file left


def test_checkpoint_save_replaces_atomically_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    checkpoint = sample_checkpoint()
    checkpoint.save(path)
    checkpoint.counters = {"read": 99}
    checkpoint.settings = {"bad": object()}  # cannot be encoded: the save fails before replacing
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises
        checkpoint.save(path)
    assert Checkpoint.load(path).counters == {"read": 12, "updated": 7, "failed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]


def test_checkpoint_refuses_a_newer_format_version(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    sample_checkpoint().save(path)
    document = json.loads(path.read_text())
    document["version"] = CHECKPOINT_VERSION + 1
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=f"version {CHECKPOINT_VERSION + 1}") as caught:
        Checkpoint.load(path)
    assert caught.value.hint is not None and "upgrade" in caught.value.hint


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b'{"format": "docshift-run", "version": 1}'])
def test_checkpoint_refuses_damaged_or_foreign_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(content)
    with pytest.raises(DataError):
        Checkpoint.load(path)
    with pytest.raises(DataError, match="does not exist"):
        Checkpoint.load(tmp_path / "missing.json")


def test_versioned_files_keep_exact_values(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    write_versioned(path, "docshift-test", 2, {"values": RICH})
    back = read_versioned(path, "docshift-test", 2)
    assert back["version"] == 2 and values_equal(back["values"], RICH)
    with pytest.raises(DataError, match="format version 2"):
        read_versioned(path, "docshift-test", 1)
    with pytest.raises(DataError, match="not a docshift other file"):
        read_versioned(path, "other", 9)


# ---------------------------------------------------------------------------------------- journal
def entries_sample() -> list[JournalEntry]:
    return [
        JournalEntry("before", "users/a", RICH, Timestamp(1, 2), Timestamp(0, 1)),
        JournalEntry("created", "users_v2/a", source="users/a"),
        JournalEntry("written", "users/a", update_time=Timestamp(5, 999_999_999)),
        JournalEntry("before", "users/b", {}, Timestamp(3, 0), None),
    ]


def assert_same_entries(got: list[JournalEntry], expected: list[JournalEntry]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (a.kind, a.path, a.source) == (b.kind, b.path, b.source)
        assert (a.update_time, a.create_time) == (b.update_time, b.create_time)
        assert (a.data is None) == (b.data is None)
        if a.data is not None:
            assert values_equal(a.data, b.data)


def test_journal_round_trips_entries_across_members(tmp_path: Path) -> None:
    path = tmp_path / "before-images.jsonl.gz"
    writer = JournalWriter(path)
    sample = entries_sample()
    writer.append(sample[:2])
    writer.append([])  # nothing: no empty member
    writer.append(sample[2:])
    writer.sync()
    writer.close()
    assert writer.entries == 4
    reader = JournalReader(path)
    assert_same_entries(list(reader), sample)
    assert not reader.torn_tail
    # It is an ordinary multi-member gzip file: standard tools read it too.
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert [orjson.loads(line)["p"] for line in lines] == [e.path for e in sample]


def test_journal_spans_name_the_members_a_checkpoint_does_not_count(tmp_path: Path) -> None:
    """Each append notes its member's byte span; read_members reads exactly those members and every
    one from an offset on (a torn member, as a kill leaves it, reads as nothing)."""
    path = tmp_path / "before-images.jsonl.gz"
    writer = JournalWriter(path)
    sample = entries_sample()
    first: list[tuple[int, int]] = []
    second: list[tuple[int, int]] = []
    writer.append(sample[:1], spans=first)
    writer.append(sample[1:2], spans=second)
    writer.append(sample[2:3], spans=first)
    middle = writer.size()
    writer.append(sample[3:], spans=second)
    writer.close()
    assert first[0][0] == 0 and first[0][1] == second[0][0] and second[0][1] == first[1][0]
    assert second[1] == (middle, path.stat().st_size)
    assert_same_entries(list(read_members(path, first, middle)), [sample[0], sample[2], sample[3]])
    assert_same_entries(list(read_members(path, [], middle)), sample[3:])
    with path.open("r+b") as file:  # the last member torn, as a kill while appending leaves it
        file.truncate(middle + 5)
    assert_same_entries(list(read_members(path, first, middle)), [sample[0], sample[2]])
    assert list(read_members(tmp_path / "missing.gz", first, 0)) == []


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=documents())
def test_journal_keeps_any_document_exactly(tmp_path: Path, data: dict[str, object]) -> None:
    path = tmp_path / "j.gz"
    path.unlink(missing_ok=True)
    writer = JournalWriter(path)
    writer.append([JournalEntry("before", "c/d", data, Timestamp(1, 1))])
    writer.close()
    [entry] = list(JournalReader(path))
    assert entry.data is not None and values_equal(entry.data, data)


@pytest.mark.parametrize("cut", [1, 5, 12, -9, -4, -1])
def test_journal_torn_tail_is_ignored(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "j.gz"
    writer = JournalWriter(path)
    sample = entries_sample()
    writer.append(sample[:2])
    writer.close()
    whole = path.read_bytes()
    last = gzip.compress(b"".join(orjson.dumps(e.to_json()) + b"\n" for e in sample[2:]), mtime=0)
    path.write_bytes(whole + last[:cut])
    reader = JournalReader(path)
    assert_same_entries(list(reader), sample[:2])
    assert reader.torn_tail


def test_journal_garbage_tail_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j.gz"
    writer = JournalWriter(path)
    writer.append(entries_sample()[:1])
    writer.close()
    with path.open("ab") as out:
        out.write(b"\x00garbage")
    reader = JournalReader(path)
    assert len(list(reader)) == 1 and reader.torn_tail


def test_journal_appends_after_a_torn_tail_stay_readable(tmp_path: Path) -> None:
    """A resumed run appends to the journal its killed predecessor tore: nothing it writes may be lost."""
    path = tmp_path / "j.gz"
    sample = entries_sample()
    writer = JournalWriter(path)
    writer.append(sample[:1])
    writer.close()
    torn = gzip.compress(orjson.dumps(sample[1].to_json()) + b"\n", mtime=0)[:-6]
    with path.open("ab") as out:
        out.write(torn)
    resumed = JournalWriter(path)
    resumed.append(sample[2:])
    resumed.close()
    reader = JournalReader(path)
    assert_same_entries(list(reader), [sample[0], *sample[2:]])
    assert not reader.torn_tail


def test_journal_missing_file_reads_empty(tmp_path: Path) -> None:
    assert list(JournalReader(tmp_path / "none.gz")) == []


def test_journal_entries_written_before_a_kill_survive(tmp_path: Path) -> None:
    """append() hands each member to the OS at once: a process killed right after keeps it."""
    path = tmp_path / "j.gz"
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from docshift.runfolder import JournalEntry, JournalWriter
        writer = JournalWriter(Path({str(path)!r}))
        writer.append([JournalEntry("before", "users/a", {{"n": 1}})])
        os.kill(os.getpid(), 9)
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert result.returncode == -9
    [entry] = list(JournalReader(path))
    assert entry.path == "users/a" and entry.data == {"n": 1}


# ---------------------------------------------------------------------------------------- dead letters
def test_dead_letters_round_trip_and_are_created_lazily(tmp_path: Path) -> None:
    path = tmp_path / "run" / "dead-letters.jsonl"
    dead = DeadLetterFile(path)
    dead.sync()
    dead.close()
    assert not path.exists()  # nothing failed: no file
    assert list(dead) == []
    dead = DeadLetterFile(path)
    doc = Document("users/a", RICH, Timestamp(1, 0), Timestamp(2, 5))
    dead.add(doc, "transform", "ValueError: boom")
    dead.add(Document("users/b", {}), "validate", "age must be an int", rule="age_int")
    dead.sync()
    dead.close()
    assert dead.count == 2
    records = list(DeadLetterFile(path))
    assert [r["path"] for r in records] == ["users/a", "users/b"]
    assert records[0]["stage"] == "transform" and records[0]["error"] == "ValueError: boom"
    assert "rule" not in records[0] and records[1]["rule"] == "age_int"
    assert values_equal(records[0]["document"]["data"], RICH)
    assert records[0]["at"].endswith("Z")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_dead_letters_after_a_torn_line_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    first = DeadLetterFile(path)
    first.add(Document("users/a", {"n": 1}), "transform", "boom")
    first.close()
    with path.open("ab") as out:
        out.write(b'{"path": "users/b", "stage": "tra')  # the process died mid-line
    resumed = DeadLetterFile(path)
    resumed.add(Document("users/c", {"n": 3}), "invalid", "too big")
    resumed.close()
    assert [r["path"] for r in DeadLetterFile(path)] == ["users/a", "users/c"]

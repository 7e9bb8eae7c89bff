"""Backup and restore on the in-memory store: the file format, refusals, mapping, flat memory."""

from __future__ import annotations

import gzip
import hashlib
import json
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from docshift import codec
from docshift.backup import MANIFEST_NAME, BackupRecord, PathMap, read_manifest, read_records
from docshift.backup import manifest as manifest_module
from docshift.backup.reader import decode_record
from docshift.backup.writer import encode_record
from docshift.commands.backup import BackupOptions, backup, restore, verify
from docshift.config import Config, EngineConfig
from docshift.engine.hooks import CollectionEmpty
from docshift.errors import DataError, PermanentError, UsageError
from docshift.runfolder.atomic import write_versioned
from docshift.store import Document, Query, Store, StoreInfo, Write, WriteResult
from docshift.testing import MemoryStore, RecordingHooks, RecordingStore
from docshift.values import Timestamp
from tests.backup_support import assert_same_documents, every_type, export, seed

CONFIG = Config()


def populated(project: str = "memory") -> MemoryStore:
    store = MemoryStore(project)
    docs = [(f"users/u{i:05d}", every_type(i, project)) for i in range(50)]
    docs += [
        (f"users/u{i:05d}/orders/o{j}", {"j": j, "at": Timestamp(9, 123_456_789)})
        for i in range(0, 50, 5)
        for j in range(2)
    ]
    docs += [
        ("users/u00000/orders/o0/items/i0", {"deep": True}),
        ("users/ghost/notes/n1", {"x": 1}),
        ("teams/t1", {"name": "t"}),
        ("shops/s1/orders/o9", {"j": 9}),
    ]
    seed(store, iter(docs), threads=1)
    return store


def test_round_trip_keeps_every_value_and_every_subcollection(tmp_path: Path) -> None:
    source = populated()
    manifest = backup(CONFIG, BackupOptions(["users", "teams"], tmp_path / "b", recursive=True), store=source)
    assert manifest.documents == 50 + 20 + 2 + 1
    assert manifest.documents_in("users") == 72 and manifest.documents_in("teams") == 1
    target = MemoryStore("elsewhere")
    report = restore(CONFIG, tmp_path / "b", verify=True, store=target)
    assert (report.written, report.failed, report.documents) == (73, 0, 73)
    assert report.verification is not None and report.verification.ok
    assert report.verification.checked == 73
    for name in ("users", "teams"):
        assert_same_documents(export(source, name), export(target, name))
    # references keep the project they pointed at, even in another project
    moved = target.get("users/u00003")
    assert moved is not None and moved.data["ref"].project == "memory"
    assert list(target.stream(Query("shops", descendants=True))) == []  # not backed up


def test_file_format_lines_and_manifest(tmp_path: Path) -> None:
    source = populated()
    folder = tmp_path / "b"
    manifest = backup(
        CONFIG, BackupOptions(["users"], folder, recursive=True, docs_per_file=30), store=source
    )
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "01-users-00001.jsonl.gz",
        "01-users-00002.jsonl.gz",
        "01-users-00003.jsonl.gz",
        MANIFEST_NAME,
    ]
    assert [entry.documents for entry in manifest.files] == [30, 30, 12]
    raw = json.loads((folder / MANIFEST_NAME).read_text())
    assert raw["format"] == "docshift-backup" and raw["version"] == 1 and raw["codec"] == 1
    assert raw["source"] == {
        "project": "memory",
        "database": "(default)",
        "emulator": True,
        "collections": ["users"],
        "group": False,
        "recursive": True,
    }
    assert raw["totals"] == {
        "documents": 72,
        "files": 3,
        "bytes": manifest.bytes,
        "by_collection": {"users": 72},
    }
    assert len(raw["digest"]) == 64 and raw["docshift_version"]
    for entry in raw["files"]:
        content = (folder / entry["name"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry["sha256"] and len(content) == entry["bytes"]
    lines = gzip.decompress((folder / names[0]).read_bytes()).splitlines()
    assert json.loads(lines[0])["path"] == "users/ghost/notes/n1"  # under a missing document
    first = json.loads(lines[1])
    assert set(first) == {"path", "create_time", "update_time", "data"}
    assert first["path"] == "users/u00000"
    assert first["create_time"]["$t"] == "ts" and first["update_time"]["$t"] == "ts"
    assert first["data"]["$t"] == "map"  # the document has a field named "$t": wrapped, not a tag
    data = first["data"]["v"]
    assert data["$t"] == "a user's field named like the codec's tag"
    assert data["at"] == {"$t": "ts", "v": [1_700_000_000, 0]}
    assert data["nan"] == {"$t": "float", "v": "nan"}
    assert data["raw"] == {"$t": "bytes", "v": "AAD/Cg=="}
    assert data["ref"] == {"$t": "ref", "v": ["memory", "(default)", "users/u00001"]}
    assert data["empty_map"] == {} and data["neg_zero"] == 0.0 and str(data["neg_zero"]) == "-0.0"
    # pre-order: a document, then its subcollections, then the next document
    paths = [json.loads(line)["path"] for line in lines[1:6]]
    assert paths == [
        "users/u00000",
        "users/u00000/orders/o0",
        "users/u00000/orders/o0/items/i0",
        "users/u00000/orders/o1",
        "users/u00001",
    ]


def test_encode_record_round_trips_through_the_reader() -> None:
    doc = Document("a/b", {"t": Timestamp(1, 999_999_999), "x": -0.0}, Timestamp(1, 2), Timestamp(3, 4))
    line = encode_record(doc)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = decode_record(line, "test")
    assert record == BackupRecord("a/b", record.data, Timestamp(1, 2), Timestamp(3, 4), len(line))
    assert record.data["t"] == Timestamp(1, 999_999_999)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite_manifest(folder: Path, change: object, *, recompute_digest: bool = False) -> None:
    """Edit the manifest by hand; ``recompute_digest`` as someone covering their tracks would."""
    raw = json.loads((folder / MANIFEST_NAME).read_text())
    change(raw)  # type: ignore[operator]
    if recompute_digest:
        raw["digest"] = manifest_module._digest(codec.decode(raw))
    (folder / MANIFEST_NAME).write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f, m: flip_byte(f / m.files[0].name, 40), "does not match its manifest checksum"),
        (lambda f, m: (f / m.files[1].name).unlink(), "is missing"),
        (lambda f, m: (f / m.files[0].name).write_bytes(b""), "does not match its manifest checksum"),
        (lambda f, m: rewrite_manifest(f, lambda r: r["files"][0].update(documents=29)), "was edited"),
        (lambda f, m: rewrite_manifest(f, lambda r: r["files"][0].update(sha256="0" * 64)), "was edited"),
        (lambda f, m: rewrite_manifest(f, lambda r: r["source"].update(project="x")), "was edited"),
        # an edit that also recomputes the digest is still caught by the files themselves
        (
            lambda f, m: rewrite_manifest(
                f, lambda r: r["files"][0].update(documents=29), recompute_digest=True
            ),
            "totals do not add up",
        ),
        (
            lambda f, m: rewrite_manifest(
                f,
                lambda r: (
                    r["files"][0].update(documents=29),
                    r["totals"].update(documents=71),
                    r["totals"]["by_collection"].update(users=71),
                ),
                recompute_digest=True,
            ),
            "holds 30 documents, its manifest says 29",
        ),
        (
            lambda f, m: rewrite_manifest(
                f, lambda r: r["files"][0].update(name="../../x.jsonl.gz"), recompute_digest=True
            ),
            "bad or repeated data file name",
        ),
        (lambda f, m: (f / MANIFEST_NAME).write_text("{"), "is damaged"),
        (lambda f, m: (f / MANIFEST_NAME).unlink(), "has no manifest.json"),
    ],
)
def test_a_changed_backup_is_refused_before_anything_is_written(
    tmp_path: Path, damage: object, message: str
) -> None:
    folder = tmp_path / "b"
    manifest = backup(
        CONFIG, BackupOptions(["users"], folder, recursive=True, docs_per_file=30), store=populated()
    )
    damage(folder, manifest)  # type: ignore[operator]
    target = RecordingStore(MemoryStore())
    with pytest.raises(DataError, match=message) as caught:
        restore(CONFIG, folder, store=target)
    assert caught.value.exit_code == 3 and caught.value.hint
    assert target.commits == 0 and target.list_collections() == []


def test_a_file_swapped_during_the_restore_is_caught(tmp_path: Path) -> None:
    manifest = backup(CONFIG, BackupOptions(["teams"], tmp_path / "b"), store=populated())
    swapped = gzip.compress(b'{"path": "teams/zz", "data": {}}\n', mtime=0)
    (tmp_path / "b" / manifest.files[0].name).write_bytes(swapped)  # after the up-front check
    with pytest.raises(DataError, match="changed while it was being restored"):
        list(read_records(tmp_path / "b", manifest.files[0]))


def test_reader_is_lazy(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    store = MemoryStore()
    seed(
        store,
        ((f"c/d{i:06d}", {"payload": hashlib.sha256(b"%d" % i).hexdigest()}) for i in range(20_000)),
        threads=1,
    )
    manifest = backup(CONFIG, BackupOptions(["c"], folder), store=store)
    entry = manifest.files[0]
    records = read_records(folder, entry)
    first = next(records)
    assert first.path == "c/d000000"
    frame = records.gi_frame
    assert frame is not None
    source = frame.f_locals["source"]
    assert source.size < entry.bytes / 4  # only the first chunk was read from disk
    records.close()


class SyntheticStore(Store):
    """``count`` documents made up while streaming, and writes that are counted and dropped."""

    def __init__(self, count: int) -> None:
        self.info = StoreInfo(project="synthetic", emulator_host="memory")
        self.documents = count
        self.written = 0

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        for index in range(self.documents):
            yield Document(
                f"{query.collection}/d{index:08d}",
                {"i": index, "text": "x" * 200, "at": Timestamp(index, 0)},
                Timestamp(1, 0),
                Timestamp(2, 0),
            )

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        return [Document(path, {}) for path in paths]

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        return self.documents

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        self.written += len(writes)
        return [WriteResult(write.path, update_time=Timestamp(3, 0)) for write in writes]

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        return []


FIXED_WINDOW = Config(engine=EngineConfig(concurrency=4))
"""Four commits in flight, always. With the automatic window, how many batches a restore holds
follows the commit latency the machine happens to give it (measured: 2.4 MB peak at 4 in flight,
8.6 MB at 16, the cap), which says nothing about growth with the collection's size."""


def peak_bytes(count: int, folder: Path) -> tuple[int, int]:
    store = SyntheticStore(count)
    tracemalloc.start()
    try:
        backup(FIXED_WINDOW, BackupOptions(["c"], folder, docs_per_file=10 * count), store=store)
        backup_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        restore(FIXED_WINDOW, folder, store=store)
        restore_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.written == count
    return backup_peak, restore_peak


def test_memory_stays_flat_as_the_collection_grows(tmp_path: Path) -> None:
    # Both sizes past what a restore holds once its batches are in flight (2,000 documents were
    # not: 7 batches, so the small run never filled its window and the comparison drifted).
    small_backup, small_restore = peak_bytes(5_000, tmp_path / "small")
    large_backup, large_restore = peak_bytes(50_000, tmp_path / "large")
    # Ten times the documents (~14 MB of JSON more, ~70 MB as Python objects), nearly the same
    # peak: only fixed-size buffers (read chunks, a few batches in flight) are ever held; keeping
    # as little as 25 bytes per document would exceed the margin. (Measured: +0.58 to +0.74 MB.)
    mib = 1024 * 1024
    assert large_backup < small_backup + mib and large_backup < 4 * mib, (small_backup, large_backup)
    assert large_restore < small_restore + mib and large_restore < 8 * mib, (small_restore, large_restore)


def test_restore_into_renames_collections_and_keeps_subpaths(tmp_path: Path) -> None:
    source = populated()
    backup(CONFIG, BackupOptions(["users"], tmp_path / "b", recursive=True), store=source)
    target = MemoryStore()
    report = restore(CONFIG, tmp_path / "b", into="people", store=target)
    assert report.written == 72
    assert target.list_collections() == ["people"]
    assert target.get("people/u00000/orders/o0/items/i0") is not None
    assert_same_documents(export(source, "users"), export(target, "people"), rename=("users", "people"))
    # the same mapping for verification, and a second restore changes nothing
    assert verify(CONFIG, tmp_path / "b", into={"users": "people"}, store=target).ok
    again = restore(CONFIG, tmp_path / "b", into="people", store=target)
    assert again.written == 72 and again.failed == 0
    assert sum(1 for _ in export(target, "people")) == 72


def test_path_map_rules(tmp_path: Path) -> None:
    backup(CONFIG, BackupOptions(["users", "teams"], tmp_path / "b"), store=populated())
    manifest = read_manifest(tmp_path / "b")
    with pytest.raises(UsageError, match="must say which goes where"):
        PathMap.build(manifest, "people")
    with pytest.raises(UsageError, match="no collection 'shops'"):
        PathMap.build(manifest, {"shops": "x"})
    with pytest.raises(UsageError, match="even number of segments"):
        PathMap.build(manifest, {"users": "people/p1"})
    with pytest.raises(UsageError, match="same collection"):
        PathMap.build(manifest, {"users": "teams"})
    paths = PathMap.build(manifest, {"users": "a/b/people"})
    assert paths("users", "users/u1/orders/o1") == "a/b/people/u1/orders/o1"
    assert paths("teams", "teams/t1") == "teams/t1"
    with pytest.raises(DataError):
        paths("users", "usersx/u1")
    backup(CONFIG, BackupOptions(["orders"], tmp_path / "g", group=True), store=populated())
    with pytest.raises(UsageError, match="collection group backup cannot be restored --into"):
        PathMap.build(read_manifest(tmp_path / "g"), "x")


def test_collection_group_backup(tmp_path: Path) -> None:
    source = populated()
    manifest = backup(CONFIG, BackupOptions(["orders"], tmp_path / "g", group=True), store=source)
    assert manifest.group and manifest.documents == 21
    target = MemoryStore()
    restore(CONFIG, tmp_path / "g", store=target)
    assert_same_documents(
        source.stream(Query("orders", group=True)), target.stream(Query("orders", group=True))
    )
    assert target.get("shops/s1/orders/o9") is not None and target.get("users/u00000") is None


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ([], {}, "name at least one collection"),
        (["users/u1"], {}, "even number of segments"),
        (["users", "users"], {}, "named twice"),
        (["users", "users/u1/orders"], {"recursive": True}, "inside users"),
        (["orders"], {"recursive": True, "group": True}, "cannot be combined"),
        (["users/u1/orders"], {"group": True}, "one id"),
        (["users"], {"all_collections": True}, "--all"),
    ],
)
def test_bad_backup_requests_are_refused(
    tmp_path: Path, args: list[str], kwargs: dict[str, bool], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        backup(CONFIG, BackupOptions(args, tmp_path / "b", **kwargs), store=populated())
    assert not (tmp_path / "b").exists()


def test_existing_backups_are_never_overwritten(tmp_path: Path) -> None:
    backup(CONFIG, BackupOptions(["users"], tmp_path / "b"), store=populated())
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    with pytest.raises(UsageError, match="is not empty"):
        backup(CONFIG, BackupOptions(["teams"], tmp_path / "b"), store=populated())
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    (tmp_path / "empty").mkdir()
    assert backup(CONFIG, BackupOptions(["teams"], tmp_path / "empty"), store=populated()).documents == 1


def test_all_backs_up_every_root_collection_but_docshifts_own(tmp_path: Path) -> None:
    source = populated()
    seed(source, iter([("_docshift_lock/lease", {"x": 1}), ("_docshift_history/0001", {"x": 1})]))
    manifest = backup(CONFIG, BackupOptions([], tmp_path / "b", all_collections=True), store=source)
    assert manifest.collections == ("shops", "teams", "users") and manifest.recursive
    assert manifest.documents == 72 + 1 + 1


class BrokenStream(MemoryStore):
    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        for index, doc in enumerate(super().stream(query, read_time=read_time)):
            if index == 40:
                raise PermanentError("stream broke", code="INTERNAL")
            yield doc


def test_a_failed_backup_leaves_nothing_that_looks_restorable(tmp_path: Path) -> None:
    source = BrokenStream()
    seed(source, ((f"c/d{i:03d}", {"i": i}) for i in range(100)), threads=1)
    with pytest.raises(PermanentError):
        backup(CONFIG, BackupOptions(["c"], tmp_path / "b", docs_per_file=10), store=source)
    assert not (tmp_path / "b").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(PermanentError):
        backup(CONFIG, BackupOptions(["c"], tmp_path / "kept", docs_per_file=10), store=source)
    assert list((tmp_path / "kept").iterdir()) == []


class Refusing(MemoryStore):
    """Refuses writes to some paths, or silently stores something else for them."""

    def __init__(self, refuse: str = "", corrupt: str = "") -> None:
        super().__init__()
        self.refuse, self.corrupt = refuse, corrupt

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        kept = [w for w in writes if w.path != self.refuse]
        changed = [
            Write.set(w.path, {**(w.data or {}), "i": -1}) if w.path == self.corrupt else w for w in kept
        ]
        results = {r.path: r for r in super().commit(changed)}
        refused = PermanentError("refused", code="INVALID_ARGUMENT", path=self.refuse)
        return [results.get(w.path) or WriteResult(w.path, error=refused) for w in writes]


def test_failed_writes_are_counted_and_verification_reports_differences(tmp_path: Path) -> None:
    backup(CONFIG, BackupOptions(["users"], tmp_path / "b", recursive=True), store=populated())
    target = Refusing(refuse="users/u00007", corrupt="users/u00011")
    report = restore(CONFIG, tmp_path / "b", verify=True, store=target)
    assert (report.written, report.failed) == (71, 1)
    assert report.failures == [("users/u00007", "INVALID_ARGUMENT: refused")]
    assert report.verification is not None and not report.ok
    assert (report.verification.missing, report.verification.different) == (1, 1)
    assert report.verification.samples == [("users/u00007", "missing"), ("users/u00011", "field 'i' differs")]


def test_a_backup_of_nothing_restores_nothing(tmp_path: Path) -> None:
    manifest = backup(CONFIG, BackupOptions(["nothing"], tmp_path / "b", recursive=True), store=MemoryStore())
    assert manifest.files == () and manifest.documents == 0
    report = restore(CONFIG, tmp_path / "b", verify=True, store=MemoryStore())
    assert report.written == 0 and report.ok


def test_manifest_version_from_the_future_is_refused(tmp_path: Path) -> None:
    backup(CONFIG, BackupOptions(["teams"], tmp_path / "b"), store=populated())
    write_versioned(tmp_path / "b" / MANIFEST_NAME, "docshift-backup", 2, {})
    with pytest.raises(DataError, match="upgrade docshift"):
        read_manifest(tmp_path / "b")


def test_a_collection_with_no_documents_is_backed_up_with_a_warning(tmp_path: Path) -> None:
    """A misspelled name or the wrong project gives an empty backup: said, not silent."""
    source = populated()
    hooks = RecordingHooks()
    manifest = backup(CONFIG, BackupOptions(["teams", "usres"], tmp_path / "b"), store=source, hooks=hooks)
    assert manifest.documents == 1 and manifest.collections == ("teams", "usres")
    [warned] = hooks.of(CollectionEmpty)
    assert warned.collection == "usres" and hooks.warnings() == [warned.message]
    message = warned.message
    assert message.startswith("no documents found in collection 'usres' in project memory")
    assert "the backup holds none of it" in message and "--recursive" in message

    # Documents only below missing parents: a plain backup finds none, and the warning says why.
    quiet = RecordingHooks()
    backup(CONFIG, BackupOptions(["users/ghost/notes"], tmp_path / "c"), store=source, hooks=quiet)
    assert quiet.warnings() == []
    deep = RecordingHooks()
    backup(
        CONFIG,
        BackupOptions(["users/u00001/orders"], tmp_path / "d", recursive=True),
        store=source,
        hooks=deep,
    )
    [message] = deep.warnings()
    assert "--recursive" not in message

"""The backup manifest: what a backup folder holds, and the checksums that prove it is intact.

It is written last and atomically (``manifest.json``, a versioned ``docshift-backup`` file), so a
folder without one is a backup that did not finish. Besides a sha256 per data file it carries a
``digest`` of its own content, so an edited count, name or source is refused like a damaged file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from docshift import codec
from docshift.errors import DataError, UsageError
from docshift.runfolder.atomic import read_versioned, write_versioned
from docshift.values import Timestamp

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "VERSION",
    "BackupFile",
    "BackupManifest",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "docshift-backup"
VERSION = 1
_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}\.jsonl\.gz")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HINT = "the backup was changed or damaged after it was written; restore from an intact copy"


@dataclass(frozen=True)
class BackupFile:
    """One gzip JSON-lines data file: its name in the folder, the collection it belongs to (one of
    the manifest's ``collections``), and what it must contain."""

    name: str
    collection: str
    documents: int
    bytes: int
    sha256: str

    def to_body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "collection": self.collection,
            "documents": self.documents,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class BackupManifest:
    """Where the documents came from, how they were selected, and every data file in order."""

    project: str
    database: str
    emulator: bool
    collections: tuple[str, ...]
    group: bool
    recursive: bool
    docshift_version: str
    started_at: Timestamp
    finished_at: Timestamp
    files: tuple[BackupFile, ...]
    read_time: Timestamp | None = None
    """The moment every document was read at: the backup is the store as it was then (None in a
    backup made before docshift pinned one, which read each document as it was when reached)."""

    @property
    def documents(self) -> int:
        return sum(entry.documents for entry in self.files)

    @property
    def bytes(self) -> int:
        return sum(entry.bytes for entry in self.files)

    def documents_in(self, collection: str) -> int:
        return sum(entry.documents for entry in self.files if entry.collection == collection)

    def describe_source(self) -> str:
        kind = "collection group" if self.group else "collection"
        plural = "s" if len(self.collections) != 1 else ""
        deep = " with subcollections" if self.recursive else ""
        where = f"project {self.project}, database {self.database}"
        return f"{kind}{plural} {', '.join(self.collections) or '(none)'}{deep} from {where}"

    def to_body(self) -> dict[str, Any]:
        return {
            "source": {
                "project": self.project,
                "database": self.database,
                "emulator": self.emulator,
                "collections": list(self.collections),
                "group": self.group,
                "recursive": self.recursive,
            },
            "docshift_version": self.docshift_version,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            **({"read_time": self.read_time} if self.read_time is not None else {}),
            "files": [entry.to_body() for entry in self.files],
            "totals": {
                "documents": self.documents,
                "files": len(self.files),
                "bytes": self.bytes,
                "by_collection": {name: self.documents_in(name) for name in self.collections},
            },
        }


def _digest(document: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own ``digest`` field."""
    content = {key: value for key, value in document.items() if key != "digest"}
    return hashlib.sha256(orjson.dumps(codec.encode(content), option=orjson.OPT_SORT_KEYS)).hexdigest()


def write_manifest(folder: Path, manifest: BackupManifest) -> Path:
    """Write ``manifest.json`` atomically (temp file, fsync, rename); call after every data file."""
    body = manifest.to_body()
    stamped = {"format": FORMAT, "version": VERSION, "codec": codec.FORMAT_VERSION, **body}
    path = folder / MANIFEST_NAME
    write_versioned(path, FORMAT, VERSION, {**body, "digest": _digest(stamped)})
    return path


def read_manifest(folder: Path) -> BackupManifest:
    """Read and check a manifest; anything edited, missing or malformed is a :class:`DataError`."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise UsageError(f"backup folder {folder} does not exist", hint="pass the folder given to --out")
    if not path.is_file():
        raise DataError(
            f"{folder} has no {MANIFEST_NAME}: not a docshift backup, or the backup did not finish",
            hint="an interrupted backup cannot be restored; run docshift backup again",
        )
    document = read_versioned(path, FORMAT, VERSION)
    if document.get("digest") != _digest(document):
        raise DataError(f"{path} was edited: its content does not match its digest", hint=_HINT)
    try:
        manifest = _parse(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is malformed: {exc}", hint=_HINT) from None
    _check_consistent(path, manifest, document)
    return manifest


def _typed(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{what} should be {kind.__name__}, got {value!r}")
    return value


def _parse(document: dict[str, Any]) -> BackupManifest:
    source = _typed(document["source"], dict, "source")
    files = []
    for raw in _typed(document["files"], list, "files"):
        entry = _typed(raw, dict, "a file entry")
        files.append(
            BackupFile(
                name=_typed(entry["name"], str, "file name"),
                collection=_typed(entry["collection"], str, "file collection"),
                documents=_typed(entry["documents"], int, "file documents"),
                bytes=_typed(entry["bytes"], int, "file bytes"),
                sha256=_typed(entry["sha256"], str, "file sha256"),
            )
        )
    collections = _typed(source["collections"], list, "source collections")
    return BackupManifest(
        project=_typed(source["project"], str, "source project"),
        database=_typed(source["database"], str, "source database"),
        emulator=_typed(source["emulator"], bool, "source emulator"),
        collections=tuple(_typed(name, str, "a collection") for name in collections),
        group=_typed(source["group"], bool, "source group"),
        recursive=_typed(source["recursive"], bool, "source recursive"),
        docshift_version=_typed(document["docshift_version"], str, "docshift_version"),
        started_at=_typed(document["started_at"], Timestamp, "started_at"),
        finished_at=_typed(document["finished_at"], Timestamp, "finished_at"),
        files=tuple(files),
        read_time=_typed(document["read_time"], Timestamp, "read_time") if "read_time" in document else None,
    )


def _check_consistent(path: Path, manifest: BackupManifest, document: dict[str, Any]) -> None:
    """Names that stay inside the folder, known collections, and totals that add up."""
    names: set[str] = set()
    for entry in manifest.files:
        problem = None
        if not _FILE_NAME.fullmatch(entry.name) or entry.name in names:
            problem = f"bad or repeated data file name {entry.name!r}"
        elif entry.collection not in manifest.collections:
            problem = f"{entry.name} belongs to {entry.collection!r}, which is not a backed-up collection"
        elif entry.documents < 0 or entry.bytes < 0 or not _SHA256.fullmatch(entry.sha256):
            problem = f"{entry.name} has a bad count, size or sha256"
        if problem:
            raise DataError(f"{path}: {problem}", hint=_HINT)
        names.add(entry.name)
    if document.get("totals") != manifest.to_body()["totals"]:
        raise DataError(f"{path}: the totals do not add up to the files listed", hint=_HINT)

"""Reading backup data files back: checked against the manifest, streamed one document at a time.

:func:`check_files` proves every file intact (sha256 of the bytes on disk, a complete gzip stream,
the document count) before a restore writes anything. :func:`read_records` is a lazy generator: it
holds one line at a time, and hashes the file again as it reads, so a file swapped between the check
and the restore is still caught.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from docshift import codec
from docshift.backup.manifest import BackupFile, BackupManifest
from docshift.errors import DataError
from docshift.values import Timestamp, Value

__all__ = ["BackupRecord", "check_file", "check_files", "decode_record", "read_records"]

_CHUNK = 256 * 1024
_HINT = "the backup was changed or damaged after it was written; restore from an intact copy"


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """One backed-up document. ``size`` is its line's length, a bound on its request size."""

    path: str
    data: dict[str, Value]
    create_time: Timestamp | None
    update_time: Timestamp | None
    size: int


def _open(folder: Path, entry: BackupFile) -> BinaryIO:
    try:
        return (folder / entry.name).open("rb")
    except FileNotFoundError:
        raise DataError(f"backup file {entry.name} is missing from {folder}", hint=_HINT) from None


def check_file(folder: Path, entry: BackupFile) -> None:
    """Refuse (``DataError``) a file whose bytes, gzip stream or line count differ from ``entry``."""
    sha = hashlib.sha256()
    size = lines = 0
    damage: str | None = None
    inflater = zlib.decompressobj(wbits=31)  # one gzip member, as written
    with _open(folder, entry) as raw:
        while chunk := raw.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
            if damage is not None:
                continue  # keep hashing: a checksum mismatch is the clearer message
            try:
                data = inflater.decompress(chunk, _CHUNK)
                lines += data.count(b"\n")
                while inflater.unconsumed_tail:  # bounded output, even for a "zip bomb"
                    data = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
                    lines += data.count(b"\n")
            except zlib.error as exc:
                damage = f"its gzip stream is damaged ({exc})"
    if sha.hexdigest() != entry.sha256 or size != entry.bytes:
        raise DataError(
            f"backup file {entry.name} does not match its manifest checksum "
            f"(sha256 {sha.hexdigest()[:12]}..., expected {entry.sha256[:12]}...)",
            hint=_HINT,
        )
    if damage is None and (not inflater.eof or inflater.unused_data):
        damage = "its gzip stream is truncated or has trailing data"
    if damage is not None:
        raise DataError(f"backup file {entry.name}: {damage}", hint=_HINT)
    if lines != entry.documents:
        raise DataError(
            f"backup file {entry.name} holds {lines} documents, its manifest says {entry.documents}",
            hint=_HINT,
        )


def check_files(
    folder: Path, manifest: BackupManifest, on_file: Callable[[BackupFile], None] | None = None
) -> None:
    """:func:`check_file` for every file, in manifest order."""
    for entry in manifest.files:
        check_file(folder, entry)
        if on_file is not None:
            on_file(entry)


def decode_record(line: bytes, where: str) -> BackupRecord:
    """Parse one line; ``where`` (file and line number) names it in errors."""
    try:
        raw: Any = orjson.loads(line)
        if not isinstance(raw, dict):
            raise TypeError("a line must be a JSON object")
        path, data = raw["path"], codec.decode(raw["data"])
        created, updated = codec.decode(raw.get("create_time")), codec.decode(raw.get("update_time"))
        if not isinstance(path, str) or not isinstance(data, dict):
            raise TypeError("path must be a string and data a map")
        if not all(stamp is None or isinstance(stamp, Timestamp) for stamp in (created, updated)):
            raise TypeError("create_time and update_time must be timestamps")
    except (orjson.JSONDecodeError, KeyError, TypeError, DataError) as exc:
        raise DataError(f"{where} is not a backed-up document: {exc}", hint=_HINT) from None
    return BackupRecord(path, data, created, updated, len(line))


class _HashingSource:
    """The file under the gzip reader: hashes the compressed bytes as they are read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def seek(self, offset: int) -> int:
        raise OSError("a backup file is read once, front to back")  # seeking would break the hash


def read_records(folder: Path, entry: BackupFile) -> Iterator[BackupRecord]:
    """The file's documents in order, lazily; checks sha256 and count again at the end."""
    count = 0
    with _open(folder, entry) as raw:
        source = _HashingSource(raw)
        try:
            with gzip.GzipFile(fileobj=source, mode="rb") as lines:
                for count, line in enumerate(lines, start=1):
                    yield decode_record(line, f"{entry.name} line {count}")
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"backup file {entry.name} is damaged: {exc}", hint=_HINT) from None
        while source.read(_CHUNK):  # anything after the gzip stream is hashed too
            pass
    if source.sha256.hexdigest() != entry.sha256 or count != entry.documents:
        raise DataError(
            f"backup file {entry.name} changed while it was being restored "
            f"({count} documents read, {entry.documents} expected)",
            hint="some documents may have been written; restore again from an intact copy",
        )

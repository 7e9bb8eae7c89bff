"""The dead-letter file of a run: each document that could not be migrated, why, and its input."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from docshift import codec
from docshift.errors import RunFileError
from docshift.runfolder.atomic import check_in_place, close_durably, run_file, write_fully
from docshift.store.base import Document
from docshift.values import Timestamp

__all__ = ["DeadLetterFile"]


class DeadLetterFile:
    """JSON lines: ``{"path", "stage", "error", "rule", "document": {...}, "at"}``; created lazily.

    A torn last line (the process was killed while writing it) is skipped when reading and cut off
    before a resumed run appends. A failed write raises :class:`RunFileError` and, like the journal,
    breaks the file for this run: every later ``add`` raises it again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = -1
        self._broken: RunFileError | None = None
        self.count = 0

    def add(self, document: Document, stage: str, error: str, rule: str | None = None) -> None:
        self.add_many([(document, stage, error, rule)])

    def add_many(self, letters: Sequence[tuple[Document, str, str, str | None]]) -> None:
        """Append (document, stage, error, rule) letters in one write: all of them, or (once the
        part written is cut off again) none."""
        if not letters:
            return
        lines = b"".join(orjson.dumps(_record(*letter)) + b"\n" for letter in letters)
        with self._lock:
            if self._broken is not None:
                raise self._broken
            start = -1
            try:
                with run_file(self.path):
                    if self._fd < 0:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                        _cut_torn_line(self._fd, self.path)
                    start = os.fstat(self._fd).st_size
                    write_fully(self._fd, lines)
            except RunFileError as error:
                self._broken = error
                if start >= 0:  # lines written in part: cut them off if the file still allows it
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, start)
                raise
            self.count += len(letters)

    def size(self) -> int:
        """Bytes in the file (0 when it does not exist)."""
        with self._lock, run_file(self.path):
            if self._fd >= 0:
                return os.fstat(self._fd).st_size
            try:
                return self.path.stat().st_size
            except FileNotFoundError:
                return 0

    def truncate(self, size: int) -> None:
        """Drop everything after the first ``size`` bytes (what a checkpoint accounted for)."""
        with self._lock, run_file(self.path):
            try:
                if self.path.stat().st_size > size:
                    os.truncate(self.path, size)
            except FileNotFoundError:
                return

    def sync(self) -> None:
        """fsync what was added (a no-op once broken: that failure was raised already)."""
        with self._lock:
            if self._fd >= 0 and self._broken is None:
                with run_file(self.path):
                    os.fsync(self._fd)
                    check_in_place(self._fd, self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
            close_durably(fd, self.path, sync=self._broken is None)

    def paths(self) -> set[str]:
        """The documents the file lists (without decoding their data: ``docshift status`` counts
        them for every run)."""
        if not self.path.exists():
            return set()
        with self.path.open("rb") as lines:
            return {
                str(orjson.loads(line)["path"]) for line in lines if line.strip() and line.endswith(b"\n")
            }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as lines:
            for line in lines:
                if line.strip() and line.endswith(b"\n"):  # a last line without one is torn
                    record = orjson.loads(line)
                    record["document"]["data"] = codec.decode(record["document"]["data"])
                    yield record


def _record(document: Document, stage: str, error: str, rule: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": document.path,
        "stage": stage,
        "error": error,
        "at": Timestamp.now().isoformat(),
        "document": {
            "data": codec.encode(document.data),
            "update_time": codec.encode(document.update_time),
        },
    }
    if rule:
        record["rule"] = rule
    return record


def _cut_torn_line(fd: int, path: Path) -> None:
    """A killed run may leave half a line at the end; a resumed run must not append onto it."""
    size = os.fstat(fd).st_size
    if not size:
        return
    with path.open("rb") as existing:
        existing.seek(max(0, size - 1))
        if existing.read(1) == b"\n":
            return
        existing.seek(0)
        raw = existing.read()
    os.ftruncate(fd, raw.rfind(b"\n") + 1)

"""The before-image journal: every document's state before docshift changed it. A write-ahead log.

Appended in gzip members (one per batch; a gzip file may hold many), each a block of JSON lines
through the exact codec. A batch's before-images are written in full and fsynced **before** its
commit is sent (``append(..., durable=True)``), so neither a killed process nor a crashed machine
leaves a committed write without its before-image. The fsync is a group commit: batches appending
concurrently share one fsync (``scripts/bench.py`` measures its cost). Any failure to write (disk
full, I/O error, read-only, the file or its folder removed) raises
:class:`~docshift.errors.RunFileError` and breaks the writer: every later append raises too, so
nothing more is sent, and a member written in part is cut off again where possible. A torn last
member (the process died while appending) is ignored by the reader: its commit was never sent.

Entry kinds: ``before`` (data and update time as read), ``created`` (a document the run created,
to be deleted on restore), ``written`` (the update time our write produced, so a restore can tell
whether anyone changed the document since) and ``deleted`` (our delete was applied). A ``before``
with neither ``written`` nor ``deleted`` after it means the process died with that write in flight.
A copy's ``before`` and ``created`` also name the ``source`` document the write was made from.
Both also hold ``leaves``: a digest (:func:`~docshift.codec.digest`) of the whole document the
write leaves stored (empty for a delete), so that whether a write whose outcome was never journalled
landed is told from the store exactly, never by running ``up()`` again (whose result may differ:
the source changed, a timestamp, an edited migration). Journals written before it have none.

Members are only ever appended, so a byte offset names a member for good: a checkpoint records
which members hold batches its counters do not count (``append(..., spans=...)``,
:func:`read_members`), and a resume reads just those again.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from docshift import codec
from docshift.errors import CodecError, RunFileError
from docshift.runfolder.atomic import check_in_place, close_durably, run_file, write_fully
from docshift.values import Timestamp, Value

__all__ = ["JournalEntry", "JournalReader", "JournalWriter", "digest_of", "read_members"]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    kind: str  # "before", "created", "written", "deleted"
    path: str
    data: dict[str, Value] | None = None
    update_time: Timestamp | None = None
    create_time: Timestamp | None = None
    source: str | None = None
    """For a copy: the source document whose transform was written at ``path``."""
    leaves: str | None = None
    """For ``before`` and ``created``: :func:`digest_of` the document the write leaves stored
    ("" for a delete; None: not known, a journal written before it was recorded)."""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"k": self.kind, "p": self.path}
        if self.data is not None:
            record["d"] = codec.encode(self.data)
        if self.update_time is not None:
            record["u"] = [self.update_time.seconds, self.update_time.nanos]
        if self.create_time is not None:
            record["c"] = [self.create_time.seconds, self.create_time.nanos]
        if self.source is not None:
            record["s"] = self.source
        if self.leaves is not None:
            record["h"] = self.leaves
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> JournalEntry:
        update, create = record.get("u"), record.get("c")
        return cls(
            kind=record["k"],
            path=record["p"],
            data=codec.decode(record["d"]) if "d" in record else None,
            update_time=Timestamp(update[0], update[1]) if update else None,
            create_time=Timestamp(create[0], create[1]) if create else None,
            source=record.get("s"),
            leaves=record.get("h"),
        )


def digest_of(data: dict[str, Value] | None) -> str | None:
    """The digest a write's ``leaves`` is compared with: of a stored document's data ("" for no
    document); None when the data cannot be encoded (then nothing is told by digest)."""
    if data is None:
        return ""
    try:
        return codec.digest(data)
    except CodecError:
        return None


_FEED = 1 << 16


def _members(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """Each complete gzip member of ``raw`` as (offset just past it, its content); stops at a
    torn or damaged member. Fed in slices of a memoryview, so a journal of many members is read
    in linear time (slicing the rest of the file for every member would be quadratic)."""
    view = memoryview(raw)
    offset = 0
    while offset < len(raw):
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        parts: list[bytes] = []
        position = offset
        try:
            while not decompressor.eof and position < len(raw):
                piece = view[position : position + _FEED]
                parts.append(decompressor.decompress(piece))
                position += len(piece)
        except zlib.error:
            return
        if not decompressor.eof:
            return
        offset = position - len(decompressor.unused_data)
        yield offset, b"".join(parts)


class JournalWriter:
    """Thread-safe appender. ``append`` writes through to the OS (and with ``durable`` makes it
    durable); ``sync`` makes everything appended so far durable.

    Opening an existing journal (a resumed run) first cuts off a torn last member left by a killed
    process: appended after it, the new members would be unreadable. With ``note_unconfirmed`` it
    also notes the writes that process sent without journalling their outcome (:meth:`unconfirmed`).
    """

    def __init__(self, path: Path, *, compress_level: int = 1, note_unconfirmed: bool = True) -> None:
        self.path = path
        self._unconfirmed: set[str] = set()
        with run_file(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            size = os.fstat(self._fd).st_size
            if size:
                valid = 0
                for valid, block in _members(path.read_bytes()):  # noqa: B007 - the last end counts
                    if note_unconfirmed:
                        _note_outcomes(block, self._unconfirmed)
                if valid < size:
                    os.ftruncate(self._fd, valid)
                    os.fsync(self._fd)
                    size = valid
        self._size = size
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._level = compress_level
        self._appended = 0
        """Members appended by this writer; ``_synced`` of them are known durable."""
        self._synced = 0
        self._broken: RunFileError | None = None
        self.entries = 0
        self.fsyncs = 0
        """fsyncs done (the group commit shares them: the benchmark reports how many)."""

    def size(self) -> int:
        """Bytes appended so far: the offset at which the next member starts."""
        with self._lock:
            return self._size

    def confirmed(self, paths: Sequence[str]) -> None:
        """The outcome of these paths' writes is journalled now (see :meth:`unconfirmed`)."""
        with self._lock:
            self._unconfirmed.difference_update(paths)

    def unconfirmed(self, path: str) -> bool:
        """Whether an earlier process of this run sent a write of ``path`` and stopped before it
        journalled the outcome (asked once per path: the caller journals what it finds)."""
        with self._lock:  # asked from the writer threads: one of them gets the answer
            if path not in self._unconfirmed:
                return False
            self._unconfirmed.discard(path)
            return True

    def append(
        self,
        entries: Sequence[JournalEntry],
        *,
        durable: bool = False,
        spans: list[tuple[int, int]] | None = None,
    ) -> None:
        """Append one member; with ``durable``, return only once it is on disk (fsync). Its byte
        span (start, end) is added to ``spans`` at once: whoever reads :meth:`size` after this
        append finds it there."""
        if not entries:
            return
        block = b"".join(orjson.dumps(entry.to_json()) + b"\n" for entry in entries)
        member = gzip.compress(block, compresslevel=self._level, mtime=0)
        with self._lock:
            self._usable()
            try:
                with run_file(self.path):
                    write_fully(self._fd, member)
            except RunFileError as error:
                self._break(error, cut_to=self._size)
                raise
            if spans is not None:
                spans.append((self._size, self._size + len(member)))
            self._size += len(member)
            self._appended += 1
            self.entries += len(entries)
            appended = self._appended
        if durable:
            self._sync_to(appended)

    def sync(self) -> None:
        """Make every member appended so far durable (a no-op once broken: that was raised)."""
        with self._lock:
            if self._broken is not None or self._fd < 0:
                return
            appended = self._appended
        self._sync_to(appended)

    def _sync_to(self, member: int) -> None:
        """Group commit: one fsync covers every member appended when it starts, so a thread whose
        member another thread's fsync already covered returns at once."""
        with self._sync_lock:
            if self._synced >= member:
                return
            with self._lock:
                self._usable()
                covered = self._appended
            try:
                with run_file(self.path):
                    os.fsync(self._fd)
                    check_in_place(self._fd, self.path)
            except RunFileError as error:
                with self._lock:
                    self._break(error)
                raise
            self._synced = covered
            self.fsyncs += 1

    def _usable(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._fd < 0:
            raise RunFileError(
                f"{self.path} is closed",
                path=str(self.path),
                hint="the run had already ended; resume it to go on",
            )

    def _break(self, error: RunFileError, cut_to: int | None = None) -> None:
        """No more appends after a failed write: a member written in part would make every member
        after it unreadable. Cut the part off if the file still allows it (a resume does it too)."""
        self._broken = error
        if cut_to is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, cut_to)

    def close(self) -> None:
        """fsync and close; raises :class:`RunFileError` if that fails (not again once broken)."""
        with self._sync_lock, self._lock:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
            close_durably(fd, self.path, sync=self._broken is None)


def _note_outcomes(block: bytes, unconfirmed: set[str]) -> None:
    """Paths whose last entry is a write sent (``before``, ``created``) without its outcome."""
    for line in block.splitlines():
        if line:
            record = orjson.loads(line)
            if record["k"] in ("before", "created"):
                unconfirmed.add(record["p"])
            else:
                unconfirmed.discard(record["p"])


class JournalReader:
    """Reads entries back, member by member, stopping quietly at a torn tail. Given several
    journals (a Beam run's attempt journals), reads them one after the other, in the order given."""

    def __init__(self, path: Path | Sequence[Path]) -> None:
        self.paths = [path] if isinstance(path, Path) else list(path)
        self.path = self.paths[0] if self.paths else Path()
        self.torn_tail = False

    def __iter__(self) -> Iterator[JournalEntry]:
        for path in self.paths:
            if not path.exists():
                continue
            raw = path.read_bytes()
            complete = 0
            for end, block in _members(raw):
                complete = end
                for line in block.splitlines():
                    if line:
                        yield JournalEntry.from_json(orjson.loads(line))
            self.torn_tail = self.torn_tail or complete < len(raw)


def read_members(path: Path, spans: Sequence[tuple[int, int]], after: int) -> Iterator[JournalEntry]:
    """The entries of the members at these byte ``spans`` (each one member, in journal order) and
    of every member from offset ``after`` on: what a checkpoint did not count. A span or tail that
    is not there (a journal cut short where a killed process left a torn member) yields nothing."""
    if not path.exists():
        return
    with run_file(path), path.open("rb") as file:
        parts: list[bytes] = []
        for start, end in spans:
            if start < after:
                file.seek(start)
                parts.append(file.read(end - start))
        file.seek(after)
        parts.append(file.read())
    for part in parts:
        for _end, block in _members(part):
            for line in block.splitlines():
                if line:
                    yield JournalEntry.from_json(orjson.loads(line))

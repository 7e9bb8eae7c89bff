"""Run files: atomic, versioned JSON files, and the one place their write errors are translated.

Atomic: temp file in the same folder, fsync, ``os.replace``, fsync folder. A reader sees either the
old file or the new one, never half of one, whatever kills the process. Each file says what it is
(``format``) and which version of that format it is (a :class:`FileFormat`). A reader upgrades an
older version step by step (v1 -> v2 -> ..., each step a function of the document) to the one this
docshift writes, and refuses a newer one instead of guessing.

Every write to a run file (these, the journal, the dead letters, a dry run's plan) goes through
:func:`run_file`, which turns an ``OSError`` (disk full, I/O error, read-only, permissions, folder
removed) into :class:`~docshift.errors.RunFileError`, and :func:`write_fully`, which never leaves a
short write unnoticed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from docshift import codec
from docshift.errors import DataError, RunFileError

__all__ = [
    "FileFormat",
    "Upgrade",
    "check_in_place",
    "close_durably",
    "read_versioned",
    "run_file",
    "write_atomic",
    "write_fully",
    "write_versioned",
]


@contextlib.contextmanager
def run_file(path: Path) -> Iterator[None]:
    """Run the block; an ``OSError`` in it becomes :class:`RunFileError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        code = errno.errorcode.get(exc.errno) if exc.errno is not None else None
        if code:
            reason += f" ({code})"
        raise RunFileError(
            f"could not write {path}: {reason}",
            path=str(path),
            hint="free space or fix the folder (permissions, mount), then run the command again",
        ) from exc


def write_fully(fd: int, data: bytes) -> None:
    """``os.write`` may write only a part (a disk filling up); write the rest, or raise."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def check_in_place(fd: int, path: Path) -> None:
    """Raise when the file open as ``fd`` is no longer the one at ``path`` (it, or its folder, was
    removed or replaced): whatever is written to it from now on would be lost."""
    opened, there = os.fstat(fd), os.stat(path)
    if opened.st_nlink == 0 or (opened.st_dev, opened.st_ino) != (there.st_dev, there.st_ino):
        raise OSError(errno.ENOENT, "the file was removed or replaced while the run was writing it")


def close_durably(fd: int, path: Path, *, sync: bool = True) -> None:
    """Close an appended run file: fsync it first (unless ``sync`` is false: a file broken by a
    failure already raised), still in place; the descriptor is closed whatever happens."""
    try:
        if sync:
            with run_file(path):
                os.fsync(fd)
                check_in_place(fd, path)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def write_atomic(path: Path, payload: bytes) -> None:
    with run_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            try:
                write_fully(handle, payload)
                os.fsync(handle)
            finally:
                os.close(handle)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(temp).unlink(missing_ok=True)
            raise
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
"""One step of a format's upgrade chain: a version-``n`` document (decoded) -> a version-``n + 1`` one."""


@dataclass(frozen=True)
class FileFormat:
    """A versioned file format: its tag (``format``), the version this docshift writes, and the upgrade
    chain from each older version it still reads (``upgrades[n]`` turns version ``n`` into ``n + 1``)."""

    kind: str
    version: int
    upgrades: Mapping[int, Upgrade] = field(default_factory=dict)

    @property
    def oldest(self) -> int:
        """The oldest version read: the chain must reach the current version from it, step by step."""
        oldest = self.version
        while oldest - 1 in self.upgrades:
            oldest -= 1
        return oldest

    def read(self, path: Path) -> dict[str, Any]:
        """The file at ``path`` as this version of the format (upgraded if it is older)."""
        return read_versioned(path, self.kind, self.version, self.upgrades)

    def write(self, path: Path, body: dict[str, Any]) -> None:
        write_versioned(path, self.kind, self.version, body)


def write_versioned(path: Path, kind: str, version: int, body: dict[str, Any]) -> None:
    """Write ``body`` (any docshift values, through the exact codec) as a ``kind`` file."""
    document = {"format": kind, "version": version, "codec": codec.FORMAT_VERSION, **body}
    write_atomic(path, orjson.dumps(codec.encode(document), option=orjson.OPT_INDENT_2))


def read_versioned(
    path: Path, kind: str, max_version: int, upgrades: Mapping[int, Upgrade] | None = None
) -> dict[str, Any]:
    """The ``kind`` file at ``path``. A newer version than ``max_version`` is refused; an older one is
    passed through ``upgrades`` step by step up to ``max_version`` (without ``upgrades``, it is
    returned as written: the caller reads every version itself)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist", hint="restore it, or start a new run") from None
    try:
        document = codec.loads(raw)
    except DataError as exc:
        raise DataError(f"{path} is damaged: {exc.message}", hint="restore it or start a new run") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise DataError(f"{path} is not a docshift {kind} file", hint="restore it, or start a new run")
    found: dict[str, Any] = document
    version = found.get("version")
    if not isinstance(version, int) or version > max_version:
        raise DataError(
            f"{path} has {kind} format version {version}, this docshift reads up to {max_version}",
            hint="upgrade docshift to read it",
        )
    if upgrades is None:
        return found
    while version < max_version:
        step = upgrades.get(version)
        if step is None:
            oldest = FileFormat(kind, max_version, upgrades).oldest
            raise DataError(
                f"{path} has {kind} format version {version}, this docshift reads versions {oldest} "
                f"to {max_version}",
                hint="read it with the docshift release that wrote it",
            )
        found = step(found)
        version += 1
        found["version"] = version
    return found

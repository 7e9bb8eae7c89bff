"""Atomic, versioned JSON files: temp file in the same folder, fsync, ``os.replace``, fsync folder.

A reader sees either the old file or the new one, never half of one, whatever kills the process.
Each file says what it is (``format``) and which version wrote it, and a reader refuses versions
it does not know instead of guessing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from docshift import codec
from docshift.errors import DataError

__all__ = ["read_versioned", "write_atomic", "write_versioned"]


def write_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_versioned(path: Path, kind: str, version: int, body: dict[str, Any]) -> None:
    """Write ``body`` (any docshift values, through the exact codec) as a ``kind`` file."""
    document = {"format": kind, "version": version, "codec": codec.FORMAT_VERSION, **body}
    write_atomic(path, orjson.dumps(codec.encode(document), option=orjson.OPT_INDENT_2))


def read_versioned(path: Path, kind: str, max_version: int) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    try:
        document = codec.loads(raw)
    except DataError as exc:
        raise DataError(f"{path} is damaged: {exc.message}", hint="restore it or start a new run") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise DataError(f"{path} is not a docshift {kind} file")
    version = document.get("version")
    if not isinstance(version, int) or version > max_version:
        raise DataError(
            f"{path} has {kind} format version {version}, this docshift reads up to {max_version}",
            hint="upgrade docshift to read it",
        )
    return document

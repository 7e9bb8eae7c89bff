"""The run's event log: every progress event, one JSON line each, in ``RUN_FOLDER/events.jsonl``.

Why a file: the report's charts need the run's history (throughput, latency and failures over
time), and ``docshift monitor`` must be able to follow a run that has no status endpoint. Lines are
written through the exact codec, appended (a resumed run continues the same file) and flushed
after each event, so another process can follow the file while the run goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from docshift import codec
from docshift.engine.progress import Progress

__all__ = ["EventFollower", "EventLog", "TeeProgress", "encode_event", "read_events"]


def encode_event(kind: str, fields: dict[str, Any], at: float | None = None) -> bytes:
    """One event as a JSON line (without the newline): ``{"event": kind, "at": unix time, ...}``."""
    document = {"event": kind, "at": time.time() if at is None else at, **codec.encode(fields)}
    return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)


class EventLog:
    """A progress sink appending every event to a file; opened on the first event.

    Opening lazily means a run that turns out to have nothing to do leaves no file behind. A log
    that cannot be written never stops the run: the run's own files are what resuming relies on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: OSError | None = None
        self.written = 0
        """Events written by this log (this process): none means the run never started here."""
        self._out: IO[bytes] | None = None
        self._lock = threading.Lock()

    def event(self, kind: str, **fields: Any) -> None:
        line = encode_event(kind, fields)
        with self._lock:
            if self.error is not None:
                return
            try:
                if self._out is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._out = self.path.open("ab")
                self._out.write(line + b"\n")
                self._out.flush()
                self.written += 1
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None


class TeeProgress:
    """Sends every event to several sinks, in order (event log, status, display)."""

    def __init__(self, *sinks: Progress) -> None:
        self.sinks = sinks

    def event(self, kind: str, **fields: Any) -> None:
        for sink in self.sinks:
            sink.event(kind, **fields)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a line torn by a kill; everything before it is intact
    if not isinstance(document, dict) or not isinstance(document.get("event"), str):
        return None
    decoded = codec.decode(document)
    return decoded if isinstance(decoded, dict) else None


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Every event of a log, oldest first; a torn or foreign line is skipped, a missing file is empty."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            event = _parse(line)
            if event is not None:
                yield event


class EventFollower:
    """Reads the events appended to a log since the last call (``tail -f`` for ``docshift monitor``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def new_events(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for its end
        return [event for line in lines if line.strip() and (event := _parse(line)) is not None]

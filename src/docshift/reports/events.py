"""The run's event log, ``RUN_FOLDER/events.jsonl``: the run's events, one JSON line each; and
the one place that knows how an event is written (its kind name and fields) and read back.

Why a file: the report's charts need the run's history (throughput, latency and failures over
time), and ``docshift monitor`` must be able to follow a run that has no status endpoint. Lines are
written through the exact codec, appended (a resumed run continues the same file) and flushed
after each event, so another process can follow the file while the run goes on.

A line is ``{"event": KIND, "at": unix time, ...fields}``; ``--json`` prints the same lines. The
kind names are in :data:`_KINDS` only; everything else handles the typed events of
:mod:`docshift.engine.hooks`. The steps that only mean something inside the process (a run's or a
migration's start and end as lifecycle steps, with the objects they carry) are not written.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from docshift import codec
from docshift.engine.hooks import (
    Checkpointed,
    ControlApplied,
    EventSink,
    HealthReported,
    PassFinished,
    PassStarted,
    PassStopped,
    Progressed,
    RunEnded,
    RunEvent,
    RunResumed,
    ScanStarted,
    StageEntered,
    StagesRolledBack,
    TotalKnown,
    Warned,
)

__all__ = [
    "EventFollower",
    "EventLog",
    "Logged",
    "encode_event",
    "event_fields",
    "event_from_fields",
    "kind_of",
    "parse_event",
    "read_events",
]

E = TypeVar("E")

_KINDS: dict[type, str] = {
    RunResumed: "resume",
    PassStarted: "start",
    Progressed: "progress",
    Checkpointed: "checkpoint",
    StageEntered: "stage",
    Warned: "warning",
    ControlApplied: "control",
    TotalKnown: "total",
    PassFinished: "finish",
    PassStopped: "stop",
    StagesRolledBack: "rolled_back",
    ScanStarted: "validation_scan",
    HealthReported: "validation",
    RunEnded: "end",
}
"""Every written event type and its kind name: the JSON lines' ``event``."""
_TYPES: dict[str, type] = {kind: cls for cls, kind in _KINDS.items()}


@dataclass(frozen=True)
class Logged:
    """An event read back from a log, with the time it was written."""

    at: float
    event: RunEvent


def kind_of(event: object) -> str | None:
    """The kind name ``event`` is written with; None for one that is not written."""
    return _KINDS.get(type(event))


def event_fields(event: Any) -> dict[str, Any]:
    """The fields ``event`` is written with (as Python values; :func:`encode_event` encodes them)."""
    fields: dict[str, Any] = {}
    for spec in dataclasses.fields(event):
        meta, value = spec.metadata, getattr(event, spec.name)
        if meta.get("unwritten") or (meta.get("if_set") and value == spec.default):
            continue
        if meta.get("flat"):
            if dataclasses.is_dataclass(value):
                fields.update(event_fields(value))
            elif value is not None:
                fields.update(value)
        elif meta.get("items") and value is not None:
            fields[spec.name] = [event_fields(item) if meta.get("of") else item for item in value]
        else:
            fields[spec.name] = dict(value) if isinstance(value, Mapping) else value
    return fields


def encode_event(event: object, at: float | None = None) -> bytes | None:
    """One event as a JSON line (without the newline); None for an event that is not written."""
    kind = kind_of(event)
    if kind is None:
        return None
    document = {"event": kind, "at": time.time() if at is None else at, **codec.encode(event_fields(event))}
    return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)


def event_from_fields(cls: type[E], data: Mapping[str, Any]) -> E:
    """An event of type ``cls`` from the fields it is written with (see :func:`event_fields`)."""
    values: dict[str, Any] = {}
    claimed: set[str] = set()
    counters: str | None = None
    shape: Any = cls  # a dataclass
    for spec in dataclasses.fields(shape):
        meta = spec.metadata
        if meta.get("unwritten"):
            continue
        if meta.get("flat"):
            group = meta.get("of")
            if group is None:
                counters = spec.name  # what is left of the line's integers, below
                continue
            names = {inner.name for inner in dataclasses.fields(group)}
            claimed |= names
            if names & data.keys():
                values[spec.name] = event_from_fields(group, data)
            continue
        claimed.add(spec.name)
        if spec.name not in data:
            continue  # its default (a missing required field makes the line unreadable)
        value = data[spec.name]
        if meta.get("items") and isinstance(value, list):
            item = meta.get("of")
            value = tuple(event_from_fields(item, entry) if item is not None else entry for entry in value)
        values[spec.name] = value
    if counters is not None:
        values[counters] = {
            name: value
            for name, value in data.items()
            if name not in claimed and isinstance(value, int) and not isinstance(value, bool)
        }
    return cls(**values)


def parse_event(line: bytes) -> Logged | None:
    """The event of one line; None for a line torn by a kill, a foreign one, or an unknown kind."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a line torn by a kill; everything before it is intact
    if not isinstance(document, dict):
        return None
    decoded = codec.decode(document)
    if not isinstance(decoded, dict):
        return None
    kind, at = decoded.pop("event", None), decoded.pop("at", None)
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(at, float | int) or isinstance(at, bool):
        return None
    try:
        return Logged(float(at), event_from_fields(cls, decoded))
    except (TypeError, ValueError):
        return None


class EventLog(EventSink):
    """Hooks appending every written event to a file; opened on the first one.

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

    def record(self, event: RunEvent) -> None:
        line = encode_event(event)
        if line is None:
            return
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


def read_events(path: Path) -> Iterator[Logged]:
    """Every event of a log, oldest first; a torn or foreign line is skipped, a missing file is empty."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            logged = parse_event(line)
            if logged is not None:
                yield logged


class EventFollower:
    """Reads the events appended to a log since the last call (``tail -f`` for ``docshift monitor``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def new_events(self) -> list[Logged]:
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
        return [logged for line in lines if line.strip() and (logged := parse_event(line)) is not None]

"""Hooks that keep every event they are given, for tests (the project's and users') and the REPL.

Pass a :class:`RecordingHooks` as ``hooks=`` to ``run``, ``rollback``, ``backup``, ``restore`` or
``verify`` (or to a pipeline), then look at what happened, typed::

    hooks = RecordingHooks()
    run(config, RunOptions(execute=True), hooks=hooks)
    [finished] = hooks.of(PassFinished)
    assert finished.counters["updated"] == 100 and not hooks.warnings()

Subclass it to act at a step (stop the run at its first checkpoint, say): override the step, call
``super()`` and do the rest.
"""

from __future__ import annotations

import threading
from typing import TypeVar

from docshift.engine.hooks import (
    BackupEvent,
    BackupHooks,
    EventSink,
    PhaseFinished,
    PhaseProgressed,
    PhaseStarted,
    RunEvent,
    Warned,
)

__all__ = ["RecordingHooks"]

E = TypeVar("E")


class RecordingHooks(EventSink, BackupHooks):
    """Keeps every event of a run, or of a backup, restore or verify, in order (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[RunEvent | BackupEvent] = []
        self._lock = threading.Lock()

    def record(self, event: RunEvent | BackupEvent) -> None:
        with self._lock:
            self.events.append(event)

    def phase_started(self, event: PhaseStarted) -> None:
        self.record(event)

    def phase_progressed(self, event: PhaseProgressed) -> None:
        self.record(event)

    def phase_finished(self, event: PhaseFinished) -> None:
        self.record(event)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one type (or its subtypes), in order."""
        with self._lock:
            return [event for event in self.events if isinstance(event, kind)]

    def types(self) -> list[type]:
        """The type of each event, in order."""
        with self._lock:
            return [type(event) for event in self.events]

    def warnings(self) -> list[str]:
        return [event.message for event in self.of(Warned)]

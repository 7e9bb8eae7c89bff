"""How the engine tells the world what it is doing, without knowing who listens.

The engine calls ``progress.event(kind, **fields)`` with kinds ``start``, ``progress``,
``checkpoint``, ``warning``, ``stage`` (canary stages), ``stop`` and ``finish``. The default does
nothing; the CLI supplies a live view, plain lines or JSON events.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["NullProgress", "Progress", "RecordingProgress"]


class Progress(Protocol):
    def event(self, kind: str, **fields: Any) -> None: ...


class NullProgress:
    def event(self, kind: str, **fields: Any) -> None:
        return None


class RecordingProgress:
    """Keeps every event; for the Python API and tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

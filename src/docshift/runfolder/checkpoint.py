"""A migration's checkpoint: where each shard may restart, and the counters so far.

A shard's ``cursor`` is a document path such that every document up to it (in name order) has been
fully handled: written and acknowledged, failed to the dead-letter file, or found unchanged. So a
resume that starts after the cursor reaches exactly the state an uninterrupted run would have.

``extra`` holds what the engine needs to continue exactly (each key optional: a checkpoint without
one resumes as before it was recorded):

``dead_letter_bytes``
    the size of the dead-letter file the counters account for; a resume cuts off what follows
    (those batches are done again).
``journal_bytes``, ``journal_unsettled``
    which members of the before-image journal hold batches the counters do not count: every member
    from byte ``journal_bytes`` on, and the members at the ``[start, end]`` byte spans of
    ``journal_unsettled`` (batches in flight when it was saved, or done and waiting for an earlier
    one). A run stopped at once (kill -9, a run file it could not write, the store failing for good)
    may have landed their writes; a resume counts those first (``docshift.engine.landed``).
``landed``
    path -> the counters a resume added for a write that had landed there (e.g. ``["updated"]``)
    before its reader came to the document: found unchanged then, it is not counted again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.runfolder.atomic import read_versioned, write_versioned
from docshift.values import Timestamp

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "ShardCursor"]

CHECKPOINT_VERSION = 1
_KIND = "docshift-checkpoint"


@dataclass
class ShardCursor:
    """One key range ``(start_after, end_at]`` and how far it got."""

    start_after: str | None = None
    end_at: str | None = None
    cursor: str | None = None
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "start_after": self.start_after,
            "end_at": self.end_at,
            "cursor": self.cursor,
            "done": self.done,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardCursor:
        return cls(data.get("start_after"), data.get("end_at"), data.get("cursor"), bool(data.get("done")))

    @property
    def resume_after(self) -> str | None:
        return self.cursor if self.cursor is not None else self.start_after


@dataclass
class Checkpoint:
    run_id: str
    migration_id: str
    checksum: str
    shards: list[ShardCursor]
    counters: dict[str, int] = field(default_factory=dict)
    started_at: Timestamp | None = None
    saved_at: Timestamp | None = None
    elapsed_seconds: float = 0.0
    state: str = "running"  # running, finished, stopped, failed
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def covers_target(self) -> bool:
        """Whether the documents behind this checkpoint are every document of the migration's
        target: every shard read to its end, and nothing left out by the run's scope. The scope is
        recorded in ``extra`` by the run: ``limit_reached`` (``--limit`` stopped reading before the
        target's end), ``sample_percent`` (``--sample``), and for canary stages ``stages`` with
        ``passed``, the index of the last stage whose gate passed. What "applied" is derived from."""
        if not self.finished or not all(shard.done for shard in self.shards):
            return False
        stages = self.extra.get("stages")
        if stages:
            return self.extra.get("passed") == len(stages) - 1 and float(stages[-1]) >= 100
        if self.extra.get("limit_reached", False) is not False:
            return False  # True: documents remain past the limit; None: not known yet
        sample = self.extra.get("sample_percent")
        return sample is None or float(sample) >= 100

    def save(self, path: Path) -> None:
        self.saved_at = Timestamp.now()
        write_versioned(
            path,
            _KIND,
            CHECKPOINT_VERSION,
            {
                "run_id": self.run_id,
                "migration_id": self.migration_id,
                "checksum": self.checksum,
                "state": self.state,
                "shards": [shard.to_json() for shard in self.shards],
                "counters": self.counters,
                "started_at": self.started_at,
                "saved_at": self.saved_at,
                "elapsed_seconds": self.elapsed_seconds,
                "settings": self.settings,
                "extra": self.extra,
            },
        )

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        data = read_versioned(path, _KIND, CHECKPOINT_VERSION)
        return cls(
            run_id=data["run_id"],
            migration_id=data["migration_id"],
            checksum=data["checksum"],
            shards=[ShardCursor.from_json(s) for s in data["shards"]],
            counters={k: int(v) for k, v in data.get("counters", {}).items()},
            started_at=data.get("started_at"),
            saved_at=data.get("saved_at"),
            elapsed_seconds=float(data.get("elapsed_seconds", 0.0)),
            state=data.get("state", "running"),
            settings=data.get("settings", {}),
            extra=data.get("extra", {}),
        )

"""A migration's checkpoint: where each shard may restart, and the counters so far.

A shard's ``cursor`` is a document path such that every document up to it (in name order) has been
fully handled: written and acknowledged, failed to the dead-letter file, or found unchanged. So a
resume that starts after the cursor reaches exactly the state an uninterrupted run would have.

Besides the cursors and counters, what the engine needs to continue exactly, one typed field per
concern (each optional: a checkpoint without one resumes as before it was recorded):

``dead_letter_bytes``
    the size of the dead-letter file the counters account for; a resume cuts off what follows
    (those batches are done again).
``journal`` (:class:`JournalMark`)
    which members of the before-image journal hold batches the counters do not count: every member
    from byte ``size`` on, and the members at the ``[start, end]`` byte spans of ``unsettled``
    (batches in flight when it was saved, or done and waiting for an earlier one). A run stopped at
    once (kill -9, a run file it could not write, the store failing for good) may have landed their
    writes; a resume counts those first (``docshift.engine.landed``).
``landed``
    path -> the counters a resume added for a write that had landed there (e.g. ``["updated"]``)
    before its reader came to the document: found unchanged then, it is not counted again.
``beyond_cursor``
    what a stopped (or running) pass wrote past its cursors, which ``counters`` do not count yet:
    ``{"updated": 2}`` when a later batch landed before an earlier one failed. Shown beside the
    counters (what landed); never added to them on resume, which counts those writes itself (from
    the journal, or by reading the documents again), so each document is counted once.
``scope`` (:class:`Scope`)
    which part of the target the run set out to process (``--limit``, ``--sample``).
``stages`` (:class:`StageProgress`)
    a canary-staged migration: its stages, the one this checkpoint is of, the last one whose gate
    passed, the stages before, and the rollback of the stages once one failed.
``undo`` (:class:`UndoProgress`)
    a rollback's checkpoint: where it stands in the journal of each run it undoes.
``script`` (:class:`ScriptProgress`)
    a script migration's checkpoint: the last key its ``apply`` marked (``ctx.checkpoint(key)``),
    and the counters as of that mark (a stopped script's ``counters`` also count its writes after
    the mark, which a resume does again).

The file is ``docshift-checkpoint`` version 2 (see :mod:`docshift.runfolder.layout`); version 1 kept
all of these in an untyped ``extra`` map and is upgraded on reading
(:func:`docshift.runfolder.upgrades.checkpoint_1_to_2`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.runfolder.layout import CHECKPOINT_FORMAT
from docshift.values import Timestamp

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "JournalMark",
    "Scope",
    "ScriptProgress",
    "ShardCursor",
    "StageProgress",
    "StageRollback",
    "UndoProgress",
    "UndoStep",
]

CHECKPOINT_VERSION = CHECKPOINT_FORMAT.version


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


@dataclass(frozen=True)
class JournalMark:
    """The before-image journal's members that hold batches the counters do not count: every one from
    byte ``size`` on, and those at the byte spans ``unsettled`` before it."""

    size: int
    unsettled: tuple[tuple[int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "unsettled": [list(span) for span in self.unsettled]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalMark:
        spans = tuple((int(span[0]), int(span[1])) for span in data.get("unsettled") or [])
        return cls(int(data["size"]), spans)


@dataclass
class Scope:
    """Which part of the migration's target the run set out to process."""

    limited: bool = False
    """``--limit``: the first N documents in name order."""
    limit_reached: bool | None = None
    """With ``limited``: whether the target has documents past the limit (None: not known yet, until
    the run has read up to it)."""
    sample_percent: float | None = None
    """``--sample``: the documents in this percentage of the key space."""

    @property
    def whole_target(self) -> bool:
        """Whether nothing of the target is left out by the scope."""
        if self.limited and self.limit_reached is not False:
            return False  # True: documents remain past the limit; None: not known yet
        return self.sample_percent is None or self.sample_percent >= 100

    def to_json(self) -> dict[str, Any]:
        return {
            "limited": self.limited,
            "limit_reached": self.limit_reached,
            "sample_percent": self.sample_percent,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scope:
        reached, sample = data.get("limit_reached"), data.get("sample_percent")
        return cls(
            bool(data.get("limited")),
            None if reached is None else bool(reached),
            None if sample is None else float(sample),
        )


@dataclass
class StageRollback:
    """The rollback of every stage of a canary-staged migration, begun when a stage failed its gate
    (or a trigger fired): why, and once it is done what it did (a run killed during it is finished by
    its resume, not continued)."""

    message: str
    hint: str | None = None
    counters: dict[str, int] | None = None
    """What the rollback did (restored, recreated, deleted, conflicts…); None while it is under way."""

    @property
    def done(self) -> bool:
        return self.counters is not None

    @property
    def complete(self) -> bool:
        """Done, and every document given back: none left alone (conflicts) or unequal to its
        before-image afterwards (mismatched). Only then were the stages rolled back."""
        counters = self.counters
        return counters is not None and not counters.get("conflicts") and not counters.get("mismatched")

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "hint": self.hint, "counters": self.counters}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRollback:
        counters = data.get("counters")
        return cls(
            str(data.get("message") or ""),
            None if data.get("hint") is None else str(data["hint"]),
            None if counters is None else {str(k): int(v) for k, v in dict(counters).items()},
        )


@dataclass
class StageProgress:
    """Where a canary-staged migration stands (see ``commands/stages.py``)."""

    stages: list[float]
    """The stages, in percent of the documents (the last is 100)."""
    stage: int = 0
    """The index of the stage this checkpoint is of."""
    passed: int | None = None
    """The index of the last stage whose gate passed (None: none of this checkpoint's)."""
    earlier: dict[str, int] = field(default_factory=dict)
    """The counters of the stages before this one (once a stage passed its gate: with it)."""
    earlier_seconds: float = 0.0
    """Their working time."""
    rollback: StageRollback | None = None

    @property
    def all_passed(self) -> bool:
        """Every stage passed its gate, up to 100% of the documents."""
        return bool(self.stages) and self.passed == len(self.stages) - 1 and self.stages[-1] >= 100

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": self.stages,
            "stage": self.stage,
            "passed": self.passed,
            "earlier": self.earlier,
            "earlier_seconds": self.earlier_seconds,
            "rollback": None if self.rollback is None else self.rollback.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageProgress:
        rollback, passed = data.get("rollback"), data.get("passed")
        return cls(
            [float(s) for s in data.get("stages") or []],
            int(data.get("stage") or 0),
            None if passed is None else int(passed),
            {str(k): int(v) for k, v in dict(data.get("earlier") or {}).items()},
            float(data.get("earlier_seconds") or 0.0),
            None if rollback is None else StageRollback.from_json(rollback),
        )


@dataclass
class UndoStep:
    """How far a rollback got in the journal of one of the runs it undoes."""

    run: str
    counters: dict[str, int] = field(default_factory=dict)
    position: int = -1
    """The journal position done up to (-1: none yet)."""
    finished: bool = False
    landed: dict[str, Timestamp] = field(default_factory=dict)
    """Undo writes of the batch after ``position`` that landed before the store failed: path ->
    the update time each produced. They are counted already; the resume that meets them again
    does not count them twice."""

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "counters": self.counters,
            "position": self.position,
            "finished": self.finished,
            "landed": self.landed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UndoStep:
        counters = {str(k): int(v) for k, v in dict(data.get("counters") or {}).items()}
        landed = {str(p): t for p, t in dict(data.get("landed") or {}).items() if isinstance(t, Timestamp)}
        return cls(
            str(data["run"]), counters, int(data.get("position", -1)), bool(data.get("finished")), landed
        )


@dataclass
class UndoProgress:
    """A rollback's checkpoint of one migration undone from before-images: the strategy (``restore``
    or ``down``), the runs it undoes (newest first) and each one's step."""

    strategy: str
    runs: list[str]
    steps: list[UndoStep] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "runs": self.runs, "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UndoProgress:
        return cls(
            str(data["strategy"]),
            [str(run) for run in data.get("runs") or []],
            [UndoStep.from_json(step) for step in data.get("steps") or []],
        )


@dataclass
class ScriptProgress:
    """Where a script migration stands: the last key its ``apply(ctx)`` marked with
    ``ctx.checkpoint(key)`` once every write before it had landed (None: none yet), which a resume
    gives back as ``ctx.resume_key``."""

    key: str | None = None
    marks: int = 0
    """How many checkpoints the script marked so far (over every process of the run)."""
    marked: dict[str, int] | None = None
    """The counters as of the last mark, which a resume counts on from (the work after the mark is
    done again); the checkpoint's ``counters`` are what the run did, writes after the mark included.
    None (a checkpoint from before this was recorded): the checkpoint's ``counters``."""

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "marks": self.marks, "marked": self.marked}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScriptProgress:
        key, marked = data.get("key"), data.get("marked")
        return cls(
            None if key is None else str(key),
            int(data.get("marks") or 0),
            None if not isinstance(marked, dict) else {str(k): int(v) for k, v in marked.items()},
        )


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
    dead_letter_bytes: int | None = None
    journal: JournalMark | None = None
    landed: dict[str, list[str]] = field(default_factory=dict)
    beyond_cursor: dict[str, int] = field(default_factory=dict)
    scope: Scope = field(default_factory=Scope)
    stages: StageProgress | None = None
    undo: UndoProgress | None = None
    script: ScriptProgress | None = None

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def stage_rollback(self) -> StageRollback | None:
        """The rollback of a canary-staged migration's stages, once one was begun."""
        return self.stages.rollback if self.stages is not None else None

    @property
    def covers_target(self) -> bool:
        """Whether the documents behind this checkpoint are every document of the migration's
        target: every shard read to its end, and nothing left out by the run's scope (``scope``; for
        canary stages: every stage passed its gate). What "applied" is derived from."""
        if not self.finished or not all(shard.done for shard in self.shards):
            return False
        if self.stages is not None:
            return self.stages.all_passed
        return self.scope.whole_target

    def to_json(self) -> dict[str, Any]:
        return {
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
            "dead_letter_bytes": self.dead_letter_bytes,
            "journal": None if self.journal is None else self.journal.to_json(),
            "landed": self.landed,
            "beyond_cursor": self.beyond_cursor,
            "scope": self.scope.to_json(),
            "stages": None if self.stages is None else self.stages.to_json(),
            "undo": None if self.undo is None else self.undo.to_json(),
            "script": None if self.script is None else self.script.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        """A checkpoint from its file's content (the current format version)."""
        letters, journal, stages, undo, script = (
            data.get(k) for k in ("dead_letter_bytes", "journal", "stages", "undo", "script")
        )
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
            dead_letter_bytes=letters if isinstance(letters, int) and not isinstance(letters, bool) else None,
            journal=None if journal is None else JournalMark.from_json(journal),
            landed={str(p): [str(n) for n in names] for p, names in dict(data.get("landed") or {}).items()},
            beyond_cursor={str(k): int(v) for k, v in dict(data.get("beyond_cursor") or {}).items()},
            scope=Scope.from_json(data.get("scope") or {}),
            stages=None if stages is None else StageProgress.from_json(stages),
            undo=None if undo is None else UndoProgress.from_json(undo),
            script=None if script is None else ScriptProgress.from_json(script),
        )

    def save(self, path: Path) -> None:
        self.saved_at = Timestamp.now()
        CHECKPOINT_FORMAT.write(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        return cls.from_json(CHECKPOINT_FORMAT.read(path))

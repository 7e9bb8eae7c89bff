"""Run state on disk: the run folder's layout and formats (``layout.py``: every file's name, every
format's version and upgrade chain), checkpoints, before-image journals, dead letters, and the run
record every view reads (``record.py``). Versioned, atomic files."""

from __future__ import annotations

from docshift.runfolder.atomic import FileFormat, read_versioned, write_atomic, write_versioned
from docshift.runfolder.checkpoint import (
    Checkpoint,
    JournalMark,
    Scope,
    ShardCursor,
    StageProgress,
    StageRollback,
    UndoProgress,
    UndoStep,
)
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.journal import JournalEntry, JournalReader, JournalWriter
from docshift.runfolder.layout import MigrationFolder, ReportFolder, RunFolder, run_folders

__all__ = [
    "Checkpoint",
    "DeadLetterFile",
    "FileFormat",
    "JournalEntry",
    "JournalMark",
    "JournalReader",
    "JournalWriter",
    "MigrationFolder",
    "ReportFolder",
    "RunFolder",
    "Scope",
    "ShardCursor",
    "StageProgress",
    "StageRollback",
    "UndoProgress",
    "UndoStep",
    "read_versioned",
    "run_folders",
    "write_atomic",
    "write_versioned",
]

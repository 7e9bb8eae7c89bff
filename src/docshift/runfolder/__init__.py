"""Run state on disk: checkpoints, before-image journals, dead letters, and the run record every
view reads (``record.py``). Versioned, atomic files."""

from __future__ import annotations

from docshift.runfolder.atomic import read_versioned, write_atomic, write_versioned
from docshift.runfolder.checkpoint import Checkpoint, ShardCursor
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.journal import JournalEntry, JournalReader, JournalWriter

__all__ = [
    "Checkpoint",
    "DeadLetterFile",
    "JournalEntry",
    "JournalReader",
    "JournalWriter",
    "ShardCursor",
    "read_versioned",
    "write_atomic",
    "write_versioned",
]

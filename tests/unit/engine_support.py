"""Builders shared by the engine tests: migrations from plain functions, pipelines on a memory store."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docshift.config import EngineConfig, LimitsConfig
from docshift.engine.batch import BatchProcessor, BatchRules
from docshift.engine.controls import Controls
from docshift.engine.limits import AdaptiveBatch, CircuitBreaker, MemoryGuard
from docshift.engine.pipeline import (
    MigrationPipeline,
    PassSteps,
    PipelineOptions,
    PipelineResult,
    new_checkpoint,
)
from docshift.engine.sharding import plan_shards
from docshift.engine.stats import RunStats
from docshift.engine.writer import BatchWriter, WriteGuards
from docshift.migration import UNCHANGED, DocView, Migration, Target
from docshift.runfolder import Checkpoint, DeadLetterFile, JournalReader
from docshift.store import DelegatingStore, Document, Query, Store, Write
from docshift.testing import RecordingHooks
from docshift.values import Value, values_equal

COLLECTION = "users"


def split_name(doc: DocView) -> Any:
    """The example migration: split ``full_name`` (idempotent)."""
    data = doc.data
    if "full_name" not in data:
        return UNCHANGED
    first, _, last = str(data.pop("full_name")).partition(" ")
    data["first_name"] = first
    data["last_name"] = last or None
    return data


def make_migration(
    up: Callable[[DocView], Any] = split_name,
    *,
    collection: str = COLLECTION,
    copy_to: str | None = None,
    group: bool = False,
    migration_id: str = "0001",
) -> Migration:
    target = Target(collection, group=group, copy_to=copy_to)
    return Migration(migration_id, "test", "a test migration", target, up, checksum=f"sum-{migration_id}")


def person(index: int) -> dict[str, Value]:
    data: dict[str, Value] = {
        "full_name": f"First{index} Last{index}",
        "n": index,
        "address": {"city": "Oslo", "zip": f"{index:05d}"},
    }
    if index % 10 == 3:
        data["full_name"] = f"Solo{index}"
    if index % 10 == 7:
        del data["full_name"]  # nothing to do for this one
    return data


def seed(
    store: Store, count: int, collection: str = COLLECTION, make: Callable[[int], dict[str, Value]] = person
) -> None:
    writes = [Write.set(f"{collection}/u{index:05d}", make(index)) for index in range(count)]
    for start in range(0, len(writes), 400):
        assert all(r.ok for r in store.commit(writes[start : start + 400]))


def export(store: Store, collection: str = COLLECTION) -> dict[str, Document]:
    return {doc.path: doc for doc in store.stream(Query(collection))}


def expected_after(before: dict[str, Document], up: Callable[[DocView], Any]) -> dict[str, dict[str, Value]]:
    result: dict[str, dict[str, Value]] = {}
    for path, doc in before.items():
        new = up(DocView(doc))
        result[path] = doc.data if new is UNCHANGED else new
    return result


def assert_data(store: Store, expected: dict[str, dict[str, Value]], collection: str = COLLECTION) -> None:
    actual = {path: doc.data for path, doc in export(store, collection).items()}
    assert actual.keys() == expected.keys()
    wrong = [path for path in expected if not values_equal(actual[path], expected[path])]
    if wrong:
        first = wrong[0]
        raise AssertionError(f"{len(wrong)} differ, e.g. {first}: {actual[first]} != {expected[first]}")


def options(**changes: Any) -> PipelineOptions:
    """Pipeline options for tests; engine and limits settings are given by their plain names."""
    flat: dict[str, Any] = {
        "execute": True,
        "batch_size": 50,
        "min_batch_size": 5,
        "max_batch_size": 100,
        "concurrency": 3,
        "checkpoint_every_seconds": 0.05,
        "progress_interval": 0.05,
    }
    flat.update(changes)
    engine_keys = {f.name for f in dataclasses.fields(EngineConfig)}
    limits_keys = {f.name for f in dataclasses.fields(LimitsConfig)}
    engine = EngineConfig(**{k: flat.pop(k) for k in list(flat) if k in engine_keys})
    limits = LimitsConfig(**{k: flat.pop(k) for k in list(flat) if k in limits_keys})
    return PipelineOptions(engine=engine, limits=limits, **flat)


def build(
    store: Store,
    migration: Migration,
    folder: Path,
    opts: PipelineOptions | None = None,
    *,
    shards: int = 1,
    checkpoint: Checkpoint | None = None,
    **kwargs: Any,
) -> MigrationPipeline:
    """A pipeline over ``migration``, new or resumed from ``folder``'s checkpoint."""
    opts = opts or options()
    if checkpoint is None:
        path = folder / "checkpoint.json"
        if path.exists():
            checkpoint = Checkpoint.load(path)
        else:
            checkpoint = new_checkpoint("run-1", migration, plan_shards(store, migration.target, shards), {})
    kwargs.setdefault("hooks", RecordingHooks())
    steps = {
        name: kwargs.pop(name)
        for name in ("transform", "check", "on_decision", "on_checkpoint")
        if name in kwargs
    }
    return MigrationPipeline(store, migration, opts, folder, checkpoint, steps=PassSteps(**steps), **kwargs)


def run_pipeline(
    store: Store, migration: Migration, folder: Path, opts: PipelineOptions | None = None, **kwargs: Any
) -> PipelineResult:
    return build(store, migration, folder, opts, **kwargs).run()


def processor(
    store: Store, migration: Migration, folder: Path, *, execute: bool = True, **kwargs: Any
) -> BatchProcessor:
    """A batch processor without a journal; ``kwargs`` are :class:`BatchRules` fields."""
    guards = WriteGuards(Controls(), CircuitBreaker(0.5, 200, 5), AdaptiveBatch(50, 5, 100))
    return BatchProcessor(
        migration,
        BatchRules(execute, **kwargs),
        BatchWriter(store, guards),
        RunStats(),
        DeadLetterFile(folder / "dead-letters.jsonl"),
    )


def journal_kinds(folder: Path) -> Counter[tuple[str, str]]:
    """(kind, path) -> how many journal entries."""
    return Counter((entry.kind, entry.path) for entry in JournalReader(folder / "before-images.jsonl.gz"))


def dead_letters(folder: Path) -> list[dict[str, Any]]:
    return list(DeadLetterFile(folder / "dead-letters.jsonl"))


class StoreWrapper(DelegatingStore):
    """Delegates everything; subclasses override what they watch or disturb."""


class ScriptedMemory(MemoryGuard):
    """A memory guard whose resident size the test sets (in MiB)."""

    def __init__(self, soft: int = 100, hard: int = 200) -> None:
        super().__init__(soft, hard, reader=lambda: int(self.mb * 1_048_576))
        self.mb = 10.0

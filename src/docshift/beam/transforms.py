"""docshift steps as Apache Beam transforms, to put inside any pipeline.

- :class:`ReadPartitions`: partitions of a target -> its documents (a partitioned reader; the
  partitions come from :func:`~docshift.engine.sharding.plan_shards`: PartitionQuery where the
  backend has it, key ranges from a keys-only scan otherwise);
- :class:`MigratePartitions`: partitions -> :class:`~docshift.beam.worker.PartitionDone`, each
  partition migrated through the engine's core with its own journal and dead letters per attempt
  (see :mod:`docshift.beam.worker`);
- :class:`MigrateTarget`: the partitions of a run, spread over the workers and migrated.

Counters go to Beam's metrics in the ``docshift`` namespace once per finished partition (so the
committed values count each partition once), and per batch in ``docshift-live`` (what a runner
shows while it runs; a failed attempt's batches are in it too).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from docshift.beam.worker import (
    Partition,
    PartitionDone,
    PartitionWorker,
    ShippedMigration,
    StoreFactory,
    WorkerPlan,
    read_partition,
)
from docshift.store.base import Document

__all__ = ["LIVE_NAMESPACE", "NAMESPACE", "MigratePartitions", "MigrateTarget", "ReadPartitions"]

NAMESPACE = "docshift"
"""Beam metrics of finished partitions: each partition counted once."""
LIVE_NAMESPACE = "docshift-live"
"""Beam metrics per batch while partitions run."""


class _MigrateFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, plan: WorkerPlan) -> None:
        super().__init__()
        self.plan = plan
        self._worker: PartitionWorker | None = None

    def setup(self) -> None:
        self._worker = PartitionWorker.open(self.plan)
        self._worker.on_batch = _count(LIVE_NAMESPACE)

    def teardown(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def process(self, partition: Partition) -> Iterator[PartitionDone]:
        assert self._worker is not None
        done = self._worker.migrate(partition)
        _count(NAMESPACE)(done.counters)
        yield done


def _count(namespace: str) -> Any:
    def count(counters: dict[str, int]) -> None:
        for name, value in counters.items():
            if value:
                Metrics.counter(namespace, name).inc(value)

    return count


class MigratePartitions(beam.PTransform):  # type: ignore[misc]
    """Partitions -> their :class:`PartitionDone` records, migrated by the engine's core."""

    def __init__(self, plan: WorkerPlan) -> None:
        super().__init__()
        self.plan = plan

    def expand(self, partitions: Any) -> Any:
        return partitions | "Migrate" >> beam.ParDo(_MigrateFn(self.plan))


class MigrateTarget(beam.PTransform):  # type: ignore[misc]
    """A run's partitions (the ones not finished yet), spread over the workers, migrated."""

    def __init__(self, plan: WorkerPlan, partitions: Sequence[Partition]) -> None:
        super().__init__()
        self.plan = plan
        self.partitions = list(partitions)

    def expand(self, pipeline: Any) -> Any:
        return (
            pipeline
            | "Partitions" >> beam.Create(self.partitions)
            | "Spread" >> beam.Reshuffle()
            | "Migrate" >> MigratePartitions(self.plan)
        )


class _ReadFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, migration: ShippedMigration, store: StoreFactory) -> None:
        super().__init__()
        self.shipped = migration
        self.factory = store

    def setup(self) -> None:
        self._store = self.factory()
        self._migration = self.shipped.load()

    def teardown(self) -> None:
        self._store.close()

    def process(self, partition: Partition) -> Iterator[Document]:
        yield from read_partition(self._store, self._migration, partition)


class ReadPartitions(beam.PTransform):  # type: ignore[misc]
    """Partitions of a migration's target -> its documents (:class:`~docshift.store.base.Document`)."""

    def __init__(self, migration: ShippedMigration, store: StoreFactory) -> None:
        super().__init__()
        self.migration = migration
        self.store = store

    def expand(self, partitions: Any) -> Any:
        return partitions | "Read" >> beam.ParDo(_ReadFn(self.migration, self.store))

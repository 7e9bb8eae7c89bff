"""docshift migrations as Apache Beam pipelines (``pip install 'docshift[beam]'``).

``docshift run --execute --runner beam`` runs each migration of a run as a Beam pipeline
(:class:`~docshift.beam.driver.BeamPass`) inside the run's usual lifecycle (lock, history, run
folder, report, resume, rollback). The transforms are usable in any pipeline:
:class:`~docshift.beam.transforms.ReadPartitions`, :class:`~docshift.beam.transforms.MigratePartitions`
and :class:`~docshift.beam.transforms.MigrateTarget`. Only this package imports ``apache_beam``;
``import docshift`` does not.
"""

from __future__ import annotations

from docshift.beam.driver import BeamPass, BeamSettings, beam_pipeline_options, worker_count
from docshift.beam.transforms import (
    LIVE_NAMESPACE,
    NAMESPACE,
    MigratePartitions,
    MigrateTarget,
    ReadPartitions,
)
from docshift.beam.worker import (
    ConfiguredStore,
    Partition,
    PartitionDone,
    PartitionWorker,
    ShippedMigration,
    StoreFactory,
    WorkerPlan,
    WorkerShare,
)

__all__ = [
    "LIVE_NAMESPACE",
    "NAMESPACE",
    "BeamPass",
    "BeamSettings",
    "ConfiguredStore",
    "MigratePartitions",
    "MigrateTarget",
    "Partition",
    "PartitionDone",
    "PartitionWorker",
    "ReadPartitions",
    "ShippedMigration",
    "StoreFactory",
    "WorkerPlan",
    "WorkerShare",
    "beam_pipeline_options",
    "worker_count",
]

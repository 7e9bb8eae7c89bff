"""The run folder's layout: the one place that names its files and their formats.

Every other module asks :class:`RunFolder` and :class:`MigrationFolder` for a path, so a file is
named once and no two modules can disagree on where it is. A run folder (``runs_dir/RUN_ID``)::

    run.json                  what ran, where, its settings, its state and outcome (RUN_FORMAT)
    events.jsonl              every lifecycle event, one JSON line each
    status.json               which process runs it now and its status endpoint (STATUS_FORMAT)
    pause, stop, throttle     control files an operator creates (``docshift pause|stop|throttle``)
    validation.json           the run's validation summary (RUN_VALIDATION_FORMAT)
    report.json, report.html  the report (REPORT_FORMAT)
    NNNN_label/               one folder per migration (MigrationFolder):
        checkpoint.json           cursors and counters (CHECKPOINT_FORMAT)
        before-images.jsonl.gz    the before-image journal
        dead-letters.jsonl        documents that failed
        plan.jsonl.gz             a dry run's plan
        conflicts.jsonl           a rollback's documents left alone (changed since the run wrote them)
        mismatches.jsonl          a rollback's documents unlike their before-image afterwards
        validation-PHASE.json     scans of the migration's rules (VALIDATION_FORMAT)
        before-images/PART-ATTEMPT.jsonl.gz   a Beam run's journal, one per partition attempt
        dead-letters/PART-ATTEMPT.jsonl       a Beam run's dead letters, one per partition attempt
        partitions/PART.json      a Beam run's finished partition: its counts (PARTITION_FORMAT)
        landed/PART.json          the writes an unfinished Beam partition landed, its latest attempt's
                                  counts saved after each batch (LANDED_FORMAT)
        beam-metrics.json         a Beam run's counters as the runner's metrics gave them
        beam-stop                 the run asks its Beam workers to stop (a stop, a signal)
        beam-steer.json           the run's pause and write limit, as its Beam workers follow them
        undo-partitions/RUN/PART.json   a Beam rollback's progress in one partition of RUN's journals
                                  (UNDO_PARTITION_FORMAT); PART/ holds its conflicts and mismatches

``docshift validate`` and ``docshift verify`` keep their reports in a :class:`ReportFolder`
(``runs_dir/KIND-ID-TIME/report.json``). A format's older versions are upgraded on reading (see
:mod:`docshift.runfolder.upgrades`); a file an older docshift named otherwise is renamed by
:meth:`MigrationFolder.upgrade`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from docshift.runfolder.atomic import FileFormat, run_file
from docshift.runfolder.upgrades import checkpoint_1_to_2

__all__ = [
    "BEAM_METRICS_FORMAT",
    "CHECKPOINT_FORMAT",
    "CONTROL_ACTIONS",
    "LANDED_FORMAT",
    "PARTITION_FORMAT",
    "REPORT_FORMAT",
    "RUN_FORMAT",
    "RUN_VALIDATION_FORMAT",
    "STATUS_FORMAT",
    "UNDO_PARTITION_FORMAT",
    "VALIDATION_FORMAT",
    "VERIFY_FORMAT",
    "MigrationFolder",
    "ReportFolder",
    "RunFolder",
    "run_folders",
]

RUN_FORMAT = FileFormat("docshift-run", 1)
CHECKPOINT_FORMAT = FileFormat("docshift-checkpoint", 2, {1: checkpoint_1_to_2})
RUN_VALIDATION_FORMAT = FileFormat("docshift-run-validation", 1)
VALIDATION_FORMAT = FileFormat("docshift-validation", 1)
"""A scan of a migration's rules: a run's ``validation-PHASE.json``, ``docshift validate``'s report."""
REPORT_FORMAT = FileFormat("docshift-report", 1)
STATUS_FORMAT = FileFormat("docshift-status", 1)
VERIFY_FORMAT = FileFormat("docshift-verify", 1)
PARTITION_FORMAT = FileFormat("docshift-beam-partition", 1)
LANDED_FORMAT = FileFormat("docshift-beam-landed", 1)
BEAM_METRICS_FORMAT = FileFormat("docshift-beam-metrics", 1)
UNDO_PARTITION_FORMAT = FileFormat("docshift-beam-undo-partition", 1)

_RUN_INFO = "run.json"
_EVENTS = "events.jsonl"
_STATUS = "status.json"
_VALIDATION = "validation.json"
_REPORT = "report.json"
_REPORT_HTML = "report.html"
_PAUSE, _STOP, _THROTTLE = "pause", "stop", "throttle"
_CHECKPOINT = "checkpoint.json"
_JOURNAL = "before-images.jsonl.gz"
_DEAD_LETTERS = "dead-letters.jsonl"
_PLAN = "plan.jsonl.gz"
_CONFLICTS = "conflicts.jsonl"
_MISMATCHES = "mismatches.jsonl"
_ATTEMPT_JOURNALS = "before-images"
_ATTEMPT_LETTERS = "dead-letters"
_PARTITIONS = "partitions"
_LANDED = "landed"
_BEAM_METRICS = "beam-metrics.json"
_BEAM_STOP = "beam-stop"
_BEAM_STEER = "beam-steer.json"
_UNDO_PARTITIONS = "undo-partitions"
_RENAMED = {"rollback-conflicts.jsonl": _CONFLICTS, "rollback-mismatches.jsonl": _MISMATCHES}
"""Files an older docshift named otherwise: a canary stages' rollback (0.1.0) wrote these."""

CONTROL_ACTIONS = {"pause": _PAUSE, "resume": _PAUSE, "stop": _STOP, "throttle": _THROTTLE}
"""The control file of each action (``resume`` removes the ``pause`` file)."""


@dataclass(frozen=True)
class MigrationFolder:
    """One migration's folder in a run folder (``RUN/NNNN_label``)."""

    path: Path

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.path.parent)

    @property
    def checkpoint(self) -> Path:
        return self.path / _CHECKPOINT

    @property
    def journal(self) -> Path:
        """The before-image journal."""
        return self.path / _JOURNAL

    @property
    def dead_letters(self) -> Path:
        return self.path / _DEAD_LETTERS

    def attempt_journal(self, partition: int, attempt: str) -> Path:
        """A Beam run's journal of one attempt at one partition: a retried bundle writes a new one,
        so the first attempt's before-images are never overwritten or appended to by another."""
        return self.path / _ATTEMPT_JOURNALS / f"{_partition_name(partition)}-{attempt}.jsonl.gz"

    def attempt_journals(self, partition: int | None = None) -> list[Path]:
        """The attempt journals (of one partition, if given), oldest attempt first within each
        partition (attempt names begin with their start time)."""
        pattern = f"{_partition_name(partition)}-*" if partition is not None else "*"
        return sorted((self.path / _ATTEMPT_JOURNALS).glob(f"{pattern}.jsonl.gz"))

    def journalled_partitions(self) -> list[int]:
        """The partitions a Beam run journalled before-images of (those with an attempt journal)."""
        found = {path.name.split("-", 1)[0] for path in self.attempt_journals()}
        return sorted(int(name[1:]) for name in found if name[1:].isdigit())

    def undo_partition(self, run: str, partition: int) -> Path:
        """A Beam rollback's progress in one partition of run ``run``'s attempt journals: its
        counters, how far it got, whether it finished (what its retry and its resume start from)."""
        return self.path / _UNDO_PARTITIONS / run / f"{_partition_name(partition)}.json"

    def undo_partition_listings(self, run: str, partition: int) -> MigrationFolder:
        """Where a Beam rollback's worker lists one partition's conflicts and mismatches (gathered
        into this folder's own lists when that run's undo is done)."""
        return MigrationFolder(self.path / _UNDO_PARTITIONS / run / _partition_name(partition))

    def attempt_dead_letters(self, partition: int, attempt: str) -> Path:
        return self.path / _ATTEMPT_LETTERS / f"{_partition_name(partition)}-{attempt}.jsonl"

    def partition_record(self, partition: int) -> Path:
        """A Beam run's record of a finished partition (what a resume skips)."""
        return self.path / _PARTITIONS / f"{_partition_name(partition)}.json"

    def partition_landed(self, partition: int) -> Path:
        """What a Beam run's attempts at an unfinished partition landed (what a stop reports)."""
        return self.path / _LANDED / f"{_partition_name(partition)}.json"

    @property
    def beam_metrics(self) -> Path:
        return self.path / _BEAM_METRICS

    @property
    def beam_stop(self) -> Path:
        """Created by the run when it is asked to stop: its Beam workers look for it between batches."""
        return self.path / _BEAM_STOP

    @property
    def beam_steer(self) -> Path:
        """The run's pause and write limit now (``docshift pause|throttle``), for its Beam workers."""
        return self.path / _BEAM_STEER

    def journal_files(self) -> list[Path]:
        """Every before-image journal of the migration in this run, in the order a rollback reads
        them: the engine's, then a Beam run's attempt journals."""
        main = [self.journal] if self.journal.is_file() else []
        return main + self.attempt_journals()

    @property
    def has_journal(self) -> bool:
        return self.journal.is_file() or bool(self.attempt_journals())

    @property
    def plan(self) -> Path:
        """A dry run's plan."""
        return self.path / _PLAN

    @property
    def conflicts(self) -> Path:
        return self.path / _CONFLICTS

    @property
    def mismatches(self) -> Path:
        return self.path / _MISMATCHES

    def validation(self, phase: str) -> Path:
        """The scan of the migration's rules in ``phase`` (``before``, ``after``, ``inline``)."""
        return self.path / f"validation-{phase}.json"

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def upgrade(self) -> None:
        """Rename the files an older docshift named otherwise to today's names, before the folder is
        written again (one that exists under both names is left as it is: nothing is lost)."""
        for old, new in _RENAMED.items():
            source, target = self.path / old, self.path / new
            if source.is_file() and not target.exists():
                with run_file(target):
                    source.rename(target)


@dataclass(frozen=True)
class RunFolder:
    """A run's folder (``runs_dir/RUN_ID``): a migration run's or a rollback's."""

    path: Path

    @classmethod
    def of(cls, runs_dir: Path, run_id: str) -> RunFolder:
        return cls(runs_dir / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def info(self) -> Path:
        """``run.json``: read and written through :mod:`docshift.runfolder.record`."""
        return self.path / _RUN_INFO

    @property
    def exists(self) -> bool:
        """Whether this is a run's folder (it has a ``run.json``)."""
        return self.info.is_file()

    @property
    def events(self) -> Path:
        return self.path / _EVENTS

    @property
    def presence(self) -> Path:
        """``status.json``: which process runs the run, while it does."""
        return self.path / _STATUS

    @property
    def validation(self) -> Path:
        return self.path / _VALIDATION

    @property
    def report(self) -> Path:
        return self.path / _REPORT

    @property
    def report_html(self) -> Path:
        return self.path / _REPORT_HTML

    def control(self, action: str) -> Path:
        """The control file of ``action`` (see :data:`CONTROL_ACTIONS`)."""
        return self.path / CONTROL_ACTIONS[action]

    def migration(self, label: str) -> MigrationFolder:
        return MigrationFolder(self.path / label)

    def migrations(self, migration_id: str | None = None) -> list[MigrationFolder]:
        """The migration folders that hold a checkpoint, by name (of ``migration_id`` only, if given)."""
        pattern = f"{migration_id}_*" if migration_id is not None else "*"
        return sorted(
            (MigrationFolder(p.parent) for p in self.path.glob(f"{pattern}/{_CHECKPOINT}")),
            key=lambda m: m.label,
        )

    def journals(self, migration_id: str) -> list[MigrationFolder]:
        """The folders of ``migration_id`` that hold a before-image journal (a Beam run's too)."""
        found = self.path.glob(f"{migration_id}_*/")
        return sorted((m for m in map(MigrationFolder, found) if m.has_journal), key=lambda m: m.label)


def _partition_name(partition: int) -> str:
    return f"p{partition:05d}"


def run_folders(runs_dir: Path) -> list[RunFolder]:
    """Every run folder in ``runs_dir``, newest first.

    Ordered by the creation time run.json holds (microseconds): run ids start with their start
    time only to the second, so two runs begun in the same second would otherwise be ordered by
    their random suffix. A folder whose run.json cannot be read sorts as the oldest."""
    found = (RunFolder(p.parent) for p in runs_dir.glob(f"*/{_RUN_INFO}"))
    return sorted(found, key=lambda folder: (_created_at(folder), folder.run_id), reverse=True)


def _created_at(folder: RunFolder) -> str:
    """run.json's ``created_at`` (ISO 8601 in UTC, so text order is time order); "" if unreadable."""
    try:
        value = orjson.loads(folder.info.read_bytes()).get("created_at")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class ReportFolder:
    """A ``docshift validate`` or ``docshift verify`` report: ``runs_dir/KIND-ID-TIME/report.json``,
    one folder per report, sorted by time."""

    path: Path

    @classmethod
    def new(cls, runs_dir: Path, kind: str, migration_id: str) -> ReportFolder:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        return cls(runs_dir / f"{kind}-{migration_id}-{stamp}")

    @classmethod
    def every(cls, runs_dir: Path, kind: str, migration_id: str) -> list[ReportFolder]:
        """The ``kind`` reports of ``migration_id`` that hold a report, newest first."""
        found = runs_dir.glob(f"{kind}-{migration_id}-*/{_REPORT}")
        return sorted((cls(p.parent) for p in found), key=lambda folder: folder.path.name, reverse=True)

    @property
    def report(self) -> Path:
        return self.path / _REPORT

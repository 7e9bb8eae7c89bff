"""One migration of a run as an Apache Beam pipeline, inside docshift's run lifecycle.

The run command (:mod:`docshift.commands.run`) gives the migration's checkpoint as for any run; its
shards are the pipeline's partitions. The pipeline runs in a thread of this process (the runner
may run it elsewhere: other processes, Dataflow), while this thread follows the partitions'
records (``partitions/PART.json``, written by the workers as each partition finishes): it saves
the checkpoint (finished partitions are done shards, their counts its counters), tells the history
and the display, and asks the workers to stop (``beam-stop``) when the run is asked to. A resume
gives the same checkpoint back and only the partitions without a record are migrated again.

At the end the dead letters of the attempts that finished partitions are gathered into the
migration's ``dead-letters.jsonl`` (what ``docshift retry``, ``status`` and the report read), the
run's validation hears of every partition's checks and refusals (its integrity gate is judged on
them, at the end: a Beam pipeline is not stopped by it midway), and the runner's metrics are
written to ``beam-metrics.json`` beside the counts the records give.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from docshift.beam.files import RUN_FILES_OPTION, RunFiles, run_files_of
from docshift.beam.worker import Partition, PartitionDone, ShippedMigration, StoreFactory, WorkerPlan
from docshift.config import Config
from docshift.engine.batch import DeadLetter, SettlingCheck
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    Checkpointed,
    EngineState,
    PassStarted,
    PassStats,
    Progressed,
    RunHooks,
)
from docshift.engine.limits import FailureBudget, MemoryGuard
from docshift.engine.pipeline import (
    WRITTEN,
    PassEnd,
    PassSteps,
    PipelineOptions,
    PipelineResult,
    end_pass,
    failures_over_budget,
    landed_text,
    on_resume,
)
from docshift.engine.stats import COUNTERS, RunStats
from docshift.errors import (
    DocshiftError,
    EmergencyStop,
    RunFileError,
    RunStopped,
    UsageError,
)
from docshift.migration import Migration
from docshift.runfolder.atomic import run_file, write_atomic
from docshift.runfolder.checkpoint import Checkpoint
from docshift.runfolder.layout import BEAM_METRICS_FORMAT, LANDED_FORMAT, MigrationFolder
from docshift.store.base import Document

__all__ = ["BeamPass", "BeamSettings", "beam_pipeline_options", "worker_count"]

_DEFAULTS = {"runner": "DirectRunner", "default_sdk_harness_log_level": "WARNING"}
"""Beam options a run gives unless told otherwise: the DirectRunner, and workers that log warnings
and errors only."""
_WORKER_KEYS = ("direct_num_workers", "num_workers", "max_num_workers")
"""Beam options that say how many workers write at once (the first one given counts)."""


@dataclass(frozen=True)
class BeamSettings:
    """``--runner beam`` and its ``--beam-option KEY=VALUE`` pairs (Beam's own pipeline options)."""

    options: tuple[str, ...] = ()
    store: StoreFactory | None = None
    """How workers open the store; None: the one the run's config points at."""

    def flags(self) -> list[str]:
        flags = []
        for pair in self.options:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise UsageError(
                    f"--beam-option {pair!r} is not KEY=VALUE",
                    hint="give each Beam pipeline option as KEY=VALUE, e.g. "
                    "--beam-option direct_num_workers=2",
                )
            flags.append(f"--{key.strip().removeprefix('--')}={value}")
        return flags


def beam_pipeline_options(settings: BeamSettings) -> Any:
    """Beam's pipeline options from ``settings`` (the DirectRunner unless a runner is given);
    an option Beam does not know is refused."""
    # Beam's own INFO lines (its workers' start and end) would drown the run's output.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from apache_beam.options.pipeline_options import PipelineOptions as BeamOptions

    _docshift_options()

    flags = settings.flags()
    options = BeamOptions(flags)
    known = options.get_all_options(drop_default=False)
    for flag in flags:
        key = flag[2:].split("=", 1)[0]
        if key not in known:
            raise UsageError(
                f"--beam-option {key}: Beam has no such pipeline option",
                hint="see Beam's pipeline options (python -m apache_beam.examples.wordcount --help lists "
                "them); e.g. runner, direct_running_mode, direct_num_workers, project, region, temp_location",
            )
    _check_run_files(run_files_of(settings.options))
    given = {flag[2:].split("=", 1)[0] for flag in flags}
    defaults = [f"--{key}={value}" for key, value in _DEFAULTS.items() if key not in given]
    return BeamOptions([*flags, *defaults]) if defaults else options


def _check_run_files(url: str | None) -> None:
    """A ``run_files`` URL must name a file system Beam knows here (``gs://`` needs
    ``apache-beam[gcp]``), or a local folder."""
    if url is None or "://" not in url:
        return
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.get_filesystem(url)
    except (ValueError, OSError) as error:
        scheme = url.split("://", 1)[0]
        raise UsageError(
            f"--beam-option run_files={url}: no file system Beam knows here reads {scheme}:// ({error})",
            hint="install the one it needs (gs://: pip install 'apache-beam[gcp]'), or give a folder",
        ) from None


@functools.cache
def _docshift_options() -> type:
    """docshift's own Beam pipeline options (registered with Beam once, as any options class is)."""
    from apache_beam.options.pipeline_options import PipelineOptions as BeamOptions

    class DocshiftOptions(BeamOptions):  # type: ignore[misc]
        @classmethod
        def _add_argparse_args(cls, parser: Any) -> None:
            parser.add_argument(
                f"--{RUN_FILES_OPTION}",
                default=None,
                help="docshift: the URL the workers write the run folder's files under (any "
                "scheme Beam's FileSystems knows, e.g. gs://BUCKET/runs); default: the run folder",
            )

    return DocshiftOptions


def worker_count(options: Any) -> int:
    """How many workers write at once: what the run's write limit is divided by."""
    found = options.get_all_options(drop_default=False)
    for key in _WORKER_KEYS:
        value = found.get(key)
        if value:
            return max(int(value), 1)
    return 1


@dataclass
class _Followed:
    """What the partitions' records said at the last look."""

    done: dict[int, PartitionDone] = field(default_factory=dict)


class BeamPass:
    """One migration's pass as a Beam pipeline (see the module docstring); :meth:`run` returns
    what :class:`~docshift.engine.pipeline.MigrationPipeline` does."""

    def __init__(
        self,
        config: Config,
        migration: Migration,
        options: PipelineOptions,
        folder: Path,
        checkpoint: Checkpoint,
        *,
        settings: BeamSettings,
        controls: Controls | None = None,
        hooks: RunHooks | None = None,
        steps: PassSteps | None = None,
    ) -> None:
        """``steps``: the run's document check (its validation hears the partitions' counts at the
        end) and what is told of each checkpoint (the history's progress)."""
        steps = steps or PassSteps()
        self.config = config
        self.migration = migration
        self.options = options
        self.files = MigrationFolder(folder)
        self.io = RunFiles(folder.parent.parent, run_files_of(settings.options))
        """Where the workers write their files (``--beam-option run_files``), read back from here."""
        self.checkpoint = checkpoint
        self.settings = settings
        self.controls = controls or Controls()
        self.hooks = hooks or RunHooks()
        self.check = steps.check
        self.on_checkpoint = steps.on_checkpoint
        self.beam_options = beam_pipeline_options(settings)
        self.workers = worker_count(self.beam_options)
        self.stats = RunStats(dict(checkpoint.counters), checkpoint.elapsed_seconds)
        limits = options.limits
        self.memory = MemoryGuard(limits.memory_soft_limit_mb, limits.memory_hard_limit_mb)
        self.followed = _Followed()
        self._error: BaseException | None = None
        self._metrics: dict[str, int] | None = None
        self._steered: dict[str, Any] | None = None
        self._counted = {index for index, shard in enumerate(checkpoint.shards) if shard.done}
        """The partitions the checkpoint this pass began from counts already."""

    def plan(self) -> WorkerPlan:
        limiter = self.controls.limiter
        return WorkerPlan(
            self.config,
            ShippedMigration.of(self.migration),
            str(self.files.path),
            self.options,
            workers=self.workers,
            ramp=limiter.ramp,
            store=self.settings.store,
            stop_file=str(self.files.beam_stop),
            steer_file=str(self.files.beam_steer),
            run_files=self.io.url,
        )

    def partitions(self) -> list[Partition]:
        return [
            Partition(index, shard.start_after, shard.end_at)
            for index, shard in enumerate(self.checkpoint.shards)
        ]

    # ------------------------------------------------------------------ running
    def run(self) -> PipelineResult:
        with run_file(self.files.path):
            self.files.path.mkdir(parents=True, exist_ok=True)
            self.files.beam_stop.unlink(missing_ok=True)
        if self.io.remote:
            self.io.delete(self.files.beam_stop)
        plan = self.plan()
        self._steer()
        self._follow()
        todo = [p for p in self.partitions() if p.index not in self.followed.done]
        self.hooks.pass_started(
            PassStarted(
                self.migration.label, len(self.checkpoint.shards), self.options.execute, self.stats.counts()
            )
        )
        self._save("running")
        if todo:
            thread = threading.Thread(target=self._pipeline, args=(plan, todo), name="docshift-beam")
            thread.start()
            self._wait(thread)
        self._follow()
        return self._finish()

    def _pipeline(self, plan: WorkerPlan, todo: Sequence[Partition]) -> None:
        import apache_beam as beam

        from docshift.beam.transforms import MigrateTarget

        try:
            pipeline = beam.Pipeline(options=self.beam_options)
            _ = pipeline | "docshift" >> MigrateTarget(plan, todo)
            result = pipeline.run()
            result.wait_until_finish()
            self._metrics = _committed(result)
        except BaseException as error:
            self._error = error

    def _wait(self, thread: threading.Thread) -> None:
        """Follow the records while the pipeline runs: checkpoint, progress, stop."""
        interval = max(self.options.progress_interval, 0.2)
        last_save = time.monotonic()
        while thread.is_alive():
            thread.join(interval)
            try:
                if self.controls.check_lease() and not self.files.beam_stop.exists():
                    with contextlib.suppress(OSError):
                        self.files.beam_stop.touch()
                    if self.io.remote:
                        self.io.write(self.files.beam_stop, b"")
                self._steer()
                if self._follow():
                    now = time.monotonic()
                    if now - last_save >= self.options.engine.checkpoint_every_seconds:
                        self._save("running")
                        last_save = now
            except RunFileError as error:  # the workers cannot write the run folder either: stop them
                self.controls.request_stop(error.message, RunFileError)
            self._progress()

    def _steer(self) -> None:
        """Tell the workers the run's pause and write limit when they change (``docshift pause``,
        ``throttle``): they follow ``beam-steer.json`` between batches."""
        now = {"paused": self.controls.paused, "limit": self.controls.limiter.limit}
        if now != self._steered:
            write_atomic(self.files.beam_steer, orjson.dumps(now))
            if self.io.remote:
                self.io.write(self.files.beam_steer, orjson.dumps(now))
            self._steered = now

    def _follow(self) -> bool:
        """Read the records of the partitions that finished since the last look; whether any did."""
        new = False
        if self.io.remote:  # the workers' records, copied into the run folder (what a resume reads)
            self.io.mirror(self.files.partition_record(0).with_name("*.json"))
        for partition in self.partitions():
            if partition.index in self.followed.done:
                continue
            path = self.files.partition_record(partition.index)
            if not path.is_file():
                continue
            done = PartitionDone.read(path)
            self.followed.done[partition.index] = done
            self.checkpoint.shards[partition.index].done = True
            self.checkpoint.shards[partition.index].cursor = partition.end_at
            if partition.index not in self._counted:
                self.stats.add(**{name: value for name, value in done.counters.items() if value})
                self.stats.processed(done.counters.get("read", 0))
            new = True
        return new

    def _progress(self) -> None:
        counters, stats = PassStats.split(self.stats.snapshot())
        self.hooks.progressed(
            Progressed(
                self.migration.label,
                counters,
                stats,
                # This process's memory (the workers' is the runner's to show).
                EngineState(
                    self.options.engine.batch_size,
                    self.controls.limiter.limit,
                    self.memory.rss_mb(),
                    self.controls.paused,
                ),
            )
        )

    def _save(self, state: str) -> None:
        checkpoint = self.checkpoint
        counts = self.stats.counts()
        checkpoint.counters = {name: counts.get(name, 0) for name in COUNTERS}
        checkpoint.elapsed_seconds = self.stats.elapsed
        checkpoint.state = state
        checkpoint.beyond_cursor = {} if state == "finished" else self._landed()
        checkpoint.save(self.files.checkpoint)
        if self.on_checkpoint is not None:
            self.on_checkpoint(checkpoint)
        self.hooks.checkpointed(
            Checkpointed(self.migration.label, state, tuple(s.cursor for s in checkpoint.shards))
        )

    # ------------------------------------------------------------------ the end
    def _finish(self) -> PipelineResult:
        if self.io.remote:  # the journals, copied into the run folder (what a rollback reads)
            self.io.mirror(self.files.attempt_journal(0, "*").with_name("*.jsonl.gz"))
        done = all(shard.done for shard in self.checkpoint.shards)
        letters = self._gather_letters()
        if isinstance(self.check, SettlingCheck):
            self.check.settled(self.stats.counts(), letters)
        self._write_metrics()
        error = self._stop_error(done)
        counts = self.stats.counts()
        if error is None and done:
            budget = FailureBudget(self.options.engine.max_failures)
            error = failures_over_budget(budget, counts, self.files.dead_letters)
        finished = done and error is None
        self._save("finished" if finished else ("failed" if done else "stopped"))
        landed = dict(self.checkpoint.beyond_cursor)
        if error is not None and landed:
            error.message += f"; {landed_text(landed)} ({on_resume(self.options.engine.backup)})"
        return end_pass(
            self.hooks, self.migration, self.stats, counts, PassEnd(done, self.files.path, error, landed)
        )

    def _landed(self) -> dict[str, int]:
        """The writes the unfinished partitions landed (their records, saved after each batch),
        which the counters (finished partitions) do not hold: a resume counts them, once."""
        if not self.options.execute:
            return {}
        landed: Counter[str] = Counter()
        for index in range(len(self.checkpoint.shards)):
            if index in self.followed.done:
                continue
            body = self.io.read_format(LANDED_FORMAT, self.files.partition_landed(index))
            if body is not None:
                landed.update({name: int(body["counters"].get(name, 0)) for name in WRITTEN})
        return {name: value for name in WRITTEN if (value := landed.get(name, 0)) > 0}

    def _stop_error(self, done: bool) -> DocshiftError | None:
        failure = self._error
        if failure is None and done:
            return None
        if self.controls.stop.is_set():
            cls = self.controls.stop_class or RunStopped
            return cls(self.controls.stop_reason or "stopped")
        if isinstance(failure, DocshiftError):
            return EmergencyStop(f"the Beam pipeline stopped: {failure.message}", hint=failure.hint)
        finished = len(self.followed.done)
        total = len(self.checkpoint.shards)
        reason = _first_line(failure) if failure is not None else "it ended with partitions left"
        return EmergencyStop(
            f"the Beam pipeline failed ({finished} of {total} partitions finished): {reason}",
            hint="fix the cause (the runner's log has the worker's traceback), then resume the run: the "
            "finished partitions are kept",
        )

    def _gather_letters(self) -> list[DeadLetter]:
        """The dead letters of the attempts that finished partitions, in partition order, written
        into the migration's dead-letter file (replaced as a whole: a resume gathers them all)."""
        parts: list[bytes] = []
        letters: list[DeadLetter] = []
        for index in sorted(self.followed.done):
            done = self.followed.done[index]
            if not done.dead_letters:
                continue
            path = self.files.attempt_dead_letters(index, done.attempt)
            self.io.fetch(path)
            with run_file(path):
                raw = path.read_bytes()
            parts.append(raw)
            for line in raw.splitlines():
                if line.strip():
                    record = orjson.loads(line)
                    source = Document(str(record["path"]), {})
                    letters.append(
                        DeadLetter(source, str(record["stage"]), str(record["error"]), record.get("rule"))
                    )
        if parts or self.files.dead_letters.exists():
            write_atomic(self.files.dead_letters, b"".join(parts))
        return letters

    def _write_metrics(self) -> None:
        """The runner's committed metrics of this pipeline, beside the records' counts of the
        partitions it finished (equal unless the runner's metrics are not exact)."""
        if self._metrics is None:
            return
        started = self._counted
        records: Counter[str] = Counter()
        for index, done in self.followed.done.items():
            if index not in started:
                records.update(done.counters)
        body = {
            "runner_metrics": self._metrics,
            "records": {name: value for name, value in records.items() if value},
            "workers": self.workers,
        }
        BEAM_METRICS_FORMAT.write(self.files.beam_metrics, body)


def _committed(result: Any) -> dict[str, int]:
    """The ``docshift`` counters of a finished pipeline (committed where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    from docshift.beam.transforms import NAMESPACE

    found: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        found[counter.key.metric.name] = found.get(counter.key.metric.name, 0) + int(value or 0)
    return found


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # The runner wraps the worker's error: its last line names it.
    return f"{type(error).__name__}: {lines[-1].strip() if lines else ''}"

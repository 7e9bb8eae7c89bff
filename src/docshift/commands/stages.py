"""Canary stages: apply a migration to 1%, then 10%, 50%, 100% of its documents, checking between.

A stage is the set of documents whose path bucket (a stable hash, see ``engine/sampling.py``) lies
in ``[previous %, this %)``, so every stage includes the ones before it and reruns choose the same
documents. After each stage a gate checks the stage's failure rate, commit latency (p95) and the
integrity of the documents it wrote against the migration's rules. When a gate fails, or a
trigger fires during a stage (circuit breaker, integrity gate, p95 latency, memory), every stage
done so far is rolled back from the before-images and the run stops saying why.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections import Counter
from pathlib import Path

from docshift.commands.rollback import undo_listings, undo_run_journal
from docshift.config import Config
from docshift.engine.batch import DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.hooks import PassFinished, PassStats, RunHooks, StageEntered, StagesRolledBack, Warned
from docshift.engine.pipeline import (
    MigrationPipeline,
    PassSteps,
    PipelineOptions,
    PipelineResult,
    new_checkpoint,
)
from docshift.engine.sampling import in_sample
from docshift.engine.sharding import plan_shards
from docshift.engine.stats import format_ms, handled
from docshift.engine.undo import UndoResult
from docshift.errors import (
    EmergencyStop,
    MemoryLimitExceeded,
    RunStopped,
    StageFailed,
    TooManyFailures,
    UsageError,
)
from docshift.migration import Migration
from docshift.runfolder.checkpoint import Checkpoint, StageProgress, StageRollback
from docshift.runfolder.layout import MigrationFolder, RunFolder
from docshift.runfolder.record import read_migration
from docshift.store.base import Document, Query, Store
from docshift.validators.rules import RuleContext

__all__ = ["CanaryStages", "StageRun", "parse_stages", "run_stages"]

_TRIGGERS = (EmergencyStop, MemoryLimitExceeded, TooManyFailures)


def parse_stages(text: str) -> tuple[float, ...]:
    """``"1%,10%,50%,100%"`` -> (1.0, 10.0, 50.0, 100.0): increasing, ending at 100."""
    example = "write e.g. --stages 1%,10%,50%,100%"
    stages: list[float] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", part)
        if not match:
            raise UsageError(f"bad stage {part.strip()!r} in --stages", hint=example)
        stages.append(float(match.group(1)))
    increasing = all(a < b for a, b in itertools.pairwise(stages))
    if not increasing or stages[0] <= 0 or stages[-1] != 100:
        raise UsageError(f"--stages {text} must increase and end at 100%", hint=example)
    return tuple(stages)


@dataclasses.dataclass(frozen=True)
class CanaryStages:
    stages: tuple[float, ...]
    pause_between: bool = False


@dataclasses.dataclass(frozen=True)
class StageRun:
    """What the stages of one migration of run ``run_id`` run with (``folder`` is its folder)."""

    config: Config
    store: Store
    migration: Migration
    base: PipelineOptions
    folder: Path
    plan: CanaryStages
    controls: Controls
    hooks: RunHooks
    check: DocumentCheck | None
    run_id: str


def run_stages(run: StageRun, checkpoint: Checkpoint) -> PipelineResult:
    """Run every remaining stage of ``run.migration``; returns the combined result of the stages.

    Resumable wherever the run stopped: the checkpoint's ``stages`` say which stage ran (``stage``),
    the last one whose gate passed (``passed``), and whether a rollback of the stages was under way
    (``rollback``, which a resume finishes before it reports the stage that failed).
    """
    config, store, migration, folder, plan = run.config, run.store, run.migration, run.folder, run.plan
    controls, hooks, run_id, base = run.controls, run.hooks, run.run_id, run.base
    path = MigrationFolder(folder).checkpoint
    undoing = checkpoint.stage_rollback
    if undoing is not None:
        raise _rolled_back(
            run,
            checkpoint,
            f"{undoing.message} (that rollback, cut short when the run stopped, was finished by this resume)",
            undoing.hint,
        )
    saved = checkpoint.stages
    current = saved.stage if saved is not None else 0
    totals: Counter[str] = Counter(saved.earlier if saved is not None else {})
    seconds = saved.earlier_seconds if saved is not None else 0.0
    """Working time of the stages that passed (the report's and history's, with the current one)."""
    limit_ms = config.limits.stage_max_p95_ms
    result: PipelineResult | None = None
    for index in range(current, len(plan.stages)):
        above = plan.stages[index - 1] if index else 0.0
        percent = plan.stages[index]
        if index != current:
            checkpoint = new_checkpoint(
                run_id, migration, plan_shards(store, migration.target, 1), checkpoint.settings
            )
        elif checkpoint.stages is not None and checkpoint.stages.passed == index:
            continue  # that stage passed its gate before the run stopped
        stage = checkpoint.stages or StageProgress(list(plan.stages))
        stage.stage, stage.stages = index, list(plan.stages)
        stage.earlier, stage.earlier_seconds = dict(totals), seconds
        checkpoint.stages = stage
        options = dataclasses.replace(
            base,
            sample_percent=percent,
            sample_above=above,
            max_commit_p95=limit_ms / 1000 if limit_ms > 0 else None,
        )
        hooks.stage(
            StageEntered(
                migration.label,
                index + 1,
                f"{migration.label}: stage {index + 1} of {len(plan.stages)}: "
                f"documents in ({above:g}%, {percent:g}%]",
                stages=len(plan.stages),
            )
        )
        if checkpoint.finished:
            # Every document of the stage was handled when the run stopped, before its gate ran.
            result = PipelineResult(
                migration.id, "finished", dict(checkpoint.counters), checkpoint.elapsed_seconds, folder
            )
        else:
            result = MigrationPipeline(
                store,
                migration,
                options,
                folder,
                checkpoint,
                controls=controls,
                hooks=hooks,
                steps=PassSteps(check=run.check),
            ).run()
        if result.error is not None:
            if isinstance(result.error, _TRIGGERS):
                cause = f"stage {index + 1} ({percent:g}%) stopped: {result.error.message}"
                raise _stages_failed(run, checkpoint, cause)
            raise result.error
        stage_counts = Counter({k: v for k, v in result.counters.items() if k not in ("read", "skipped")})
        gate = _gate(run, stage_counts, result, above, percent)
        if gate is not None:
            raise _stages_failed(run, checkpoint, f"stage {index + 1} ({percent:g}%) failed its gate: {gate}")
        totals.update(stage_counts)
        seconds += result.elapsed_seconds
        stage.earlier, stage.earlier_seconds, stage.passed = dict(totals), seconds, index
        if index == len(plan.stages) - 1:
            # The finished migration's checkpoint speaks for all stages, saved with its last gate.
            checkpoint.counters = {**totals, "read": result.counters.get("read", 0)}
            checkpoint.elapsed_seconds = seconds
        checkpoint.save(path)
        if plan.pause_between and index < len(plan.stages) - 1:
            _wait_for_operator(run, index)
    if result is None:  # every stage had passed when the run stopped
        return PipelineResult(migration.id, "finished", dict(checkpoint.counters), seconds, folder)
    totals["read"] = result.counters.get("read", 0)
    result.counters = dict(totals)
    result.elapsed_seconds = seconds
    combined = {
        **result.snapshot,
        **totals,
        "skipped": 0,
        "processed": handled(totals),
    }
    combined["elapsed_seconds"] = seconds
    counters, stats = PassStats.split(combined)
    if stats is None:  # its last stage was done by an earlier process: no rates of this one
        stats = PassStats(combined["processed"], 0.0, 0.0, None, None, None, 0, seconds)
    # The per-stage pass ends each counted one stage; this one speaks for the whole migration.
    hooks.pass_ended(PassFinished(migration.label, counters, stats, stages=len(plan.stages)))
    return result


def _stages_failed(run: StageRun, checkpoint: Checkpoint, cause: str) -> StageFailed:
    """Roll every stage back, having noted in the checkpoint before the first restore that the
    stages are being rolled back and why (a run killed during the rollback is then finished by its
    resume, not continued); the error says what failed and what the rollback did."""
    message = f"{cause}; every stage so far was rolled back from the before-images"
    hint = _stage_hint(run.folder)
    assert checkpoint.stages is not None  # set when its stage began
    checkpoint.stages.rollback = StageRollback(message, hint)
    checkpoint.save(MigrationFolder(run.folder).checkpoint)
    return _rolled_back(run, checkpoint, message, hint)


def _rolled_back(run: StageRun, checkpoint: Checkpoint, message: str, hint: str | None) -> StageFailed:
    counters = _roll_back(run, checkpoint).counters
    conflicts, mismatched = counters.get("conflicts", 0), counters.get("mismatched", 0)
    if not conflicts and not mismatched:
        return StageFailed(message, hint=hint)
    left = []
    if conflicts:
        left.append(f"{conflicts:,} document(s) changed after the stages wrote them, left alone")
    if mismatched:
        left.append(f"{mismatched:,} document(s) that do not equal their before-image afterwards")
    listed = ", ".join(str(path) for path in undo_listings(run.folder))
    return StageFailed(
        f"{message}, except {' and '.join(left)}: listed in {listed}",
        hint=f"to undo them over those later changes too (the changes are lost): docshift rollback "
        f"{run.run_id} --strategy restore --execute --force",
        undone=False,
    )


def _gate(
    run: StageRun, counts: Counter[str], result: PipelineResult, above: float, percent: float
) -> str | None:
    """Why the stage may not be followed by the next one, or ``None``."""
    config = run.config
    done = handled(counts)
    if done and counts["failed"] / done > config.limits.stage_max_failure_rate:
        return (
            f"{counts['failed']} of {done} documents failed, above {config.limits.stage_max_failure_rate:.1%}"
        )
    limit_ms = config.limits.stage_max_p95_ms
    p95 = result.snapshot.get("commit_p95")
    if limit_ms > 0 and p95 is not None and p95 * 1000 > limit_ms:
        return f"commit latency p95 {format_ms(p95)} ms is above {format_ms(limit_ms / 1000)} ms"
    checked, failing = _integrity(run.store, run.migration, above, percent)
    if checked:
        score = 100.0 * (checked - failing) / checked
        if score < config.limits.integrity_critical:
            return (
                f"integrity {score:.1f}% of the stage's {checked} documents is below "
                f"{config.limits.integrity_critical:g}%"
            )
    return None


def _integrity(store: Store, migration: Migration, above: float, percent: float) -> tuple[int, int]:
    """Check the migration's per-document rules on the documents this stage wrote."""
    rules = [rule for rule in migration.rules if getattr(rule, "inline", False)]
    if not rules:
        return 0, 0
    target = migration.target
    query = Query(target.copy_to) if target.copy_to else target.query()
    sessions = [rule.session(RuleContext(store=store, phase="after")) for rule in rules]
    checked = failing = 0
    batch: list[Document] = []

    def flush() -> int:
        bad: set[int] = set()
        for session in sessions:
            bad.update(i for i, message in enumerate(session.check_batch(batch)) if message is not None)
        return len(bad)

    for doc in store.stream(query):
        source_path = f"{target.collection}/{doc.id}" if target.copy_to else doc.path
        if in_sample(source_path, percent, above):
            batch.append(doc)
            if len(batch) >= 300:
                failing += flush()
                checked += len(batch)
                batch = []
    if batch:
        failing += flush()
        checked += len(batch)
    return checked, failing


def _roll_back(run: StageRun, checkpoint: Checkpoint) -> UndoResult:
    """Undo every stage of this migration from its before-images, by the rollback's own mechanism
    (the run still holds the lease): every document verified, conflicts and mismatches listed."""
    controls, hooks, migration, folder = run.controls, run.hooks, run.migration, run.folder
    files = MigrationFolder(folder)
    files.upgrade()  # a rollback cut short by an older docshift: its conflicts go on in the same file
    controls.stop.clear()
    controls.resume()
    hooks.warning(Warned(f"{migration.label}: rolling back every stage from the before-images"))
    result = undo_run_journal(run.config, run.store, migration, folder, controls, hooks)
    if result.stopped:  # a signal or `docshift stop` during the rollback: the resume finishes it
        raise RunStopped(
            f"{migration.label}: stopped while rolling back its stages",
            hint="resume the run to finish the rollback",
        )
    hooks.warning(
        Warned(
            f"{migration.label}: rolled back: "
            + ", ".join(f"{k} {v}" for k, v in result.counters.items() if v)
        )
    )
    checkpoint.state = "failed"
    assert checkpoint.stages is not None and checkpoint.stages.rollback is not None  # begun before
    checkpoint.stages.rollback.counters = dict(result.counters)
    checkpoint.save(files.checkpoint)  # a resume must not continue a rolled-back canary
    # The stage's own pass end counted that stage; this one speaks for the migration, as its
    # record (report, history, `docshift runs`) does.
    record = read_migration(folder)
    hooks.stages_rolled_back(
        StagesRolledBack(
            migration.label,
            dict(record.counters),
            dict(result.counters),
            record.elapsed_seconds,
            complete=checkpoint.stages.rollback.complete,
        )
    )
    return result


def _stage_hint(folder: Path) -> str:
    """What to do after a stage was rolled back, and where its failed documents are (if any)."""
    letters = read_migration(folder).dead_letters
    listed = (
        f"the {letters:,} document(s) that failed or broke a rule are listed in "
        f"{MigrationFolder(folder).dead_letters}; "
        if letters
        else ""
    )
    return f"{listed}fix the migration (or the data), then start a new run"


def _wait_for_operator(run: StageRun, index: int) -> None:
    """Pause until ``docshift resume RUN_ID`` (or the ``pause`` file in the run folder is removed)."""
    controls, hooks, migration, run_id = run.controls, run.hooks, run.migration, run.run_id
    marker = RunFolder(run.folder.parent).control("pause")
    marker.touch()
    controls.pause()
    hooks.stage(
        StageEntered(
            migration.label,
            index + 1,
            f"{migration.label}: stage {index + 1} passed its gate; paused. "
            f"Continue with `docshift resume {run_id}` or by deleting {marker}",
            paused=True,
        )
    )
    try:
        while controls.paused and marker.exists():
            if controls.stop.is_set():
                raise RunStopped(
                    controls.stop_reason or "stopped while paused between stages",
                    hint=f"continue with `docshift run --execute --resume {run_id}`",
                )
            time.sleep(0.2)
    finally:
        controls.resume()
        marker.unlink(missing_ok=True)

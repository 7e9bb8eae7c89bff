"""A run's lifecycle as typed events, and the hooks that receive them.

The engine and the commands call a :class:`RunHooks` at each step of a run; the observers of a run
(validation, the event log, the live status, the displays) are hooks that override the steps they
care about. The base class does nothing at every step: it is the null hooks, the default wherever
none are given. :class:`FanOutHooks` hands every step to several hooks, in order, and combines the
document checks they return.

The steps of a run, in order::

    run_started              the run folder is recorded (an executed run holds its lease)
    run_resumed              (a resume) the settings it continues with
    migration_started        a migration is about to run: returns its document check, if any
        pass_started         the engine starts a pass over its documents (each canary stage,
                             each migration a rollback undoes, is one pass)
        progressed           about every second
        checkpointed         after each checkpoint
        stage                a canary stage begins, or waits for the operator
        pass_ended           :class:`PassFinished` or :class:`PassStopped`, with its counts
    migration_ended          with its result and what the history recorded
    run_ended                with how it ended

and at any time: ``warning``, ``control_applied``, ``total_known`` (a count query answered),
``stages_rolled_back``, ``scan_started`` and ``health_reported`` (from validation).

A backup, restore or verify has its own steps: :class:`BackupHooks`.

How events are written (``events.jsonl``, ``--json``) is :mod:`docshift.reports.events`'s job:
it alone knows their kind names. A field's ``metadata`` says how it is written there: ``flat``
(a mapping or group of fields written at the top level of the line), ``items`` (a tuple, of the
given class when not None), ``if_set`` (left out at its default) or ``unwritten`` (not written:
it only means something inside the process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from docshift.engine.batch import DeadLetter, DocumentCheck, SettlingCheck
from docshift.errors import DocshiftError, ExitCode, RunStopped
from docshift.migration import Migration
from docshift.store.base import Document

if TYPE_CHECKING:
    from docshift.engine.pipeline import PipelineResult

__all__ = [
    "AllChecks",
    "BackupEvent",
    "BackupFinished",
    "BackupHooks",
    "BackupProgressed",
    "BackupStarted",
    "CheckStarted",
    "Checkpointed",
    "CollectionEmpty",
    "ControlApplied",
    "EngineState",
    "EventSink",
    "FanOutHooks",
    "FileChecked",
    "HealthIssue",
    "HealthReported",
    "MigrationEnded",
    "MigrationStarted",
    "PassEnded",
    "PassFinished",
    "PassStarted",
    "PassStats",
    "PassStopped",
    "PhaseFinished",
    "PhaseProgressed",
    "PhaseStarted",
    "Progressed",
    "RestoreFinished",
    "RestoreProgressed",
    "RestoreStarted",
    "RunEnded",
    "RunEvent",
    "RunHooks",
    "RunResumed",
    "RunStarted",
    "ScanStarted",
    "StageEntered",
    "StagesRolledBack",
    "TotalKnown",
    "VerifyProgressed",
    "VerifyStarted",
    "Warned",
    "combine_checks",
    "deliver",
    "run_lifecycle",
]


def _written(
    *, flat: bool = False, items: bool = False, of: type | None = None, if_set: bool = False
) -> dict[str, Any]:
    """A field's ``metadata``: how it is written (see the module docstring)."""
    return {"flat": flat, "items": items, "of": of, "if_set": if_set}


_UNWRITTEN = {"unwritten": True}


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunStarted:
    """The run's folder is recorded (and an executed run holds its lease): its steps follow."""

    run_id: str
    folder: Path
    kind: str = "run"
    """``run`` or ``rollback``."""
    execute: bool = False


@dataclass(frozen=True)
class RunResumed:
    """A resume: the settings the run continues with (as ``run.json`` now records them)."""

    run_id: str
    settings: Mapping[str, Any]
    overrides: Mapping[str, Any]
    """What the flags given on this resume changed: name -> ``{"was": ..., "now": ...}``."""


@dataclass(frozen=True)
class RunEnded:
    """How the run ended: the state run.json records, the exit code, and the error and its hint."""

    state: str
    exit_code: int
    error: str | None = None
    hint: str | None = None
    folder: Path | None = field(default=None, compare=False, repr=False, metadata=_UNWRITTEN)
    """The run folder, when the run recorded one."""
    raised: BaseException | None = field(default=None, compare=False, repr=False, metadata=_UNWRITTEN)
    """What ended it (None when it finished)."""

    @classmethod
    def of(
        cls, raised: BaseException | None, *, state: str | None = None, folder: Path | None = None
    ) -> RunEnded:
        """The end of a run that raised ``raised`` (or finished, in ``state``)."""
        if raised is None:
            return cls(state or "finished", 0, folder=folder)
        if isinstance(raised, DocshiftError):
            return cls(raised.run_state, int(raised.exit_code), raised.message, raised.hint, folder, raised)
        if isinstance(raised, KeyboardInterrupt):
            return cls("stopped", int(ExitCode.INTERRUPTED), "interrupted", None, folder, raised)
        message = f"unexpected {type(raised).__name__}: {raised}"
        return cls("failed", int(ExitCode.FAILED), message, None, folder, raised)

    @property
    def resume_command(self) -> str | None:
        return self.raised.resume_command if isinstance(self.raised, RunStopped) else None

    def outcome(self) -> dict[str, Any]:
        """As run.json and the report record it."""
        return {"state": self.state, "exit_code": self.exit_code, "error": self.error, "hint": self.hint}


# --------------------------------------------------------------------------- a migration


@dataclass(frozen=True)
class MigrationStarted:
    """A migration is about to run (its pipeline not yet built): the hooks may give its check."""

    migration: Migration
    run_id: str
    execute: bool


@dataclass(frozen=True)
class MigrationEnded:
    """A migration ran (all its stages): its result, and what the history recorded for it."""

    migration: Migration
    result: PipelineResult
    status: str | None = None
    """``applied``, ``partial``, ``failed``, ``interrupted``; None in a dry run."""

    @property
    def finished(self) -> bool:
        """Every document of its scope handled, without an error."""
        return self.result.state == "finished" and self.result.error is None


@dataclass(frozen=True)
class PassStarted:
    """The engine starts a pass over a migration's documents: a whole migration, one canary
    stage, or one migration a rollback undoes (``migration`` is then ``rollback LABEL``)."""

    migration: str
    shards: int
    execute: bool
    counters: Mapping[str, int] = field(default_factory=dict)
    """Where it starts from: a resumed pass starts from its checkpoint's counts (with the writes
    that landed after it)."""
    strategy: str | None = field(default=None, metadata=_written(if_set=True))
    """A rollback's: how it undoes the migration."""
    runs: tuple[str, ...] | None = field(default=None, metadata=_written(items=True, if_set=True))
    """A rollback's: the runs whose writes it undoes."""


@dataclass(frozen=True)
class PassStats:
    """A pass's rates and latencies (what :meth:`~docshift.engine.stats.RunStats.snapshot` adds
    to the counters)."""

    processed: int
    docs_per_second_now: float
    docs_per_second_avg: float
    commit_p50: float | None
    commit_p95: float | None
    commit_p99: float | None
    commits: int
    elapsed_seconds: float

    @classmethod
    def split(cls, snapshot: Mapping[str, Any]) -> tuple[dict[str, int], PassStats | None]:
        """A snapshot's counters, and its stats (None when it has none: a stage done before)."""
        names = [f.name for f in dataclasses.fields(cls)]
        counters = {name: value for name, value in snapshot.items() if name not in names}
        if not all(name in snapshot for name in names):
            return counters, None
        return counters, cls(**{name: snapshot[name] for name in names})


@dataclass(frozen=True)
class EngineState:
    """How the engine is set while a pass goes on."""

    batch_size: int
    write_limit: float
    """Ops/s; 0: none. The lowest of the cap, the ramp and the adaptive rate."""
    memory_mb: float
    paused: bool
    ramp_limit: float = 0.0
    """The 500/50/5 ramp's level (ops/s); 0: no ramp."""
    adaptive_limit: float = 0.0
    """The rate the store's refusals for load set (ops/s); 0: it never refused."""
    in_flight: int = 0
    """Batches the run keeps in flight now (its commit window, from the commit latency); 0: unknown."""


@dataclass(frozen=True)
class Progressed:
    """About every second during a pass (a rollback's undo: ``migration`` is ``rollback``, and
    only its counters are known)."""

    migration: str
    counters: Mapping[str, int] = field(default_factory=dict, metadata=_written(flat=True))
    stats: PassStats | None = field(default=None, metadata=_written(flat=True, of=PassStats))
    engine: EngineState | None = field(default=None, metadata=_written(flat=True, of=EngineState))
    retries: int | None = field(default=None, metadata=_written(if_set=True))
    """Store-level retries so far in this process, when the store counts them."""


@dataclass(frozen=True)
class Checkpointed:
    migration: str
    state: str
    cursors: tuple[str | None, ...] = field(default=(), metadata=_written(items=True))


@dataclass(frozen=True)
class StageEntered:
    """A canary stage begins (``stages`` of them), or passed its gate and waits (``paused``)."""

    migration: str
    stage: int
    message: str
    stages: int | None = field(default=None, metadata=_written(if_set=True))
    paused: bool = field(default=False, metadata=_written(if_set=True))


@dataclass(frozen=True)
class PassEnded:
    """A pass ended: the counts its checkpoint records (batches settled behind the cursor) and
    its rates. A canary migration's last one speaks for all its stages (``stages``)."""

    migration: str
    counters: Mapping[str, int] = field(default_factory=dict, metadata=_written(flat=True))
    stats: PassStats | None = field(default=None, metadata=_written(flat=True, of=PassStats))
    reason: str | None = None
    """Why it stopped (or why it ended failed, though every document was handled)."""
    stages: int | None = field(default=None, metadata=_written(if_set=True))
    retries: int | None = field(default=None, metadata=_written(if_set=True))
    write_rate: float | None = field(default=None, metadata=_written(if_set=True))
    """The write rate (ops/s) the adaptive throttle settled on, when the store refused writes for
    load: what the store accepted when it last refused (the rate then stays just under it)."""
    throttled: int | None = field(default=None, metadata=_written(if_set=True))
    """Requests the store refused for load so far in the run."""


@dataclass(frozen=True)
class PassFinished(PassEnded):
    """Every document of the pass was handled."""


@dataclass(frozen=True)
class PassStopped(PassEnded):
    """The pass stopped before its end (its checkpoint is where a resume continues)."""


@dataclass(frozen=True)
class StagesRolledBack:
    """A canary migration's stages were undone from their before-images."""

    migration: str
    counters: Mapping[str, int] = field(default_factory=dict, metadata=_written(flat=True))
    """Every stage's, as the migration's record has them."""
    rollback: Mapping[str, int] = field(default_factory=dict)
    """What the rollback did."""
    elapsed_seconds: float = 0.0
    complete: bool = True
    """Every document given back; False when some were left alone or differ from their before-image
    (then the migration ended ``failed``, not ``rolled_back``)."""


# --------------------------------------------------------------------------- at any time


@dataclass(frozen=True)
class Warned:
    """Something the operator should know of, said as it comes: a warning, or (from the run's
    validation) an ``error`` or ``critical`` finding. The message carries no label of its own;
    the views put ``severity`` before it, once."""

    message: str
    severity: str = field(default="warning", kw_only=True, metadata=_written(if_set=True))
    """``warning``, ``error`` or ``critical`` (as :class:`docshift.validators.Severity` names them)."""

    @property
    def labelled(self) -> str:
        """The message as a line of text says it: with its severity, unless a plain warning."""
        return self.message if self.severity == "warning" else f"{self.severity}: {self.message}"


@dataclass(frozen=True)
class ControlApplied:
    """Someone steered the run: ``action`` (pause, resume, throttle, stop) from ``source``
    (``http``: the status endpoint; ``file``: a control file)."""

    action: str
    source: str
    ops_per_second: float | None = field(default=None, metadata=_written(if_set=True))


@dataclass(frozen=True)
class TotalKnown:
    """The count query of a migration's target answered (for the progress bar and the ETA)."""

    migration: str
    total: int


@dataclass(frozen=True)
class ScanStarted:
    """Validation scans a migration's target, ``before`` or ``after`` it runs."""

    migration: str
    phase: str


@dataclass(frozen=True)
class HealthIssue:
    severity: str
    message: str
    migration: str | None = None


@dataclass(frozen=True)
class HealthReported:
    """The run's final health, as validation judged it (and the file it saved, if any)."""

    score: int
    status: str
    issues: tuple[HealthIssue, ...] = field(default=(), metadata=_written(items=True, of=HealthIssue))
    file: str | None = None


RunEvent: TypeAlias = (
    RunStarted
    | RunResumed
    | MigrationStarted
    | PassStarted
    | Progressed
    | Checkpointed
    | StageEntered
    | Warned
    | ControlApplied
    | TotalKnown
    | PassEnded
    | StagesRolledBack
    | ScanStarted
    | HealthReported
    | MigrationEnded
    | RunEnded
)


# --------------------------------------------------------------------------- the hooks


class RunHooks:
    """The steps of a run (see the module docstring); each does nothing here."""

    def run_started(self, event: RunStarted) -> None:
        return None

    def run_resumed(self, event: RunResumed) -> None:
        return None

    def migration_started(self, event: MigrationStarted) -> DocumentCheck | None:
        """Returns the check every document's new data must pass before it is written, if any."""
        return None

    def pass_started(self, event: PassStarted) -> None:
        return None

    def progressed(self, event: Progressed) -> None:
        return None

    def checkpointed(self, event: Checkpointed) -> None:
        return None

    def stage(self, event: StageEntered) -> None:
        return None

    def warning(self, event: Warned) -> None:
        return None

    def control_applied(self, event: ControlApplied) -> None:
        return None

    def total_known(self, event: TotalKnown) -> None:
        return None

    def pass_ended(self, event: PassEnded) -> None:
        return None

    def stages_rolled_back(self, event: StagesRolledBack) -> None:
        return None

    def scan_started(self, event: ScanStarted) -> None:
        return None

    def health_reported(self, event: HealthReported) -> None:
        return None

    def migration_ended(self, event: MigrationEnded) -> None:
        return None

    def run_ended(self, event: RunEnded) -> None:
        return None


class AllChecks:
    """Several document checks as one: the first that refuses a document decides, and every
    one hears of each settled batch (a :class:`~docshift.engine.batch.SettlingCheck`)."""

    def __init__(self, checks: Sequence[DocumentCheck]) -> None:
        self.checks = tuple(checks)

    def __call__(self, source: Document, new_data: dict[str, Any]) -> tuple[str, str] | None:
        for check in self.checks:
            refused = check(source, new_data)
            if refused is not None:
                return refused
        return None

    def settled(self, counts: Mapping[str, int], letters: Sequence[DeadLetter]) -> None:
        for check in self.checks:
            if isinstance(check, SettlingCheck):
                check.settled(counts, letters)


def combine_checks(checks: Sequence[DocumentCheck | None]) -> DocumentCheck | None:
    """None without any check, the check itself when there is one, otherwise :class:`AllChecks`."""
    given = [check for check in checks if check is not None]
    if not given:
        return None
    return given[0] if len(given) == 1 else AllChecks(given)


class FanOutHooks(RunHooks):
    """Hands every step to each of ``hooks``, in order; the document checks they return at a
    migration's start are combined (:func:`combine_checks`)."""

    def __init__(self, *hooks: RunHooks) -> None:
        self.hooks = hooks

    def run_started(self, event: RunStarted) -> None:
        for hooks in self.hooks:
            hooks.run_started(event)

    def run_resumed(self, event: RunResumed) -> None:
        for hooks in self.hooks:
            hooks.run_resumed(event)

    def migration_started(self, event: MigrationStarted) -> DocumentCheck | None:
        return combine_checks([hooks.migration_started(event) for hooks in self.hooks])

    def pass_started(self, event: PassStarted) -> None:
        for hooks in self.hooks:
            hooks.pass_started(event)

    def progressed(self, event: Progressed) -> None:
        for hooks in self.hooks:
            hooks.progressed(event)

    def checkpointed(self, event: Checkpointed) -> None:
        for hooks in self.hooks:
            hooks.checkpointed(event)

    def stage(self, event: StageEntered) -> None:
        for hooks in self.hooks:
            hooks.stage(event)

    def warning(self, event: Warned) -> None:
        for hooks in self.hooks:
            hooks.warning(event)

    def control_applied(self, event: ControlApplied) -> None:
        for hooks in self.hooks:
            hooks.control_applied(event)

    def total_known(self, event: TotalKnown) -> None:
        for hooks in self.hooks:
            hooks.total_known(event)

    def pass_ended(self, event: PassEnded) -> None:
        for hooks in self.hooks:
            hooks.pass_ended(event)

    def stages_rolled_back(self, event: StagesRolledBack) -> None:
        for hooks in self.hooks:
            hooks.stages_rolled_back(event)

    def scan_started(self, event: ScanStarted) -> None:
        for hooks in self.hooks:
            hooks.scan_started(event)

    def health_reported(self, event: HealthReported) -> None:
        for hooks in self.hooks:
            hooks.health_reported(event)

    def migration_ended(self, event: MigrationEnded) -> None:
        for hooks in self.hooks:
            hooks.migration_ended(event)

    def run_ended(self, event: RunEnded) -> None:
        for hooks in self.hooks:
            hooks.run_ended(event)


class EventSink(RunHooks):
    """Hooks that treat every step alike (a log, a recorder): each one calls :meth:`record`."""

    def record(self, event: RunEvent) -> None:
        return None

    def run_started(self, event: RunStarted) -> None:
        self.record(event)

    def run_resumed(self, event: RunResumed) -> None:
        self.record(event)

    def migration_started(self, event: MigrationStarted) -> DocumentCheck | None:
        self.record(event)
        return None

    def pass_started(self, event: PassStarted) -> None:
        self.record(event)

    def progressed(self, event: Progressed) -> None:
        self.record(event)

    def checkpointed(self, event: Checkpointed) -> None:
        self.record(event)

    def stage(self, event: StageEntered) -> None:
        self.record(event)

    def warning(self, event: Warned) -> None:
        self.record(event)

    def control_applied(self, event: ControlApplied) -> None:
        self.record(event)

    def total_known(self, event: TotalKnown) -> None:
        self.record(event)

    def pass_ended(self, event: PassEnded) -> None:
        self.record(event)

    def stages_rolled_back(self, event: StagesRolledBack) -> None:
        self.record(event)

    def scan_started(self, event: ScanStarted) -> None:
        self.record(event)

    def health_reported(self, event: HealthReported) -> None:
        self.record(event)

    def migration_ended(self, event: MigrationEnded) -> None:
        self.record(event)

    def run_ended(self, event: RunEnded) -> None:
        self.record(event)


@contextmanager
def run_lifecycle(hooks: RunHooks) -> Iterator[Callable[[RunStarted], None]]:
    """Around the work of a run: the function it gives tells ``hooks`` that the run started; from
    then on, however the block ends, ``hooks`` hear how (:meth:`RunHooks.run_ended`). A block that
    ends before the start (a run refused: locked, closed) has no end either."""
    started: list[RunStarted] = []

    def start(event: RunStarted) -> None:
        hooks.run_started(event)
        started.append(event)

    try:
        yield start
    except BaseException as error:
        if started:
            hooks.run_ended(RunEnded.of(error, folder=started[0].folder))
        raise
    if started:
        hooks.run_ended(RunEnded.of(None, folder=started[0].folder))


_STEPS: dict[type, Callable[[RunHooks, Any], None]] = {
    RunStarted: lambda hooks, event: hooks.run_started(event),
    RunResumed: lambda hooks, event: hooks.run_resumed(event),
    PassStarted: lambda hooks, event: hooks.pass_started(event),
    Progressed: lambda hooks, event: hooks.progressed(event),
    Checkpointed: lambda hooks, event: hooks.checkpointed(event),
    StageEntered: lambda hooks, event: hooks.stage(event),
    Warned: lambda hooks, event: hooks.warning(event),
    ControlApplied: lambda hooks, event: hooks.control_applied(event),
    TotalKnown: lambda hooks, event: hooks.total_known(event),
    PassEnded: lambda hooks, event: hooks.pass_ended(event),
    PassFinished: lambda hooks, event: hooks.pass_ended(event),
    PassStopped: lambda hooks, event: hooks.pass_ended(event),
    StagesRolledBack: lambda hooks, event: hooks.stages_rolled_back(event),
    ScanStarted: lambda hooks, event: hooks.scan_started(event),
    HealthReported: lambda hooks, event: hooks.health_reported(event),
    MigrationEnded: lambda hooks, event: hooks.migration_ended(event),
    RunEnded: lambda hooks, event: hooks.run_ended(event),
}
"""The step each event type belongs to (but MigrationStarted's, which returns the check)."""


def deliver(hooks: RunHooks, event: RunEvent) -> DocumentCheck | None:
    """Call the step of ``hooks`` that ``event`` belongs to (an event read back from a log, say)."""
    if isinstance(event, MigrationStarted):
        return hooks.migration_started(event)
    step = _STEPS.get(type(event))
    if step is not None:
        step(hooks, event)
    return None


# --------------------------------------------------------------------------- backup, restore, verify


@dataclass(frozen=True)
class BackupStarted:
    """One collection's backup begins."""

    collection: str
    group: bool
    recursive: bool


@dataclass(frozen=True)
class BackupProgressed:
    collection: str
    done: int
    """Documents backed up so far, in every collection."""
    files: int
    docs_per_second: float


@dataclass(frozen=True)
class BackupFinished:
    documents: int
    files: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class CollectionEmpty(Warned):
    """A collection the backup found no document in (most often a misspelled name)."""

    collection: str


@dataclass(frozen=True)
class CheckStarted:
    """A backup's files are checked against its manifest before anything is restored."""

    files: int
    documents: int


@dataclass(frozen=True)
class FileChecked:
    file: str
    documents: int


@dataclass(frozen=True)
class RestoreStarted:
    documents: int
    target: str
    write_limit: float
    ramp: bool


@dataclass(frozen=True)
class RestoreProgressed:
    done: int
    total: int
    written: int
    failed: int
    docs_per_second: float


@dataclass(frozen=True)
class RestoreFinished:
    written: int
    failed: int
    seconds: float


@dataclass(frozen=True)
class VerifyStarted:
    documents: int


@dataclass(frozen=True)
class VerifyProgressed:
    done: int
    total: int
    missing: int
    different: int


PhaseStarted: TypeAlias = BackupStarted | CheckStarted | RestoreStarted | VerifyStarted
PhaseProgressed: TypeAlias = BackupProgressed | FileChecked | RestoreProgressed | VerifyProgressed
PhaseFinished: TypeAlias = BackupFinished | RestoreFinished
BackupEvent: TypeAlias = PhaseStarted | PhaseProgressed | PhaseFinished | Warned


class BackupHooks:
    """The steps of a backup, restore or verify (each a phase: backup, check, restore, verify);
    each does nothing here."""

    def phase_started(self, event: PhaseStarted) -> None:
        return None

    def phase_progressed(self, event: PhaseProgressed) -> None:
        return None

    def phase_finished(self, event: PhaseFinished) -> None:
        return None

    def warning(self, event: Warned) -> None:
        return None

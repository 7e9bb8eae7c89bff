"""docshift's one exception tree. Every error a user can see is one of these, and carries its exit code
(and the state a run it ends is recorded in, ``run_state``). No other module defines an exception.

::

    DocshiftError                     1  something failed
    ├── UsageError                    2  a flag or argument is wrong
    │   └── ConfigError               2  a config key is unknown, mistyped or out of range
    ├── DataError                     3  a value cannot be stored or a file cannot be read back
    │   └── CodecError                3
    ├── MigrationFileError            4  a migration file cannot be loaded (syntax, missing up, order…)
    ├── StoreError                    5  the store refused or failed (path is set where known)
    │   ├── TransientError            5  worth retrying: UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
    │   │   │                            RESOURCE_EXHAUSTED, INTERNAL (the adapter retries these)
    │   │   └── LoadRefused           5  the store refused every write for load while the write rate
    │   │                                came down, again and again (its quota used up)
    │   ├── ConflictError             5  a precondition failed: the document changed or (dis)appeared
    │   └── PermanentError            5  everything else: permissions, invalid argument, not found…
    │       └── CredentialsError      5  no usable credentials / project
    ├── LockedError                   6  another run holds the lease
    ├── DriftError                    7  an applied migration's file was edited afterwards
    ├── ConfirmationRequired          8  a destructive action needs --yes or a TTY
    ├── EmulatorError                 15 the Firestore emulator (or Java) is missing or did not start
    ├── RollbackConflicts             1  documents changed after the migration wrote them were left
    │                                    alone; everything else was undone (run state ``conflicts``)
    ├── ValidationFailed              14 integrity below the critical threshold, a count missed, or a
    │                                    copy that differs from its source (validate, verify, run --validate)
    └── RunStopped                    10 a run stopped before the end; its checkpoint is kept
        ├── MemoryLimitExceeded       11 the hard memory limit was reached
        ├── EmergencyStop             12 the circuit breaker or an integrity gate tripped
        │   └── StageFailed           12 a canary stage failed its gate or a trigger fired; every stage
        │                                was rolled back (run state ``rolled_back``), or all but what
        │                                it left alone (``conflicts``)
        ├── RunFileError              12 a file of the run folder could not be written (disk full,
        │                                I/O error, read-only, permissions, folder removed)
        ├── ScriptFailed              1  a script migration's apply(ctx) raised, or one of its writes
        │                                was refused (the document changed since the script read it)
        └── TooManyFailures           13 --max-failures was exceeded

    BatchAborted                      -  not an error: the signal that leaves a batch unfinished
    ScriptAborted                     -  not an error: unwinds a script migration's apply(ctx) once
                                         its run must stop (carries the stop's error)

:class:`BatchAborted` is not a :class:`DocshiftError` on purpose: it never reaches a user. A writer
thread raises it when the run is stopping (its rate-limit wait was cut short), the pipeline catches
it and leaves the batch to be read again on resume, and the user sees the stop's own error (a
:class:`RunStopped`). As a DocshiftError it would carry an exit code and a run state it never
decides, and an ``except DocshiftError`` meant for real failures would take it for one.

Exit code 9 is used by ``docshift status`` for "pending migrations" and 14 by ``docshift validate``
for "below threshold" (see :class:`ExitCode`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

__all__ = [
    "BatchAborted",
    "CodecError",
    "ConfigError",
    "ConfirmationRequired",
    "ConflictError",
    "CredentialsError",
    "DataError",
    "DocshiftError",
    "DriftError",
    "EmergencyStop",
    "EmulatorError",
    "ExitCode",
    "LoadRefused",
    "LockedError",
    "MemoryLimitExceeded",
    "MigrationFileError",
    "PermanentError",
    "RollbackConflicts",
    "RunFileError",
    "RunStopped",
    "ScriptAborted",
    "ScriptFailed",
    "StageFailed",
    "StoreError",
    "TooManyFailures",
    "TransientError",
    "UsageError",
    "ValidationFailed",
]


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    DATA = 3
    MIGRATION_FILE = 4
    STORE = 5
    LOCKED = 6
    DRIFT = 7
    CONFIRMATION_REQUIRED = 8
    PENDING = 9
    INTERRUPTED = 10
    MEMORY_LIMIT = 11
    EMERGENCY_STOP = 12
    TOO_MANY_FAILURES = 13
    VALIDATION_FAILED = 14
    EMULATOR = 15


class DocshiftError(Exception):
    """Base of every docshift error. ``hint`` says what to do next."""

    exit_code: ExitCode = ExitCode.FAILED
    run_state: str = "failed"
    """The state a run ended by this error is recorded in (run.json, ``runs``, ``show``, the report;
    see ``docshift.runfolder.record``)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(DocshiftError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    pass


class DataError(DocshiftError):
    exit_code = ExitCode.DATA


class CodecError(DataError):
    pass


class MigrationFileError(DocshiftError):
    exit_code = ExitCode.MIGRATION_FILE


class StoreError(DocshiftError):
    """The store failed. ``code`` is the gRPC status name, ``path`` the document when known."""

    exit_code = ExitCode.STORE

    def __init__(
        self,
        message: str,
        *,
        code: str = "UNKNOWN",
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.path = path


class TransientError(StoreError):
    pass


class LoadRefused(TransientError):
    """The store accepted no request while the write rate came down, again and again: it is not
    throttling the run (it would accept some writes) but refusing them, e.g. its quota is used up."""


class ConflictError(StoreError):
    pass


class PermanentError(StoreError):
    pass


class CredentialsError(PermanentError):
    pass


class LockedError(DocshiftError):
    exit_code = ExitCode.LOCKED


class DriftError(DocshiftError):
    exit_code = ExitCode.DRIFT


class ConfirmationRequired(DocshiftError):
    exit_code = ExitCode.CONFIRMATION_REQUIRED


class EmulatorError(DocshiftError):
    exit_code = ExitCode.EMULATOR


class RollbackConflicts(DocshiftError):
    """Some documents were changed after the migration wrote them; they were left alone.
    ``report`` is the rollback's :class:`~docshift.commands.rollback.RollbackReport` (everything else
    was undone)."""

    run_state = "conflicts"
    report: Any = None


class RunStopped(DocshiftError):
    """A run ended early but safely; ``resume_command`` continues it."""

    exit_code = ExitCode.INTERRUPTED
    run_state = "stopped"

    def __init__(self, message: str, *, hint: str | None = None, resume_command: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.resume_command = resume_command
        self.offer_resume = True
        """False when resuming as it is would only fail again (every document failed the same
        way): the run is still resumable, but the error does not offer it."""


class MemoryLimitExceeded(RunStopped):
    exit_code = ExitCode.MEMORY_LIMIT


class EmergencyStop(RunStopped):
    exit_code = ExitCode.EMERGENCY_STOP


class StageFailed(EmergencyStop):
    """A canary stage failed its gate or a trigger fired; every stage was rolled back (``undone``;
    nothing to resume, the next run starts anew), or all of it but documents the rollback left
    alone or could not verify (the run then ends ``conflicts``, as a rollback that left documents
    alone does: closed, and the message says where they are listed and how to force them).
    Raised by ``commands/stages.py``."""

    run_state = "rolled_back"

    def __init__(self, message: str, *, hint: str | None = None, undone: bool = True) -> None:
        super().__init__(message, hint=hint)
        self.undone = undone
        if not undone:
            self.run_state = "conflicts"


class RunFileError(RunStopped):
    """Writing a run file (journal, dead letters, checkpoint, run.json) failed; ``path`` is the file.

    Raised where the write failed (see ``runfolder/atomic.py``), with what the file layer knows;
    the run stops at once and adds what it had written. Not an :class:`EmergencyStop`: nothing is
    wrong with the data or the migration, so a canary stage is not rolled back for it.
    """

    exit_code = ExitCode.EMERGENCY_STOP

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        hint: str | None = None,
        resume_command: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, resume_command=resume_command)
        self.path = path


class ScriptFailed(RunStopped):
    """A script migration stopped: its ``apply(ctx)`` raised, or a write it asked for was refused
    (never forced). What it wrote before is journalled; a resume does the script again from its last
    ``ctx.checkpoint`` (raised by ``engine/script.py``)."""

    exit_code = ExitCode.FAILED


class TooManyFailures(RunStopped):
    exit_code = ExitCode.TOO_MANY_FAILURES


class ValidationFailed(DocshiftError):
    exit_code = ExitCode.VALIDATION_FAILED
    run_state = "finished"  # raised after a run did all it set out to do (its after-scan failed)


class BatchAborted(Exception):
    """The run is stopping; this batch was not finished and will be read again on resume.
    Never leaves the engine (see the module's docstring)."""


class ScriptAborted(BaseException):
    """Unwinds a script migration's ``apply(ctx)`` once its run must stop (a refused write, the
    store failing, a stop asked for); the script runner catches it and reports ``error``. A
    BaseException, so that a script's own ``except Exception`` does not swallow it (and every later
    ctx call raises it again). Never leaves the engine."""

    def __init__(self, error: DocshiftError) -> None:
        super().__init__(error.message)
        self.error = error

"""One run session: what every run (``docshift run``, ``docshift rollback``, and so a canary's
stages) does around its work, written once.

Resolve or create the run (a new id, or the folder of the run a resume continues), take the
database's lease while it executes (refused while the process of the run being resumed is still
alive), then write a new run's folder and ``run.json`` before anything else (a run refused or
failing before it starts leaves none behind), give the work the history it records into,
catch a stop (a signal or ``docshift stop`` through the controls, a trigger, a lost lease, a run
file that cannot be written) and record the state it ends the run in with the command that
resumes it, then record the final state. A run file that cannot be written never hides what the
run did: the error says that, and what to do next.
"""

from __future__ import annotations

import os
import secrets
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from docshift.commands.target import check_store
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.limits import RateLimiter
from docshift.errors import LockedError, RunFileError, RunStopped, StoreError, UsageError
from docshift.history import History, HistoryRead, current_user
from docshift.lock import LeaseLock, process_exists, read_lease
from docshift.runfolder.layout import RunFolder, run_folders
from docshift.runfolder.record import CLOSED_STATES, FINISHED, RUNNING, read_info, write_info
from docshift.store import Store

__all__ = [
    "ErrorResults",
    "LeaseAhead",
    "RunSession",
    "find_run",
    "lease_ahead",
    "load_run_info",
    "new_run_id",
    "rate_limiter",
    "unrecorded",
]


T = TypeVar("T")


class ErrorResults(Generic[T]):
    """What a command had done when it raised an error, looked up by that error. Held weakly
    where the error allows it; a built-in exception (KeyError, KeyboardInterrupt) takes no weak
    reference, and is then held with its result, so that looking it up never raises in its place."""

    def __init__(self) -> None:
        self._weak: weakref.WeakKeyDictionary[BaseException, T] = weakref.WeakKeyDictionary()
        self._held: dict[int, tuple[BaseException, T]] = {}

    def __setitem__(self, error: BaseException, result: T) -> None:
        try:
            self._weak[error] = result
        except TypeError:
            self._held[id(error)] = (error, result)

    def get(self, error: BaseException) -> T | None:
        try:
            return self._weak.get(error)
        except TypeError:
            held = self._held.get(id(error))
            return held[1] if held is not None and held[0] is error else None


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def rate_limiter(config: Config, store: Store) -> RateLimiter:
    """The write limit of a run on ``store``: the cap, the 500/50/5 ramp on Cloud Firestore, and
    the adaptive rate the store's refusals set (``adaptive_rate``); the lowest applies."""
    ramp = config.limits.ramp == "on" or (config.limits.ramp == "auto" and not store.info.is_emulator)
    return RateLimiter(config.limits.max_writes_per_second, ramp=ramp, adaptive=config.limits.adaptive_rate)


MIGRATION_RUNS = ("run", "retry")
"""The kinds of run that wrote migrated documents: what a rollback undoes and a retry takes up."""


def find_run(runs_dir: Path, run_id: str, kind: str | None = None) -> Path:
    """The folder of ``run_id``, or of the newest unfinished ``kind`` run for ``"latest"``.
    ``kind`` is what is being resumed, and a run of another kind is refused; without it (a run
    named as what to roll back or retry), any of :data:`MIGRATION_RUNS`."""
    if run_id != "latest":
        folder = RunFolder.of(runs_dir, run_id)
        if not folder.exists:
            raise UsageError(f"no run {run_id!r} in {runs_dir}", hint="see `docshift runs` for run ids")
        found = str(read_info(folder.path).get("kind", "run"))
        if kind is None and found not in MIGRATION_RUNS:
            raise UsageError(
                f"{run_id} is a {found}, not a run that migrated documents",
                hint="name a run or a retry (`docshift runs` lists them with their kind)",
            )
        if (
            kind is not None and found != kind
        ):  # a run named where a rollback is resumed, or the other way round
            raise UsageError(
                f"{run_id} is a {found}, not a {kind}: `docshift {kind} --resume` cannot continue it",
                hint=f"`docshift {found} --execute --resume {run_id}` continues it, if it stopped; "
                "`docshift runs` lists every run and rollback",
            )
        return folder.path
    kind = kind or "run"
    for candidate in run_folders(runs_dir):
        info = read_info(candidate.path)
        if info.get("kind", "run") == kind and info.get("execute") and info.get("state") not in CLOSED_STATES:
            return candidate.path
    command = "docshift run --execute" if kind == "run" else "docshift rollback RUN_ID --execute"
    raise UsageError(
        f"no unfinished {kind} in {runs_dir} to resume",
        hint=f"finished and rolled-back runs are closed (see `docshift runs`); start a new run: {command}",
    )


def load_run_info(folder: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder (what ran, where, and in which state it ended)."""
    return read_info(folder)


def unrecorded(error: RunFileError, done: str, then: str, resume: str | None = None) -> RunFileError:
    """``error`` (run.json could not be written) with what the run had done and what to do next."""
    return RunFileError(
        f"{error.message}; {done}" if done else error.message,
        path=error.path,
        resume_command=resume,
        hint=f"free space or fix the runs folder (permissions, mount), then {then}",
    )


@dataclass
class RunSession:
    """One run of ``kind`` (``run``, ``rollback``): its folder, its ``run.json`` (``info``), the
    store and history it works on. Made by :meth:`create` (a new run) or :meth:`resume`."""

    store: Store
    history: History
    folder: Path
    info: dict[str, Any]
    resumed: bool
    prefix: str

    @classmethod
    def create(cls, config: Config, store: Store, info: dict[str, Any]) -> RunSession:
        """A new run: ``info`` (which names its ``run_id`` and ``kind``) gets who started it, when
        and where. Its folder and ``run.json`` are written when the run starts (:meth:`steps`:
        once it holds the lease, before anything is written to the store), so a run that fails
        before, or is refused by the lock, leaves no folder behind."""
        info = {
            **info,
            "state": RUNNING,
            "created_at": datetime.now(UTC).isoformat(),
            "user": current_user(),
            "target": store.info.describe(),
            "project": store.info.project,
            "database": store.info.database,
        }
        return cls._of(
            config, store, RunFolder.of(config.runs_dir, str(info["run_id"])).path, info, resumed=False
        )

    @classmethod
    def resume(cls, config: Config, store: Store, folder: Path, info: dict[str, Any]) -> RunSession:
        """The run in ``folder`` (``info`` is its ``run.json``), continued on the store it was
        made on (another one is refused)."""
        check_store(store, info, str(info["run_id"]))
        return cls._of(config, store, folder, info, resumed=True)

    @classmethod
    def _of(
        cls, config: Config, store: Store, folder: Path, info: dict[str, Any], *, resumed: bool
    ) -> RunSession:
        prefix = config.store.state_prefix
        return cls(store, History(store, prefix), folder, info, resumed, prefix)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", "run"))

    @property
    def execute(self) -> bool:
        return bool(self.info.get("execute"))

    @property
    def resume_command(self) -> str:
        return f"docshift {self.kind} --execute --resume {self.run_id}"

    def record(self, state: str) -> RunFileError | None:
        """Write ``state`` into run.json; a failure is returned for the caller to say what it means."""
        self.info["state"] = state
        try:
            write_info(self.folder, self.info)
        except RunFileError as error:
            return error
        return None

    def save(self) -> None:
        """Write run.json as it is now (a resume's settings, say)."""
        write_info(self.folder, self.info)

    @contextmanager
    def steps(
        self, controls: Controls, lease: LeaseAhead | None = None, seen: HistoryRead | None = None
    ) -> Iterator[None]:
        """The run's work. Executing, it holds the database's lease (and ``controls`` learns when
        it is lost): ``lease``, when the run began taking it ahead (:class:`LeaseAhead`), else
        taken now; a stop is recorded in run.json as the state it ends the run in, and carries
        the command that resumes it (none for a run it closes: a canary's stages rolled back).
        ``seen``: the history the run chose its migrations from before it held the lease; the
        run does not start when another run changed their records since (:meth:`_check_held`)."""
        if not self.execute:
            self._begin()
            yield
            return
        if self.resumed:
            refuse_if_still_running(self.store, self.prefix, self.run_id)
        lock = lease.taken() if lease is not None else LeaseLock(self.store, self.prefix, run_id=self.run_id)
        with lock:
            self._check_held(lock, seen)
            self._begin()
            controls.lease_lost = lock.lost
            try:
                yield
            except RunStopped as stop:
                self._stopped(stop)
                raise

    def _check_held(self, lock: LeaseLock, seen: HistoryRead | None) -> None:
        """Before the run starts under the lease: the lease is still held, and the history it
        decided from (read while the lease was being taken) is still what it is. Another run may
        have finished the same migrations in between (and released the lease): running them again
        would apply them twice."""
        if lock.lost.is_set():
            raise LockedError(
                f"{self.kind} {self.run_id} lost the database's lease before it started; nothing was written",
                hint="another run took the lease over (it expired, or was removed with `docshift unlock "
                "--force`); see `docshift status`, then run again",
            )
        if seen is None:
            return
        changed = self.history.changed_since(seen, [str(i) for i in self.info.get("migrations") or ()])
        if changed:
            raise LockedError(
                f"the history of migration {', '.join(changed)} changed while {self.kind} {self.run_id} "
                "was taking the lease; nothing was written",
                hint="another run changed the history while this one started; run again",
            )

    def _begin(self) -> None:
        """The run starts: a new one's folder and ``run.json`` are written now, and not before
        (nothing else of the run has been written yet)."""
        if self.resumed:
            return
        if (error := self.record(RUNNING)) is not None:
            raise unrecorded(
                error,
                f"{self.kind} {self.run_id} did not start: nothing was written to the store",
                "run again",
            )

    def _stopped(self, stop: RunStopped) -> None:
        closed = stop.run_state in CLOSED_STATES or not stop.offer_resume
        stop.resume_command = None if closed else self.resume_command
        if stop.hint is None and stop.resume_command:
            stop.hint = f"the checkpoint is kept: resume with `{stop.resume_command}`"
        error = self.record(stop.run_state)
        if isinstance(stop, RunFileError):
            then = f"resume with `{self.resume_command}`"
            if self.kind == "run":
                then += f", or undo what was written with `docshift rollback {self.run_id} --execute`"
            stop.hint = unrecorded(stop, "", then).hint
        elif error is not None:  # a folder that cannot be written must not hide the stop
            stop.message += f"; {error.message}"

    def finish(self, *, done: str, again: str, state: str = FINISHED) -> None:
        """Record the run's final state. When run.json cannot be written, raise that, saying what
        the run did (``done``) and what running its resume again does (``again``). A dry run
        is not resumed: its error is raised as it is."""
        if not self.execute:
            self.info["state"] = state
            self.save()
            return
        if (error := self.record(state)) is None:
            return
        raise unrecorded(
            error,
            f"{self.kind} {self.run_id} {done}; only its run.json still says running",
            f"`{self.resume_command}` records it as finished ({again})"
            + (f"; `docshift rollback {self.run_id} --execute` undoes it" if self.kind == "run" else ""),
            self.resume_command,
        )


class LeaseAhead:
    """The database's lease for a new executing run, taken in a background thread while the run
    reads what it has to do (the stored history), so that its round trips (a read and a write)
    overlap that read instead of following it. The run still holds the lease before it writes
    anything else, and writes nothing under it before it starts (:meth:`RunSession.steps` takes
    it from here, raising what taking it raised: another run holds it, say). Used with
    :func:`lease_ahead`, which gives it back when the run does not start."""

    def __init__(self, store: Store, prefix: str, run_id: str) -> None:
        self.lock = LeaseLock(store, prefix, run_id=run_id)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._take, name="docshift-lease-ahead", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        try:
            self.lock.acquire()
        except BaseException as error:  # raised in the run's own thread, by taken()
            self._error = error

    def taken(self) -> LeaseLock:
        """The lock, held (its ``with`` releases it); or what taking it raised, raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.lock

    def give_back(self) -> None:
        """Release the lease if it was taken and is still held (a no-op once ``with`` released it)."""
        self._thread.join()
        if self._error is None:
            self.lock.release()


@contextmanager
def lease_ahead(store: Store, prefix: str, run_id: str, *, execute: bool) -> Iterator[LeaseAhead | None]:
    """A :class:`LeaseAhead` for a new executing run (None without ``execute``: a dry run takes no
    lease, a resume takes it in :meth:`RunSession.steps`), given back however the block ends: a
    run with nothing to do never needed it (so another run holding it is no error then), and one
    that failed before it started must not keep it. Ending with an error, a lease that cannot be
    released is left to expire (within its ttl, its heartbeat stopped) rather than hide that error."""
    if not execute:
        yield None
        return
    ahead = LeaseAhead(store, prefix, run_id)
    try:
        yield ahead
    except BaseException:
        with suppress(StoreError):
            ahead.give_back()
        raise
    ahead.give_back()


def refuse_if_still_running(store: Store, prefix: str, run_id: str) -> None:
    """Resuming takes over the lease of the run being resumed (its process was killed, say), but
    not while that process is alive: two processes would run the same work side by side.
    Alive means: the lease has not expired and its process exists on this machine (a lease from
    another machine counts as alive until it expires)."""
    lease = read_lease(store, prefix)
    if lease is None or lease.run_id != run_id or lease.expired():
        return
    if lease.owner == current_user() and (lease.pid == os.getpid() or not process_exists(lease.pid)):
        return
    raise LockedError(
        f"run {run_id} is still running: {lease.describe()}",
        hint="stop that process first (Ctrl-C); if it is gone, wait for its lease to expire or "
        "remove it with `docshift unlock --force`",
    )

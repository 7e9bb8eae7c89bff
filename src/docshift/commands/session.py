"""One run session: what every run (``docshift run``, ``docshift rollback``, and so a canary's
stages) does around its work, written once.

Resolve or create the run (a new id, or the folder of the run a resume continues), write its
``run.json`` before anything else, take the database's lease while it executes (refused while the
process of the run being resumed is still alive), give the work the history it records into,
catch a stop (a signal or ``docshift stop`` through the controls, a trigger, a lost lease, a run
file that cannot be written) and record the state it ends the run in with the command that
resumes it, then record the final state. A run file that cannot be written never hides what the
run did: the error says that, and what to do next.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docshift.commands.target import check_store
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.limits import RateLimiter
from docshift.errors import LockedError, RunFileError, RunStopped, UsageError
from docshift.history import History, current_user
from docshift.lock import LeaseLock, process_exists, read_lease
from docshift.runfolder.layout import RunFolder, run_folders
from docshift.runfolder.record import CLOSED_STATES, FINISHED, RUNNING, read_info, write_info
from docshift.store import Store

__all__ = [
    "RunSession",
    "find_run",
    "load_run_info",
    "new_run_id",
    "rate_limiter",
    "unrecorded",
]


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def rate_limiter(config: Config, store: Store) -> RateLimiter:
    """The write limit of a run on ``store`` (with the 500/50/5 ramp on Cloud Firestore)."""
    ramp = config.limits.ramp == "on" or (config.limits.ramp == "auto" and not store.info.is_emulator)
    return RateLimiter(config.limits.max_writes_per_second, ramp=ramp)


def find_run(runs_dir: Path, run_id: str, kind: str = "run") -> Path:
    """The folder of ``run_id``, or of the newest unfinished ``kind`` run for ``"latest"``."""
    if run_id != "latest":
        folder = RunFolder.of(runs_dir, run_id)
        if not folder.exists:
            raise UsageError(f"no run {run_id!r} in {runs_dir}", hint="see `docshift runs` for run ids")
        return folder.path
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
        and where, and is written as its ``run.json`` before anything is written to the store."""
        info = {
            **info,
            "state": RUNNING,
            "created_at": datetime.now(UTC).isoformat(),
            "user": current_user(),
            "target": store.info.describe(),
            "project": store.info.project,
            "database": store.info.database,
        }
        session = cls._of(
            config, store, RunFolder.of(config.runs_dir, str(info["run_id"])).path, info, resumed=False
        )
        if (error := session.record(RUNNING)) is not None:
            raise unrecorded(
                error,
                f"{session.kind} {session.run_id} did not start: nothing was written to the store",
                "run again",
            )
        return session

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
    def steps(self, controls: Controls) -> Iterator[None]:
        """The run's work. Executing, it holds the database's lease (and ``controls`` learns when
        it is lost); a stop is recorded in run.json as the state it ends the run in, and carries
        the command that resumes it (none for a run it closes: a canary's stages rolled back)."""
        if not self.execute:
            yield
            return
        if self.resumed:
            refuse_if_still_running(self.store, self.prefix, self.run_id)
        lock = LeaseLock(self.store, self.prefix, run_id=self.run_id)
        with lock:
            controls.lease_lost = lock.lost
            try:
                yield
            except RunStopped as stop:
                self._stopped(stop)
                raise

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

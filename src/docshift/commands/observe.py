"""Everything that watches one run from inside its process: the event log, the live status, the
status endpoint, control files, the presence file, and the report written when the run ends.

One context manager, which :func:`docshift.commands.run.run` and
:func:`docshift.commands.rollback.rollback` put around their run (so a Python caller gets the same
files as the command line)::

    watch = ObserveOptions(status_port=8765)
    with Observation(config, store, controls, display=display, options=watch) as seen:
        report = run_migrations(config, RunOptions(execute=True, run_id=seen.run_id), store=store,
                                hooks=seen.hooks, controls=controls)
    print(seen.report.html)

The report is written however the block ends (success, stop, error); a failure to write it is
kept in ``report_error`` and never hides the run's own outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from docshift.commands.session import find_run, new_run_id
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.hooks import ControlApplied, FanOutHooks, RunEnded, RunHooks, RunStarted
from docshift.errors import DocshiftError, RunStopped
from docshift.loader import load_migrations
from docshift.migration import Migration
from docshift.remote.files import ControlFiles
from docshift.remote.server import StatusServer
from docshift.reports.events import EventLog
from docshift.reports.report import ReportPaths, build_report
from docshift.reports.status import ProgressExtras, RunStatus
from docshift.runfolder.layout import RunFolder
from docshift.runfolder.presence import read_presence, remove_presence, write_presence
from docshift.runfolder.record import record_outcome
from docshift.store import Store

__all__ = ["Observation", "ObserveOptions", "migration_totals", "outcome_of"]


def migration_totals(
    config: Config, store: Store, *, limit: int | None = None
) -> Callable[[str], int | None]:
    """How many documents each migration (by label) will handle: a count query of its target,
    capped by ``--limit``. For the progress bar and the ETA. Not scaled by ``--sample``: the
    documents a sample leaves out are counted too (as skipped), so the full count is the total."""
    by_label: dict[str, Migration] = {}

    def total(label: str) -> int | None:
        if not by_label:  # loaded on first use, in the counting thread: the run reports bad files
            by_label.update({m.label: m for m in load_migrations(config.migrations_dir)})
        migration = by_label.get(label)
        if migration is None or migration.is_script:  # a script has no target to count
            return None
        count = store.count(migration.target.query())
        if limit is not None:
            count = min(count, limit)
        return count

    return total


def outcome_of(error: BaseException | None, state: str | None = None) -> dict[str, Any]:
    """How a run ended, for run.json, the event log and the report: state (the error's
    ``run_state``), exit code, error, hint (and a stopped run's resume command)."""
    ended = RunEnded.of(error, state=state)
    outcome = ended.outcome()
    if isinstance(error, RunStopped):
        outcome["resume_command"] = ended.resume_command
    return outcome


@dataclass(frozen=True)
class ObserveOptions:
    """How a run is watched (none of it is recorded with the run: the token never is)."""

    status_port: int | None = None
    """Serve the status endpoint on this port (0: any free one); None: no endpoint."""
    status_host: str = "127.0.0.1"
    status_token: str | None = None
    totals: Callable[[str], int | None] | None = None
    """How many documents each migration (by label) handles, for the progress bar and the ETA
    (:func:`migration_totals`; a count query each, so only where an ETA is shown)."""
    control_files: bool = True
    report: bool = True
    on_start: Callable[[Observation], None] | None = None
    """Called once the observation is set up (run id, folder and endpoint known), before the run."""


class _Observed(FanOutHooks):
    """The hooks an observation gives the run: the event log, the status and the display get
    every step at once, except the run's end, which they get once, when the command is over
    (its outcome then says what came after the run: the validation's verdict, an auto-rollback).
    The run's start first calls ``on_start``: the folder exists from then on."""

    def __init__(self, *hooks: RunHooks, on_start: Callable[[], None]) -> None:
        super().__init__(*hooks)
        self.on_start = on_start

    def run_started(self, event: RunStarted) -> None:
        self.on_start()
        super().run_started(event)

    def run_ended(self, event: RunEnded) -> None:
        return None

    def command_ended(self, event: RunEnded) -> None:
        super().run_ended(event)


class Observation:
    """See the module docstring. ``resume`` is the run id (or ``latest``) being resumed, if any;
    ``run_id`` the id of a new run (default: generated)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        controls: Controls,
        *,
        kind: str = "run",
        resume: str | None = None,
        run_id: str | None = None,
        display: RunHooks | None = None,
        options: ObserveOptions | None = None,
    ) -> None:
        options = options or ObserveOptions()
        self.config = config
        self.store = store
        self.controls = controls
        self.kind = kind
        self.resume = resume
        self.options = options
        self.display = display or RunHooks()
        self.status_token = options.status_token or None
        self.run_id: str | None = None if resume else run_id
        """The new run's id (pass it as ``RunOptions.run_id``); None when resuming."""
        self.folder: Path | None = None
        self.status = RunStatus("", kind=kind, controls=controls)
        self.server: StatusServer | None = None
        self.files: ControlFiles | None = None
        self.log: EventLog | None = None
        self.report: ReportPaths | None = None
        self.report_error: BaseException | None = None
        self.ended_by: DocshiftError | None = None
        """An error the command raises once the block is done (an after-scan below the threshold):
        the run's outcome, recorded as such although the block itself ended without it."""
        self.hooks: RunHooks = self.display
        """What to give the run (``hooks=``): the log, the status and the display, once entered."""
        self._observed: _Observed | None = None
        self._watching = False

    def __enter__(self) -> Observation:
        if self.resume:
            try:
                self.folder = find_run(self.config.runs_dir, self.resume, kind=self.kind)
            except DocshiftError:
                self.folder = None  # the run itself reports what is wrong with --resume
            presence = read_presence(self.folder) if self.folder is not None else None
            if presence is not None and presence.alive:
                self.folder = None  # another process still runs it (the run refuses): leave its files be
        else:
            self.run_id = self.run_id or new_run_id()
            self.folder = RunFolder.of(self.config.runs_dir, self.run_id).path
        options = self.options
        if self.folder is None:
            if options.on_start is not None:
                options.on_start(self)
            return self
        self.status.run_id = self.folder.name
        self.log = EventLog(RunFolder(self.folder).events)
        retries = getattr(self.store, "retries", None)
        self._observed = _Observed(self.log, self.status, self.display, on_start=self._watch_folder)
        self.hooks = ProgressExtras(
            self._observed,
            retries=(lambda: int(getattr(self.store, "retries", 0))) if isinstance(retries, int) else None,
            totals=options.totals,
        )
        if options.status_port is not None:
            self.server = StatusServer(
                self.status,
                self.controls,
                host=options.status_host or "127.0.0.1",
                port=options.status_port,
                token=self.status_token,
                on_control=self._note_control,
            )
        try:
            if self.resume:  # the run's folder exists; a new run's is made when it starts
                self._watch_folder()
            if options.on_start is not None:
                options.on_start(self)
        except BaseException:
            self._close_watchers()
            raise
        return self

    def _watch_folder(self) -> None:
        """Once the run's folder exists (a new run's from its start): the presence file, and the
        control files watched in it."""
        if self._watching or self.folder is None:
            return
        self._watching = True
        write_presence(self.folder, self.url, self.status_token is not None)
        if self.options.control_files:
            self.files = ControlFiles(self.folder, self.controls, hooks=self.hooks)
            self.files.start()

    def _note_control(self, action: str, *, ops_per_second: float | None = None) -> None:
        self.hooks.control_applied(ControlApplied(action, "http", ops_per_second))

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def _close_watchers(self) -> None:
        if self.files is not None:
            self.files.close()
        if self.server is not None:
            self.server.close()
        if self.folder is not None and self._watching:
            with contextlib.suppress(OSError):  # a folder gone or read-only: how the run ended matters more
                remove_presence(self.folder)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        folder = self.folder
        if folder is None:
            return
        error = exc if exc is not None else self.ended_by
        outcome = outcome_of(error)
        ran = RunFolder(folder).exists
        if self.resume and self.log is not None and not self.log.written:
            ran = False  # a resume refused before it started: the run's report stands as it was
        if ran and self._observed is not None:
            self._observed.command_ended(RunEnded.of(error, folder=folder))
        self._close_watchers()
        if self.log is not None:
            self.log.close()
        if not ran:
            if not self.resume:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # nothing ran: leave no empty run folder behind
            return
        try:  # the run's one record of how it ended: every view reads it
            record_outcome(folder, outcome)
        except (OSError, DocshiftError) as error:
            self.report_error = error
        if self.options.report:
            try:
                self.report = build_report(
                    folder, outcome=outcome, secrets=(self.status_token,) if self.status_token else ()
                )
            except Exception as error:  # the run's outcome matters more than its report
                self.report_error = error

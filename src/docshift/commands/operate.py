"""Operating runs: list them, show one, (re)build its report, follow it, and steer it.

``docshift runs``, ``show``, ``report``, ``monitor``, ``pause``, ``resume``, ``throttle`` and
``stop`` are thin layers over these functions; everything is read from the run folders (and a
running run's status endpoint), never from the database, so they work offline too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.commands.run import load_run_info
from docshift.commands.target import refuse_other_target
from docshift.config import Config
from docshift.errors import DataError, UsageError
from docshift.remote.client import ControlResult, fetch_status, send_control
from docshift.reports.events import EventFollower
from docshift.reports.report import ReportPaths, build_report, collect_report
from docshift.reports.status import RunStatus
from docshift.runfolder.layout import RunFolder, run_folders
from docshift.runfolder.presence import read_presence
from docshift.runfolder.record import COUNT_COLUMNS, live_state, read_migrations, read_run

__all__ = [
    "RunSummary",
    "StatusSource",
    "control_run",
    "list_runs",
    "live_state",
    "rebuild_report",
    "resolve_run",
    "show_run",
]

_COUNTS = COUNT_COLUMNS


@dataclass
class RunSummary:
    run_id: str
    kind: str
    execute: bool
    migrations: list[str]
    state: str
    created_at: str | None
    duration_seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    folder: Path = Path()

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "execute": self.execute,
            "migrations": self.migrations,
            "state": self.state,
            "created_at": self.created_at,
            "duration_seconds": round(self.duration_seconds, 3),
            "counts": self.counts,
            "folder": str(self.folder),
        }


def _run_folders(runs_dir: Path) -> list[Path]:
    """Run folders, newest first (run ids start with their UTC start time)."""
    return [folder.path for folder in run_folders(runs_dir)]


def resolve_run(config: Config, run_id: str | None, *, running: bool = False) -> Path:
    """The folder of ``run_id``; without one (or ``latest``), the newest run, preferring one that is
    running when ``running``."""
    if run_id and run_id != "latest":
        named = RunFolder.of(config.runs_dir, run_id)
        if not named.exists:
            raise UsageError(
                f"no run {run_id!r} in {config.runs_dir}", hint="see `docshift runs` for run ids"
            )
        return named.path
    folders = _run_folders(config.runs_dir)
    if not folders:
        raise UsageError(f"no runs in {config.runs_dir}", hint="start one with `docshift run`")
    if running:
        for folder in folders:
            presence = read_presence(folder)
            if presence is not None and presence.alive:
                return folder
    return folders[0]


def _summary(folder: Path) -> RunSummary:
    record = read_run(folder)
    migrations = [str(m) for m in record.info.get("migrations", [])]
    return RunSummary(
        record.run_id,
        record.kind,
        record.execute,
        migrations,
        record.state,
        record.info.get("created_at"),
        record.duration_seconds,
        {**dict.fromkeys(_COUNTS, 0), **record.totals},
        folder,
    )


def list_runs(config: Config, *, limit: int | None = None) -> list[RunSummary]:
    """Every run in ``runs_dir``, newest first (a damaged run.json is listed as such)."""
    runs = []
    for folder in _run_folders(config.runs_dir)[:limit]:
        try:
            runs.append(_summary(folder))
        except DataError:
            runs.append(RunSummary(folder.name, "?", False, [], "damaged", None, 0.0, {}, folder))
    return runs


def show_run(config: Config, run_id: str | None) -> dict[str, Any]:
    """One run in detail: what its report holds (without the chart series), its live state and
    where its files are."""
    folder = resolve_run(config, run_id)
    refuse_other_target(config, folder)
    body = collect_report(folder)
    body.pop("timeline", None)
    presence = read_presence(folder)
    if presence is not None and presence.alive:
        body["state"] = "running"
        body["process"] = {"pid": presence.pid, "hostname": presence.hostname, "status_url": presence.url}
    files = RunFolder(folder)
    body["report_files"] = {
        path.name: str(path) for path in (files.report_html, files.report) if path.is_file()
    }
    return body


def rebuild_report(config: Config, run_id: str | None) -> ReportPaths:
    """(Re)build ``report.json`` and ``report.html`` of a run from its folder."""
    folder = resolve_run(config, run_id)
    refuse_other_target(config, folder)
    return build_report(folder)


def control_run(
    config: Config, run_id: str, action: str, *, value: float | None = None, token: str | None = None
) -> ControlResult:
    """Pause, resume, throttle or stop a running run (endpoint first, control files otherwise)."""
    return send_control(resolve_run(config, run_id, running=True), action, value=value, token=token)


class StatusSource:
    """A run's status for ``docshift monitor``: from its status endpoint while it has one, otherwise
    from its event log (followed incrementally) and checkpoint files."""

    def __init__(self, folder: Path, *, token: str | None = None) -> None:
        self.folder = folder
        self.token = token
        self.via = "files"
        self._status = RunStatus(folder.name)
        self._follower = EventFollower(RunFolder(folder).events)

    def poll(self) -> dict[str, Any]:
        answer = fetch_status(self.folder, token=self.token)
        if answer is not None:
            self.via = "endpoint"
            return answer
        self.via = "files"
        for event in self._follower.new_events():
            self._status.replay(event)
        snapshot = self._status.snapshot()
        info: dict[str, Any] = {}
        with contextlib.suppress(DataError):
            info = load_run_info(self.folder)
        self._status.kind = str(info.get("kind", "run"))
        snapshot["kind"] = self._status.kind
        presence = read_presence(self.folder)
        alive = presence is not None and presence.alive
        if not alive and snapshot.get("ended") is None:
            snapshot["state"] = live_state(self.folder, str(info.get("state", "unknown")))
        elif snapshot.get("ended") is not None and not alive:
            snapshot["state"] = snapshot["ended"].get("state", snapshot["state"])
        known = {m["migration"] for m in snapshot["migrations"]}
        for migration in read_migrations(self.folder, [str(m) for m in info.get("migrations", [])]):
            if migration.label in known or migration.checkpoint is None:
                continue
            counts = migration.counts
            done = sum(counts.get(k, 0) for k in _COUNTS if k != "conflicts")
            snapshot["migrations"].append(
                {
                    "migration": migration.label,
                    "state": migration.state,
                    "total": None,
                    "fraction": 1.0 if migration.state == "finished" else None,
                    "eta_seconds": None,
                    **counts,
                    "done": done,
                }
            )
        return snapshot

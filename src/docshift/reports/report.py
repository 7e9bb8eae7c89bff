"""A run's report: ``report.json`` and a self-contained ``report.html`` in its run folder.

Built only from the run folder (run.json, events.jsonl, each migration's checkpoint and dead
letters, validation.json), so ``docshift report RUN_ID`` rebuilds the same report at any time, on
any machine that has the folder. Secrets never reach it: settings whose name looks like a secret
are redacted, and any secret the caller names (a status token) is scrubbed from both files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.engine.hooks import ControlApplied, PassEnded, PassStopped, Progressed, Warned
from docshift.errors import DataError
from docshift.reports.charts import downsample
from docshift.reports.events import Logged, kind_of, read_events
from docshift.reports.status import RunStatus
from docshift.runfolder.atomic import FileFormat, write_atomic
from docshift.runfolder.layout import REPORT_FORMAT, RUN_VALIDATION_FORMAT, RunFolder
from docshift.runfolder.record import (
    CLOSED_STATES,
    CONFLICTS,
    FINISHED,
    ROLLED_BACK,
    RunRecord,
    force_command,
    read_run,
)

__all__ = ["ReportPaths", "build_report", "collect_report", "redact"]

_SECRET_NAME = re.compile(
    r"token|secret|password|passwd|credential|authorization|api_?key|private", re.IGNORECASE
)
REDACTED = "[redacted]"
_GAP_SECONDS = 15.0
"""Progress events come every second; a longer silence is a stop (and a later resume): break the line."""


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    html: Path
    body: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """What was written (the report's content), for a caller that prints a summary."""


def redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """``value`` with secret-looking keys masked and every given secret string scrubbed."""
    if isinstance(value, dict):
        return {
            key: REDACTED
            if _SECRET_NAME.search(str(key)) and item not in (None, "", False)
            else redact(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, secrets) for item in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
    return value


def build_report(
    folder: Path, *, outcome: dict[str, Any] | None = None, secrets: tuple[str, ...] = ()
) -> ReportPaths:
    """(Re)build both report files of the run in ``folder``; returns their paths."""
    from docshift.reports.html import render_html

    body = redact(collect_report(folder, outcome=outcome), tuple(s for s in secrets if s))
    json_path, html_path = RunFolder(folder).report, RunFolder(folder).report_html
    REPORT_FORMAT.write(json_path, body)
    page = render_html(body)
    for secret in secrets:
        if secret:
            page = page.replace(secret, REDACTED)
    write_atomic(html_path, page.encode("utf-8"))
    return ReportPaths(json_path, html_path, body)


def _read(path: Path, file_format: FileFormat) -> dict[str, Any] | None:
    """The file, or None when there is none or it cannot be read (damaged, or from a newer docshift)."""
    try:
        return file_format.read(path) if path.is_file() else None
    except DataError:
        return None


class _Timeline:
    """Chart series accumulated while streaming the event log (memory bounded by downsampling)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.last_at: float | None = None
        self.throughput: dict[str, list[tuple[float, float | None]]] = {}
        self.latency: dict[str, list[tuple[float, float | None]]] = {"p50": [], "p95": [], "p99": []}
        self.failures: dict[str, list[tuple[float, float | None]]] = {
            "failed": [],
            "conflicts": [],
            "retries": [],
        }
        self.markers: list[dict[str, Any]] = []
        self._per_migration: dict[str, dict[str, int]] = {}
        self._last_done: dict[str, tuple[float, int]] = {}

    def _rate(self, label: str, t: float, event: Progressed | PassEnded) -> float:
        """Documents per second since the previous progress event: drops to zero at once when the
        run pauses (the engine's own "now" rate is a 5-second average, which lags)."""
        stats = event.stats
        previous = self._last_done.get(label)
        if stats is None:
            return 0.0
        fallback = stats.docs_per_second_now if isinstance(event, Progressed) else stats.docs_per_second_avg
        self._last_done[label] = (t, stats.processed)
        if previous is None or t <= previous[0]:
            return float(fallback or 0.0)
        return max(0.0, (stats.processed - previous[1]) / (t - previous[0]))

    def add(self, logged: Logged) -> None:
        at, event = logged.at, logged.event
        if self.t0 is None:
            self.t0 = at
        t = at - self.t0
        if isinstance(event, PassStopped | Warned | ControlApplied):
            text = event.reason if isinstance(event, PassStopped) else None
            text = text or (event.message if isinstance(event, Warned) else None)
            text = text or (event.action if isinstance(event, ControlApplied) else None)
            self.markers.append({"t": round(t, 3), "kind": kind_of(event), "text": str(text)[:300]})
        if not isinstance(event, Progressed | PassEnded):
            return
        if self.last_at is not None and at - self.last_at > _GAP_SECONDS:
            for series in (*self.throughput.values(), *self.latency.values(), *self.failures.values()):
                series.append((t, None))
            self._last_done.clear()
        self.last_at = at
        label = event.migration
        self.throughput.setdefault(label, []).append((t, self._rate(label, t, event)))
        if event.stats is not None:
            for name, value in (
                ("p50", event.stats.commit_p50),
                ("p95", event.stats.commit_p95),
                ("p99", event.stats.commit_p99),
            ):
                if isinstance(value, float | int):
                    self.latency[name].append((t, value * 1000.0))
        self._per_migration[label] = {
            "failed": int(event.counters.get("failed") or 0),
            "conflicts": int(event.counters.get("conflicts") or 0),
        }
        for name in ("failed", "conflicts"):
            self.failures[name].append((t, float(sum(m[name] for m in self._per_migration.values()))))
        if isinstance(event.retries, int):
            self.failures["retries"].append((t, float(event.retries)))
        if sum(len(s) for s in self.throughput.values()) > 20000:
            self._compact()

    def _compact(self) -> None:
        for group in (self.throughput, self.latency, self.failures):
            for name, points in group.items():
                group[name] = downsample(points, 2000)

    def to_json(self) -> dict[str, Any]:
        def pack(group: dict[str, list[tuple[float, float | None]]]) -> dict[str, list[list[Any]]]:
            return {
                name: [[round(x, 3), None if y is None else round(y, 3)] for x, y in downsample(points)]
                for name, points in group.items()
                if any(y is not None for _, y in points)
            }

        return {
            "t0": self.t0,
            "throughput": pack(self.throughput),
            "latency_ms": pack(self.latency),
            "failures": pack(self.failures),
            "markers": self.markers[-200:],
        }


def _migrations(record: RunRecord, status: RunStatus) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    for migration in record.migrations:
        checkpoint = migration.checkpoint
        if checkpoint is None:
            rows.append(
                {
                    "migration": migration.label,
                    "state": migration.state,
                    "error": migration.error,
                    "counters": {},
                    "counts": {},
                }
            )
            continue
        settings = settings or dict(checkpoint.settings)
        label = migration.label
        live = status.migrations.get(label) or status.migrations.get(f"rollback {label}") or {}
        rows.append(
            {
                **migration.to_json(),
                "shards": len(checkpoint.shards),
                "cursors": [s.cursor for s in checkpoint.shards],
                "docs_per_second_avg": live.get("docs_per_second_avg"),
                "commit_p50": live.get("commit_p50"),
                "commit_p95": live.get("commit_p95"),
                "commit_p99": live.get("commit_p99"),
                "commits": live.get("commits"),
                "files": sorted(p.name for p in migration.folder.iterdir() if p.is_file()),
            }
        )
    return rows, settings


def _outcome(
    folder: Path, record: RunRecord, status: RunStatus, given: dict[str, Any] | None
) -> dict[str, Any]:
    if given is not None:
        return dict(given)
    if record.outcome is not None:
        ended = dict(record.outcome)
    elif status.ended is not None:
        ended = {k: v for k, v in status.ended.items() if k != "at"}
    else:
        previous = _read(RunFolder(folder).report, REPORT_FORMAT)
        ended = (
            dict(previous["outcome"])
            if previous is not None and isinstance(previous.get("outcome"), dict)
            else {"exit_code": None, "error": status.stop_reason}
        )
    ended["state"] = record.state  # what run.json records (or that a process runs it now)
    if record.state == FINISHED and ended.get("exit_code") is None:
        ended["exit_code"] = 0
    return ended


def _commands(record: RunRecord, state: str) -> dict[str, str]:
    """The next steps for a run in ``state``: only those that apply to it."""
    run_id, info, execute = record.run_id, record.info, record.execute
    commands: dict[str, str] = {}
    if record.kind == "rollback":
        if execute and state not in CLOSED_STATES:
            commands["resume"] = f"docshift rollback --execute --resume {run_id}"
        conflicts = any(
            m.counters.get("conflicts", 0) and "restored" in m.counters  # a restore's
            for m in record.migrations
        )
        force = force_command(info)
        if state == CONFLICTS and conflicts and force:
            # --force puts the before-images back over what the application wrote since.
            commands["overwrite the conflicts (the later changes are lost)"] = force
    elif execute:
        if state not in CLOSED_STATES:
            commands["resume"] = f"docshift run --execute --resume {run_id}"
        if state == ROLLED_BACK:
            commands["start a new run (after fixing the migration)"] = "docshift run --execute"
        else:
            commands["rollback (preview)"] = f"docshift rollback {run_id}"
            commands["rollback"] = f"docshift rollback {run_id} --execute"
    else:
        commands["apply"] = "docshift run --execute"
    commands["show"] = f"docshift show {run_id}"
    commands["rebuild this report"] = f"docshift report {run_id}"
    return commands


def collect_report(folder: Path, *, outcome: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's content as plain JSON (what report.json holds and report.html shows)."""
    record = read_run(folder)
    status = RunStatus(record.run_id, kind=record.kind)
    timeline = _Timeline()
    first_at = last_at = None
    for logged in read_events(RunFolder(folder).events):
        status.replay(logged)
        timeline.add(logged)
        first_at = logged.at if first_at is None else first_at
        last_at = logged.at
    migrations, settings = _migrations(record, status)
    info = record.info
    if isinstance(info.get("settings"), dict):  # the run's own, as its last resume continued with them
        settings = {**settings, "run": info["settings"], "overridden on resume": info.get("overrides") or {}}
    ended = _outcome(folder, record, status, outcome)
    state = str(ended.get("state"))
    validation = _read(RunFolder(folder).validation, RUN_VALIDATION_FORMAT)
    health = validation.get("health") if validation else None
    if not isinstance(health, dict):
        computed = status.health()
        health = {
            "score": computed.score,
            "status": computed.status.value,
            "issues": [issue.to_json() for issue in computed.issues],
        }
    run = {k: v for k, v in record.info.items() if k not in ("format", "version", "codec", "outcome")}
    return {
        "run_id": record.run_id,
        "kind": record.kind,
        "execute": record.execute,
        "run": run,
        "outcome": ended,
        "state": state,
        "first_event_at": first_at,
        "last_event_at": last_at,
        "duration_seconds": round(record.duration_seconds, 3),
        "totals": record.totals,
        "migrations": migrations,
        "health": health,
        "warnings": list(status.warnings),
        "stop_reason": status.stop_reason,
        "validation": {"gate": validation.get("gate"), "reports": validation.get("reports", [])}
        if validation
        else None,
        "settings": settings,
        "commands": _commands(record, state),
        "timeline": timeline.to_json(),
        "folder": str(folder),
    }

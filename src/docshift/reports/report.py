"""A run's report: ``report.json`` and a self-contained ``report.html`` in its run folder.

Built only from the run folder (run.json, events.jsonl, each migration's checkpoint and dead
letters, validation.json), so ``docshift report RUN_ID`` rebuilds the same report at any time, on
any machine that has the folder. Secrets never reach it: settings whose name looks like a secret
are redacted, and any secret the caller names (a status token) is scrubbed from both files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.engine.hooks import (
    ControlApplied,
    PassEnded,
    PassStarted,
    PassStopped,
    Progressed,
    RunResumed,
    Warned,
)
from docshift.errors import DataError
from docshift.reports.charts import downsample
from docshift.reports.events import Logged, kind_of, read_events
from docshift.reports.status import RunStatus
from docshift.runfolder.atomic import FileFormat, write_atomic
from docshift.runfolder.layout import REPORT_FORMAT, RUN_VALIDATION_FORMAT, RunFolder
from docshift.runfolder.record import (
    CLOSED_STATES,
    CONFLICTS,
    COUNT_COLUMNS,
    FINISHED,
    ROLLED_BACK,
    MigrationRecord,
    RunRecord,
    display_counts,
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
    """Chart series accumulated while streaming the event log (memory bounded by downsampling).

    Every series is keyed by the pass that produced it, and the cumulative counts are the sum of
    each pass's latest counters (``display_counts``, the migrations table's words): the chart ends
    on the numbers the table shows. A resume (or a long silence: a stop the log did not record)
    breaks every line and is marked; the first point of a pass is drawn from the pass's start, so
    a pass that reported once (a short one, or the rest of one after a resume) is a line over the
    time it ran, not a lone dot."""

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
        self._current: str | None = None
        """The pass under way: a rollback's undo reports its progress as ``rollback``, not by pass."""
        self._fresh_latency = True

    def _break(self, t: float) -> None:
        for series in (*self.throughput.values(), *self.latency.values(), *self.failures.values()):
            if series and series[-1][1] is not None:
                series.append((t, None))
        self._last_done.clear()
        self._fresh_latency = True

    def _rate(self, label: str, t: float, event: Progressed | PassEnded) -> float:
        """Documents per second since the previous report of the pass (or its start): drops to zero
        at once when the run pauses (the engine's own "now" rate is a 5-second average, which lags)."""
        done = _handled(event)
        previous = self._last_done.get(label)
        self._last_done[label] = (t, done)
        if previous is None or t <= previous[0]:
            stats = event.stats
            if stats is None:
                return 0.0
            fallback = (
                stats.docs_per_second_now if isinstance(event, Progressed) else stats.docs_per_second_avg
            )
            return float(fallback or 0.0)
        return max(0.0, (done - previous[1]) / (t - previous[0]))

    def _label(self, event: Progressed | PassEnded) -> str:
        if isinstance(event, Progressed) and event.migration not in self._per_migration and self._current:
            return self._current
        return event.migration

    def add(self, logged: Logged) -> None:
        at, event = logged.at, logged.event
        if self.t0 is None:
            self.t0 = at
        t = at - self.t0
        if isinstance(event, PassStopped | Warned | ControlApplied | RunResumed):
            self.markers.append({"t": round(t, 3), "kind": kind_of(event), "text": _marker_text(event)[:300]})
        if isinstance(event, RunResumed):
            self._break(t)
            self.last_at = at
            return
        if isinstance(event, PassStarted):
            self._current = event.migration
            self._per_migration[event.migration] = _counts(event.counters)
            self._last_done[event.migration] = (t, sum(self._per_migration[event.migration].values()))
            return
        if not isinstance(event, Progressed | PassEnded):
            return
        if self.last_at is not None and at - self.last_at > _GAP_SECONDS:
            self._break(t)
        self.last_at = at
        label = self._label(event)
        start = self._last_done.get(label)
        rate = self._rate(label, t, event)
        series = self.throughput.setdefault(label, [])
        if start is not None and start[0] < t and (not series or series[-1][1] is None):
            series.append((start[0], rate))  # the pass's first report: its rate since it started
        series.append((t, rate))
        self._add_latency(t, event, start[0] if start is not None else None)
        self._per_migration[label] = _counts(event.counters)
        for name in ("failed", "conflicts"):
            self.failures[name].append((t, float(sum(m[name] for m in self._per_migration.values()))))
        if isinstance(event.retries, int):
            self.failures["retries"].append((t, float(event.retries)))
        if sum(len(s) for s in self.throughput.values()) > 20000:
            self._compact()

    def _add_latency(self, t: float, event: Progressed | PassEnded, started: float | None) -> None:
        if event.stats is None:
            return
        values = (event.stats.commit_p50, event.stats.commit_p95, event.stats.commit_p99)
        for name, value in zip(("p50", "p95", "p99"), values, strict=True):
            if isinstance(value, float | int):
                if self._fresh_latency and started is not None and started < t:
                    self.latency[name].append((started, value * 1000.0))
                self.latency[name].append((t, value * 1000.0))
        self._fresh_latency = False

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


def _counts(counters: Mapping[str, int]) -> dict[str, int]:
    """A pass's counters in the table's words (a restore's ``restored`` is ``updated``...)."""
    return {name: value for name, value in display_counts(counters).items() if name in COUNT_COLUMNS}


def _handled(event: Progressed | PassEnded) -> int:
    """Documents the pass has handled so far (a rollback's undo reports only its counters)."""
    if event.stats is not None:
        return int(event.stats.processed)
    return sum(_counts(event.counters).values())


def _marker_text(event: PassStopped | Warned | ControlApplied | RunResumed) -> str:
    if isinstance(event, RunResumed):
        changed = ", ".join(
            f"{name} {change.get('was')} → {change.get('now')}"
            for name, change in event.overrides.items()
            if isinstance(change, Mapping)
        )
        return f"resumed ({changed})" if changed else "resumed"
    if isinstance(event, PassStopped):
        return str(event.reason)
    if isinstance(event, Warned):
        return event.labelled
    return str(event.action)


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
        settings = dict(checkpoint.settings) or settings  # the last one's: what the latest process used
        label = migration.label
        live = status.migrations.get(label) or status.migrations.get(f"rollback {label}") or {}
        rows.append(
            {
                **migration.to_json(),
                **_retried(record, migration),
                "shards": len(checkpoint.shards),
                "backup": _backed_up(checkpoint.settings),
                "cursors": [s.cursor for s in checkpoint.shards],
                "docs_per_second_avg": live.get("docs_per_second_avg"),
                "commit_p50": live.get("commit_p50"),
                "commit_p95": live.get("commit_p95"),
                "commit_p99": live.get("commit_p99"),
                "commits": live.get("commits"),
                "write_rate": live.get("write_rate"),
                "throttled": live.get("throttled"),
                "files": sorted(p.name for p in migration.folder.iterdir() if p.is_file()),
            }
        )
    return rows, settings


def _backed_up(settings: Mapping[str, Any]) -> bool:
    """Whether the run saved before-images (no ``--no-backup``): a resume settles what a stop
    landed past the cursor from them."""
    engine = settings.get("engine")
    return not isinstance(engine, Mapping) or engine.get("backup") is not False


def _retried(record: RunRecord, migration: MigrationRecord) -> dict[str, Any]:
    """A retry's migration: what became of the documents its dead letters listed (run.json holds
    the lists; counted as ``docshift retry`` and the history count them)."""
    if record.kind != "retry" or migration.checkpoint is None:
        return {}
    planned = (record.info.get("retry") or {}).get("migrations") or {}
    entry = next(
        (e for e in planned.values() if isinstance(e, dict) and e.get("label") == migration.label), None
    )
    if entry is None:
        return {}
    listed, gone, unmatched = (len(entry.get(name) or ()) for name in ("listed", "gone", "unmatched"))
    read = migration.counters.get("read", 0)
    left_out = max(listed - gone - unmatched - read, 0) if migration.checkpoint.finished else 0
    return {"retry": {"listed": listed, "gone": gone, "unmatched": unmatched, "left_out": left_out}}


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
            commands["resume"] = f"docshift {record.kind} --execute --resume {run_id}"
        if state == FINISHED and any(m.counters.get("failed", 0) for m in record.migrations):
            commands["retry the documents that failed (after fixing them)"] = f"docshift retry {run_id}"
        if state == ROLLED_BACK:
            commands["start a new run (after fixing the migration)"] = "docshift run --execute"
        else:
            commands["rollback (preview)"] = f"docshift rollback {run_id}"
            commands["rollback"] = f"docshift rollback {run_id} --execute"
    elif record.kind == "retry":
        commands["apply"] = f"docshift retry {(info.get('retry') or {}).get('of_run')} --execute"
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
    if record.kind == "rollback" and not settings:
        settings = {"rollback": {k: info.get(k) for k in ("of_run", "to", "steps", "strategy", "force")}}
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
        "resumes": [r for r in info.get("resumes") or [] if isinstance(r, dict)],
        "commands": _commands(record, state),
        "timeline": timeline.to_json(),
        "folder": str(folder),
    }

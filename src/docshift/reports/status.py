"""A run's live status and health, kept from its events: what ``GET /status``, ``GET /health``,
the live view and ``docshift monitor`` show.

Health uses the validators' scoring (:class:`docshift.validators.Health`): while the run goes on,
issues come from its events (each warning, failed documents, documents a rule refused, a stop);
when validation reports the run's final health (:class:`~docshift.engine.hooks.HealthReported`),
that one is shown.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    EventSink,
    FanOutHooks,
    HealthReported,
    MigrationEnded,
    MigrationStarted,
    PassEnded,
    PassFinished,
    PassStarted,
    PassStopped,
    Progressed,
    RunEnded,
    RunEvent,
    RunHooks,
    RunStarted,
    StagesRolledBack,
    TotalKnown,
    Warned,
)
from docshift.errors import EmergencyStop, RunStopped
from docshift.reports.events import Logged, event_fields
from docshift.validators.score import Health, HealthStatus, Issue, Severity

__all__ = ["ProgressExtras", "RunStatus", "stop_severity"]

_DONE_COUNTERS = (
    "updated",
    "created",
    "deleted",
    "unchanged",
    "failed",
    "restored",
    "recreated",
    "conflicts_left",
)
_MAX_WARNINGS = 50


def stop_severity(reason: str | None, error: type[BaseException] | None = None) -> Severity:
    """How bad a stop is, as the validators weigh it: asked for (warning), an emergency stop
    (critical), anything else (error). Without the error's class, the reason's words decide."""
    if error is not None:
        if issubclass(error, EmergencyStop):
            return Severity.CRITICAL
        return Severity.WARNING if error is RunStopped else Severity.ERROR
    text = (reason or "").lower()
    if any(word in text for word in ("circuit breaker", "integrity gate", "lease was lost", "p95")):
        return Severity.CRITICAL
    if text.startswith(("interrupted", "stopped by")):
        return Severity.WARNING
    return Severity.ERROR


def _done(fields: dict[str, Any]) -> int:
    processed = fields.get("processed")
    if not isinstance(processed, int):
        processed = sum(int(fields.get(name) or 0) for name in _DONE_COUNTERS)
    return processed + int(fields.get("skipped") or 0)


class RunStatus(EventSink):
    """Hooks that remember where each migration of a run stands (thread-safe)."""

    def __init__(
        self,
        run_id: str,
        *,
        kind: str = "run",
        controls: Controls | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_id = run_id
        self.kind = kind
        self.controls = controls
        self._clock = clock
        self._lock = threading.Lock()
        self.started_at = clock()
        self.updated_at = self.started_at
        self.migrations: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        self.stop_reason: str | None = None
        self.final_health: HealthReported | None = None
        self.ended: dict[str, Any] | None = None
        self.latest: dict[str, Any] = {}
        """Run-wide fields of the newest progress event: write limit, memory, retries, paused."""
        self.execute: bool | None = None
        """Whether the run writes (None until its first pass starts): a dry run's counts are what
        it would write, and the views say so."""

    # ------------------------------------------------------------------ the hooks
    def record(self, event: RunEvent) -> None:
        with self._lock:
            self._apply(event, None)

    def replay(self, logged: Logged) -> None:
        """Apply an event read back from an event log."""
        with self._lock:
            if not self.migrations and not self.warnings:
                self.started_at = min(self.started_at, logged.at)
            self._apply(logged.event, logged.at)

    def _entry(self, label: str) -> dict[str, Any]:
        return self.migrations.setdefault(
            label, {"migration": label, "state": "running", "total": None, "started_at": self._clock()}
        )

    def _apply(self, event: RunEvent, at: float | None) -> None:
        if isinstance(event, MigrationStarted | MigrationEnded | RunStarted):
            return  # lifecycle steps the status has nothing to show of (their passes say it)
        self.updated_at = at if at is not None else self._clock()
        match event:
            case PassStarted():
                entry = self._entry(event.migration)
                entry.update(state="running", started_at=self.updated_at)
                self.execute = event.execute
                entry.update({k: v for k, v in event.counters.items() if isinstance(v, int)})
            case Progressed() | PassEnded():
                fields = event_fields(event)
                entry = self._entry(event.migration)
                entry.update({k: v for k, v in fields.items() if k != "migration"})
                if isinstance(event, PassEnded):
                    entry["state"] = "finished" if isinstance(event, PassFinished) else "stopped"
                if isinstance(event, PassStopped):
                    self.stop_reason = event.reason or self.stop_reason
                for name in (
                    "write_limit",
                    "ramp_limit",
                    "adaptive_limit",
                    "memory_mb",
                    "paused",
                    "batch_size",
                    "in_flight",
                    "retries",
                ):
                    if name in fields:
                        self.latest[name] = fields[name]
            case StagesRolledBack():  # a canary's stages were undone
                entry = self._entry(event.migration)
                entry.update({k: v for k, v in event_fields(event).items() if k != "migration"})
                entry["state"] = "rolled_back" if event.complete else "failed"
            case TotalKnown():
                self._entry(event.migration)["total"] = event.total
            case Warned():
                if event.labelled not in self.warnings:
                    self.warnings.append(event.labelled)
                    del self.warnings[:-_MAX_WARNINGS]
            case HealthReported():
                self.final_health = event
            case RunEnded():
                self.ended = event.outcome()
                self.stop_reason = event.error or self.stop_reason

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> str:
        if self.ended is not None:
            return str(self.ended.get("state", "stopped"))
        controls = self.controls
        if controls is not None and controls.stop.is_set():
            return "stopping"
        paused = controls.paused if controls is not None else bool(self.latest.get("paused"))
        return "paused" if paused else "running"

    def health(self) -> Health:
        with self._lock:
            return self._health()

    def _health(self) -> Health:
        if self.final_health is not None:
            final = self.final_health
            kept = tuple(Issue(Severity(i.severity), i.message, i.migration) for i in final.issues)
            return Health(final.score, HealthStatus(final.status), kept)
        issues = [Issue(Severity.WARNING, message) for message in self.warnings]
        for label, entry in self.migrations.items():
            rejected = int(entry.get("rejected") or 0)
            failed = int(entry.get("failed") or 0) - rejected
            if failed > 0:
                issues.append(Issue(Severity.ERROR, f"{label}: {failed:,} documents failed", label))
            if rejected > 0:
                issues.append(Issue(Severity.WARNING, f"{label}: {rejected:,} documents broke a rule", label))
        controls = self.controls
        reason = self.stop_reason or (controls.stop_reason if controls is not None else None)
        if reason:
            error = controls.stop_class if controls is not None and controls.stop_reason else None
            ended = str((self.ended or {}).get("state", "stopped"))
            verb = (
                "stopped"
                if ended in ("stopped", "rolled_back", "partly_rolled_back", "interrupted")
                else "ended"
            )
            issues.append(Issue(stop_severity(reason, error), f"the run {verb}: {reason}"))
        return Health.of(issues)

    def snapshot(self) -> dict[str, Any]:
        """The run's status as plain JSON (``GET /status``)."""
        with self._lock:
            health = self._health()
            migrations = [self._migration_view(entry) for entry in self.migrations.values()]
            latest = dict(self.latest)
            if self.controls is not None:
                limiter = self.controls.limiter
                latest["write_limit"] = limiter.limit
                latest["ramp_limit"] = limiter.ramp_limit
                latest["adaptive_limit"] = limiter.adaptive_limit
                latest["paused"] = self.controls.paused
            current = next((m["migration"] for m in reversed(migrations) if m["state"] == "running"), None)
            return {
                "run_id": self.run_id,
                "kind": self.kind,
                "execute": self.execute,
                "state": self.state,
                "paused": bool(latest.get("paused")),
                "stop_reason": self.stop_reason,
                "write_limit": latest.get("write_limit"),
                "ramp_limit": latest.get("ramp_limit"),
                "adaptive_limit": latest.get("adaptive_limit"),
                "memory_mb": latest.get("memory_mb"),
                "retries": latest.get("retries"),
                "batch_size": latest.get("batch_size"),
                "in_flight": latest.get("in_flight"),
                "started_at": self.started_at,
                "updated_at": self.updated_at,
                "current": current,
                "migrations": migrations,
                "health": _health_json(health),
                "warnings": list(self.warnings[-10:]),
                "ended": self.ended,
            }

    def _migration_view(self, entry: dict[str, Any]) -> dict[str, Any]:
        view = dict(entry)
        done = _done(entry)
        total = entry.get("total")
        view["done"] = done
        view["fraction"] = min(1.0, done / total) if isinstance(total, int) and total > 0 else None
        if entry["state"] == "finished":
            view["fraction"], view["eta_seconds"] = 1.0, 0.0
            return view
        rate = float(entry.get("docs_per_second_now") or 0.0) or float(
            entry.get("docs_per_second_avg") or 0.0
        )
        paused = self.controls.paused if self.controls is not None else bool(self.latest.get("paused"))
        eta = None
        if isinstance(total, int) and rate > 0 and not paused and entry["state"] == "running":
            eta = max(0, total - done) / rate
        view["eta_seconds"] = eta
        return view


def _health_json(health: Health) -> dict[str, Any]:
    return {
        "score": health.score,
        "status": health.status.value,
        "reasons": [issue.message for issue in health.issues],
        "issues": [issue.to_json() for issue in health.issues],
    }


class ProgressExtras(FanOutHooks):
    """Adds what the engine does not know to its events before ``inner`` gets them: the store's
    retry count on each progress and pass end, and each migration's expected total (a
    :class:`~docshift.engine.hooks.TotalKnown` once its count query answers).

    The count runs in a background thread so a slow count never delays the run; until it answers
    (or if it fails) the total is unknown and so is the ETA.
    """

    def __init__(
        self,
        inner: RunHooks,
        *,
        retries: Callable[[], int] | None = None,
        totals: Callable[[str], int | None] | None = None,
    ) -> None:
        super().__init__(inner)
        self.inner = inner
        self.retries = retries
        self.totals = totals
        self._counted: set[str] = set()

    def progressed(self, event: Progressed) -> None:
        if self.retries is not None and event.retries is None:
            event = dataclasses.replace(event, retries=self.retries())
        super().progressed(event)

    def pass_ended(self, event: PassEnded) -> None:
        if self.retries is not None and event.retries is None:
            event = dataclasses.replace(event, retries=self.retries())
        super().pass_ended(event)

    def pass_started(self, event: PassStarted) -> None:
        super().pass_started(event)
        label = event.migration
        if self.totals is not None and label not in self._counted:
            self._counted.add(label)
            threading.Thread(target=self._count, args=(label,), daemon=True, name="docshift-count").start()

    def _count(self, label: str) -> None:
        assert self.totals is not None
        try:
            total = self.totals(label)
        except Exception:
            return  # unknown total: the view shows no ETA
        if total is not None:
            self.inner.total_known(TotalKnown(label, total))

"""Validation during a run: rules on every document before it is written, the integrity gate,
before/after scans, and the run's health.

A :class:`RunValidation` is hooks of the run (:mod:`docshift.engine.hooks`): a migration's start
gets its document check from it (after the before-scan), its end gives it the migration's counts
and takes the after-scan there, and the run's end finishes it (issues, health, the reports saved in
the run folder). What it finds goes to ``hooks`` (the run's other observers). The whole
``docshift run`` (:func:`docshift.commands.run.run`) wires it itself; below it, with
:func:`docshift.commands.run.run_migrations`::

    validation = RunValidation(config, store, hooks=observers, controls=controls, execute=True)
    report = run_migrations(config, options, store=store, hooks=FanOutHooks(validation, observers),
                            controls=controls)
    outcome = validation.finish(report.folder)  # what the run's end found

A document that breaks a rule is not written; it goes to the dead-letter file with the rule. When
the integrity score of the documents checked so far (from ``min_sample`` on) drops below
``integrity_critical``, the gate stops the run with :class:`~docshift.errors.EmergencyStop`
(checkpoint kept). Dry runs are never stopped by the gate: they write nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docshift.config import Config
from docshift.engine.batch import DeadLetter, DocumentCheck
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    HealthIssue,
    HealthReported,
    MigrationEnded,
    MigrationStarted,
    PassStarted,
    RunEnded,
    RunHooks,
    ScanStarted,
    Warned,
)
from docshift.errors import DataError, DocshiftError, EmergencyStop, RunFileError, RunStopped
from docshift.migration import Migration
from docshift.runfolder.deadletter import DeadLetterFile
from docshift.runfolder.layout import RUN_VALIDATION_FORMAT, MigrationFolder, RunFolder
from docshift.runfolder.record import read_migration
from docshift.store.base import Document, Store
from docshift.validators.rules import RuleContext, RuleSession
from docshift.validators.scan import (
    Baseline,
    RuleResult,
    ValidationReport,
    load_report,
    rule_names,
    save_report,
    scan,
)
from docshift.validators.score import Health, Issue, Level, Severity

__all__ = ["GATE_MIN_SAMPLE", "RunOutcome", "RunValidation"]

GATE_MIN_SAMPLE = 50
"""Documents checked before the gate may judge: a few early failures must not stop a run."""


@dataclass
class _MigrationState:
    migration: Migration
    inline: ValidationReport
    before: ValidationReport | None = None
    after: ValidationReport | None = None
    baseline: Baseline = field(default_factory=Baseline)
    gate: str | None = None
    gate_score: float = 100.0
    """The integrity the gate stopped the run at."""
    seeded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _InlineCheck:
    """One migration's inline rules (a :class:`~docshift.engine.batch.SettlingCheck`): checks each
    document before it is written; counts and judges only what is settled."""

    def __init__(
        self, validation: RunValidation, state: _MigrationState, sessions: list[tuple[str, RuleSession]]
    ) -> None:
        self.validation = validation
        self.state = state
        self.sessions = sessions

    def __call__(self, source: Document, new_data: dict[str, Any]) -> tuple[str, str] | None:
        doc = Document(self.state.migration.target.destination(source.path), new_data)
        for name, session in self.sessions:
            message = session.check_batch([doc])[0]
            if message is not None:
                return name, message
        return None

    def settled(self, counts: Mapping[str, int], letters: Sequence[DeadLetter]) -> None:
        self.validation._settled(self.state, counts, letters)


def _report_fields(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved report's fields, without its file's format header."""
    return {k: v for k, v in saved.items() if k not in ("format", "version", "codec")}


def _gate_message(state: _MigrationState, critical: float) -> str:
    report, label = state.inline, state.migration.label
    refused = f"{report.failed:,} of the {report.checked:,} documents {label} checked broke its rules"
    if report.score < critical:
        return (
            f"integrity gate: {report.score:.1f}% of the {report.checked:,} documents {label} checked "
            f"pass its rules ({report.failed:,} broke one and were not written), below "
            f"integrity_critical {critical:g}%"
        )
    return (
        f"integrity gate: {refused} and were not written; the gate stopped the run at integrity "
        f"{state.gate_score:.1f}%, below integrity_critical {critical:g}%"
    )


@dataclass
class RunOutcome:
    """What validation made of a run: its health, and the reports behind it."""

    health: Health
    reports: list[ValidationReport]
    path: Path | None = None
    migrations: list[str] = field(default_factory=list)
    """Labels of the migrations this run worked on (none: nothing ran, no health to show)."""

    @property
    def after_failed(self) -> list[ValidationReport]:
        """After-scans below the critical threshold (or with a count expectation missed)."""
        return [r for r in self.reports if r.phase == "after" and not r.passed]


class RunValidation(RunHooks):
    """Validation of one run, as its hooks (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        hooks: RunHooks | None = None,
        controls: Controls | None = None,
        execute: bool = True,
        scans: bool = False,
        previous: Path | None = None,
        min_sample: int = GATE_MIN_SAMPLE,
    ) -> None:
        self.store = store
        self.hooks = hooks or RunHooks()
        """Where what it finds goes: scans, warnings, the run's health."""
        self.controls = controls
        self.execute = execute
        self.scans = scans
        self.previous = previous
        """The folder of the run being resumed: its before-scans stand; none is taken again."""
        self.min_sample = min_sample
        self.integrity_warning = config.limits.integrity_warning
        self.integrity_critical = config.limits.integrity_critical
        self.states: dict[str, _MigrationState] = {}
        self.engine_warnings: list[str] = []
        self.counters: dict[str, dict[str, Any]] = {}
        self.gate: str | None = None
        """Why the integrity gate stopped the run, when it did."""
        self.outcome: RunOutcome | None = None
        """What the run's end found (None until then)."""

    # ------------------------------------------------------------------ the hooks
    def warning(self, event: Warned) -> None:
        if event.severity == "warning":  # not the findings this validation itself says
            self.engine_warnings.append(event.message)

    def pass_started(self, event: PassStarted) -> None:
        self._seed(event.migration, event.counters)

    def migration_started(self, event: MigrationStarted) -> DocumentCheck | None:
        """Before the migration runs: its before-scan, and the check of its inline rules."""
        return self._start(event.migration)

    def migration_ended(self, event: MigrationEnded) -> None:
        """Its counts, and (with scans, when it finished) its after-scan: the data as it left it,
        before anything else runs or fails."""
        label = event.migration.label
        self.counters[label] = dict(event.result.counters)
        state = self.states.get(label)
        if state is None or not (self.scans and self.execute and event.finished):
            return
        if state.after is None and state.migration.rules:
            baseline = dataclasses.replace(
                state.baseline,
                deleted=event.result.counters.get("deleted"),
                created=event.result.counters.get("created"),
            )
            state.after = self._scan(state.migration, "after", baseline)

    def run_ended(self, event: RunEnded) -> None:
        folder = event.folder if event.folder is not None and event.folder.is_dir() else None
        self.finish(folder, event.raised)

    def _seed(self, label: str, counters: Mapping[str, Any]) -> None:
        """A resumed migration starts from its checkpoint's counts: the gate judges them too."""
        state = self.states.get(label)
        if state is None or state.seeded:
            return
        with state.lock:
            state.seeded = True
            state.inline.checked += int(counters.get("checked") or 0)
            state.inline.failed += int(counters.get("rejected") or 0)

    def _start(self, migration: Migration) -> DocumentCheck | None:
        target = migration.target.describe()
        names = rule_names(migration.rules)
        inline = ValidationReport(
            migration.id,
            migration.label,
            "inline",
            target,
            None,
            0,
            0,
            [RuleResult(name) for name in names],
            self.integrity_warning,
            self.integrity_critical,
        )
        state = _MigrationState(migration, inline)
        self.states[migration.label] = state
        if self.scans and migration.rules:
            kept = (
                RunFolder(self.previous).migration(migration.label).validation("before")
                if self.previous
                else None
            )
            if kept is not None and kept.is_file():
                saved = load_report(kept)
                state.baseline = Baseline(saved.get("total"), target_before=saved.get("target_total"))
            else:
                state.before = self._scan(migration, "before")
                state.baseline = Baseline(state.before.total, target_before=state.before.target_total)
        context = RuleContext(store=self.store, phase="inline")
        checked = [
            (name, rule.session(context))
            for name, rule in zip(names, migration.rules, strict=True)
            if rule.inline
        ]
        if not checked:
            return None
        return _InlineCheck(self, state, checked)

    def _settled(
        self, state: _MigrationState, counts: Mapping[str, int], letters: Sequence[DeadLetter]
    ) -> None:
        """A batch of ``state``'s migration is settled behind the cursor: count what it checked and
        refused, and judge the gate on that (what the checkpoint and dead letters record)."""
        report = state.inline
        tallies = {result.name: result for result in report.rules}
        destination = state.migration.target.destination
        with state.lock:
            report.checked += int(counts.get("checked", 0))
            for letter in letters:
                if letter.stage == "validate" and letter.rule in tallies:
                    report.failed += 1
                    tallies[letter.rule].add(destination(letter.source.path), letter.error)
            if state.gate is not None:
                self._refine_gate(state)
                return
            trip = (
                self.execute and report.checked >= self.min_sample and report.score < self.integrity_critical
            )
            if trip:
                state.gate_score = report.score
                state.gate = _gate_message(state, self.integrity_critical)
        if trip and self.controls is not None:
            self.gate = state.gate
            self.controls.request_stop(str(state.gate), EmergencyStop)

    def _refine_gate(self, state: _MigrationState) -> None:
        """Batches settled after the gate tripped (their commits were in flight): the reason the run
        stops with says how many were checked and refused in all, as the record does."""
        before, state.gate = state.gate, _gate_message(state, self.integrity_critical)
        if self.gate == before:
            self.gate = state.gate
        if self.controls is not None and before is not None:
            self.controls.refine_stop_reason(before, state.gate)

    # ------------------------------------------------------------------ scans
    def _scan(self, migration: Migration, phase: str, baseline: Baseline | None = None) -> ValidationReport:
        self.hooks.scan_started(ScanStarted(migration.label, phase))
        return scan(
            self.store,
            migration,
            phase=phase,
            baseline=baseline,
            warning=self.integrity_warning,
            critical=self.integrity_critical,
        )

    # ------------------------------------------------------------------ the end
    def finish(self, folder: Path | None, error: BaseException | None = None) -> RunOutcome:
        """After the run (finished or stopped): issues, health; reports saved in ``folder`` (the
        run folder) when given; every issue also goes out as a warning. The run's end calls it;
        after that it returns what that found (a run that never started: call it yourself)."""
        if self.outcome is not None:
            return self.outcome
        if folder is not None:
            for label, state in self.states.items():
                if RunFolder(folder).migration(label).has_checkpoint:
                    self._from_record(state, folder / label)
        issues = self._issues(folder, error)
        reports: list[ValidationReport] = []
        for state in self.states.values():
            for report in (state.before, state.inline, state.after):
                if report is None or (report.phase == "inline" and not report.rules):
                    continue
                reports.append(report)
        health = Health.of(issues)
        path = None
        try:  # a run folder that cannot be written must not hide how the run ended
            for report in reports:
                if folder is not None and folder.is_dir():
                    save_report(report, RunFolder(folder).migration(report.label).validation(report.phase))
            if folder is not None and folder.is_dir() and self.states:
                path = RunFolder(folder).validation
                RUN_VALIDATION_FORMAT.write(
                    path,
                    {
                        "health": health.to_json(),
                        "gate": self.gate,
                        "reports": sorted(
                            [
                                *({**r.to_json(), "file": str(r.path) if r.path else None} for r in reports),
                                *self._earlier_reports(folder),
                            ],
                            key=lambda r: str(r.get("label")),
                        ),
                    },
                )
        except RunFileError as unwritten:
            path = None
            issues.append(Issue(Severity.WARNING, f"validation report not saved: {unwritten.message}"))
        for issue in issues:
            if issue.message not in self.engine_warnings and issue.message != self.gate:  # already told
                self.hooks.warning(Warned(issue.message, severity=issue.severity.value))
        if self.states:
            self.hooks.health_reported(
                HealthReported(
                    health.score,
                    health.status.value,
                    tuple(HealthIssue(i.severity.value, i.message, i.migration) for i in health.issues),
                    str(path) if path else None,
                )
            )
        self.outcome = RunOutcome(health, reports, path, list(self.states))
        return self.outcome

    def _earlier_reports(self, folder: Path) -> list[dict[str, Any]]:
        """The saved reports of the run's migrations that an earlier process of it ran (a resume
        does not run a finished migration again): validation.json covers the whole run."""
        kept: list[dict[str, Any]] = []
        for migration in RunFolder(folder).migrations():
            if migration.label in self.states:
                continue
            for phase in ("before", "inline", "after"):
                path = migration.validation(phase)
                if path.is_file():
                    with contextlib.suppress(DataError):  # a damaged file: the rest still counts
                        saved = load_report(path)
                        kept.append({**_report_fields(saved), "file": str(path)})
        return kept

    def _from_record(self, state: _MigrationState, folder: Path) -> None:
        """The inline report and counts as the migration's record has them (every session and
        stage of the run): its checkpoint's counters and its dead letters, so the validation
        files, the report, the history and the dead letters agree."""
        record = read_migration(folder)
        if record.checkpoint is None:
            return
        label = state.migration.label
        self.counters[label] = {**self.counters.get(label, {}), **record.counters}
        report = state.inline
        rules = [RuleResult(rule.name) for rule in report.rules]
        tallies = {rule.name: rule for rule in rules}
        destination = state.migration.target.destination
        for letter in DeadLetterFile(MigrationFolder(folder).dead_letters):
            rule = letter.get("rule")
            if letter.get("stage") == "validate" and rule in tallies:
                tallies[rule].add(destination(str(letter["path"])), str(letter.get("error")))
        with state.lock:
            report.checked = record.counters.get("checked", 0)
            report.failed = record.counters.get("rejected", 0)
            report.rules = rules

    def _issues(self, folder: Path | None, error: BaseException | None) -> list[Issue]:
        issues = [Issue(Severity.WARNING, message) for message in self.engine_warnings]
        for label, state in self.states.items():
            letters = (
                f"see {RunFolder(folder).migration(label).dead_letters}" if folder else "see the dead letters"
            )
            issues.extend(_inline_issues(state, letters, self.execute))
            counters = self.counters.get(label, {})
            other = int(counters.get("failed", 0)) - int(counters.get("rejected", 0))
            if other > 0:
                issues.append(
                    Issue(
                        Severity.ERROR,
                        f"{label}: {other:,} documents failed (transform or "
                        f"write) and were not migrated; {letters}",
                        label,
                    )
                )
            if state.after is not None and state.after.failed + len(_collection_failures(state.after)):
                severity = Severity.CRITICAL if state.after.level == Level.CRITICAL else Severity.WARNING
                issues.append(Issue(severity, f"after-scan {state.after.summary()}", label))
        if isinstance(error, DocshiftError) and not (isinstance(error, EmergencyStop) and self.gate):
            if isinstance(error, EmergencyStop):
                severity = Severity.CRITICAL
            elif type(error) is RunStopped:
                severity = Severity.WARNING  # stopped on request: resumable, nothing wrong with the data
            else:
                severity = Severity.ERROR
            issues.append(Issue(severity, f"the run stopped: {error.message}"))
        return issues


def _collection_failures(report: ValidationReport) -> list[str]:
    return [failure for rule in report.rules for failure in rule.collection_failures]


def _inline_issues(state: _MigrationState, letters: str, execute: bool) -> list[Issue]:
    report, label = state.inline, state.migration.label
    if state.gate is not None:
        return [Issue(Severity.CRITICAL, state.gate, label)]
    if not report.failed:
        return []
    severity = Severity.CRITICAL if report.level == Level.CRITICAL else Severity.WARNING
    worst = max(report.rules, key=lambda rule: rule.failures)
    written = "were not written" if execute else "would not be written"
    return [
        Issue(
            severity,
            f"{label}: {report.failed:,} of {report.checked:,} documents checked broke a "
            f"rule and {written} (integrity {report.score:.1f}%; most: "
            f"{worst.name}, {worst.failures:,}); {letters}",
            label,
        )
    ]

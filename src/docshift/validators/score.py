"""Integrity and health scores: one number each, so a person or a CI job can tell at a glance.

* Integrity: the percent of checked documents that pass every rule. Below ``integrity_warning``
  (95 by default) it is a warning, below ``integrity_critical`` (90) critical.
* Health of a run: ``100 - 5 x warnings - 15 x errors - 30 x critical issues``, floored at 0.
  CRITICAL with any critical issue or below 50; DEGRADED with any error or below 90; else HEALTHY
  (a run may carry up to two warnings and stay healthy).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Health",
    "HealthStatus",
    "Issue",
    "Level",
    "Severity",
    "health_score",
    "integrity_level",
    "integrity_score",
]


def integrity_score(checked: int, failed: int) -> float:
    """Percent of ``checked`` documents passing every rule (100 when nothing was checked)."""
    if checked <= 0:
        return 100.0
    return 100.0 * (checked - min(failed, checked)) / checked


class Level(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


def integrity_level(score: float, warning: float, critical: float) -> Level:
    if score < critical:
        return Level.CRITICAL
    if score < warning:
        return Level.WARNING
    return Level.OK


class Severity(enum.StrEnum):
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


_WEIGHTS = {Severity.WARNING: 5, Severity.ERROR: 15, Severity.CRITICAL: 30}


@dataclass(frozen=True)
class Issue:
    """One thing wrong with a run, weighed by its severity."""

    severity: Severity
    message: str
    migration: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "message": self.message, "migration": self.migration}


def health_score(warnings: int, errors: int, critical: int) -> int:
    return max(0, 100 - 5 * warnings - 15 * errors - 30 * critical)


class HealthStatus(enum.StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    CRITICAL = "CRITICAL"


@dataclass(frozen=True)
class Health:
    score: int
    status: HealthStatus
    issues: tuple[Issue, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, issues: Iterable[Issue]) -> Health:
        found = tuple(issues)
        tally = {severity: sum(1 for i in found if i.severity == severity) for severity in Severity}
        score = health_score(tally[Severity.WARNING], tally[Severity.ERROR], tally[Severity.CRITICAL])
        if tally[Severity.CRITICAL] or score < 50:
            status = HealthStatus.CRITICAL
        elif tally[Severity.ERROR] or score < 90:
            status = HealthStatus.DEGRADED
        else:
            status = HealthStatus.HEALTHY
        return cls(score, status, found)

    def count(self, severity: Severity) -> int:
        return sum(1 for issue in self.issues if issue.severity == severity)

    def describe(self) -> str:
        parts = [
            f"{self.count(s)} {s.value}{'' if self.count(s) == 1 else 's'}" for s in Severity if self.count(s)
        ]
        return f"health {self.score}/100 {self.status.value}" + (f" ({', '.join(parts)})" if parts else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "status": self.status.value,
            "issues": [issue.to_json() for issue in self.issues],
        }

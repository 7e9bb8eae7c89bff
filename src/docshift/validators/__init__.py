"""Rules a migration's data must satisfy, checked on every document a run writes and by scans.

In a migration file::

    from docshift.validators import count, in_range, matches, of_type, references, required, unique

    rules = [
        required("first_name", "last_name"),
        of_type("age", "int"),
        in_range("age", 0, 150),
        matches("email", r"[^@\\s]+@[^@\\s]+"),
        references("company", "companies"),
        unique("email"),
        count("equal"),
    ]

See docs/validation.md for every rule, the scores and the gates.
"""

from __future__ import annotations

from docshift.validators.collection import COUNT_EXPECTATIONS, count, references, unique
from docshift.validators.inline import RunOutcome, RunValidation
from docshift.validators.rules import (
    TYPE_NAMES,
    Rule,
    RuleContext,
    RuleSession,
    in_range,
    length,
    matches,
    not_null,
    of_type,
    one_of,
    predicate,
    required,
)
from docshift.validators.scan import Baseline, RuleResult, ValidationReport, scan
from docshift.validators.score import Health, HealthStatus, Issue, Level, Severity

__all__ = [
    "COUNT_EXPECTATIONS",
    "TYPE_NAMES",
    "Baseline",
    "Health",
    "HealthStatus",
    "Issue",
    "Level",
    "Rule",
    "RuleContext",
    "RuleResult",
    "RuleSession",
    "RunOutcome",
    "RunValidation",
    "Severity",
    "ValidationReport",
    "count",
    "in_range",
    "length",
    "matches",
    "not_null",
    "of_type",
    "one_of",
    "predicate",
    "references",
    "required",
    "scan",
    "unique",
]

"""Integrity and health scores, and scans on the memory store (reports, samples, copies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docshift.migration import UNCHANGED, Migration, Target
from docshift.store import Write
from docshift.testing import MemoryStore
from docshift.validators import (
    Baseline,
    Health,
    HealthStatus,
    Issue,
    Level,
    Severity,
    count,
    in_range,
    required,
    scan,
    unique,
)
from docshift.validators.scan import load_report, save_report
from docshift.validators.score import health_score, integrity_level, integrity_score


def test_integrity_score_and_levels() -> None:
    assert integrity_score(0, 0) == 100.0
    assert integrity_score(200, 6) == 97.0
    assert integrity_score(10, 20) == 0.0
    assert integrity_level(97.0, 95, 90) is Level.OK
    assert integrity_level(95.0, 95, 90) is Level.OK  # "below 95%" is the warning
    assert integrity_level(94.9, 95, 90) is Level.WARNING
    assert integrity_level(89.9, 95, 90) is Level.CRITICAL


def test_health_score_weights_floor_and_status() -> None:
    assert health_score(0, 0, 0) == 100
    assert health_score(1, 1, 1) == 50
    assert health_score(2, 3, 4) == 0  # floored

    def health(*severities: Severity) -> Health:
        return Health.of(Issue(s, "x") for s in severities)

    assert health().status is HealthStatus.HEALTHY and health().score == 100
    assert health(Severity.WARNING, Severity.WARNING).status is HealthStatus.HEALTHY
    assert health(Severity.WARNING, Severity.WARNING, Severity.WARNING).status is HealthStatus.DEGRADED
    assert health(Severity.ERROR).status is HealthStatus.DEGRADED
    one_critical = health(Severity.CRITICAL)
    assert one_critical.score == 70 and one_critical.status is HealthStatus.CRITICAL
    many = health(*[Severity.ERROR] * 4)
    assert many.score == 40 and many.status is HealthStatus.CRITICAL
    mixed = health(Severity.WARNING, Severity.ERROR)
    assert mixed.describe() == "health 80/100 DEGRADED (1 warning, 1 error)"


def people(store: MemoryStore, count_: int, bad_every: int = 0, collection: str = "users") -> None:
    writes = []
    for i in range(count_):
        age = -1 if bad_every and i % bad_every == 0 else 20 + i % 50
        writes.append(Write.set(f"{collection}/u{i:04d}", {"name": f"n{i}", "age": age, "email": f"e{i}"}))
    for start in range(0, len(writes), 400):
        store.commit(writes[start : start + 400])


def migration(*rules: object, copy_to: str | None = None) -> Migration:
    return Migration(
        "0001", "check", "check", Target("users", copy_to=copy_to), lambda doc: UNCHANGED, rules=tuple(rules)
    )


def test_a_scan_counts_failing_documents_once_and_keeps_five_examples_per_rule(tmp_path: Path) -> None:
    store = MemoryStore()
    people(store, 200, bad_every=10)  # 20 bad ages
    store.commit([Write.set("users/u0001", {"name": "dup", "age": -5, "email": "e0"})])  # also a dup
    report = scan(store, migration(required("name"), in_range("age", 0, 150), unique("email")), batch_size=7)
    assert (report.total, report.checked, report.failed) == (200, 200, 21)
    assert report.score == pytest.approx(89.5) and report.level is Level.CRITICAL and not report.passed
    by_rule = {rule.name: rule for rule in report.rules}
    assert by_rule["required(name)"].failures == 0
    assert by_rule["in_range(age, 0..150)"].failures == 21
    assert [path for path, _ in by_rule["in_range(age, 0..150)"].examples] == [
        "users/u0000",
        "users/u0001",
        "users/u0010",
        "users/u0020",
        "users/u0030",
    ]
    assert by_rule["unique(email)"].failures == 1
    assert by_rule["unique(email)"].examples == [
        ("users/u0001", "email 'e0' is not unique (an earlier document has it)")
    ]
    path = save_report(report, tmp_path / "r" / "report.json")
    saved = load_report(path)
    assert saved["failed"] == 21 and saved["level"] == "critical" and saved["rules"][1]["failures"] == 21
    assert report.summary().startswith("0001_check after: integrity 89.5% (21 of 200 documents checked")


def test_rule_names_are_made_unique_in_reports() -> None:
    store = MemoryStore()
    people(store, 3)
    report = scan(store, migration(required("name"), required("name")))
    assert [rule.name for rule in report.rules] == ["required(name)", "required(name) #2"]


def test_a_sample_checks_that_many_documents_spread_over_the_collection() -> None:
    store = MemoryStore()
    people(store, 1000)
    report = scan(store, migration(required("name")), sample=50)
    assert report.checked == 50 and report.total == 1000 and report.sample == 50
    everything = scan(store, migration(required("name")), sample=5000)
    assert everything.checked == 1000 and everything.sample is None


def test_after_a_copy_the_scan_reads_the_copy_and_compares_counts() -> None:
    store = MemoryStore()
    people(store, 30)
    people(store, 28, collection="users_v2")
    rules = (required("name"), count("equal"), count("plus_created"))
    before = scan(store, migration(*rules, copy_to="users_v2"), phase="before")
    assert before.total == 30 and before.level is Level.OK
    assert before.rules[1].note == "counted only: compared by the after-scan"
    after = scan(
        store,
        migration(*rules, copy_to="users_v2"),
        phase="after",
        baseline=Baseline(before_total=30, created=None),
    )
    assert after.total == 28 and after.failed == 0 and after.score == 100.0
    assert after.rules[1].collection_failures == ["expected 30 documents (30 before), found 28"]
    assert after.rules[2].note is not None and after.rules[2].collection_failures == []
    assert after.level is Level.CRITICAL and not after.passed  # a missed count fails the scan
    unknown = scan(store, migration(*rules, copy_to="users_v2"), phase="after")
    assert unknown.passed and unknown.rules[1].note is not None

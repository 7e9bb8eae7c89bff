"""Every rule type on the emulator, with a passing and a failing document, through a real scan; and
``docshift validate`` (Python API and CLI): reports, counts against a before-scan, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.validate import validate
from docshift.config import Config
from docshift.errors import UsageError
from docshift.migration import UNCHANGED, Migration, Target
from docshift.store import Store, Write
from docshift.validators import (
    Rule,
    in_range,
    length,
    matches,
    not_null,
    of_type,
    one_of,
    predicate,
    references,
    required,
    scan,
    unique,
)
from docshift.validators.scan import load_report
from docshift.values import GeoPoint, Reference, Timestamp

DOCSHIFT = str(Path(sys.executable).parent / "docshift")
STAMP = Timestamp(1_700_000_000, 123_000)

# rule, data that passes, data that fails, the failure message
CASES: list[tuple[Rule, dict[str, Any], dict[str, Any], str]] = [
    (
        required("name", "address.city"),
        {"name": None, "address": {"city": "Oslo"}},
        {"name": "x"},
        "address.city is missing",
    ),
    (not_null("name"), {"name": ""}, {"name": None}, "name is null"),
    (of_type("v", "string"), {"v": "s"}, {"v": b"s"}, "v is bytes, expected string"),
    (of_type("v", "int"), {"v": 7}, {"v": 7.0}, "v is float, expected int"),
    (of_type("v", "float"), {"v": 7.5}, {"v": 7}, "v is int, expected float"),
    (of_type("v", "bool"), {"v": True}, {"v": 1}, "v is int, expected bool"),
    (of_type("v", "timestamp"), {"v": STAMP}, {"v": "2024-01-01"}, "v is string, expected timestamp"),
    (
        of_type("v", "timestamp"),
        {"v": datetime(2024, 1, 1, tzinfo=UTC)},
        {"v": 1},
        "v is int, expected timestamp",
    ),
    (of_type("v", "map"), {"v": {"a": 1}}, {"v": [1]}, "v is array, expected map"),
    (of_type("v", "array"), {"v": [1, "a"]}, {"v": {}}, "v is map, expected array"),
    (
        of_type("v", "reference"),
        {"v": Reference("users/u1")},
        {"v": "users/u1"},
        "v is string, expected reference",
    ),
    (
        of_type("v", "geopoint"),
        {"v": GeoPoint(59.9, 10.7)},
        {"v": [59.9, 10.7]},
        "v is array, expected geopoint",
    ),
    (of_type("v", "bytes"), {"v": b"\x00\x01"}, {"v": "\x00"}, "v is string, expected bytes"),
    (
        one_of("status", ["active", "closed"]),
        {"status": "closed"},
        {"status": "Active"},
        "status is 'Active', not one of ['active', 'closed']",
    ),
    (
        matches("email", r"[^@\s]+@[^@\s]+"),
        {"email": "a@b"},
        {"email": "a b"},
        r"email 'a b' does not match [^@\s]+@[^@\s]+",
    ),
    (in_range("age", 0, 150), {"age": 150}, {"age": 150.5}, "age is 150.5, above the maximum 150"),
    (length("code", 3, 3), {"code": "NOR"}, {"code": "NO"}, "code has 2 characters, fewer than 3"),
    (
        predicate(lambda doc: doc.get("total", 0) >= sum(doc.get("items", [])), "total below the items' sum"),
        {"total": 10, "items": [4, 6]},
        {"total": 9, "items": [4, 6]},
        "total below the items' sum",
    ),
    (
        references("company", "companies"),
        {"company": Reference("companies/c1")},
        {"company": "c2"},
        "company points to companies/c2, which does not exist",
    ),
    (
        references("companies", "companies"),
        {"companies": ["c1"]},
        {"companies": ["c1", "gone"]},
        "companies points to companies/gone, which does not exist",
    ),
]


def commit(store: Store, docs: dict[str, dict[str, Any]]) -> None:
    writes = [Write.set(path, data) for path, data in docs.items()]
    for start in range(0, len(writes), 400):
        assert all(result.ok for result in store.commit(writes[start : start + 400]))


def checking(*rules: Rule, collection: str = "things") -> Migration:
    return Migration("0001", "check", "check", Target(collection), lambda doc: UNCHANGED, rules=rules)


@pytest.mark.parametrize(("rule", "good", "bad", "message"), CASES, ids=[c[0].name for c in CASES])
def test_each_rule_passes_and_fails_on_the_emulator(
    firestore_store: Store, rule: Rule, good: dict[str, Any], bad: dict[str, Any], message: str
) -> None:
    commit(firestore_store, {"things/fail": bad, "things/pass": good, "companies/c1": {"name": "c1"}})
    report = scan(firestore_store, checking(rule))
    assert (report.total, report.checked, report.failed) == (2, 2, 1)
    [result] = report.rules
    assert result.failures == 1 and result.examples == [("things/fail", message)]


def test_unique_across_the_collection_on_the_emulator(firestore_store: Store) -> None:
    commit(
        firestore_store,
        {f"things/t{i:03d}": {"email": f"e{i % 40}", "n": i} for i in range(50)}
        | {"things/z1": {"email": None}, "things/z2": {"n": 1}, "things/z3": {"email": None}},
    )
    report = scan(firestore_store, checking(unique("email"), unique("n")), batch_size=16)
    email, number = report.rules
    assert email.failures == 10 and number.failures == 1
    assert email.examples[0] == ("things/t040", "email 'e0' is not unique (an earlier document has it)")
    assert number.examples == [("things/z2", "n 1 is not unique (an earlier document has it)")]
    assert report.failed == 11


MIGRATION = """
from docshift import UNCHANGED
from docshift.validators import count, in_range, required

collection = "users"
rules = [required("name"), in_range("age", 0, 150), count("equal")]

def up(doc):
    return UNCHANGED
"""


@pytest.fixture
def project(emulator_config: Config) -> Config:
    emulator_config.migrations_dir.mkdir(parents=True)
    (emulator_config.migrations_dir / "0001_check_users.py").write_text(textwrap.dedent(MIGRATION))
    return emulator_config


def test_validate_saves_reports_and_compares_the_count_with_the_before_scan(
    project: Config, firestore_store: Store
) -> None:
    commit(firestore_store, {f"users/u{i:03d}": {"name": f"n{i}", "age": 20 + i} for i in range(120)})
    before = validate(project, "0001", phase="before", store=firestore_store)
    assert before.passed and before.total == 120 and before.score == 100.0
    assert before.path is not None and before.path.parent.name.startswith("validate-0001-")
    commit(firestore_store, {"users/u001": {"name": "n1", "age": -4}, "users/zz": {"age": 3}})
    after = validate(project, "1", store=firestore_store)
    assert after.total == 121 and after.failed == 2
    by_rule = {rule.name: rule for rule in after.rules}
    assert by_rule["required(name)"].examples == [("users/zz", "name is missing")]
    assert by_rule["count(equal)"].collection_failures == ["expected 120 documents (120 before), found 121"]
    assert not after.passed
    assert after.path is not None and load_report(after.path)["rules"][2]["collection_failures"]
    sampled = validate(project, "0001_check_users", sample=30, store=firestore_store)
    assert sampled.checked == 30 and sampled.sample == 30
    with pytest.raises(UsageError, match="not both"):
        validate(project, "0001", sample=3, full=True, store=firestore_store)
    with pytest.raises(UsageError, match="no migration with id '0009'"):
        validate(project, "0009", store=firestore_store)


def docshift(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_validate_command_prints_a_table_and_exits_14_below_the_threshold(
    tmp_path: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_check_users.py").write_text(textwrap.dedent(MIGRATION))
    (tmp_path / "docshift.toml").write_text('runs_dir = "runs"\n')
    commit(firestore_store, {f"users/u{i:03d}": {"name": f"n{i}", "age": 30} for i in range(100)})
    clean = docshift(tmp_path, cli_env, "validate", "0001", "--full")
    assert clean.returncode == 0, clean.stderr
    assert "required(name)" in clean.stdout and "integrity 100.0%" in clean.stdout
    assert "count(equal)" in clean.stdout and "not checked" in clean.stdout
    commit(firestore_store, {f"users/u{i:03d}": {"name": f"n{i}", "age": 200} for i in range(7)})
    warned = docshift(tmp_path, cli_env, "validate", "0001")
    assert warned.returncode == 0 and "integrity is below integrity_warning 95%" in warned.stderr
    strict = docshift(tmp_path, cli_env, "validate", "0001", "--strict")
    assert strict.returncode == 14 and "hint: the failing documents are listed in" in strict.stderr
    commit(firestore_store, {f"users/u{i:03d}": {"age": 30} for i in range(7, 12)})
    failed = docshift(tmp_path, cli_env, "validate", "0001", "--json")
    assert failed.returncode == 14, failed.stderr
    report = json.loads(failed.stdout)
    assert report["failed"] == 12 and report["level"] == "critical" and Path(report["file"]).is_file()
    assert [r["failures"] for r in report["rules"]] == [5, 7, 0]
    assert failed.stderr.startswith("error: 0001_check_users after: integrity 88.0%")
    bad_rules = tmp_path / "migrations" / "0002_bad.py"
    bad_rules.write_text("collection = 'users'\nrules = ['name']\n\ndef up(doc):\n    return doc.data\n")
    refused = docshift(tmp_path, cli_env, "validate", "0001")
    assert refused.returncode == 4
    assert "migrations/0002_bad.py:2: rules[0] is a str, not a rule" in refused.stderr


def test_count_expectations_minus_deleted_and_plus_created_use_the_history(
    project: Config, firestore_store: Store
) -> None:
    from docshift.commands.run import RunOptions, run_migrations

    source = textwrap.dedent("""
        from docshift import DELETE, UNCHANGED
        from docshift.validators import count

        collection = "users"
        rules = [count("minus_deleted")]

        def up(doc):
            return DELETE if doc.get("spam") else UNCHANGED
        """)
    (project.migrations_dir / "0001_check_users.py").write_text(source)
    commit(firestore_store, {f"users/u{i:03d}": {"spam": i % 4 == 0} for i in range(40)})
    assert validate(project, "0001", phase="before", store=firestore_store).total == 40
    run_migrations(project, RunOptions(execute=True), store=firestore_store)
    after = validate(project, "0001", store=firestore_store)
    assert after.total == 30 and after.passed and after.rules[0].note is None
    (project.migrations_dir / "0001_check_users.py").write_text(source.replace("minus_deleted", "equal"))
    assert not validate(project, "0001", store=firestore_store).passed


def test_count_equal_and_plus_created_for_a_copy_into_a_collection_that_had_documents(
    project: Config, firestore_store: Store
) -> None:
    from docshift.commands.run import RunOptions, run_migrations

    (project.migrations_dir / "0001_check_users.py").write_text(
        textwrap.dedent("""
        from docshift.validators import count

        collection = "users"
        copy_to = "archive"
        rules = [count("plus_created"), count("equal")]

        def up(doc):
            return {**doc.data, "archived": True}
        """)
    )
    commit(
        firestore_store,
        {f"users/u{i:03d}": {"n": i} for i in range(30)} | {f"archive/old{i}": {"n": -i} for i in range(5)},
    )
    before = validate(project, "0001", phase="before", store=firestore_store)
    assert (before.total, before.target_total) == (30, 5)
    run_migrations(project, RunOptions(execute=True), store=firestore_store)
    after = validate(project, "0001", store=firestore_store)
    plus_created, equal = after.rules
    assert after.total == 35 and plus_created.collection_failures == [] and plus_created.note is None
    assert equal.collection_failures == ["expected 30 documents (30 before), found 35"]
    commit(firestore_store, {"archive/stray": {"n": 0}})
    again = validate(project, "0001", store=firestore_store).rules[0]
    assert again.collection_failures == [
        "expected 35 documents (5 in the target before + 30 created), found 36"
    ]

"""The built-in migration checks (``docshift.commands.checks``) and ``docshift test`` in memory.

Each check is run on a migration written to fail it in one way (not idempotent, not reversible, a
broken rule, a value Firestore refuses), and must name the document and the field; ``docshift test``
runs as a subprocess (in memory: no store is opened) and prints the same, exiting 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from docshift import Config
from docshift.commands.checks import (
    check_files,
    check_idempotent,
    check_round_trip,
    check_rules,
    check_storable,
    document_checks,
    load_fixture_pairs,
)
from docshift.commands.run import RunOptions, run
from docshift.commands.test import mask_strings, run_checks
from docshift.errors import DataError
from docshift.history import History
from docshift.loader import load_migration
from docshift.migration import Migration
from docshift.store import Write
from docshift.store.base import Document
from docshift.testing import MemoryStore, assert_documents

DOCSHIFT = str(Path(sys.executable).parent / "docshift")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"

NOT_IDEMPOTENT = """
collection = "users"

def up(doc):
    data = doc.data
    data["visits"] = data.get("visits", 0) + 1
    return data
"""
NOT_REVERSIBLE = """
collection = "users"

def up(doc):
    data = doc.data
    data["email"] = data["email"].lower()
    return data

def down(doc):
    return doc.data
"""
BREAKS_ITS_RULE = """
from docshift.validators import not_null
collection = "users"
rules = [not_null("email")]

def up(doc):
    data = doc.data
    data["email"] = None if "@" not in data["email"] else data["email"]
    return data
"""
UNSTORABLE = """
collection = "users"

def up(doc):
    data = doc.data
    if data["kind"] == "set":
        data["tags"] = {"a", "b"}
    elif data["kind"] == "huge":
        data["n"] = 2**70
    elif data["kind"] == "raises":
        raise KeyError("missing")
    else:
        return ["not", "a", "dict"]
    return data
"""
ADA = Document("users/ada", {"email": "Ada@Example.com"})


def migration(tmp_path: Path, source: str, name: str = "0001_check.py") -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return folder / name


def test_a_non_idempotent_up_fails_naming_the_document_and_the_field(tmp_path: Path) -> None:
    result = check_idempotent(load_migration(migration(tmp_path, NOT_IDEMPOTENT)), [ADA])
    [finding] = result.findings
    assert finding.path == "users/ada" and "up() is not idempotent" in finding.message
    assert finding.diff == ("- visits: 1", "+ visits: 2")
    assert "0001_check: idempotent FAILED on 1 of 1 document" in result.describe()


def test_a_down_that_does_not_undo_up_fails_with_the_lost_value(tmp_path: Path) -> None:
    result = check_round_trip(load_migration(migration(tmp_path, NOT_REVERSIBLE)), [ADA])
    [finding] = result.findings
    assert "down() does not undo up()" in finding.message
    assert finding.diff == ("- email: 'Ada@Example.com'", "+ email: 'ada@example.com'")


def test_round_trip_of_a_migration_without_down_is_skipped_saying_why(tmp_path: Path) -> None:
    result = check_round_trip(load_migration(migration(tmp_path, NOT_IDEMPOTENT)), [ADA])
    assert result.passed and result.skipped is not None and "no down()" in result.skipped


def test_the_examples_pass_every_check(tmp_path: Path) -> None:
    examples = load_migration(EXAMPLES / "0001_split_full_name.py")
    documents = [Document("users/a", {"full_name": "Ada Lovelace", "email": "a@b.c"})]
    for check in (check_idempotent, check_round_trip, check_rules, check_storable):
        result = check(examples, documents)
        assert result.passed and result.skipped is None and result.checked == 1, result.describe()


def test_rules_are_checked_on_what_up_returns(tmp_path: Path) -> None:
    loaded = load_migration(migration(tmp_path, BREAKS_ITS_RULE))
    result = check_rules(loaded, [ADA, Document("users/bob", {"email": "none"})])
    [finding] = result.findings
    assert finding.path == "users/bob" and finding.diff == ("not_null(email): email is null",)


def test_values_firestore_cannot_store_are_named(tmp_path: Path) -> None:
    loaded = load_migration(migration(tmp_path, UNSTORABLE))
    documents = [Document(f"users/{kind}", {"kind": kind}) for kind in ("set", "huge", "raises", "list")]
    messages = {f.path: f.message for f in check_storable(loaded, documents).findings}
    assert "cannot store a value of type 'set'" in messages["users/set"]
    assert "does not fit in 64 bits" in messages["users/huge"]
    assert messages["users/raises"] == "up() raised KeyError: 'missing'"
    assert messages["users/list"] == "up() returned a list; return a dict, UNCHANGED or DELETE"


def test_files_drift_against_the_history_is_found(tmp_path: Path) -> None:
    path = migration(tmp_path, NOT_REVERSIBLE)
    store = MemoryStore()
    store.commit([Write.set("users/ada", ADA.data)])
    config = Config(migrations_dir=path.parent, runs_dir=tmp_path / "runs")
    run(config, RunOptions(execute=True), store=store)
    history = History(store, config.store.state_prefix).all()
    assert check_files(path.parent, history).passed
    path.write_text(path.read_text() + "\n# edited\n", encoding="utf-8")
    [finding] = check_files(path.parent, history).findings
    assert "was edited after it was applied" in finding.message
    assert check_files(path.parent).passed  # without a history there is nothing to drift from


def test_duplicate_ids_fail_the_files_check(tmp_path: Path) -> None:
    migration(tmp_path, NOT_IDEMPOTENT, "0001_a.py")
    migration(tmp_path, NOT_IDEMPOTENT, "0001_b.py")
    [finding] = check_files(tmp_path / "migrations").findings
    assert "has the same id 0001" in finding.message


def pair(folder: Path, migration_id: str, name: str, body: object) -> Path:
    target = folder / "tests" / migration_id
    target.mkdir(parents=True, exist_ok=True)
    file = target / f"{name}.json"
    file.write_text(body if isinstance(body, str) else json.dumps(body), encoding="utf-8")
    return file


def test_fixture_pairs_load_with_tagged_values_and_a_default_path(tmp_path: Path) -> None:
    loaded = load_migration(migration(tmp_path, NOT_IDEMPOTENT))
    folder = tmp_path / "migrations"
    pair(folder, "0001", "ada", {"before": {"at": {"$t": "ts", "v": [5, 1000]}}, "after": None})
    [found] = load_fixture_pairs(folder, loaded)
    assert found.path == "users/ada" and found.after is None
    assert found.before["at"].seconds == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"before": {}}, "is not a fixture pair (it needs before and after)"),
        ({"before": {}, "after": {}, "expected": {}}, "unknown key 'expected'"),
        ({"before": [], "after": {}}, "before must be a map"),
        ({"path": "orders/x", "before": {}, "after": {}}, "orders/x is not in the migration's target"),
        ({"path": "users", "before": {}, "after": {}}, "is not a document path"),
        (
            {"before": {"__x__": 1}, "after": {}},
            "its before cannot be stored in Firestore: field name '__x__'",
        ),
        (
            {"before": {}, "after": {"s": "x" * 1_100_000}},
            "its after cannot be stored in Firestore: document is",
        ),
    ],
)
def test_a_bad_fixture_pair_is_refused_naming_the_file(tmp_path: Path, body: object, message: str) -> None:
    loaded = load_migration(migration(tmp_path, NOT_IDEMPOTENT))
    pair(tmp_path / "migrations", "0001", "bad", body)
    with pytest.raises(DataError) as refused:
        load_fixture_pairs(tmp_path / "migrations", loaded)
    assert "tests/0001/bad.json" in refused.value.message and message in refused.value.message
    assert refused.value.hint


def test_run_checks_runs_the_pairs_through_the_engine(tmp_path: Path) -> None:
    folder = migration(tmp_path, NOT_IDEMPOTENT).parent
    pair(folder, "0001", "ada", {"before": {"visits": 1}, "after": {"visits": 2}})
    report = run_checks(Config(migrations_dir=folder, runs_dir=tmp_path / "runs"))
    failed = {result.check: result for result in report.failed}
    assert set(failed) == {"expected", "idempotent"}
    [second_run] = failed["expected"].findings
    assert "a second run of the migration wrote again (1 updated)" in second_run.message
    assert not (tmp_path / "runs").exists()  # the runs were in a scratch folder


def test_an_expected_document_that_differs_is_shown_as_a_diff(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "migrations", ignore=shutil.ignore_patterns("tests"))
    pair(
        tmp_path / "migrations",
        "0001",
        "ada",
        {
            "before": {"full_name": "Ada Lovelace", "email": "a@b.c"},
            "after": {"first_name": "Ada", "last_name": "Byron", "email": "a@b.c"},
        },
    )
    report = run_checks(Config(migrations_dir=tmp_path / "migrations"), ["1"])
    [failed] = report.failed
    [finding] = failed.findings
    assert finding.path == "users/ada" and finding.diff == ("- last_name: 'Byron'", "+ last_name: 'Lovelace'")


def test_mask_keeps_the_shape_of_strings() -> None:
    assert mask_strings({"name": "Ada Lovelace", "mail": ["a.b@c.io"], "n": 3, "phone": "+44 20"}) == {
        "name": "Xxx Xxxxxxxx",
        "mail": ["x.x@x.xx"],
        "n": 3,
        "phone": "+99 99",
    }


def test_assert_documents_fails_with_a_field_level_diff() -> None:
    assert_documents({"users/a": {"n": 1}}, {"users/a": {"n": 1}})
    with pytest.raises(AssertionError) as failed:
        assert_documents(
            {"users/a": {"n": 1, "m": {"x": True}}}, {"users/a": {"n": 1.0, "m": {"x": 1}}, "users/b": {}}
        )
    assert str(failed.value).splitlines() == [
        "documents differ (- expected, + got):",
        "users/a:",
        "    - n: 1.0",
        "    + n: 1",
        "    - m.x: 1",
        "    + m.x: True",
        "users/b: missing",
    ]


def docshift_test(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9"}  # never opened in memory
    return subprocess.run(
        [DOCSHIFT, "test", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_docshift_test_passes_on_the_examples() -> None:
    done = docshift_test(EXAMPLES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0002_normalise_age: expected ok on 3 documents" in done.stdout
    assert "0001_split_full_name: round_trip ok on 3 documents" in done.stdout


def test_docshift_test_fails_printing_the_document_and_its_diff(tmp_path: Path) -> None:
    folder = migration(tmp_path, NOT_REVERSIBLE).parent
    pair(folder, "0001", "ada", {"before": {"email": "Ada@X.io"}, "after": {"email": "ada@x.io"}})
    done = docshift_test(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL 0001_check: round_trip FAILED on 1 of 1 document" in done.stdout
    assert "users/ada: down() does not undo up()" in done.stdout
    assert "- email: 'Ada@X.io'" in done.stdout and "+ email: 'ada@x.io'" in done.stdout
    assert done.stderr.splitlines() == [
        "error: 1 check(s) failed: 0001_check round_trip",
        "  hint: each failing document and its diff is listed above: fix up()/down() or the fixture pair",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--record", "1", "--against-store"), "--record reads one migration's target"),
        (("--sample", "3"), "--sample is for --record or --against-store"),
        (("--mask",), "--mask is for --record"),
        (("--against-store", "--emulator"), "--against-store reads the configured target"),
    ],
)
def test_flags_that_do_not_go_together_are_refused(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    done = docshift_test(EXAMPLES.parent, *args)
    assert done.returncode == 2 and message in done.stderr and "  hint: " in done.stderr, done.stderr


def test_a_bad_fixture_file_exits_3_naming_it(tmp_path: Path) -> None:
    folder = migration(tmp_path, NOT_REVERSIBLE).parent
    pair(folder, "0001", "ada", "{oops")
    done = docshift_test(tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("error: migrations/tests/0001/ada.json: not valid JSON")


@pytest.mark.skipif(
    not hasattr(Migration, "script"), reason="script migrations (apply(ctx)) not in this build"
)
def test_a_script_migration_s_checks_are_skipped_saying_why() -> None:
    script = Migration.script("0003", "backfill", "backfill", lambda ctx: None)  # type: ignore[attr-defined]
    results = document_checks(script, [ADA])
    assert [result.check for result in results] == ["idempotent", "round_trip", "rules", "storable"]
    assert all(
        result.passed and result.skipped and "script migration" in result.skipped for result in results
    )

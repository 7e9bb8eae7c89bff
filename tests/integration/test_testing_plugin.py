"""Users test their own migrations: the pytest plugin from a plain ``pytest`` run in a project of
their own (a temporary folder outside this repository, the installed package, none of docshift's
own test helpers importable), on the emulator and with ``--docshift-memory``; and ``docshift test``
on the emulator, ``--record`` and ``--against-store`` reading a real target without writing to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from docshift.store import Query, RetryingStore, Write

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"
DOCSHIFT = str(Path(sys.executable).parent / "docshift")

USER_TESTS = """
import importlib.util

import pytest

from docshift.testing import assert_documents
from docshift.testing.builtin import (
    test_down_undoes_up,
    test_fixture_pairs,
    test_migration_files,
    test_rules_hold_after_up,
    test_up_is_idempotent,
    test_up_returns_storable_values,
)


def test_docshift_s_own_test_helpers_are_not_importable():
    assert importlib.util.find_spec("tests") is None


def test_the_store_is_the_one_asked_for(docshift_store, request):
    memory = request.config.getoption("docshift_memory")
    assert type(docshift_store).__name__ == ("MemoryStore" if memory else "RetryingStore")


def test_split_names(seed, migrate, export):
    seed({"ada": {"full_name": "Ada Lovelace", "email": "a@b.c"}}, collection="users")
    dry = migrate("0001")
    assert dry.counters["updated"] == 1 and dry.states == {"0001": "finished"}
    assert export("users") == {"users/ada": {"full_name": "Ada Lovelace", "email": "a@b.c"}}
    done = migrate("0001", execute=True)
    assert done.states == {"0001": "applied"}
    assert_documents(
        export("users"), {"users/ada": {"first_name": "Ada", "last_name": "Lovelace", "email": "a@b.c"}}
    )


def test_seed_from_the_fixture_files_and_run_everything(seed, migrate, export):
    seed("migrations/tests/0002", collection="users")
    migrate(execute=True)
    assert export("users")["users/text_age"]["age"] == 36


def test_a_wrong_expectation_fails_with_the_field(seed, migrate, export):
    seed({"users/ada": {"full_name": "Ada Lovelace", "email": "a@b.c"}})
    migrate(execute=True)
    with pytest.raises(AssertionError) as failed:
        assert_documents(
            export("users"), {"users/ada": {"first_name": "Ada", "last_name": "Byron", "email": "a@b.c"}}
        )
    message = str(failed.value)
    assert "- last_name: 'Byron'" in message and "+ last_name: 'Lovelace'" in message
"""

BAD_MIGRATIONS = {
    "0001_count_visits.py": """
collection = "users"


def up(doc):
    data = doc.data
    data["visits"] = data.get("visits", 0) + 1
    return data
""",
    "0002_lower_email.py": """
collection = "users"


def up(doc):
    data = doc.data
    data["email"] = data["email"].lower()
    return data


def down(doc):
    return doc.data
""",
}
BAD_TESTS = """
from docshift.testing.builtin import test_down_undoes_up, test_up_is_idempotent
"""
BAD_CONFTEST = """
import pytest


@pytest.fixture
def docshift_documents():
    return {"users/ada": {"email": "Ada@Example.com"}}
"""


def user_project(folder: Path, migrations: dict[str, str] | None = None) -> Path:
    """A user's project: migrations (the examples with their fixture pairs, or ``migrations``) and
    a pyproject.toml naming the folder, as a project would."""
    folder.mkdir(parents=True)
    if migrations is None:
        shutil.copytree(EXAMPLES, folder / "migrations")
    else:
        (folder / "migrations").mkdir()
        for name, source in migrations.items():
            (folder / "migrations" / name).write_text(textwrap.dedent(source), encoding="utf-8")
    (folder / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ndocshift_migrations = "migrations"\n', encoding="utf-8"
    )
    return folder


def plain_pytest(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``pytest`` as a user runs it, in the project, with the venv's python (the installed package)."""
    assert not project.resolve().is_relative_to(Path(__file__).resolve().parents[2])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def user_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DOCSHIFT_", "PYTEST_"))
        and key not in ("PYTHONPATH", "FIRESTORE_EMULATOR_HOST")
    }
    env.update(extra)
    return env


def outcomes(stdout: str) -> dict[str, str]:
    """test id -> PASSED, FAILED, SKIPPED or ERROR, from ``-rA``'s short summary."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR"):
            found[rest.split(" - ")[0].split("::", 1)[1]] = word
    return found


EXPECTED = {
    "test_docshift_s_own_test_helpers_are_not_importable": "PASSED",
    "test_the_store_is_the_one_asked_for": "PASSED",
    "test_split_names": "PASSED",
    "test_seed_from_the_fixture_files_and_run_everything": "PASSED",
    "test_a_wrong_expectation_fails_with_the_field": "PASSED",
    "test_migration_files": "PASSED",
    **{
        f"{name}[{migration_id}]": "PASSED"
        for name in (
            "test_fixture_pairs",
            "test_up_is_idempotent",
            "test_rules_hold_after_up",
            "test_up_returns_storable_values",
        )
        for migration_id in ("0001", "0002")
    },
    "test_down_undoes_up[0001]": "PASSED",
}


def test_the_plugin_on_the_emulator_from_a_plain_pytest_run(tmp_path: Path, emulator_host: str) -> None:
    project = user_project(tmp_path / "shop")
    (project / "test_migrations.py").write_text(USER_TESTS, encoding="utf-8")
    done = plain_pytest(project, user_env(FIRESTORE_EMULATOR_HOST=emulator_host))
    assert done.returncode == 0, done.stdout + done.stderr
    assert outcomes(done.stdout) == EXPECTED
    assert (
        "SKIPPED [1]" in done.stdout
        and "0002_normalise_age: round_trip skipped: it has no down()" in done.stdout
    )


def test_the_plugin_in_memory_starts_no_emulator(tmp_path: Path) -> None:
    project = user_project(tmp_path / "shop")
    (project / "test_migrations.py").write_text(USER_TESTS, encoding="utf-8")
    # An emulator could not start: the jar named does not exist.
    env = user_env(DOCSHIFT_EMULATOR_JAR=str(tmp_path / "absent.jar"))
    done = plain_pytest(project, env, "--docshift-memory")
    assert done.returncode == 0, done.stdout + done.stderr
    assert outcomes(done.stdout) == EXPECTED


@pytest.mark.parametrize("mode", ["emulator", "memory"])
def test_a_non_idempotent_and_a_non_reversible_migration_fail_clearly(
    tmp_path: Path, emulator_host: str, mode: str
) -> None:
    project = user_project(tmp_path / "bad", BAD_MIGRATIONS)
    (project / "test_migrations.py").write_text(BAD_TESTS, encoding="utf-8")
    (project / "conftest.py").write_text(BAD_CONFTEST, encoding="utf-8")
    args = ("--docshift-memory",) if mode == "memory" else ()
    done = plain_pytest(project, user_env(FIRESTORE_EMULATOR_HOST=emulator_host), *args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert outcomes(done.stdout) == {
        "test_up_is_idempotent[0001]": "FAILED",
        "test_up_is_idempotent[0002]": "PASSED",
        "test_down_undoes_up[0002]": "FAILED",
    }
    assert "0001_count_visits: idempotent FAILED on 1 of 1 document" in done.stdout
    assert "users/ada: up() is not idempotent" in done.stdout
    assert "- visits: 1" in done.stdout and "+ visits: 2" in done.stdout
    assert "0002_lower_email: round_trip FAILED on 1 of 1 document" in done.stdout
    assert "users/ada: down() does not undo up()" in done.stdout
    assert "- email: 'Ada@Example.com'" in done.stdout and "+ email: 'ada@example.com'" in done.stdout
    assert "Traceback" not in done.stdout


def docshift(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_docshift_test_on_the_emulator(tmp_path: Path, emulator_host: str) -> None:
    project = user_project(tmp_path / "shop")
    done = docshift(project, user_env(FIRESTORE_EMULATOR_HOST=emulator_host), "test", "--emulator")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 of 10 checks passed (emulator), 1 skipped" in done.stdout


def test_record_and_against_store_read_the_target_and_write_nothing_to_it(
    tmp_path: Path, firestore_store: RetryingStore, cli_env: dict[str, str]
) -> None:
    project = user_project(tmp_path / "shop")
    shutil.rmtree(project / "migrations" / "tests")
    people = {
        "users/ada": {"full_name": "Ada Lovelace", "email": "ada@example.com", "age": "36"},
        "users/alan": {"full_name": "Alan Turing", "email": "alan@example.com", "age": "forty-one"},
        "users/grace": {"first_name": "Grace", "last_name": "Hopper", "email": "g@example.com", "age": 85},
    }
    firestore_store.commit([Write.set(path, data) for path, data in people.items()])
    before = {doc.path: (doc.data, doc.update_time) for doc in firestore_store.stream(Query("users"))}

    recorded = docshift(project, cli_env, "test", "--record", "0001", "--sample", "10", "--mask")
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert "read 3 document(s) of collection users (nothing was written to it)" in recorded.stdout
    folder = project / "migrations" / "tests" / "0001"
    assert sorted(path.name for path in folder.iterdir()) == ["ada.json", "alan.json", "grace.json"]
    ada = json.loads((folder / "ada.json").read_text(encoding="utf-8"))
    assert ada == {
        "path": "users/ada",
        "before": {"full_name": "Xxx Xxxxxxxx", "email": "xxx@xxxxxxx.xxx", "age": "99"},
        "after": {"email": "xxx@xxxxxxx.xxx", "age": "99", "first_name": "Xxx", "last_name": "Xxxxxxxx"},
    }
    again = docshift(project, cli_env, "test", "--record", "0001", "--sample", "10")
    assert "kept 3 pair(s) already there" in again.stdout  # reviewed pairs are never overwritten
    assert json.loads((folder / "ada.json").read_text(encoding="utf-8")) == ada

    tested = docshift(project, cli_env, "test", "0001")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "0001_split_full_name: expected ok on 3 documents" in tested.stdout

    live = docshift(project, cli_env, "test", "--against-store", "--sample", "10")
    assert live.returncode == 0, live.stdout + live.stderr
    assert "0001_split_full_name: idempotent ok on 3 documents" in live.stdout
    assert "0002_normalise_age: rules ok on 3 documents" in live.stdout
    after = {doc.path: (doc.data, doc.update_time) for doc in firestore_store.stream(Query("users"))}
    assert after == before
    assert list(firestore_store.stream(Query("_docshift", descendants=True))) == []

"""Errors that show the cause, without a store: ids and addresses checked when the config is
resolved, Firestore's query limits checked when a migration is loaded (and by the in-memory store,
as the emulator checks them), a hint for every store error, and the exit codes the README gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from docshift.commands.run import RunOptions, run
from docshift.config import Config, StoreConfig, load_config
from docshift.errors import ConfigError, ExitCode, MigrationFileError, PermanentError
from docshift.loader import load_migrations
from docshift.store import Filter, Query, Write
from docshift.store.semantics import MAX_DISJUNCTIONS, MAX_FILTER_VALUES, error_hint, query_problem
from docshift.testing import MemoryStore

# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("project", ["demo-test", "my-project-123", "a", "1abc", "example.com:my-project"])
def test_project_ids_the_store_takes_are_accepted(tmp_path: Path, project: str) -> None:
    assert load_config({"project": project}, env={}, cwd=tmp_path).store.project == project


@pytest.mark.parametrize(
    ("project", "found"),
    [
        ("My Project", "(found spaces, upper-case letters)"),
        ("my_project", "(found '_')"),
        ("x.y", "(found '.')"),
        ("-bad", ""),
    ],
)
def test_a_malformed_project_id_is_a_config_error_saying_what_is_wrong(
    tmp_path: Path, project: str, found: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"project": project}, env={}, cwd=tmp_path)
    error = caught.value
    assert error.exit_code == ExitCode.USAGE
    assert error.message.startswith(
        "config key 'project' from --project is not a project id: lowercase letters, digits and hyphens"
    )
    assert found in error.message and repr(project) in error.message
    assert error.hint is not None and "gcloud projects list" in error.hint


def test_a_malformed_database_id_is_refused_and_named_ones_are_accepted(tmp_path: Path) -> None:
    for database in ("(default)", "reporting", "source-db", "mydb"):
        assert load_config({"database": database}, env={}, cwd=tmp_path).store.database == database
    with pytest.raises(ConfigError, match=r"is not a database id: .*\(found spaces, upper-case letters\)"):
        load_config(env={"DOCSHIFT_DATABASE": "Bad DB"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("localhost", "must be host:port, e.g. 127.0.0.1:8080"),
        ("http://localhost:8080", "must be host:port without a scheme"),
        ("127.0.0.1:99999", "has a port outside 1-65535"),
    ],
)
def test_a_malformed_emulator_address_is_refused_wherever_it_comes_from(
    tmp_path: Path, host: str, problem: str
) -> None:
    for env in ({"FIRESTORE_EMULATOR_HOST": host}, {"DOCSHIFT_EMULATOR_HOST": host}):
        with pytest.raises(ConfigError, match=problem) as caught:
            load_config(env=env, cwd=tmp_path)
        assert next(iter(env)) in caught.value.message
    for good in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "emulator.internal:8080"):
        assert load_config(env={"FIRESTORE_EMULATOR_HOST": good}, cwd=tmp_path).store.emulator_host == good


def test_the_connect_deadline_is_a_config_key(tmp_path: Path) -> None:
    assert load_config(env={}, cwd=tmp_path).store.connect_timeout_seconds == 3.0
    config = load_config(env={"DOCSHIFT_CONNECT_TIMEOUT_SECONDS": "0.5"}, cwd=tmp_path)
    assert config.store.connect_timeout_seconds == 0.5
    with pytest.raises(ConfigError, match="must be greater than 0"):
        load_config({"connect_timeout_seconds": 0}, env={}, cwd=tmp_path)


def test_a_missing_config_file_says_where_it_was_looked_for_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, cwd=tmp_path, config_file=Path("nope.toml"))
    assert caught.value.message == f"config file {tmp_path / 'nope.toml'} does not exist"
    assert caught.value.hint is not None and "docshift init" in caught.value.hint


# --------------------------------------------------------------------------- query limits


def f(field: str, op: str, value: Any) -> Filter:
    return Filter.parse(field, op, value)


def test_the_measured_query_limits_at_their_boundaries() -> None:
    """The emulator's own boundaries (see ``store/semantics.py``): n accepted, n + 1 refused."""
    assert MAX_FILTER_VALUES == MAX_DISJUNCTIONS == 30
    for op in ("in", "array-contains-any"):
        assert query_problem([f("x", op, list(range(30)))]) is None
        assert query_problem([f("x", op, list(range(31)))]) == (
            f"filter x {op} has 31 values; Firestore takes at most 30 in one filter"
        )
        assert query_problem([f("x", op, [])]) == (
            f"filter x {op} has an empty list: Firestore needs 1 to 30 values"
        )
    assert query_problem([f("a", "in", [1, 2]), f("b", "in", list(range(15)))]) is None
    assert "combine into 32 disjunctions" in str(
        query_problem([f("a", "in", [1, 2]), f("b", "in", list(range(16)))])
    )
    assert "combine into 36" in str(
        query_problem([f("a", "in", list(range(6))), f("t", "array-contains-any", list(range(6)))])
    )
    # Distinct values count, and a filter given twice counts once (as the emulator counts them).
    assert query_problem([f("a", "in", [1, 1]), f("b", "in", list(range(16)))]) is None
    assert query_problem([f("a", "in", list(range(6))), f("a", "in", list(range(6)))]) is None
    assert query_problem([f("a", "in", [1] * 31)]) is not None  # but every value counts towards 30
    two_arrays = [f("t", "array-contains", 1), f("u", "array-contains-any", [1])]
    assert (
        query_problem(two_arrays)
        == "at most one array-contains or array-contains-any filter is allowed in a query"
    )
    # Filters docshift applies itself have no store limit.
    assert query_problem([f("a", "not-in", list(range(100))), f("b", "!=", 1), f("c", ">", 3)]) is None


def test_the_memory_store_refuses_such_a_query_as_the_emulator_does() -> None:
    store = MemoryStore()
    store.commit([Write.set("c/a", {"x": 1})])
    too_many = Query("c", filters=(f("x", "in", list(range(31))),))
    with pytest.raises(PermanentError) as caught:
        list(store.stream(too_many))
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.hint
    with pytest.raises(PermanentError):
        store.count(too_many)
    assert [d.path for d in store.stream(Query("c", filters=(f("x", "in", list(range(30))),)))] == ["c/a"]


def write_migration(folder: Path, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "0001_pick.py"
    path.write_text(body + "\n\ndef up(doc):\n    return doc.data\n", encoding="utf-8")
    return path


def test_an_in_filter_beyond_the_limit_is_refused_when_the_migration_is_loaded(tmp_path: Path) -> None:
    write_migration(tmp_path, 'collection = "users"\n\nwhere = [("status", "in", list(range(31)))]')
    with pytest.raises(MigrationFileError) as caught:
        load_migrations(tmp_path)
    error = caught.value
    assert error.exit_code == ExitCode.MIGRATION_FILE
    assert error.message.endswith(
        "0001_pick.py:3: where: filter status in has 31 values; Firestore takes at most 30 in one filter"
    )
    assert error.hint is not None and "split the values" in error.hint


def test_a_run_with_such_a_filter_stops_before_reading_exit_4_not_an_emergency_stop(tmp_path: Path) -> None:
    """It used to reach the store mid-run and stop the run as an emergency (exit 12)."""
    write_migration(
        tmp_path / "migrations",
        'collection = "users"\nwhere = [("a", "in", [1, 2]), ("b", "in", list(range(16)))]',
    )
    config = Config(
        store=StoreConfig(project="memory"),
        migrations_dir=tmp_path / "migrations",
        runs_dir=tmp_path / "runs",
    )
    store = MemoryStore()
    store.commit([Write.set("users/u1", {"a": 1, "b": 1})])
    with pytest.raises(MigrationFileError, match="combine into 32 disjunctions") as caught:
        run(config, RunOptions(execute=True), store=store)
    assert caught.value.exit_code == 4
    assert store.list_collections() == ["users"]  # no history, no lease: nothing was started
    assert not list((tmp_path / "runs").glob("*/report.json"))


@pytest.mark.parametrize(
    ("body", "message", "hint"),
    [
        (
            'collection = "users"\nwhere = "status == active"',
            "where must be a list of (field, op, value) tuples, got a str",
            "where = [",
        ),
        (
            'collection = "users"\nlimit = 0',
            "limit must be a whole number above 0 or None, got 0",
            "limit = 1000",
        ),
        ('collection = "users"\nrules = "required"', "rules must be a list, got a str", "rules = ["),
        (
            'collection = "users"\ncopy_to = "users"',
            "copy_to is the source collection itself",
            "remove copy_to",
        ),
        ('collection = "users"\ndef up(doc)\n    pass', "syntax error", "fix the Python syntax"),
    ],
)
def test_a_bad_setting_names_its_line_and_what_to_write(
    tmp_path: Path, body: str, message: str, hint: str
) -> None:
    write_migration(tmp_path, body)
    with pytest.raises(MigrationFileError) as caught:
        load_migrations(tmp_path)
    assert message in caught.value.message and caught.value.message.startswith(
        str(tmp_path / "0001_pick.py:2")
    )
    assert caught.value.hint is not None and hint in caught.value.hint


# --------------------------------------------------------------------------- store errors


def test_every_store_error_says_what_to_do() -> None:
    for code in (
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "INTERNAL",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "NOT_FOUND",
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "UNIMPLEMENTED",
        "UNKNOWN",
    ):
        assert error_hint(code) and "the store answered" not in error_hint(code), code
    assert error_hint("DATA_LOSS") == "the store answered DATA_LOSS; rerun with --debug for the traceback"
    assert "read it again" in error_hint("FAILED_PRECONDITION", guarded=True)
    assert "project and database" in error_hint("PERMISSION_DENIED")

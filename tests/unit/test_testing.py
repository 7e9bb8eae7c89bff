"""``docshift.testing`` as a user's tests use it: only it and the public API, no project test helpers.

The module's own example (its docstring) and the docs' are run as written, on the example migration
a new project starts from; the other tests are the ones a user writes next (a flaky store, what was
sent).
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

import docshift.testing
from docshift import Config
from docshift.commands.run import RunOptions, run
from docshift.loader import load_migrations
from docshift.store import Query, RetryingStore, RetryPolicy, Store, Write
from docshift.testing import FaultInjectingStore, LostReplies, MemoryStore, RecordingStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "migrations" / "0001_split_full_name.py"
PEOPLE = {
    f"users/u{i:03d}": {"full_name": f"First{i} Last{i}", "email": f"u{i}@example.com"} for i in range(60)
}
QUICK = RetryPolicy(attempts=30, initial_wait=0.001, max_wait=0.002)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's project: ``migrations/`` holding the example, the working folder."""
    (tmp_path / "migrations").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "migrations")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def documents(store: Store, collection: str = "users") -> dict[str, Any]:
    return {doc.path: doc.data for doc in store.stream(Query(collection))}


def test_the_modules_example_runs_as_written(project: Path) -> None:
    example = docshift.testing.__doc__.split("::", 1)[1].split("\nWhat is here", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(example), "docshift.testing example", "exec"), namespace)
    namespace["test_split_full_name"](project / "tmp")


def test_the_docs_example_runs_as_written(project: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "migrations.md").read_text(encoding="utf-8")
    example = docs.split("### Testing a migration", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(example, "docs/migrations.md example", "exec"), namespace)
    tests = [name for name in namespace if name.startswith("test_")]
    assert len(tests) == 2
    for name in tests:
        namespace[name](project / name)


def test_a_migration_run_on_the_memory_store(project: Path) -> None:
    [migration] = load_migrations(Path("migrations"))
    assert migration.id == "0001" and migration.target.collection == "users"
    store = RecordingStore(MemoryStore())
    store.commit([Write.set(path, data) for path, data in PEOPLE.items()])
    config = Config(migrations_dir=Path("migrations"), runs_dir=project / "runs")

    dry = run(config, RunOptions(), store=store)
    assert [o.result.counters["updated"] for o in dry.outcomes] == [60]
    assert store.commits == 1 and documents(store) == PEOPLE

    done = run(config, RunOptions(execute=True), store=store)
    assert [o.state for o in done.outcomes] == ["applied"]
    assert documents(store) == {
        path: {"first_name": f"First{i}", "last_name": f"Last{i}", "email": data["email"]}
        for i, (path, data) in enumerate(PEOPLE.items())
    }
    again = run(config, RunOptions(execute=True), store=store)
    assert again.outcomes == []  # applied: nothing pending


@pytest.mark.parametrize("seed", [1, 2])
def test_a_migration_run_on_a_flaky_store_leaves_the_same_documents(project: Path, seed: int) -> None:
    """Writes and whole requests fail, replies are lost after the writes landed: behind docshift's
    retry layer the run still leaves what it leaves on a healthy store, and says so."""
    config = Config(migrations_dir=Path("migrations"), runs_dir=project / "runs")
    healthy, memory = MemoryStore(), MemoryStore()
    for store in (healthy, memory):
        store.commit([Write.set(path, data) for path, data in PEOPLE.items()])
    run(config, RunOptions(execute=True), store=healthy)

    faults = FaultInjectingStore(
        LostReplies(memory, every=3), write_failure_rate=0.2, request_failure_rate=0.1, seed=seed
    )
    report = run(config, RunOptions(execute=True), store=RetryingStore(faults, QUICK))
    assert faults.injected > 0
    [outcome] = report.outcomes
    assert outcome.state == "applied" and outcome.result.counters["updated"] == len(PEOPLE)
    assert documents(memory) == documents(healthy)


def test_the_public_names_are_the_test_support() -> None:
    assert sorted(docshift.testing.__all__) == [
        "BreakingStreams",
        "FaultInjectingStore",
        "LostReplies",
        "MemoryStore",
        "Migrated",
        "Migrator",
        "RateLimitedStore",
        "RecordingHooks",
        "RecordingStore",
        "Request",
        "Seeder",
        "SimulatedClock",
        "assert_documents",
        "export",
    ]
    assert all(getattr(docshift.testing, name).__doc__ for name in docshift.testing.__all__)

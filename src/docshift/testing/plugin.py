"""docshift's pytest plugin, registered through the ``pytest11`` entry point: installing docshift is
enough. Only pytest imports this module (``import docshift.testing`` does not import pytest).

Fixtures:

* ``firestore_emulator`` (session): the host of the official emulator, found and started as docshift
  finds it (or the one ``FIRESTORE_EMULATOR_HOST`` names), stopped with its process group at the end;
* ``docshift_config``: a :class:`~docshift.Config` for this test: the project's migrations folder
  (``--docshift-migrations``, or the ``docshift_migrations`` ini key; default ``migrations``), a runs
  folder in the test's temporary folder, a fresh ``demo-`` project on the emulator;
* ``docshift_store``: that fresh project's store, or the in-memory store with ``--docshift-memory``;
* ``seed``, ``migrate``, ``export``: documents in, migrations run, a collection's contents out
  (:mod:`docshift.testing.harness`); ``assert_documents`` (from :mod:`docshift.testing`) compares
  with a field-level diff;
* ``docshift_documents``: documents the built-in checks seed before sampling the store (empty unless
  a project overrides it); ``docshift_history``: the history the files check compares with.

The built-in checks are tests to import, one line each (:mod:`docshift.testing.builtin`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from docshift.config import Config, StoreConfig
from docshift.emulator import running_emulator
from docshift.errors import DocshiftError
from docshift.loader import FILE_PATTERN, migration_files
from docshift.store import Store, open_store
from docshift.store.memory import MemoryStore
from docshift.values import Value

__all__: list[str] = []

MIGRATION_FIXTURE = "docshift_migration"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("docshift", "docshift migrations")
    group.addoption(
        "--docshift-memory",
        action="store_true",
        default=False,
        help="docshift_store is the in-memory store, not a fresh project on the Firestore emulator.",
    )
    group.addoption(
        "--docshift-migrations",
        metavar="DIR",
        default=None,
        help="The migrations folder (default: the docshift_migrations ini key, or migrations).",
    )
    group.addoption(
        "--docshift-sample",
        type=int,
        default=100,
        metavar="N",
        help="How many documents of docshift_store the built-in checks read per migration (default 100).",
    )
    parser.addini(
        "docshift_migrations", "The migrations folder, relative to the rootdir.", default="migrations"
    )


def migrations_dir(config: pytest.Config) -> Path:
    """The migrations folder: the option, else the ini key, relative to the rootdir."""
    given = config.getoption("docshift_migrations") or config.getini("docshift_migrations")
    folder = Path(str(given))
    return folder if folder.is_absolute() else Path(config.rootpath) / folder


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test asking for ``docshift_migration`` runs once per migration file (by id)."""
    if MIGRATION_FIXTURE not in metafunc.fixturenames:
        return
    try:
        files = migration_files(migrations_dir(metafunc.config))
        ids = [match["id"] for path in files if (match := FILE_PATTERN.fullmatch(path.name))]
    except DocshiftError:
        ids = ["migrations"]  # the fixture raises the folder's error in that one test
    metafunc.parametrize(MIGRATION_FIXTURE, ids or ["none"], indirect=True)


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """The emulator's host, for the whole session."""
    with running_emulator() as host:
        yield host


def _memory(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("docshift_memory"))


@pytest.fixture
def docshift_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    host = None if _memory(request) else str(request.getfixturevalue("firestore_emulator"))
    return Config(
        store=StoreConfig(project=f"demo-{uuid.uuid4().hex[:12]}", emulator_host=host),
        migrations_dir=migrations_dir(request.config),
        runs_dir=tmp_path / "docshift-runs",
    )


@pytest.fixture
def docshift_store(request: pytest.FixtureRequest, docshift_config: Config) -> Iterator[Store]:
    if _memory(request):
        yield MemoryStore()
        return
    store = open_store(docshift_config)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def seed(docshift_store: Store) -> Any:
    from docshift.testing.harness import Seeder

    return Seeder(docshift_store)


@pytest.fixture
def migrate(docshift_config: Config, docshift_store: Store) -> Any:
    from docshift.testing.harness import Migrator

    return Migrator(docshift_config, docshift_store)


@pytest.fixture
def export(docshift_store: Store) -> Callable[..., dict[str, dict[str, Value]]]:
    from docshift.testing.harness import export as export_of

    def exported(collection: str, *, group: bool = False) -> dict[str, dict[str, Value]]:
        return export_of(docshift_store, collection, group=group)

    return exported


@pytest.fixture
def docshift_documents() -> Mapping[str, Mapping[str, Value]]:
    """Documents (by path) the built-in checks seed into docshift_store and sample; override it."""
    return {}


@pytest.fixture
def docshift_history(docshift_config: Config, docshift_store: Store) -> Mapping[str, Any]:
    """The history records the files check compares the folder with: docshift_store's (override it
    with a database's own, e.g. ``History(store, "_docshift").all()``)."""
    from docshift.history import History

    return History(docshift_store, docshift_config.store.state_prefix).all()


@pytest.fixture
def docshift_migration(request: pytest.FixtureRequest, docshift_config: Config) -> Any:
    """The migration a built-in check is about (the test runs once per migration file)."""
    from docshift.commands.validate import find_migration

    wanted = str(request.param)
    if wanted == "none":
        pytest.skip(f"no migration files in {docshift_config.migrations_dir}")
    try:
        return find_migration(docshift_config, wanted)
    except DocshiftError as exc:
        pytest.fail(f"{exc.message}\n  hint: {exc.hint}", pytrace=False)


@pytest.fixture
def docshift_checked_documents(
    request: pytest.FixtureRequest,
    docshift_migration: Any,
    docshift_config: Config,
    docshift_store: Store,
    docshift_documents: Mapping[str, Mapping[str, Value]],
) -> list[Any]:
    """The documents a built-in document check runs on: the fixture pairs' befores, then a sample
    of the migration's target in docshift_store (with docshift_documents seeded into it)."""
    from docshift.commands.checks import load_fixture_pairs, skip_reason
    from docshift.commands.test import seed_documents
    from docshift.validators.scan import sampled_documents

    reason = skip_reason(docshift_migration)
    if reason is not None:
        pytest.skip(f"{docshift_migration.label}: {reason}")
    pairs = load_fixture_pairs(docshift_config.migrations_dir, docshift_migration)
    if docshift_documents:
        seed_documents(docshift_store, docshift_documents)
    query = docshift_migration.target.query()
    sample = int(request.config.getoption("docshift_sample"))
    found = list(sampled_documents(docshift_store, query, sample, docshift_store.count(query)))
    documents = [pair.document for pair in pairs] + found
    if not documents:
        pytest.skip(
            f"{docshift_migration.label}: no fixture pairs and no documents of its target in "
            "docshift_store (add pairs, or override docshift_documents)"
        )
    return documents

"""What the pytest plugin's fixtures are, as plain classes (usable without pytest): put documents in
(:class:`Seeder`), run migrations (:class:`Migrator`), read a collection back (:func:`export`), and
compare documents with a field-level diff (:func:`assert_documents`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from docshift.codec import decode
from docshift.commands.checks import data_diff
from docshift.commands.run import RunOptions, RunResult, run
from docshift.commands.test import seed_documents
from docshift.config import Config
from docshift.errors import DataError
from docshift.store import Query, Store
from docshift.values import Value, as_stored

__all__ = ["Migrated", "Migrator", "Seeder", "assert_documents", "export"]

Documents = Mapping[str, Mapping[str, Value]]
"""Documents by path: ``{"users/ada": {"name": "Ada"}}``."""


class Seeder:
    """``seed(...)``: documents into the store, as they are, before a migration runs.

    Takes a mapping of path to data (with ``collection=``, of id to data), or JSON files: a file of
    path -> data, a fixture pair (its ``before`` at its ``path``), or a folder of such files. Values
    in files use docshift's tagged JSON for timestamps, bytes and the like (:mod:`docshift.codec`).
    Returns what was written, by path.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(
        self, documents: Documents | str | Path | Iterable[str | Path], *, collection: str | None = None
    ) -> dict[str, dict[str, Value]]:
        found = self._documents(documents, collection)
        seed_documents(self.store, found)
        return found

    def _documents(self, given: Any, collection: str | None) -> dict[str, dict[str, Value]]:
        if isinstance(given, Mapping):
            prefix = f"{collection.strip('/')}/" if collection else ""
            return {f"{prefix}{key}": dict(data) for key, data in given.items()}
        if isinstance(given, str | Path):
            path = Path(given)
            files = sorted(path.glob("*.json")) if path.is_dir() else [path]
            found: dict[str, dict[str, Value]] = {}
            for file in files:
                found.update(_read_documents(file, collection))
            return found
        merged: dict[str, dict[str, Value]] = {}
        for item in given:
            merged.update(self._documents(item, collection))
        return merged


def _read_documents(file: Path, collection: str | None) -> dict[str, dict[str, Value]]:
    try:
        raw = decode(orjson.loads(file.read_bytes()))
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DataError(
            f"{file}: cannot be read as JSON: {exc}", hint="give a JSON file of path -> data"
        ) from None
    if isinstance(raw, dict) and "before" in raw and "after" in raw:
        path = raw.get("path") or (f"{collection.strip('/')}/{file.stem}" if collection else None)
        if not isinstance(path, str):
            raise DataError(
                f"{file}: a fixture pair without a path", hint="add its path, or pass collection= to seed()"
            )
        return {path: dict(raw["before"])}
    if not isinstance(raw, dict) or not all(isinstance(data, dict) for data in raw.values()):
        raise DataError(f"{file}: is not a map of path -> document data", hint='write {"users/ada": {...}}')
    prefix = f"{collection.strip('/')}/" if collection else ""
    return {f"{prefix}{key}": data for key, data in raw.items()}


@dataclass(frozen=True)
class Migrated:
    """What ``migrate(...)`` did: each run's :class:`~docshift.commands.run.RunResult`, and its
    counters (``updated``, ``unchanged``, ``deleted``, ``created``, ``failed``, ``conflicts``...)."""

    runs: tuple[RunResult, ...]

    @property
    def counters(self) -> dict[str, int]:
        """Every migration's counters, added up."""
        total: dict[str, int] = {}
        for counts in self.by_migration.values():
            for name, count in counts.items():
                total[name] = total.get(name, 0) + count
        return total

    @property
    def by_migration(self) -> dict[str, dict[str, int]]:
        """Each migration's counters, by id."""
        return {
            outcome.migration.id: dict(outcome.result.counters)
            for result in self.runs
            for outcome in result.outcomes
        }

    @property
    def states(self) -> dict[str, str]:
        """How each migration ended (``applied``, ``partial``, ``finished`` for a dry run...), by id."""
        return {outcome.migration.id: outcome.state for result in self.runs for outcome in result.outcomes}

    @property
    def result(self) -> RunResult:
        """The last run's result."""
        return self.runs[-1]


class Migrator:
    """``migrate()``: run the pending migrations (a dry run unless ``execute=True``), as ``docshift
    run`` does; ``migrate("0002", "0003", execute=True)``: run those, in that order, each on its own
    (``--only``). A run that stops raises its error (a test fails with its message)."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    def __call__(self, *migration_ids: str, execute: bool = False) -> Migrated:
        if not migration_ids:
            return Migrated((run(self.config, RunOptions(execute=execute), store=self.store),))
        runs = [
            run(self.config, RunOptions(execute=execute, only=_padded(migration_id)), store=self.store)
            for migration_id in migration_ids
        ]
        return Migrated(tuple(runs))


def _padded(migration_id: str) -> str:
    """``7``, ``0007`` and ``0007_slug`` all name migration ``0007``."""
    number = migration_id.split("_", 1)[0]
    return f"{int(number):04d}" if number.isdigit() else migration_id


def export(store: Store, collection: str, *, group: bool = False) -> dict[str, dict[str, Value]]:
    """A collection's exact contents (a collection group's with ``group``), by path, in name order."""
    return {doc.path: doc.data for doc in store.stream(Query(collection, group))}


def assert_documents(actual: Documents | Mapping[str, Value] | None, expected: Any) -> None:
    """Assert that documents (by path), or one document's data, are what is expected; the failure
    message lists each missing, extra or different document with its fields (``- expected``,
    ``+ got``). Values compare as Firestore stores them (type-strict, timestamps at microseconds)."""
    if _is_documents(actual) or _is_documents(expected):
        lines = _documents_diff(actual or {}, expected or {})
    else:
        lines = data_diff(_stored(expected), _stored(actual))
    if lines:
        raise AssertionError("documents differ (- expected, + got):\n" + "\n".join(lines))


def _is_documents(value: Any) -> bool:
    """Whether ``value`` holds documents by path (every key a path, every value a map)."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(
            isinstance(key, str) and "/" in key and isinstance(data, Mapping) for key, data in value.items()
        )
    )


def _documents_diff(actual: Any, expected: Any) -> list[str]:
    lines: list[str] = []
    for path in sorted(set(actual) | set(expected)):
        if path not in actual:
            lines.append(f"{path}: missing")
        elif path not in expected:
            lines.append(f"{path}: not expected")
        else:
            changes = data_diff(_stored(expected[path]), _stored(actual[path]))
            if changes:
                lines.append(f"{path}:")
                lines.extend(f"    {line}" for line in changes)
    return lines


def _stored(data: Any) -> dict[str, Value] | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise TypeError(f"expected document data (a dict) or None, got a {type(data).__name__}")
    return as_stored(dict(data))[0]

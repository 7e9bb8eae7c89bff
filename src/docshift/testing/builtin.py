"""The built-in checks as pytest tests: import the ones you want into a test module, one line each
(the checks are :mod:`docshift.commands.checks`, the same ``docshift test`` runs)::

    from docshift.testing.builtin import (
        test_down_undoes_up,
        test_fixture_pairs,
        test_migration_files,
        test_rules_hold_after_up,
        test_up_is_idempotent,
        test_up_returns_storable_values,
    )

Each runs once per migration file; the document checks run on the migration's fixture pairs
(``<migrations>/tests/<id>/*.json``) and on up to ``--docshift-sample`` documents of its target in
``docshift_store`` (after seeding the ``docshift_documents`` fixture into it). A check that does
not apply (no ``down``, no rules, a script migration) is skipped, saying why; a failing one lists each
document with its diff. Only pytest imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from docshift.commands.checks import (
    CheckResult,
    check_files,
    check_idempotent,
    check_round_trip,
    check_rules,
    check_storable,
    load_fixture_pairs,
    skip_reason,
)
from docshift.commands.test import check_expected
from docshift.config import Config
from docshift.migration import Migration
from docshift.store import Store
from docshift.store.base import Document

__all__ = [
    "test_down_undoes_up",
    "test_fixture_pairs",
    "test_migration_files",
    "test_rules_hold_after_up",
    "test_up_is_idempotent",
    "test_up_returns_storable_values",
]


def _report(result: CheckResult) -> None:
    """A skipped check skips the test, a failing one fails it with every document's diff."""
    if result.skipped is not None:
        pytest.skip(result.summary())
    if not result.passed:
        pytest.fail(result.describe(), pytrace=False)


def test_fixture_pairs(docshift_migration: Migration, docshift_config: Config, docshift_store: Store) -> None:
    """The migration, run by the engine on each fixture pair's document before, leaves the document
    expected after, and a second run writes nothing."""
    reason = skip_reason(docshift_migration)
    if reason is not None:
        pytest.skip(f"{docshift_migration.label}: {reason}")
    pairs = load_fixture_pairs(docshift_config.migrations_dir, docshift_migration)
    if not pairs:
        pytest.skip(f"{docshift_migration.label}: no fixture pairs (docshift test --record writes some)")
    _report(check_expected(docshift_config, docshift_migration, pairs, docshift_store))


def test_up_is_idempotent(docshift_migration: Migration, docshift_checked_documents: list[Document]) -> None:
    """up() run again on its own result changes nothing."""
    _report(check_idempotent(docshift_migration, docshift_checked_documents))


def test_down_undoes_up(docshift_migration: Migration, docshift_checked_documents: list[Document]) -> None:
    """down(up(doc)) == doc, where the migration has a down()."""
    _report(check_round_trip(docshift_migration, docshift_checked_documents))


def test_rules_hold_after_up(
    docshift_migration: Migration, docshift_checked_documents: list[Document]
) -> None:
    """The migration's rules pass on up(doc)."""
    _report(check_rules(docshift_migration, docshift_checked_documents))


def test_up_returns_storable_values(
    docshift_migration: Migration, docshift_checked_documents: list[Document]
) -> None:
    """up() never raises, and returns only what Firestore can store."""
    _report(check_storable(docshift_migration, docshift_checked_documents))


def test_migration_files(docshift_config: Config, docshift_history: Mapping[str, Any]) -> None:
    """The migration files load, with unique, ordered ids, and none drifted from the history."""
    _report(check_files(docshift_config.migrations_dir, dict(docshift_history)))

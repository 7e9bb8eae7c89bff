"""The built-in checks of a migration, and the fixture pairs kept beside the migrations.

One implementation, used by the pytest plugin (:mod:`docshift.testing.plugin`) and by
``docshift test``: each check takes a loaded migration and documents and returns a
:class:`CheckResult` naming every document that fails, with a field-level diff. The checks call
``up``/``down`` as the engine does (a read-only :class:`~docshift.migration.DocView`; ``UNCHANGED``
and ``DELETE``; the result in the form Firestore stores it) and never touch a store.

* ``idempotent``: ``up(up(x))`` leaves ``up(x)`` as it is (a resumed or repeated run changes nothing);
* ``round_trip``: ``down(up(x)) == x``, where the migration has a ``down``;
* ``rules``: the migration's rules hold on ``up(x)``;
* ``storable``: ``up(x)`` is something Firestore can store (types, sizes, names, nesting);
* ``files``: the migration files load with unique, ordered ids, and none drifted from a history.

The fixture pairs of migration ``0007`` are ``<migrations>/tests/0007/*.json``, each one document
before and the document expected after (``null``: deleted)::

    {"path": "users/ada",
     "before": {"full_name": "Ada Lovelace"},
     "after": {"first_name": "Ada", "last_name": "Lovelace"}}

Values are JSON, with docshift's tagged form for the types JSON lacks (``{"$t": "ts", "v": [s, ns]}``,
see :mod:`docshift.codec`); ``path`` may be left out in a collection's pairs (the file name is the id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from docshift.codec import decode, encode
from docshift.engine.diff import field_changes
from docshift.errors import DataError, DocshiftError
from docshift.history import HistoryRecord
from docshift.loader import describe_file, load_migrations
from docshift.migration import DELETE, UNCHANGED, DocView, Migration, Transform
from docshift.planning import check_drift, check_order, migration_states
from docshift.store.base import Document, collection_of
from docshift.store.semantics import document_problem
from docshift.values import Value, as_stored, values_equal

__all__ = [
    "CHECKS",
    "FIXTURES_FOLDER",
    "Applied",
    "CheckResult",
    "Finding",
    "FixturePair",
    "apply_up",
    "check_files",
    "check_idempotent",
    "check_round_trip",
    "check_rules",
    "check_storable",
    "data_diff",
    "document_checks",
    "fixture_folder",
    "load_fixture_pairs",
    "pair_payload",
    "skip_reason",
]

FIXTURES_FOLDER = "tests"
"""The folder in the migrations folder that holds each migration's fixture pairs, by id."""

CHECKS = ("idempotent", "round_trip", "rules", "storable")
"""The checks run on documents, in the order they are reported."""

_PAIR_HINT = (
    'write each pair as {"path": "users/ada", "before": {...}, "after": {...}} '
    "(after null: up deletes it); see docs/testing.md"
)


@dataclass(frozen=True)
class Finding:
    """One document a check failed on: why, and the fields that differ (``- expected``, ``+ got``)."""

    check: str
    path: str
    message: str
    diff: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = [f"{self.path}: {self.message}", *(f"    {line}" for line in self.diff)]
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckResult:
    """What one check found for one migration. ``skipped`` says why it did not apply (no ``down``,
    no rules, a script migration); ``checked`` counts the documents it looked at."""

    check: str
    migration: str
    checked: int = 0
    findings: tuple[Finding, ...] = ()
    skipped: str | None = None
    unit: str = "document"
    """What ``checked`` counts (the files check counts migration files)."""

    @property
    def passed(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        if self.skipped is not None:
            return f"{self.migration}: {self.check} skipped: {self.skipped}"
        if self.passed:
            return f"{self.migration}: {self.check} ok on {_count(self.checked, self.unit)}"
        checked = _count(self.checked, self.unit)
        return f"{self.migration}: {self.check} FAILED on {len(self.findings)} of {checked}"

    def describe(self) -> str:
        """The summary, then each failing document with its diff: a failing test's message."""
        return "\n".join([self.summary(), *(finding.describe() for finding in self.findings)])

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "migration": self.migration,
            "checked": self.checked,
            "passed": self.passed,
            "skipped": self.skipped,
            "findings": [{"path": f.path, "message": f.message, "diff": list(f.diff)} for f in self.findings],
        }


def _count(count: int, unit: str) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


def skip_reason(migration: Migration) -> str | None:
    """Why the document checks do not apply to ``migration`` (a script migration), or ``None``."""
    if getattr(migration, "is_script", False):
        return (
            "a script migration (apply(ctx)) has no up/down to check document by document: test it "
            "with the plugin's seed, migrate and export fixtures"
        )
    return None


# --------------------------------------------------------------------------- applying a transform


@dataclass(frozen=True)
class Applied:
    """What a transform did to one document: new data (``data``), a delete, or an error."""

    data: dict[str, Value] | None = None
    deleted: bool = False
    unchanged: bool = False
    error: str | None = None


def apply_up(migration: Migration, document: Document) -> Applied:
    """``up(document)`` as the engine calls it, in the form Firestore stores the result."""
    return _apply(migration.up, "up", document)


def _apply(transform: Transform, name: str, document: Document) -> Applied:
    """``transform`` on ``document`` as the engine calls it; ``UNCHANGED`` gives the data as read."""
    try:
        result = transform(DocView(document))
    except Exception as exc:
        return Applied(error=f"{name}() raised {type(exc).__name__}: {exc}")
    if result is UNCHANGED:
        return Applied(data=document.data, unchanged=True)
    if result is DELETE:
        return Applied(deleted=True)
    if not isinstance(result, dict):
        return Applied(
            error=f"{name}() returned a {type(result).__name__}; return a dict, UNCHANGED or DELETE"
        )
    stored, _ = as_stored(result)
    return Applied(data=stored)


def data_diff(expected: Mapping[str, Value] | None, actual: Mapping[str, Value] | None) -> list[str]:
    """The fields that differ, one line each: ``- field: expected`` and ``+ field: got`` (a map's
    fields by their dotted paths); a missing document is ``(no document)``."""
    if expected is None or actual is None:
        if expected is None and actual is None:
            return []
        return [
            f"- {_shown_document(expected)}",
            f"+ {_shown_document(actual)}",
        ]
    lines: list[str] = []
    for change in field_changes(expected, actual):
        name = ".".join(change.path)
        if not change.added:
            lines.append(f"- {name}: {change.old!r}")
        if not change.removed:
            lines.append(f"+ {name}: {change.new!r}")
    return lines


def _shown_document(data: Mapping[str, Value] | None) -> str:
    return "(no document)" if data is None else repr(dict(data))


def _after(migration: Migration, document: Document) -> Document | None:
    """``up(document)`` as a document at its destination, or ``None`` (deleted or failed)."""
    applied = _apply(migration.up, "up", document)
    if applied.data is None:
        return None
    return Document(migration.target.destination(document.path), applied.data)


# --------------------------------------------------------------------------- the document checks


def check_idempotent(migration: Migration, documents: Iterable[Document]) -> CheckResult:
    """``up`` applied to what ``up`` returned changes nothing more (a repeated or resumed run
    writes nothing), on every document."""
    findings: list[Finding] = []
    checked = 0
    for document in documents:
        checked += 1
        once = _apply(migration.up, "up", document)
        if once.error is not None or once.data is None or once.unchanged:
            continue  # an error is the storable check's; a delete or no change is done once
        twice = _apply(migration.up, "up", Document(document.path, once.data))
        if twice.error is not None:
            findings.append(Finding("idempotent", document.path, f"on its own result, {twice.error}"))
        elif twice.deleted:
            findings.append(
                Finding(
                    "idempotent",
                    document.path,
                    "up() deletes the document it returned: a second run would delete it",
                )
            )
        elif twice.data is not None and not values_equal(twice.data, once.data):
            findings.append(
                Finding(
                    "idempotent",
                    document.path,
                    "up() is not idempotent: run again on its own result it changes it "
                    "(- after one run, + after two)",
                    tuple(data_diff(once.data, twice.data)),
                )
            )
    return CheckResult("idempotent", migration.label, checked, tuple(findings))


def check_round_trip(migration: Migration, documents: Iterable[Document]) -> CheckResult:
    """``down(up(x)) == x`` for every document ``up`` changes, where the migration has a ``down``."""
    if migration.down is None:
        return CheckResult(
            "round_trip", migration.label, skipped="it has no down() (a rollback restores before-images)"
        )
    if migration.target.copy_to:
        return CheckResult(
            "round_trip", migration.label, skipped="a copy's rollback deletes the copy; down() is not used"
        )
    down = migration.down
    findings: list[Finding] = []
    checked = 0
    for document in documents:
        checked += 1
        once = _apply(migration.up, "up", document)
        if once.error is not None or once.data is None or once.unchanged:
            continue  # nothing changed to undo (a delete is undone from its before-image)
        back = _apply(down, "down", Document(document.path, once.data))
        if back.error is not None:
            findings.append(Finding("round_trip", document.path, f"on up()'s result, {back.error}"))
            continue
        if back.data is None or not values_equal(back.data, document.data):
            original, _ = as_stored(document.data)
            findings.append(
                Finding(
                    "round_trip",
                    document.path,
                    "down() does not undo up(): down(up(doc)) differs from doc "
                    "(- the document, + down(up(document)))",
                    tuple(data_diff(original, back.data)),
                )
            )
    return CheckResult("round_trip", migration.label, checked, tuple(findings))


def check_rules(migration: Migration, documents: Iterable[Document]) -> CheckResult:
    """Every rule of the migration checked on each document (``inline``) holds on ``up(x)``."""
    rules = [rule for rule in migration.rules if rule.inline]
    if not rules:
        reason = "it declares no rules" if not migration.rules else "its rules describe the whole collection"
        return CheckResult("rules", migration.label, skipped=reason)
    findings: list[Finding] = []
    checked = 0
    for document in documents:
        checked += 1
        after = _after(migration, document)
        if after is None:
            continue
        broken = [
            f"{rule.name}: {message}" for rule in rules if (message := rule.check(after.path, after.data))
        ]
        if broken:
            findings.append(Finding("rules", document.path, "up()'s result breaks a rule", tuple(broken)))
    return CheckResult("rules", migration.label, checked, tuple(findings))


def check_storable(migration: Migration, documents: Iterable[Document]) -> CheckResult:
    """``up`` returns, for every document, something Firestore stores: a dict of storable values
    within its limits, ``UNCHANGED`` or ``DELETE``; and it does not raise."""
    findings: list[Finding] = []
    checked = 0
    for document in documents:
        checked += 1
        applied = _apply(migration.up, "up", document)
        if applied.error is not None:
            findings.append(Finding("storable", document.path, applied.error))
            continue
        if applied.data is None or applied.unchanged:
            continue
        destination = migration.target.destination(document.path)
        problem = document_problem(destination, applied.data)
        if problem:
            findings.append(
                Finding("storable", document.path, f"Firestore would refuse up()'s result: {problem}")
            )
    return CheckResult("storable", migration.label, checked, tuple(findings))


_DOCUMENT_CHECKS: dict[str, Callable[[Migration, Iterable[Document]], CheckResult]] = {
    "idempotent": check_idempotent,
    "round_trip": check_round_trip,
    "rules": check_rules,
    "storable": check_storable,
}


def document_checks(
    migration: Migration, documents: Sequence[Document], checks: Sequence[str] = CHECKS
) -> list[CheckResult]:
    """The named checks (all by default) of ``migration`` on ``documents``; a script migration's
    are skipped, saying why."""
    reason = skip_reason(migration)
    if reason is not None:
        return [CheckResult(check, migration.label, skipped=reason) for check in checks]
    return [_DOCUMENT_CHECKS[check](migration, documents) for check in checks]


def check_files(folder: Path, history: Mapping[str, HistoryRecord] | None = None) -> CheckResult:
    """The migration files load, with unique ids in order; with ``history`` (a database's records),
    none applied there was edited or removed since, and none pending has an id below one applied."""
    label = describe_file(folder)
    try:
        migrations = load_migrations(folder)
        if history is not None:
            states = migration_states(migrations, history)
            check_drift(states, allow_drift=False)
            check_order(states)
    except DocshiftError as exc:
        message = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        return CheckResult("files", label, 1, (Finding("files", label, message),), unit="migrations folder")
    return CheckResult("files", label, len(migrations), unit="migration file")


# --------------------------------------------------------------------------- fixture pairs


@dataclass(frozen=True)
class FixturePair:
    """A document before a migration and the document expected after it (``None``: deleted)."""

    file: Path
    path: str
    before: dict[str, Value]
    after: dict[str, Value] | None

    @property
    def document(self) -> Document:
        return Document(self.path, self.before)


def fixture_folder(migrations_dir: Path, migration: Migration) -> Path:
    """``<migrations>/tests/<id>``: where the migration's fixture pairs are kept."""
    return migrations_dir / FIXTURES_FOLDER / migration.id


def load_fixture_pairs(migrations_dir: Path, migration: Migration) -> list[FixturePair]:
    """The migration's fixture pairs, in file-name order (none when the folder does not exist);
    a file that is not a pair raises :class:`~docshift.errors.DataError` naming it."""
    folder = fixture_folder(migrations_dir, migration)
    if not folder.is_dir():
        return []
    return [_read_pair(path, migration) for path in sorted(folder.glob("*.json"))]


def _read_pair(file: Path, migration: Migration) -> FixturePair:
    shown = describe_file(file)
    try:
        raw = orjson.loads(file.read_bytes())
    except OSError as exc:
        raise DataError(
            f"{shown}: cannot be read: {exc.strerror}", hint="check the file's permissions"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{shown}: not valid JSON: {exc}", hint=_PAIR_HINT) from None
    if not isinstance(raw, dict) or "before" not in raw or "after" not in raw:
        raise DataError(f"{shown}: is not a fixture pair (it needs before and after)", hint=_PAIR_HINT)
    extra = sorted(set(raw) - {"path", "before", "after"})
    if extra:
        raise DataError(f"{shown}: unknown key {extra[0]!r}", hint=_PAIR_HINT)
    try:
        before, after = decode(raw["before"]), decode(raw["after"])
    except DocshiftError as exc:
        raise DataError(f"{shown}: {exc.message}", hint=exc.hint) from None
    if not isinstance(before, dict) or not (after is None or isinstance(after, dict)):
        raise DataError(f"{shown}: before must be a map, and after a map or null", hint=_PAIR_HINT)
    path = _pair_path(shown, raw.get("path"), file.stem, migration)
    for which, data in (("before", before), ("after", after)):
        problem = None if data is None else document_problem(path, data)
        if problem is not None:
            raise DataError(
                f"{shown}: its {which} cannot be stored in Firestore: {problem}",
                hint=f"fix the file's {which} document (Firestore refuses it as it is)",
            )
    return FixturePair(file, path, before, after)


def _pair_path(shown: str, given: Any, stem: str, migration: Migration) -> str:
    """The pair's document path: as given, or ``<collection>/<file name>``; in the target."""
    target = migration.target
    if given is None:
        if target.group:
            raise DataError(
                f"{shown}: a pair of a collection group migration needs its document's path",
                hint=f'add "path": "<parent>/{target.collection}/{stem}" to the file',
            )
        return f"{target.collection}/{stem}"
    if not isinstance(given, str) or given.count("/") % 2 != 1 or "" in given.split("/"):
        raise DataError(
            f"{shown}: path {given!r} is not a document path", hint='write e.g. "path": "users/ada"'
        )
    collection = collection_of(given)
    inside = (
        collection.rsplit("/", 1)[-1] == target.collection
        if target.group
        else collection == target.collection
    )
    if not inside:
        raise DataError(
            f"{shown}: {given} is not in the migration's target ({target.describe()})",
            hint=f"give a path in {target.collection}, or move the file to that migration's folder",
        )
    return given


def pair_payload(path: str, before: Mapping[str, Value], after: Mapping[str, Value] | None) -> bytes:
    """A fixture pair file's bytes: readable JSON (indented, keys as written), ending in a newline."""
    body = {
        "path": path,
        "before": encode(dict(before)),
        "after": None if after is None else encode(dict(after)),
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"

"""Find, check and import migration files, strictly: one bad file stops everything before anything runs.

Rules for the migrations folder (also in docs/migrations.md):

* A migration file is named ``NNNN_slug.py``: the id is the number written zero-padded to at least
  four digits (``0001`` … ``9999``, then ``10000``), the slug is lower-case letters, digits and ``_``.
  So every number has exactly one spelling and ``0007`` and ``00007`` cannot both exist.
* Files are ordered by their numeric id. Gaps are allowed; two files with the same id are refused.
* Files whose names start with ``_`` or ``.`` are helpers and ignored, as are non-``.py`` files;
  any other ``.py`` file is a misnamed migration and refused (it would otherwise silently never run).
* Whether a new file's id is lower than an already-applied one is a question for the history, so it
  is answered by :func:`docshift.planning.check_order`, not here.

Every failure is one :class:`~docshift.errors.MigrationFileError` naming the file and, where Python
knows it, the line.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import re
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from docshift.errors import DocshiftError, MigrationFileError, UsageError
from docshift.migration import Migration, MigrationKind, Target
from docshift.store.base import Filter
from docshift.store.semantics import query_problem
from docshift.validators.rules import Rule

__all__ = [
    "FILE_PATTERN",
    "checksum_of",
    "describe_file",
    "file_kind",
    "load_migration",
    "load_migrations",
    "migration_files",
    "next_migration_path",
    "slugify",
]

FILE_PATTERN = re.compile(r"(?P<id>\d{4,})_(?P<name>[a-z0-9][a-z0-9_]*)\.py")
"""``0001_split_full_name.py``: the id, then the slug."""

_SLUG_MAX = 60
_FILE_HINT = "name migration files NNNN_slug.py, e.g. 0001_split_full_name.py (docshift new does this)"


def checksum_of(source: str) -> str:
    """sha256 of the source with line endings, trailing spaces and trailing blank lines normalised,
    so re-saving a file on another OS or editor does not count as an edit (drift)."""
    lines = [line.rstrip() for line in source.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def describe_file(path: Path) -> str:
    """How error messages name a file: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _fail(path: Path, message: str, line: int | None = None, *, hint: str | None) -> MigrationFileError:
    """The error for a bad migration file, at ``line``; ``hint`` (required) says what to do."""
    where = describe_file(path) + (f":{line}" if line else "")
    return MigrationFileError(f"{where}: {message}", hint=hint)


def _parse_name(path: Path) -> tuple[int, str]:
    match = FILE_PATTERN.fullmatch(path.name)
    if match is None:
        raise _fail(path, "is not a valid migration file name", hint=_FILE_HINT)
    number = int(match["id"])
    if match["id"] != f"{number:04d}":
        raise _fail(path, f"id {match['id']} must be written {number:04d}", hint=_FILE_HINT)
    return number, match["name"]


def migration_files(folder: Path) -> list[Path]:
    """The migration files in ``folder``, checked for names and unique ids, in id order."""
    if not folder.is_dir():
        raise UsageError(
            f"the migrations folder {describe_file(folder)} does not exist",
            hint="run `docshift init`, or set migrations_dir in docshift.toml",
        )
    by_number: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".py" or path.name.startswith(("_", ".")) or not path.is_file():
            continue
        number, _ = _parse_name(path)
        if number in by_number:
            raise _fail(
                path,
                f"has the same id {number:04d} as {by_number[number].name}",
                hint="give each migration its own id; renumber the newer file to the next free one",
            )
        by_number[number] = path
    return [by_number[number] for number in sorted(by_number)]


def file_kind(path: Path) -> MigrationKind | None:
    """The kind of a migration file by its top-level functions alone, without importing it (for
    views that must work when a file does not load); None when it cannot be told."""
    try:
        tree = ast.parse(path.read_bytes().decode("utf-8-sig"), str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    if ("up" in names) == ("apply" in names):
        return None
    return MigrationKind.SCRIPT if "apply" in names else MigrationKind.DOCUMENT


def load_migrations(folder: Path) -> list[Migration]:
    """Every migration in ``folder``, sorted by id; raises on the first bad file."""
    return [load_migration(path) for path in migration_files(folder)]


def load_migration(path: Path) -> Migration:
    """Import one migration file and check every setting it declares."""
    number, name = _parse_name(path)
    try:
        raw = path.read_bytes()
        source = raw.decode("utf-8-sig")
    except OSError as exc:
        raise _fail(path, f"cannot be read: {exc.strerror}", hint="check the file's permissions") from None
    except UnicodeDecodeError:
        raise _fail(path, "is not UTF-8 text", hint="save the file as UTF-8") from None
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
        tree = ast.parse(source, str(path))
    except SyntaxError as exc:
        raise _fail(
            path,
            f"syntax error: {exc.msg}",
            exc.lineno,
            hint="fix the Python syntax at that line (`python -m py_compile FILE` shows it too); nothing "
            "was run",
        ) from None
    module = _execute(path, code)
    settings = _Settings(path, module, tree)
    if settings.kind() is MigrationKind.SCRIPT:
        return Migration.script(
            f"{number:04d}",
            name,
            settings.description(name),
            settings.script(),
            path=path,
            checksum=checksum_of(source),
        )
    up = settings.transform("up", required=True)
    assert up is not None
    return Migration(
        id=f"{number:04d}",
        name=name,
        description=settings.description(name),
        target=settings.target(),
        up=up,
        down=settings.transform("down", required=False),
        rules=settings.rules(),
        path=path,
        checksum=checksum_of(source),
    )


def _execute(path: Path, code: Any) -> ModuleType:
    """Run the file as a module under a unique name, registered only while it runs (dataclasses and
    typing need ``sys.modules`` then), so loading twice or two folders never collide."""
    module_name = f"_docshift_migration_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except MigrationFileError:
        raise
    except (Exception, SystemExit) as exc:
        line = _line_in(path, exc)
        kind = "cannot import" if isinstance(exc, ImportError) else "failed while loading"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"{kind}: {type(exc).__name__}" + (f": {detail}" if detail else "")
        raise _fail(path, message, line, hint="fix the file; nothing was run") from None
    finally:
        sys.modules.pop(module_name, None)
    return module


def _line_in(path: Path, exc: BaseException) -> int | None:
    """The deepest line of ``path`` in the exception's traceback."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return line


_NOT_IN_SCRIPTS = {
    "down": "a script is rolled back by restoring the before-images of what it wrote",
    "collection": "a script reads what it names through ctx.stream(...) and ctx.get(...)",
    "collection_group": "a script reads what it names through ctx.stream(..., group=True)",
    "where": "pass where=[...] to ctx.stream(...)",
    "limit": "pass limit=... to ctx.stream(...)",
    "copy_to": "write where the result goes with ctx.set(path, data)",
    "rules": "check the data in apply() and raise to stop the run",
}
"""Settings of a document migration, refused in a script, with what to do instead."""


class _Settings:
    """Reads and checks a loaded module's module-level settings, pointing errors at their lines."""

    def __init__(self, path: Path, module: ModuleType, tree: ast.Module) -> None:
        self.path = path
        self.values = vars(module)
        self.lines: dict[str, int] = {}
        for node in tree.body:
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.lines[node.name] = node.lineno
            for target in targets:
                if isinstance(target, ast.Name):
                    self.lines[target.id] = node.lineno

    def fail(self, setting: str, message: str, hint: str | None) -> MigrationFileError:
        return _fail(self.path, message, self.lines.get(setting), hint=hint)

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def kind(self) -> MigrationKind:
        """``up(doc)``: a document migration; ``apply(ctx)``: a script. Exactly one of the two."""
        up, apply = self.get("up"), self.get("apply")
        if up is not None and apply is not None:
            raise self.fail(
                "apply",
                "defines both up(doc) and apply(ctx)",
                hint="keep up(doc) to change each document of a collection, or apply(ctx) for a script "
                "migration (docs/script-migrations.md); one file is one kind",
            )
        if up is None and apply is None:
            raise self.fail(
                "up",
                "has neither up(doc) nor apply(ctx)",
                hint="define `def up(doc):` returning each document's new data, or `def apply(ctx):` for a "
                "script migration (docshift new --script writes one)",
            )
        return MigrationKind.SCRIPT if apply is not None else MigrationKind.DOCUMENT

    def script(self) -> Callable[..., Any]:
        """A script migration's ``apply(ctx)``, checked, and its file free of the settings of a
        document migration (which a script would silently ignore)."""
        for setting, instead in _NOT_IN_SCRIPTS.items():
            if self.get(setting) is not None:
                raise self.fail(
                    setting,
                    f"a script migration (apply) takes no {setting}",
                    hint=f"{instead}, and remove {setting}",
                )
        value = self.get("apply")
        if not callable(value):
            raise self.fail(
                "apply",
                f"apply must be a function taking the context, got a {type(value).__name__}",
                hint="define `def apply(ctx):` that reads and writes through ctx",
            )
        try:
            inspect.signature(value).bind(None)
        except TypeError:
            raise self.fail(
                "apply",
                "apply must take exactly one argument, the context (ctx)",
                hint="define it as `def apply(ctx):`",
            ) from None
        except ValueError:  # builtins without a signature: let them be
            pass
        if inspect.iscoroutinefunction(value) or inspect.isgeneratorfunction(value):
            raise self.fail(
                "apply",
                "apply must be a plain function (not async, not a generator)",
                hint="define `def apply(ctx):` (no async, no yield)",
            )
        return value  # type: ignore[no-any-return]

    def description(self, name: str) -> str:
        value = self.get("description")
        if value is None:
            return name.replace("_", " ")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                "description",
                "description must be a non-empty string",
                hint='write description = "what the change does", or remove it to use the file name',
            )
        return value.strip()

    def transform(self, name: str, *, required: bool) -> Callable[..., Any] | None:
        value = self.get(name)
        if value is None:
            if required:
                raise self.fail(
                    name,
                    "has no up(doc) function",
                    hint="define `def up(doc: DocView) -> Result:` returning the new data",
                )
            return None
        if not callable(value):
            kind = type(value).__name__
            raise self.fail(
                name,
                f"{name} must be a function taking one document, got a {kind}",
                hint=f"define `def {name}(doc):` returning the new data, DELETE or UNCHANGED",
            )
        try:
            inspect.signature(value).bind(None)
        except TypeError:
            raise self.fail(
                name,
                f"{name} must take exactly one argument, the document (doc)",
                hint=f"define it as `def {name}(doc):`",
            ) from None
        except ValueError:  # builtins without a signature: let them be
            pass
        if inspect.iscoroutinefunction(value) or inspect.isgeneratorfunction(value):
            raise self.fail(
                name,
                f"{name} must be a plain function (not async, not a generator)",
                hint=f"define `def {name}(doc):` that returns its result (no async, no yield)",
            )
        return value  # type: ignore[no-any-return]

    def target(self) -> Target:
        collection, group = self.get("collection"), self.get("collection_group")
        if collection is not None and group is not None:
            raise self.fail(
                "collection_group",
                "set either collection or collection_group, not both",
                hint="collection reads one collection path; collection_group every collection with that id: "
                "keep the one you mean",
            )
        if collection is None and group is None:
            raise self.fail(
                "collection",
                "declares no target",
                hint='set collection = "users" (a collection path) or collection_group = "orders"',
            )
        setting = "collection" if collection is not None else "collection_group"
        value = collection if collection is not None else group
        if not isinstance(value, str) or not value.strip("/ "):
            raise self.fail(
                setting,
                f"{setting} must be a non-empty string, got {value!r}",
                hint='write e.g. collection = "users" or collection_group = "orders"',
            )
        if group is not None and "/" in value.strip("/"):
            raise self.fail(
                setting,
                f"collection_group must be one collection id, got {value!r}",
                hint='a group is a collection id such as "orders", found at any depth',
            )
        target = Target(
            value.strip("/"),
            group=group is not None,
            filters=self.filters(),
            limit=self.limit(),
            copy_to=self.copy_to(value.strip("/")),
        )
        try:
            target.query()
        except DocshiftError as exc:
            raise self.fail(setting, f"{setting}: {exc.message}", exc.hint) from None
        return target

    def filters(self) -> tuple[Filter, ...]:
        raw = self.get("where")
        if raw is None:
            return ()
        if not isinstance(raw, list | tuple):
            raise self.fail(
                "where",
                f"where must be a list of (field, op, value) tuples, got a {type(raw).__name__}",
                hint='write where = [("status", "==", "active")], or remove it to read every document',
            )
        filters: list[Filter] = []
        for item in raw:
            if not isinstance(item, list | tuple) or len(item) != 3 or not isinstance(item[0], str):
                raise self.fail(
                    "where",
                    f"where entry {item!r} is not a (field, op, value) tuple",
                    hint='write where = [("status", "==", "active")]',
                )
            field_path, op, value = item
            try:
                filters.append(Filter.parse(field_path, str(op), value))
            except DocshiftError as exc:
                raise self.fail("where", f"where: {exc.message}", exc.hint) from None
        problem = query_problem(filters)
        if problem:
            raise self.fail(
                "where",
                f"where: {problem}",
                hint="Firestore refuses such a query: split the values over several migrations, or "
                "filter in up() and return UNCHANGED for the documents to leave alone",
            )
        return tuple(filters)

    def limit(self) -> int | None:
        value = self.get("limit")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(
                "limit",
                f"limit must be a whole number above 0 or None, got {value!r}",
                hint="write e.g. limit = 1000, or limit = None (or remove it) to read every document",
            )
        return value

    def copy_to(self, source: str) -> str | None:
        value = self.get("copy_to")
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip("/ "):
            raise self.fail(
                "copy_to",
                f"copy_to must be a collection path or None, got {value!r}",
                hint='write e.g. copy_to = "users_v2", or remove it to change documents in place',
            )
        value = value.strip("/")
        parts = value.split("/")
        if any(not part for part in parts) or len(parts) % 2 != 1:
            raise self.fail(
                "copy_to",
                f"copy_to {value!r} is not a collection path",
                hint="a collection path has an odd number of segments: users_v2 or users/alice/orders",
            )
        if value == source:
            raise self.fail(
                "copy_to",
                "copy_to is the source collection itself",
                hint="name another collection, or remove copy_to to change the documents in place",
            )
        return value

    def rules(self) -> tuple[Any, ...]:
        value = self.get("rules")
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise self.fail(
                "rules",
                f"rules must be a list, got a {type(value).__name__}",
                hint='write rules = [required("email"), ...] with rules from docshift.validators',
            )
        for index, item in enumerate(value):
            if not isinstance(item, Rule):
                raise self.fail(
                    "rules",
                    f"rules[{index}] is a {type(item).__name__}, not a rule",
                    hint='build rules with docshift.validators, e.g. required("email")',
                )
        return tuple(value)


def slugify(description: str) -> str:
    """``"Split full name!"`` -> ``split_full_name``: the file-name part of a description."""
    slug = re.sub(r"[^a-z0-9]+", "_", description.lower()).strip("_")
    return slug[:_SLUG_MAX].rstrip("_")


def next_migration_path(folder: Path, description: str) -> Path:
    """Where ``docshift new`` writes the next file: one above the highest id in ``folder``."""
    slug = slugify(description)
    if not slug:
        raise UsageError(
            f"cannot make a file name from the description {description!r}",
            hint='describe the change with letters or digits, e.g. "split full name"',
        )
    highest = 0
    for path in migration_files(folder):
        highest = max(highest, _parse_name(path)[0])
    return folder / f"{highest + 1:04d}_{slug}.py"

"""``docshift init`` and ``docshift new``: create the project's files from the packaged templates
(and keep the run state out of git)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template

from docshift.errors import DocshiftError, UsageError
from docshift.loader import describe_file, next_migration_path
from docshift.migration import Target

__all__ = [
    "InitResult",
    "ignore_run_state",
    "init_project",
    "new_migration",
    "render_config",
    "render_migration",
]

CONFIG_NAME = "docshift.toml"
MIGRATIONS_NAME = "migrations"


def _template(name: str) -> Template:
    return Template(resources.files("docshift").joinpath("templates", name).read_text(encoding="utf-8"))


def _literal(text: str) -> str:
    """A double-quoted Python (and TOML) string literal; JSON escapes are valid in both."""
    return json.dumps(text, ensure_ascii=False)


def render_config(project: str | None = None) -> str:
    project_line = f"project = {_literal(project)}" if project else '# project = "my-project"'
    return _template("docshift.toml.tmpl").substitute(project_line=project_line)


def render_migration(
    migration_id: str,
    description: str,
    *,
    collection: str | None = None,
    collection_group: str | None = None,
    created: datetime | None = None,
) -> str:
    """The source of a new migration file; the unused target option is left as a comment."""
    if collection is not None and collection_group is not None:
        raise UsageError(
            "give --collection or --collection-group, not both",
            hint="--collection reads one collection path, --collection-group every collection with "
            "that id: keep the one you mean",
        )
    if collection_group is not None:
        collection_line = '# collection = "users"'
        group_line = f"collection_group = {_literal(collection_group)}"
    else:
        collection_line = f"collection = {_literal(collection or '')}"
        group_line = '# collection_group = "orders"'
    stamp = (created or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    first_line = " ".join(description.split()).replace('"""', "'''").replace("\\", "/")
    return _template("migration.py.tmpl").substitute(
        migration_id=migration_id,
        description=first_line,
        description_literal=_literal(description.strip()),
        created=stamp,
        collection_line=collection_line,
        group_line=group_line,
    )


def render_script(migration_id: str, description: str, *, created: datetime | None = None) -> str:
    """The source of a new script migration file (``apply(ctx)``)."""
    stamp = (created or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    first_line = " ".join(description.split()).replace('"""', "'''").replace("\\", "/")
    return _template("script.py.tmpl").substitute(
        migration_id=migration_id,
        description=first_line,
        description_literal=_literal(description.strip()),
        created=stamp,
    )


GITIGNORE_NAME = ".gitignore"
RUNS_IGNORE = "/.docshift/"
"""The .gitignore line for the run state (``runs_dir`` in the config ``init`` writes): checkpoints,
before-images of production data and reports do not belong in a repository."""
_IGNORING = {".docshift", ".docshift/", "/.docshift", "/.docshift/", ".docshift/*", "/.docshift/*"}


@dataclass(frozen=True)
class InitResult:
    config_file: Path
    migrations_dir: Path
    created_migrations_dir: bool
    gitignore: Path
    gitignore_change: str
    """``created``, ``added`` (the line was appended to an existing file) or ``kept`` (it had it)."""


def _check_gitignore(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise UsageError(
            f"{describe_file(path)} exists and is not a file; nothing created",
            hint="move it away, or run `docshift init` in another folder",
        )


def ignore_run_state(folder: Path) -> tuple[Path, str]:
    """Make ``folder``'s .gitignore ignore the run state: create it, or add the line once."""
    path = folder / GITIGNORE_NAME
    _check_gitignore(path)
    entry = f"# docshift run state (checkpoints, before-images, reports)\n{RUNS_IGNORE}\n"
    if not path.exists():
        path.write_text(entry, encoding="utf-8")
        return path, "created"
    text = path.read_text(encoding="utf-8", errors="replace")
    if any(line.strip() in _IGNORING for line in text.splitlines()):
        return path, "kept"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("" if text.endswith("\n") or not text else "\n") + entry)
    return path, "added"


def init_project(folder: Path, *, project: str | None = None) -> InitResult:
    """Create ``docshift.toml`` and ``migrations/`` in ``folder``, and make its ``.gitignore``
    ignore the run state; never overwrite a config file."""
    config_file = folder / CONFIG_NAME
    migrations = folder / MIGRATIONS_NAME
    if config_file.exists():
        raise UsageError(
            f"{describe_file(config_file)} already exists; not overwritten",
            hint="edit it, or delete it first to start over",
        )
    if migrations.exists() and not migrations.is_dir():
        raise UsageError(
            f"{describe_file(migrations)} exists and is not a folder; nothing created",
            hint="move that file away, or run `docshift init` in another folder",
        )
    _check_gitignore(folder / GITIGNORE_NAME)
    folder.mkdir(parents=True, exist_ok=True)
    created = not migrations.exists()
    migrations.mkdir(exist_ok=True)
    with config_file.open("x", encoding="utf-8") as handle:  # "x": refuse if created meanwhile
        handle.write(render_config(project))
    gitignore, change = ignore_run_state(folder)
    return InitResult(config_file, migrations, created, gitignore, change)


def _check_target(collection: str | None, collection_group: str | None) -> None:
    try:
        if collection is not None:
            Target(collection).query()
        if collection_group is not None:
            Target(collection_group, group=True).query()
    except DocshiftError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None


def new_migration(
    migrations_dir: Path,
    description: str,
    *,
    collection: str | None = None,
    collection_group: str | None = None,
    script: bool = False,
) -> Path:
    """Write the next migration file from the template (``script``: a script migration's) and
    return its path."""
    if script and (collection or collection_group):
        raise UsageError(
            "a script migration (--script) has no --collection or --collection-group",
            hint="drop the target: a script reads what it names through ctx.stream(...) and ctx.get(...)",
        )
    _check_target(collection, collection_group)
    path = next_migration_path(migrations_dir, description)
    migration_id = path.name.split("_", 1)[0]
    if script:
        source = render_script(migration_id, description)
    else:
        source = render_migration(
            migration_id,
            description,
            collection=collection,
            collection_group=collection_group,
        )
    with path.open("x", encoding="utf-8") as handle:
        handle.write(source)
    return path

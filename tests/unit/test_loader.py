"""Loading migration files: ordering, checksums, the template, and one test per kind of bad file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from docshift.commands.project import init_project, new_migration, render_migration
from docshift.errors import MigrationFileError, UsageError
from docshift.history import HistoryRecord, MigrationStatus
from docshift.loader import checksum_of, load_migrations, next_migration_path, slugify
from docshift.migration import DELETE, UNCHANGED, DocView, check_idempotent
from docshift.planning import check_order, migration_states
from docshift.store import Document, Op
from docshift.values import Timestamp

GOOD = """
description = "touch users"
collection = "users"

def up(doc):
    return doc.data
"""


def write(folder: Path, name: str, body: str = GOOD) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    path.mkdir()
    return path


def load_error(folder: Path) -> str:
    with pytest.raises(MigrationFileError) as caught:
        load_migrations(folder)
    message = str(caught.value)
    assert "\n" not in caught.value.message, "errors are one line"
    return message


# --- ordering and naming -------------------------------------------------------------------------


def test_files_load_in_numeric_id_order_with_gaps_and_helpers_ignored(folder: Path) -> None:
    for name in ["0010_ten.py", "0002_two.py", "0001_one.py", "12345_big.py"]:
        write(folder, name)
    write(folder, "_helpers.py", "X = 1\n")
    write(folder, "notes.txt", "not python")
    (folder / "__pycache__").mkdir()
    migrations = load_migrations(folder)
    assert [m.id for m in migrations] == ["0001", "0002", "0010", "12345"]
    assert [m.name for m in migrations] == ["one", "two", "ten", "big"]
    assert migrations[0].label == "0001_one"
    assert migrations[0].target.collection == "users" and not migrations[0].target.group


def test_two_files_with_one_id_are_refused(folder: Path) -> None:
    write(folder, "0001_first.py")
    write(folder, "0001_second.py")
    message = load_error(folder)
    assert "0001_second.py" in message and "same id 0001 as 0001_first.py" in message


@pytest.mark.parametrize("name", ["1_short.py", "0001-dash.py", "0001_Upper.py", "add_users.py", "0001.py"])
def test_misnamed_python_files_are_refused(folder: Path, name: str) -> None:
    write(folder, name)
    assert f"{name}: is not a valid migration file name" in load_error(folder)


def test_an_id_with_extra_zero_padding_is_refused(folder: Path) -> None:
    write(folder, "0001_one.py")
    write(folder, "00002_two.py")
    assert "00002_two.py: id 00002 must be written 0002" in load_error(folder)


def test_an_id_lower_than_an_applied_one_is_out_of_order(folder: Path) -> None:
    write(folder, "0001_one.py")
    write(folder, "0002_late.py")
    write(folder, "0003_three.py")
    migrations = load_migrations(folder)
    records = {
        i: _record(i, MigrationStatus.APPLIED, m.checksum)
        for i, m in (("0001", migrations[0]), ("0003", migrations[2]))
    }
    states = migration_states(migrations, records)
    assert [s.out_of_order for s in states] == [False, True, False]
    with pytest.raises(MigrationFileError, match=r"0002_late\.py: id 0002 is out of order: migration 0003"):
        check_order(states)
    # a rolled-back later migration does not make an earlier pending one out of order
    records["0003"] = _record("0003", MigrationStatus.ROLLED_BACK, migrations[2].checksum)
    check_order(migration_states(migrations, records))


def _record(migration_id: str, status: MigrationStatus, checksum: str) -> HistoryRecord:
    return HistoryRecord(migration_id, "d", checksum, status, Timestamp(1), Timestamp(2), "run", "u@h", "0")


def test_missing_folder_is_a_usage_error_pointing_at_init(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist") as caught:
        load_migrations(tmp_path / "nope")
    assert caught.value.hint is not None and "docshift init" in caught.value.hint


# --- one test per bad file ----------------------------------------------------------------------


def test_syntax_error_names_file_and_line(folder: Path) -> None:
    write(folder, "0001_bad.py", "collection = 'users'\n\ndef up(doc)\n    return doc.data\n")
    message = load_error(folder)
    assert "0001_bad.py:3: syntax error" in message


def test_import_error_names_file_and_line(folder: Path) -> None:
    write(folder, "0001_bad.py", "collection = 'users'\nimport no_such_module_xyz\n")
    message = load_error(folder)
    expected = "0001_bad.py:2: cannot import: ModuleNotFoundError: No module named 'no_such_module_xyz'"
    assert expected in message


def test_error_while_executing_the_file_names_the_line(folder: Path) -> None:
    write(folder, "0001_bad.py", "collection = 'users'\n\nTHRESHOLD = 1 / 0\n")
    assert "0001_bad.py:3: failed while loading: ZeroDivisionError" in load_error(folder)


def test_missing_up_is_refused(folder: Path) -> None:
    write(folder, "0001_bad.py", "collection = 'users'\n\ndef down(doc):\n    return doc.data\n")
    assert "0001_bad.py: has neither up(doc) nor apply(ctx)" in load_error(folder)


def test_up_that_is_not_a_one_argument_function_is_refused(folder: Path) -> None:
    write(folder, "0001_bad.py", "collection = 'users'\n\ndef up(doc, extra):\n    return doc.data\n")
    assert "0001_bad.py:3: up must take exactly one argument" in load_error(folder)
    write(folder, "0001_bad.py", "collection = 'users'\nup = 3\n")
    assert "0001_bad.py:2: up must be a function" in load_error(folder)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("collection = ''", ":1: collection must be a non-empty string"),
        ("collection = 'users/alice'", ":1: collection: 'users/alice' is not a collection path"),
        ("collection = 'users//orders'", ":1: collection: invalid path"),
        ("collection_group = 'users/orders'", ":1: collection_group must be one collection id"),
        ("collection = 'users'\ncollection_group = 'orders'", ":2: set either collection or"),
        ("description = 'no target'", ": declares no target"),
        ("collection = 'users'\ncopy_to = 'users/alice'", ":2: copy_to 'users/alice' is not a collection"),
        ("collection = 'users'\ncopy_to = 'users'", ":2: copy_to is the source collection itself"),
    ],
)
def test_bad_targets_are_refused(folder: Path, settings: str, expected: str) -> None:
    write(folder, "0001_bad.py", settings + "\n\ndef up(doc):\n    return doc.data\n")
    assert "0001_bad.py" + expected in load_error(folder)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("[('age', '~=', 3)]", "unsupported filter operator '~='"),
        ("[('tags', 'in', 'x')]", "needs a list value"),
        ("[('age', '>')]", "is not a (field, op, value) tuple"),
        ("('age', '>', 3)", "is not a (field, op, value) tuple"),
        ("[('a..b', '==', 1)]", "invalid field path"),
        ("'age > 3'", "where must be a list"),
    ],
)
def test_bad_filters_are_refused(folder: Path, where: str, expected: str) -> None:
    body = f"collection = 'users'\nwhere = {where}\n\ndef up(doc):\n    return doc.data\n"
    write(folder, "0001_bad.py", body)
    message = load_error(folder)
    assert "0001_bad.py:2: where" in message and expected in message


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("limit = 0", "limit must be a whole number above 0"),
        ("limit = True", "limit must be a whole number above 0"),
        ("description = 42", "description must be a non-empty string"),
        ("rules = 'not a list'", "rules must be a list"),
        ("rules = [print]", "rules[0] is a builtin_function_or_method, not a rule"),
    ],
)
def test_bad_options_are_refused(folder: Path, setting: str, expected: str) -> None:
    write(folder, "0001_bad.py", f"collection = 'users'\n{setting}\n\ndef up(doc):\n    return doc.data\n")
    assert f"0001_bad.py:2: {expected}" in load_error(folder)


def test_one_bad_file_stops_the_whole_folder(folder: Path) -> None:
    write(folder, "0001_good.py")
    write(folder, "0002_bad.py", "def up(doc):\n    return doc.data\n")
    assert "0002_bad.py: declares no target" in load_error(folder)


# --- what a good file gives ---------------------------------------------------------------------


def test_every_option_is_carried_into_the_migration(folder: Path) -> None:
    write(
        folder,
        "0003_full.py",
        """
        from docshift import DELETE, DocView
        from docshift.validators import required

        description = "  all options  "
        collection_group = "orders"
        where = [("status", "==", "open"), ("meta.total", ">=", 10)]
        limit = 500
        copy_to = "orders_v2"
        rules = [required("total")]

        def up(doc: DocView) -> object:
            return DELETE

        def down(doc: DocView) -> object:
            return doc.data
        """,
    )
    [migration] = load_migrations(folder)
    assert migration.id == "0003" and migration.name == "full" and migration.description == "all options"
    target = migration.target
    assert target.group and target.collection == "orders" and target.limit == 500
    assert target.copy_to == "orders_v2" and target.destination("shops/s/orders/o1") == "orders_v2/o1"
    assert [(f.field, f.op, f.value) for f in target.filters] == [
        (("status",), Op.EQ, "open"),
        (("meta", "total"), Op.GE, 10),
    ]
    assert migration.reversible and migration.down is not None
    assert [rule.name for rule in migration.rules] == ["required(total)"]
    assert migration.up(DocView(Document("orders/o", {}))) is DELETE


def test_description_defaults_to_the_slug_and_loading_leaves_sys_modules_alone(folder: Path) -> None:
    write(folder, "0001_split_full_name.py", "collection = 'users'\n\ndef up(doc):\n    return doc.data\n")
    before = set(sys.modules)
    first = load_migrations(folder)[0]
    second = load_migrations(folder)[0]
    assert first.description == "split full name"
    assert set(sys.modules) == before
    assert first.up is not second.up  # each load is a fresh module


# --- checksums ----------------------------------------------------------------------------------


def test_checksum_ignores_line_endings_trailing_spaces_and_trailing_blank_lines() -> None:
    source = "collection = 'users'\n\ndef up(doc):\n    return doc.data\n"
    base = checksum_of(source)
    assert len(base) == 64
    assert checksum_of(source.replace("\n", "\r\n")) == base
    assert checksum_of(source.replace("\n", "   \n")) == base
    assert checksum_of(source + "\n\n  \n") == base
    assert checksum_of(source.rstrip("\n")) == base
    assert checksum_of(source.replace("doc.data", "doc.data ")) == base
    assert checksum_of(source.replace("users", "people")) != base
    assert checksum_of("    " + source) != base  # leading indentation is code


def test_loaded_checksum_is_the_checksum_of_the_file(folder: Path) -> None:
    path = write(folder, "0001_one.py")
    [migration] = load_migrations(folder)
    assert migration.checksum == checksum_of(path.read_text())
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    assert load_migrations(folder)[0].checksum == migration.checksum


# --- init, new and the template -----------------------------------------------------------------


def test_next_migration_path_counts_up_from_the_highest_id(folder: Path) -> None:
    assert next_migration_path(folder, "Split full name!") == folder / "0001_split_full_name.py"
    write(folder, "0007_seven.py")
    assert next_migration_path(folder, "more") == folder / "0008_more.py"
    assert slugify("  Ünïcode & CAPS -- 2 ") == "n_code_caps_2"
    with pytest.raises(UsageError, match="cannot make a file name"):
        next_migration_path(folder, "!!!")


def test_init_creates_config_and_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = init_project(tmp_path, project="demo-x")
    assert result.config_file.read_text().count('project = "demo-x"') == 1
    assert result.migrations_dir.is_dir() and result.created_migrations_dir
    with pytest.raises(UsageError, match="already exists; not overwritten"):
        init_project(tmp_path)
    from docshift.config import load_config

    config = load_config({}, env={}, cwd=tmp_path)
    assert config.migrations_dir == tmp_path / "migrations"
    assert config.store.project == "demo-x" and config.store.state_prefix == "_docshift"


def test_new_writes_a_template_that_loads_and_shows_every_option(folder: Path) -> None:
    path = new_migration(folder, "split full name", collection="users")
    assert path.name == "0001_split_full_name.py"
    source = path.read_text()
    for option in (
        "description =",
        "collection =",
        "collection_group",
        "where:",
        "limit:",
        "copy_to:",
        "rules:",
        "def up(",
        "# def down(",
        "idempotent",
        "DELETE",
        "UNCHANGED",
    ):
        assert option in source, option
    [migration] = load_migrations(folder)
    assert migration.description == "split full name" and migration.target.collection == "users"
    doc = Document("users/a", {"full_name": "Ada Lovelace"})
    assert migration.up(DocView(doc)) == doc.data  # the template changes nothing until edited
    assert migration.down is None  # an example only: rollback restores the before-images
    second = new_migration(folder, "Tag orders", collection_group="orders")
    assert second.name == "0002_tag_orders.py"
    assert load_migrations(folder)[1].target.group


def test_new_without_a_target_writes_a_file_that_refuses_to_load_until_filled(folder: Path) -> None:
    new_migration(folder, "fill me in")
    assert "collection must be a non-empty string" in load_error(folder)


def test_new_rejects_a_bad_target_before_writing(folder: Path) -> None:
    with pytest.raises(UsageError, match="not a collection path"):
        new_migration(folder, "x", collection="users/alice")
    assert list(folder.iterdir()) == []


def test_rendered_template_passes_ruff_and_strict_mypy(tmp_path: Path) -> None:
    path = tmp_path / "0001_split_full_name.py"
    path.write_text(render_migration("0001", 'quotes " and \\ backslash', collection="users"))
    load_migrations(tmp_path)
    bin_dir = Path(sys.executable).parent
    ruff = subprocess.run(
        [str(bin_dir / "ruff"), "check", "--isolated", str(path)], capture_output=True, text=True, check=False
    )
    assert ruff.returncode == 0, ruff.stdout
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert mypy.returncode == 0, mypy.stdout


def test_idempotency_helper_flags_a_transform_that_changes_migrated_documents() -> None:
    samples = [Document("users/a", {"full_name": "Ada Lovelace"}), Document("users/b", {"first": "Bo"})]

    def good(doc: DocView) -> object:
        data = doc.data
        if "full_name" not in data:
            return UNCHANGED
        first, _, last = data.pop("full_name").partition(" ")
        return {**data, "first": first, "last": last}

    def bad(doc: DocView) -> object:
        data = doc.data
        return {**data, "visits": int(data.get("visits", 0)) + 1}

    assert check_idempotent(good, samples) == []
    assert check_idempotent(bad, samples) == ["users/a", "users/b"]

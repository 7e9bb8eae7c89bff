"""Layering rules, checked on the source's syntax trees (not by importing anything).

* only the Firestore adapter touches Google's libraries (``google.*`` and its ``grpc`` transport);
* only the command line uses ``rich``;
* only the config module reads the environment (the emulator harness and the CLI may too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import docshift

PACKAGE = Path(docshift.__file__).parent
ADAPTER = "store/firestore.py"
ENVIRONMENT_READERS = ("config.py", "emulator.py", "cli/")
KNOWN_ENVIRONMENT_READS: dict[str, str] = {
    # module -> reason, for a known breach awaiting a fix (strict xfail: fails once it is fixed)
}


def modules() -> list[tuple[str, ast.Module]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        found.append((relative, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return found


def imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every module an ``import`` names, anywhere in the file (including inside functions)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def environment_reads(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``os.environ``, ``os.getenv``, ``os.environb``, ``from os import environ`` and the like."""
    names = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in names
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            yield node.lineno, f"os.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in names:
                    yield node.lineno, f"from os import {alias.name}"


def uses(tree: ast.Module, *prefixes: str) -> list[str]:
    return sorted(
        {
            f"line {line}: {name}"
            for line, name in imported_modules(tree)
            if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
        }
    )


ALL_MODULES = modules()


def test_the_scan_sees_the_whole_package() -> None:
    names = {name for name, _ in ALL_MODULES}
    assert {"codec.py", "config.py", "emulator.py", ADAPTER, "store/base.py", "cli/__init__.py"} <= names


def test_the_detectors_find_violations_in_any_form() -> None:
    sample = ast.parse(
        "import google.cloud.firestore\n"
        "from google.auth import default\n"
        "import grpc as g\n"
        "def f():\n"
        "    from rich.console import Console\n"
        "    import os\n"
        "    return os.environ.get('X'), os.getenv('Y')\n"
        "from os import environ\n"
    )
    assert uses(sample, "google", "grpc") == [
        "line 1: google.cloud.firestore",
        "line 2: google.auth",
        "line 2: google.auth.default",
        "line 3: grpc",
    ]
    assert uses(sample, "rich") == ["line 5: rich.console", "line 5: rich.console.Console"]
    assert sorted(environment_reads(sample)) == [
        (7, "os.environ"),
        (7, "os.getenv"),
        (8, "from os import environ"),
    ]
    assert uses(ast.parse("import googlemaps\nimport richtext\n"), "google", "rich") == []


def test_only_the_firestore_adapter_imports_google_libraries() -> None:
    offenders = {
        name: found
        for name, tree in ALL_MODULES
        if name != ADAPTER and (found := uses(tree, "google", "grpc"))
    }
    assert offenders == {}
    adapter = dict(ALL_MODULES)[ADAPTER]
    assert uses(adapter, "google"), "the adapter is expected to be the module that talks to Google"


def test_only_the_command_line_imports_rich() -> None:
    offenders = {
        name: found
        for name, tree in ALL_MODULES
        if not name.startswith("cli/") and (found := uses(tree, "rich"))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_ENVIRONMENT_READS[name]))
        if name in KNOWN_ENVIRONMENT_READS
        else name
        for name, _ in ALL_MODULES
    ],
)
def test_only_config_emulator_and_cli_read_the_environment(name: str) -> None:
    tree = dict(ALL_MODULES)[name]
    reads = sorted(environment_reads(tree))
    if name.startswith(ENVIRONMENT_READERS):
        return
    assert reads == [], f"{name} reads the environment; resolve it in docshift.config instead"


def test_config_is_where_the_environment_is_read() -> None:
    assert any(True for _ in environment_reads(dict(ALL_MODULES)["config.py"]))

"""Layering rules, checked on the source's syntax trees (not by importing anything).

* the layer order: each package and top-level module has a layer (``LAYERS``, top first), and imports
  only from its own package or module and from layers below its own, anywhere in the file (imports
  inside functions included): cli -> commands -> engine -> store, nothing below importing what is
  above;
* only the Firestore adapter touches Google's libraries (``google.*`` and its ``grpc`` transport);
* only the command line uses ``rich``;
* only the config module reads the environment (the emulator harness and the CLI may too);
* only ``history.current_user`` asks who the user is;
* every exception is defined in ``errors.py``, whose docstring draws the tree of them all.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import docshift
import docshift.errors

PACKAGE = Path(docshift.__file__).parent
ADAPTER = "store/firestore.py"
ENVIRONMENT_READERS = ("config.py", "emulator.py", "cli/")
KNOWN_ENVIRONMENT_READS: dict[str, str] = {
    # module -> reason, for a known breach awaiting a fix (strict xfail: fails once it is fixed)
}

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "testing"),  # the command line; the test support users' tests import (nothing else may)
    ("commands",),  # one function per command, over a Config
    ("remote", "beam"),  # a run's presence, control files and status endpoint; Beam pipelines
    ("reports", "backup"),  # reports, the events log and status; backups and restores
    ("planning", "lock"),  # what is pending or drifted; the run lease
    ("history",),  # the history records stored in the database
    ("loader",),  # migration files, loaded and checked (their rules are validators')
    ("validators",),  # rules, scans, scores, and the validation a run does inline
    ("engine",),  # the pipeline: batches, diff, limits, undo, progress
    ("docshift",),  # the package's facade (docshift/__init__.py): what ``import docshift`` gives
    ("runfolder", "migration"),  # the run folder's files; the Migration type and its target
    ("store",),  # the Store interface, retries, the adapters, Firestore's semantics and limits
    ("config", "codec", "emulator"),  # settings resolved once; the file codec; the emulator harness
    ("values",),  # the Firestore value types
    ("errors",),  # the exception tree and exit codes
)
"""Top first. Units in one layer are siblings: neither imports the other."""
KNOWN_LAYER_BREACHES: dict[str, str] = {
    # module -> reason, for a breach whose fix is in another module's change (strict xfail)
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
SUBMODULES = {name.split("/")[0].removesuffix(".py") for name, _ in ALL_MODULES} - {"__init__"}
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """The layer unit of a module path (``engine/batch.py`` -> engine, ``__init__.py`` -> docshift)."""
    first = module.split("/", maxsplit=1)[0].removesuffix(".py")
    return "docshift" if first == "__init__" else first


def docshift_imports(module: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, unit) of every docshift module ``module`` imports, anywhere in the file. ``from docshift
    import X`` is the submodule X when there is one, else the facade; relative imports are resolved."""
    package = module.split("/")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package[: len(package) - node.level + 1]
                base = ".".join(["docshift", *parents, *([base] if base else [])])
            names = [f"{base}.{alias.name}" if base == "docshift" else base for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "docshift":
                continue
            yield node.lineno, parts[1] if len(parts) > 1 and parts[1] in SUBMODULES else "docshift"


def layer_breaches(module: str, tree: ast.Module) -> list[str]:
    own = unit_of(module)
    return sorted(
        {
            f"line {line}: {own} (layer {RANK[own]}) imports {unit} (layer {RANK[unit]})"
            for line, unit in docshift_imports(module, tree)
            if unit != own and RANK[unit] <= RANK[own]
        }
    )


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


def test_only_the_beam_package_imports_apache_beam() -> None:
    """``docshift[beam]`` is an extra: nothing outside ``docshift.beam`` may need it (and a run
    without ``--runner beam`` never imports it, see tests/unit/test_beam.py)."""
    offenders = {
        name: found
        for name, tree in ALL_MODULES
        if not name.startswith("beam/") and (found := uses(tree, "apache_beam"))
    }
    assert offenders == {}
    assert uses(dict(ALL_MODULES)["beam/transforms.py"], "apache_beam")


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


# --------------------------------------------------------------------------- the layer order


def test_every_package_and_module_has_one_layer() -> None:
    assigned = [unit for layer in LAYERS for unit in layer]
    assert len(assigned) == len(set(assigned))
    assert set(assigned) == SUBMODULES | {"docshift"}


def test_the_layer_detector_finds_upward_imports_in_any_form() -> None:
    sample = ast.parse(
        "from docshift.store.base import Store\n"
        "import docshift.engine.batch\n"
        "from docshift import codec, __version__\n"
        "def f():\n"
        "    from docshift.commands.run import run\n"
        "    from ..cli import output\n"
        "from . import sharding\n"
    )
    assert layer_breaches("engine/pipeline.py", sample) == [
        "line 5: engine (layer 8) imports commands (layer 1)",
        "line 6: engine (layer 8) imports cli (layer 0)",
    ]
    assert layer_breaches("store/memory.py", ast.parse("from docshift.testing import MemoryStore\n")) == [
        "line 1: store (layer 11) imports testing (layer 0)"
    ]
    assert layer_breaches("values.py", ast.parse("from docshift import codec, __version__\n")) == [
        "line 1: values (layer 13) imports codec (layer 12)",
        "line 1: values (layer 13) imports docshift (layer 9)",
    ]
    siblings = ast.parse("from docshift.backup import read_manifest\n")
    assert layer_breaches("reports/report.py", siblings) == [
        "line 1: reports (layer 3) imports backup (layer 3)"
    ]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_LAYER_BREACHES[name]))
        if name in KNOWN_LAYER_BREACHES
        else name
        for name, _ in ALL_MODULES
    ],
)
def test_imports_follow_the_layer_order(name: str) -> None:
    assert layer_breaches(name, dict(ALL_MODULES)[name]) == []


# --------------------------------------------------------------------------- one user name


def test_only_history_asks_who_the_user_is() -> None:
    offenders = {
        name: found
        for name, tree in ALL_MODULES
        if name != "history.py" and (found := uses(tree, "getpass", "pwd", "os.getlogin"))
    }
    assert offenders == {}
    calls = {
        name
        for name, tree in ALL_MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("getuser", "getlogin", "getpwuid")
    }
    assert calls == {"history.py"}, "use docshift.history.current_user (it has the container fallback)"


# --------------------------------------------------------------------------- exceptions

EXCEPTION_NAMES = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def _base_name(base: ast.expr) -> str:
    return base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""


def exception_classes() -> dict[str, list[str]]:
    """Module -> the exception classes it defines: derived from a builtin exception, from a class
    named like one (``...Error``, ``...Exception``), or from such a class defined anywhere here."""
    classes = [
        (module, node)
        for module, tree in ALL_MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]
    known = set(EXCEPTION_NAMES)
    grown = True
    while grown:
        grown = False
        for _, node in classes:
            bases = {_base_name(base) for base in node.bases}
            if node.name not in known and (
                bases & known or any(b.endswith(("Error", "Exception")) for b in bases)
            ):
                known.add(node.name)
                grown = True
    found: dict[str, list[str]] = {}
    for module, node in classes:
        if node.name in known:
            found.setdefault(module, []).append(node.name)
    return found


def test_the_exception_detector_follows_bases_across_modules() -> None:
    assert "StageFailed" in exception_classes()["errors.py"]  # EmergencyStop -> RunStopped -> ...


def test_no_exception_is_defined_outside_errors() -> None:
    assert {module: names for module, names in exception_classes().items() if module != "errors.py"} == {}


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """The tree in errors.py's docstring: name -> (parent or None for a root, exit code or "-")."""
    doc = docshift.errors.__doc__ or ""
    block = doc.split("::", 1)[1]
    drawn: dict[str, tuple[str | None, str]] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        node = re.match(r"^(?P<lead>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<code>\d+|-)(\s|$)", line)
        if node is None:
            continue
        column = len(node["lead"])
        while stack and stack[-1][0] >= column:
            stack.pop()
        drawn[node["name"]] = (stack[-1][1] if stack else None, node["code"])
        stack.append((column, node["name"]))
    return drawn


def test_the_tree_in_errors_docstring_is_the_exception_tree() -> None:
    errors = docshift.errors
    classes = {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and value.__module__ == errors.__name__
    }
    exceptions = {name: cls for name, cls in classes.items() if issubclass(cls, BaseException)}
    drawn = drawn_tree()
    assert set(drawn) == set(exceptions), "every exception in errors.py is drawn, and only those"
    for name, cls in exceptions.items():
        parent, code = drawn[name]
        base = cls.__bases__[0]
        assert parent == (base.__name__ if base.__module__ == errors.__name__ else None), name
        if issubclass(cls, errors.DocshiftError):
            assert code == str(int(cls.exit_code)), name
        else:
            assert code == "-", name
    doc = errors.__doc__ or ""
    assert all(name in doc for name in classes), "every class in errors.py is named in its docstring"
    assert set(errors.__all__) == set(classes)

"""Every error says what to do next: each place the source builds a docshift error gives it a hint.

Checked on the source's syntax trees (nothing is imported), like the architecture test:

* every call of a :class:`~docshift.errors.DocshiftError` class (``raise UsageError(...)``, one built
  to be returned or stored) passes ``hint=``, and not a literal ``None``;
* an error factory (a function passing on its ``hint`` parameter, such as the loader's ``_fail``)
  takes that parameter without a default, so every call of it must say one;
* ``raise SomeError`` without a call, which can carry no hint, appears nowhere.

Re-raises (``raise``, ``raise exc``, ``raise result.error``) pass on an error built elsewhere, which
this same check covers where it was built.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import docshift

PACKAGE = Path(docshift.__file__).parent
ROOT_ERROR = "DocshiftError"

DOCUMENTED_EXCEPTIONS: dict[tuple[str, str], str] = {
    # (module, class) -> why a construction there may have no hint
}


def modules() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


ALL_MODULES = modules()


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def error_classes() -> set[str]:
    """Every class deriving from DocshiftError, wherever it is defined (found by its bases' names)."""
    found = {ROOT_ERROR}
    classes = [node for _, tree in ALL_MODULES for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    while True:
        more = {c.name for c in classes if c.name not in found and any(_name(b) in found for b in c.bases)}
        if not more:
            return found
        found |= more


ERRORS = error_classes()


def _gives_hint(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg is None:  # **kwargs: passed on from a caller that is checked itself
            return True
        if keyword.arg == "hint":
            return not (isinstance(keyword.value, ast.Constant) and keyword.value.value is None)
    return False


def constructions() -> Iterator[tuple[str, int, str, ast.Call]]:
    for module, tree in ALL_MODULES:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) in ERRORS:
                yield module, node.lineno, str(_name(node.func)), node


def test_the_scan_sees_the_error_tree() -> None:
    assert {"UsageError", "ConfigError", "MigrationFileError", "StoreError", "RunStopped"} <= ERRORS
    assert sum(1 for _ in constructions()) > 150


def test_every_error_is_built_with_a_hint() -> None:
    missing = [
        f"{module}:{line}: {name}({ast.unparse(call.args[0])[:70] if call.args else ''})"
        for module, line, name, call in constructions()
        if not _gives_hint(call) and (module, name) not in DOCUMENTED_EXCEPTIONS
    ]
    assert not missing, "errors without a hint (say what to do next):\n" + "\n".join(missing)


def _forwards_hint(node: ast.AST) -> bool:
    """A call passing on a ``hint`` variable: to an error class, or to another factory."""
    if not isinstance(node, ast.Call):
        return False
    passed = [*node.args, *(keyword.value for keyword in node.keywords)]
    return any(isinstance(value, ast.Name) and value.id == "hint" for value in passed)


def test_error_factories_require_a_hint() -> None:
    optional = []
    for module, tree in ALL_MODULES:
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            builds = any(_forwards_hint(inner) for inner in ast.walk(node))
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            defaults = dict(zip([a.arg for a in positional][::-1], arguments.defaults[::-1], strict=False))
            defaults |= {
                a.arg: d
                for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
                if d is not None
            }
            if builds and "hint" in defaults and node.name != "__init__":
                optional.append(f"{module}:{node.lineno}: {node.name}(hint=...) has a default")
    assert not optional, "a factory's hint must be required, so no caller can leave it out:\n" + "\n".join(
        optional
    )


def test_no_error_class_is_raised_without_being_built() -> None:
    bare = [
        f"{module}:{node.lineno}: raise {_name(node.exc)}"
        for module, tree in ALL_MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise) and node.exc is not None and _name(node.exc) in ERRORS
        if not isinstance(node.exc, ast.Call)
    ]
    assert not bare, "\n".join(bare)


def test_the_scan_catches_a_missing_hint() -> None:
    """The check itself can fail: a construction without a hint, or with ``hint=None``, is found."""
    tree = ast.parse(
        'raise UsageError("bad")\nraise ConfigError("bad", hint=None)\nraise UsageError("ok", hint="do x")'
    )
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert [_gives_hint(call) for call in calls] == [False, False, True]

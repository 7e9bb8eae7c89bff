"""What the command line imports before it does anything: ``docshift --version`` and ``--help``
answer without the engine, rich or Google's libraries, and a command imports only its own module
(and the store's gRPC client only when it opens a store). Checked on ``sys.modules`` in a fresh
interpreter; not timed (``scripts/bench.py`` measures the start-up time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from docshift.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""

HEAVY = ("google", "grpc", "rich", "orjson", "zstandard", "psutil", "tenacity")


def imported(*argv: str) -> list[str]:
    """The modules loaded once ``docshift ARGV`` has finished, in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    return list(json.loads(done.stderr.strip().splitlines()[-1]))


def under(modules: list[str], *packages: str) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


@pytest.mark.parametrize("argv", [("--version",), ("--help",), ("-h",)])
def test_version_and_help_import_no_engine_no_rich_and_no_google(argv: tuple[str, ...]) -> None:
    modules = imported(*argv)
    assert "docshift.cli" in modules  # the probe did run the command line
    assert under(modules, *HEAVY) == []
    assert [m for m in modules if m.startswith("docshift.")] == ["docshift.cli", "docshift.errors"]


def test_a_commands_help_imports_its_own_module_only_and_no_store_client() -> None:
    modules = imported("run", "--help")
    assert "docshift.cli.run" in modules
    assert under(modules, "google", "grpc", "rich.live", "docshift.store.firestore") == []
    others = ("backup", "history", "migrations", "operate", "retry", "rollback", "test", "validate")
    assert under(modules, *(f"docshift.cli.{name}" for name in others)) == []
    assert under(modules, "docshift.backup", "docshift.commands.rollback", "docshift.engine.script") == []

"""The README documents what the code declares: every config key and every exit code."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import docshift
from docshift.config import KEYS
from docshift.errors import ExitCode
from docshift.testing import MemoryStore
from tests.unit.engine_support import export, person, seed

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"


def test_every_config_key_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", README, flags=re.MULTILINE))
    assert {key.name for key in KEYS} == documented


def test_every_exit_code_is_in_the_readme_table() -> None:
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", README, flags=re.MULTILINE)}
    assert {int(code) for code in ExitCode} == documented


def test_readme_opens_with_the_two_commands() -> None:
    block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_the_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example, as it is written, on a project of the in-memory store."""
    block = (
        README.split("Everything is callable from Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    )
    (tmp_path / "migrations").mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", tmp_path / "migrations")
    (tmp_path / "docshift.toml").write_text('project = "memory"\nruns_dir = "runs"\n', encoding="utf-8")
    store = MemoryStore()
    seed(store, 120, make=lambda n: {**person(n), "email": f"u{n}@example.com"})  # as its rules want
    before = {path: doc.data for path, doc in export(store).items()}
    for name in [n for n in os.environ if n.startswith("DOCSHIFT_") or n == "FIRESTORE_EMULATOR_HOST"]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("docshift.store.open_store", lambda config, **_: store)
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["result"].state == "finished" and namespace["result"].outcomes[0].state == "applied"
    assert (
        namespace["undone"].items and {p: d.data for p, d in export(store).items()} == before
    )  # rolled back


def test_the_development_section_names_every_package_and_top_level_module() -> None:
    """A newcomer reads there which module owns what: nothing in src/docshift/ is left out."""
    section = README.split("## Development", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    named = {line.split()[0] for line in block.splitlines() if line and not line.startswith(" ")}
    package = Path(docshift.__file__).parent
    found = {
        f"{entry.name}/" if entry.is_dir() else entry.name
        for entry in package.iterdir()
        if not entry.name.startswith("_") and entry.name != "py.typed" and entry.name != "__pycache__"
    }
    assert found - named == set()

"""The command line and the Python API are one command, on the memory store: ``docshift run``
(click's runner, its store the memory store) and ``docshift.commands.run.run(config, options)``,
each on its own store, leave the same run folder, history records and documents; with
``--validate`` and the integrity gate, and with ``--auto-rollback`` on a gate that stops the run.
(``tests/integration/test_cli_library_parity.py`` does the same against the emulator.)"""

from __future__ import annotations

import difflib
import json
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from docshift.cli import cli
from docshift.commands.run import RunOptions, result_of, run
from docshift.config import load_config
from docshift.errors import EmergencyStop
from docshift.store import Store, Write
from docshift.testing import MemoryStore
from tests.parity_support import (
    COLLECTIONS,
    MIGRATION,
    SETTINGS,
    documents,
    folder_snapshot,
    history_snapshot,
)


@pytest.fixture(autouse=True)
def _signal_handlers_kept() -> Iterator[None]:
    """The command installs its SIGINT/SIGTERM handlers; the test process gets its own back."""
    kept = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, kept[0])
    signal.signal(signal.SIGTERM, kept[1])


def project(folder: Path, bad: set[int], total: int) -> tuple[Path, MemoryStore]:
    (folder / "migrations").mkdir(parents=True)
    (folder / "migrations" / "0001_split_name.py").write_text(textwrap.dedent(MIGRATION))
    (folder / "docshift.toml").write_text(SETTINGS)
    store = MemoryStore(f"memory-{folder.name}")
    writes = [
        Write.set(f"users/u{i:04d}", {"full_name": f"First{i} Last{i}", "age": -1 if i in bad else 30})
        for i in range(total)
    ]
    writes.append(Write.set("teams/t1", {"name": "bystander"}))
    for start in range(0, len(writes), 400):
        assert all(result.ok for result in store.commit(writes[start : start + 400]))
    return folder, store


def through_cli(folder: Path, store: Store, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.chdir(folder)
    monkeypatch.setattr("docshift.cli.run.open_store", lambda config: store)
    for name in [n for n in os.environ if n.startswith("DOCSHIFT_") or n == "FIRESTORE_EMULATOR_HOST"]:
        monkeypatch.delenv(name)  # the library side resolves its config from no environment either
    env = {"DOCSHIFT_PROJECT": store.info.project}
    return CliRunner().invoke(cli, ["run", *args], env=env, catch_exceptions=True)


def through_library(folder: Path, store: Store, monkeypatch: pytest.MonkeyPatch, options: RunOptions) -> Any:
    monkeypatch.chdir(folder)
    config = load_config({"project": store.info.project}, env={}, cwd=folder)
    return run(config, options, store=store)


def same(cli_side: Any, library_side: Any, what: str) -> None:
    left, right = (
        json.dumps(v, indent=1, sort_keys=True, default=str).splitlines() for v in (cli_side, library_side)
    )
    assert left == right, f"{what}:\n" + "\n".join(
        difflib.unified_diff(left, right, "cli", "library", lineterm="")
    )


def assert_same(cli_side: tuple[Path, Store], library_side: tuple[Path, Store]) -> None:
    (cli_folder, cli_store), (lib_folder, lib_store) = cli_side, library_side
    cli_files = folder_snapshot(cli_folder / "runs", cli_folder)
    lib_files = folder_snapshot(lib_folder / "runs", lib_folder)
    assert sorted(cli_files) == sorted(lib_files)
    for name, content in cli_files.items():
        same(content, lib_files[name], name)
    same(history_snapshot(cli_store), history_snapshot(lib_store), "history")
    assert documents(cli_store, COLLECTIONS) == documents(lib_store, COLLECTIONS)


def test_a_validated_run_through_the_cli_and_through_run_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = set(range(16, 600, 33))
    cli_side, library_side = (project(tmp_path / name, bad, 600) for name in ("cli", "library"))
    done = through_cli(*cli_side, monkeypatch, "--execute", "--validate", "--yes")
    assert done.exit_code == 0, done.output
    result = through_library(*library_side, monkeypatch, RunOptions(execute=True, scans=True))
    assert result.state == "finished" and result.outcomes[0].state == "applied"
    assert_same(cli_side, library_side)


def test_auto_rollback_through_the_cli_and_through_run_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = {i for i in range(800, 2000) if i % 4 == 0}
    cli_side, library_side = (project(tmp_path / name, bad, 2000) for name in ("cli", "library"))
    before = documents(library_side[1], COLLECTIONS)
    done = through_cli(*cli_side, monkeypatch, "--execute", "--validate", "--auto-rollback", "--yes")
    assert isinstance(done.exception, EmergencyStop), done.output
    with pytest.raises(EmergencyStop) as stopped:
        through_library(*library_side, monkeypatch, RunOptions(execute=True, scans=True, auto_rollback=True))
    result = result_of(stopped.value)
    assert result is not None and result.state == "rolled_back" and result.resume_command is None
    assert documents(library_side[1], COLLECTIONS) == before
    assert_same(cli_side, library_side)

"""The command line and the Python API are one command: the same migration, run once as
``docshift run`` (a subprocess) and once as ``docshift.commands.run.run(config, options)``, each on
a fresh emulator project, leaves the same run folder (the same files; run.json, checkpoints,
reports, validation files and dead letters equal once run ids, times, durations and hosts are
set aside), the same history records and the same documents. With ``--validate`` and the
integrity gate judging every document; and with ``--auto-rollback`` on a gate that stops the run,
which the library call must roll back as the command line does."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.run import RunOptions, result_of, run
from docshift.config import load_config
from docshift.errors import EmergencyStop, ExitCode
from docshift.store import Store, Write, open_store
from tests.parity_support import (
    COLLECTIONS,
    MIGRATION,
    SETTINGS,
    documents,
    folder_snapshot,
    history_snapshot,
)

DOCSHIFT = str(Path(sys.executable).parent / "docshift")


def project(folder: Path) -> Path:
    (folder / "migrations").mkdir(parents=True)
    (folder / "migrations" / "0001_split_name.py").write_text(textwrap.dedent(MIGRATION))
    (folder / "docshift.toml").write_text(SETTINGS)
    return folder


def seed(store: Store, total: int, bad: set[int]) -> None:
    writes = [
        Write.set(f"users/u{i:04d}", {"full_name": f"First{i} Last{i}", "age": -1 if i in bad else 30})
        for i in range(total)
    ]
    writes.append(Write.set("teams/t1", {"name": "bystander"}))
    for start in range(0, len(writes), 400):
        assert all(result.ok for result in store.commit(writes[start : start + 400]))


class Side:
    """One of the two fresh projects: its folder, id and store."""

    def __init__(self, tmp_path: Path, name: str, emulator_host: str) -> None:
        self.folder = project(tmp_path / name)
        self.project_id = f"demo-{uuid.uuid4().hex[:12]}"
        self.host = emulator_host
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCSHIFT_")}
        self.env.update(FIRESTORE_EMULATOR_HOST=emulator_host, DOCSHIFT_PROJECT=self.project_id)
        self.config = load_config(
            {"project": self.project_id}, env={"FIRESTORE_EMULATOR_HOST": emulator_host}, cwd=self.folder
        )
        self.store = open_store(self.config)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCSHIFT, *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return (
            folder_snapshot(self.folder / "runs", self.folder),
            history_snapshot(self.store),
            documents(self.store, COLLECTIONS),
        )


@pytest.fixture
def sides(tmp_path: Path, emulator_host: str) -> Any:
    made = [Side(tmp_path, name, emulator_host) for name in ("cli", "library")]
    yield made
    for side in made:
        side.store.close()


def same(cli: Any, library: Any, what: str) -> None:
    """``cli`` equals ``library``; when not, the lines that differ say where."""
    left, right = (json.dumps(v, indent=1, sort_keys=True, default=str).splitlines() for v in (cli, library))
    assert left == right, f"{what}:\n" + "\n".join(
        difflib.unified_diff(left, right, "cli", "library", lineterm="")
    )


def assert_same(cli: Side, library: Side) -> None:
    (cli_folder, cli_history, cli_docs), (lib_folder, lib_history, lib_docs) = (
        cli.snapshot(),
        library.snapshot(),
    )
    assert sorted(cli_folder) == sorted(lib_folder)  # the same files
    for name, content in cli_folder.items():
        same(content, lib_folder[name], name)
    same(cli_history, lib_history, "history")
    assert cli_docs == lib_docs


def test_a_validated_run_through_the_cli_and_through_run_leaves_the_same_folder_history_and_data(
    sides: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli, library = sides
    monkeypatch.chdir(library.folder)  # where the command line runs (the history names files from there)
    for side in sides:
        seed(side.store, 600, set(range(16, 600, 33)))  # 3% break a rule: the gate judges, warns
    done = cli.cli("run", "--execute", "--validate", "--yes")
    assert done.returncode == 0, done.stderr
    result = run(library.config, RunOptions(execute=True, scans=True))
    assert result.state == "finished" and result.exit_code == 0
    assert result.validation is not None and [r.phase for r in result.validation.reports] == [
        "before",
        "inline",
        "after",
    ]
    assert result.report_paths is not None and result.report_paths.html.is_file()
    assert result.folder == library.folder / "runs" / result.run_id
    assert result.outcomes[0].state == "applied"
    assert_same(cli, library)


def test_auto_rollback_on_a_failing_gate_through_the_cli_and_through_run_is_the_same(
    sides: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli, library = sides
    monkeypatch.chdir(library.folder)
    for side in sides:
        seed(side.store, 2000, {i for i in range(800, 2000) if i % 4 == 0})  # 15% bad, all late
    before = documents(library.store, COLLECTIONS)
    done = cli.cli("run", "--execute", "--validate", "--auto-rollback", "--yes")
    assert done.returncode == 12, done.stderr
    with pytest.raises(EmergencyStop) as stopped:
        run(library.config, RunOptions(execute=True, scans=True, auto_rollback=True))
    result = result_of(stopped.value)
    assert result is not None and result.state == "rolled_back"
    assert result.exit_code == int(ExitCode.EMERGENCY_STOP) and result.resume_command is None
    assert documents(library.store, COLLECTIONS) == before  # rolled back, as the command line does
    assert_same(cli, library)

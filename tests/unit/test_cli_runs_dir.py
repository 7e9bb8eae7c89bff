"""A runs_dir that is not a folder, or that cannot be written, is refused before the command reads
or writes anything: exit 2 with a hint, never "unexpected ... report it". The CLI as a subprocess;
the check comes before any store is opened, so no emulator is involved."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounts import read_only_folder

DOCSHIFT = str(Path(sys.executable).parent / "docshift")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "migrations" / "0001_split_full_name.py"
WRITING = [
    ("run",),
    ("run", "--execute", "--yes"),
    ("rollback", "20250101T000000-abcdef", "--execute", "--yes"),
    ("verify", "0001"),
]
READING = [("runs",), ("monitor", "--once")]


def project(folder: Path, runs_dir: str) -> Path:
    (folder / "migrations").mkdir(parents=True)
    shutil.copy(EXAMPLE, folder / "migrations")
    (folder / "docshift.toml").write_text(
        f'migrations_dir = "migrations"\nruns_dir = "{runs_dir}"\n', encoding="utf-8"
    )
    return folder


def docshift(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DOCSHIFT_PROJECT": "demo-runs-dir",
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
    }  # never reached: the check comes first
    return subprocess.run(
        [DOCSHIFT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_refused(done: subprocess.CompletedProcess[str], *wanted: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-2].startswith("error: runs_dir ") and lines[-1].startswith("  hint: "), done.stderr
    for text in wanted:
        assert text in done.stderr, done.stderr


@pytest.mark.parametrize("args", WRITING + READING, ids=" ".join)
def test_a_runs_dir_that_is_a_file_is_refused_with_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    folder = project(tmp_path, ".docshift/runs")
    (folder / ".docshift").mkdir()
    (folder / ".docshift" / "runs").write_text("not a folder", encoding="utf-8")
    assert_refused(
        docshift(folder, *args),
        "is not a folder: it is a file",
        "(from docshift.toml)",
        "set runs_dir in docshift.toml",
    )


def test_a_runs_dir_inside_a_file_is_refused_with_exit_2(tmp_path: Path) -> None:
    folder = project(tmp_path, "state/runs")
    (folder / "state").write_text("a file where a folder should be", encoding="utf-8")
    assert_refused(docshift(folder, "run", "--execute", "--yes"), "which is a file")


@pytest.mark.parametrize("args", WRITING, ids=" ".join)
def test_a_read_only_runs_dir_is_refused_with_exit_2_by_every_command_that_writes(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    folder = project(tmp_path, "locked/runs")
    with read_only_folder(folder / "locked"):
        assert_refused(docshift(folder, *args), "cannot be created", "is read-only", "make it writable")
        assert not (folder / "locked" / "runs").exists()


def test_a_read_only_runs_dir_can_still_be_read(tmp_path: Path) -> None:
    folder = project(tmp_path, "locked")
    with read_only_folder(folder / "locked"):
        done = docshift(folder, "run")
        assert_refused(done, "(from docshift.toml) is read-only")
        listed = docshift(folder, "runs")
        assert listed.returncode == 0 and "no runs in" in listed.stdout, listed.stderr

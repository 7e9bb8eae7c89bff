"""The confirmation before a destructive command against Cloud Firestore reads DOCSHIFT_ASSUME_YES
from the config (``Config.assume_yes``), so ``run``, ``rollback``, ``restore`` and ``unlock`` accept
the same values: the config's booleans."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from docshift.cli.confirm import confirm_destructive
from docshift.config import load_config
from docshift.errors import ConfirmationRequired

DOCSHIFT = str(Path(sys.executable).parent / "docshift")


@pytest.fixture
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("DOCSHIFT_PROJECT", "a-real-project")


@pytest.mark.parametrize("text", ["1", "true", "yes", "on", "ON"])
def test_assume_yes_confirms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_terminal: None, text: str
) -> None:
    monkeypatch.setenv("DOCSHIFT_ASSUME_YES", text)
    confirm_destructive(load_config(cwd=tmp_path), "run 1 migration", yes=False)


@pytest.mark.parametrize("text", ["0", "false", "no", "off", ""])
def test_assume_no_asks_and_without_a_terminal_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_terminal: None, text: str
) -> None:
    monkeypatch.setenv("DOCSHIFT_ASSUME_YES", text)
    with pytest.raises(ConfirmationRequired, match="without confirmation"):
        confirm_destructive(load_config(cwd=tmp_path), "run 1 migration", yes=False)


@pytest.mark.parametrize(
    "command",
    [
        ("run", "--execute"),
        ("rollback", "20250101T000000-abcdef", "--execute"),
        ("restore", "backups/none"),
        ("unlock", "--force"),
    ],
)
def test_a_value_that_is_no_answer_is_refused_by_every_command_alike(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    (tmp_path / "migrations").mkdir()
    done = subprocess.run(
        [DOCSHIFT, *command],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "DOCSHIFT_PROJECT": "a-real-project", "DOCSHIFT_ASSUME_YES": "y"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-2] == "error: DOCSHIFT_ASSUME_YES must be true or false, got 'y'", done.stderr
    assert lines[-1].startswith("  hint: set DOCSHIFT_ASSUME_YES=1"), done.stderr

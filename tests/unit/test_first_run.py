"""A new user's first minutes: ``docshift init`` keeps the run state out of git, and ``docshift
emulator`` says how to stop it where Ctrl-C cannot (started with ``&``, or without a terminal)."""

from __future__ import annotations

import os
import pty
import select
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from docshift.cli import cli
from docshift.cli.basics import stop_hint
from docshift.commands.project import ignore_run_state, init_project
from docshift.errors import UsageError


def ignored_by_git(folder: Path, name: str) -> bool:
    """Whether git would ignore ``name`` in ``folder`` by its .gitignore lines (the simple
    patterns init writes: a leading slash anchors, a trailing one matches a folder)."""
    lines = [
        line.strip()
        for line in (folder / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    top = name.split("/", 1)[0]
    return any(line.strip("/") in (top, name) for line in lines)


def test_init_writes_a_gitignore_that_ignores_the_runs_folder(tmp_path: Path) -> None:
    result = init_project(tmp_path, project="demo-x")
    assert result.gitignore == tmp_path / ".gitignore" and result.gitignore_change == "created"
    assert ignored_by_git(tmp_path, ".docshift/runs/20260101T000000-abcdef/run.json")
    assert not ignored_by_git(tmp_path, "migrations/0001_x.py")
    assert 'runs_dir = ".docshift/runs"' in result.config_file.read_text()  # what the line covers


def test_init_adds_the_line_to_an_existing_gitignore_once(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\n*.pyc")  # no newline at its end
    assert init_project(tmp_path).gitignore_change == "added"
    text = (tmp_path / ".gitignore").read_text()
    assert text.startswith("node_modules/\n*.pyc\n") and text.count("/.docshift/") == 1
    (tmp_path / "docshift.toml").unlink()  # started over: init again
    assert init_project(tmp_path).gitignore_change == "kept"
    assert ignore_run_state(tmp_path)[1] == "kept" and (tmp_path / ".gitignore").read_text() == text
    other = tmp_path / "other"
    other.mkdir()
    (other / ".gitignore").write_text(".docshift\n")
    assert ignore_run_state(other)[1] == "kept" and (other / ".gitignore").read_text() == ".docshift\n"


def test_a_gitignore_that_is_a_folder_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").mkdir()
    with pytest.raises(UsageError, match="is not a file") as refused:
        init_project(tmp_path)
    assert refused.value.hint and not (tmp_path / "docshift.toml").exists()
    assert not (tmp_path / "migrations").exists()


def test_the_init_command_says_what_it_did_to_the_gitignore(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0 and "(ignores .docshift/, the run state)" in result.output
    assert "/.docshift/" in (tmp_path / ".gitignore").read_text()


def test_the_stop_hint_names_the_pid_and_says_when_ctrl_c_cannot_reach() -> None:
    assert "Ctrl-C" in stop_hint(42, True) and "kill 42" in stop_hint(42, True)
    background = stop_hint(42, False)
    assert "Ctrl-C does not reach it" in background and background.endswith("Stop it with: kill 42")


def foreground_in_a_terminal(shell_line: str | None) -> str:
    """``in_foreground()`` as a process in a new terminal (pty) sees it: run directly (the
    terminal's foreground job) or from ``sh -c 'LINE'`` where LINE runs it (e.g. with ``&``)."""
    probe = [sys.executable, "-c", "from docshift.cli.basics import in_foreground; print(in_foreground())"]
    pid, master = pty.fork()
    if pid == 0:  # the child: the session leader of the new terminal
        if shell_line is None:
            os.execv(probe[0], probe)
        os.execv("/bin/sh", ["/bin/sh", "-c", shell_line.replace("PROBE", " ".join(f"'{a}'" for a in probe))])
    output = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 1024)
            except OSError:  # the child ended (EIO on Linux)
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.waitpid(pid, 0)
        os.close(master)
    return output.decode().strip()


def test_the_emulator_command_knows_whether_ctrl_c_reaches_it() -> None:
    assert foreground_in_a_terminal(None).endswith("True")
    # `docshift emulator &` in a script: the background job ignores the terminal's SIGINT
    assert foreground_in_a_terminal("PROBE & wait").endswith("False")
    # no terminal at all
    assert foreground_in_a_terminal("PROBE < /dev/null").endswith("False")
    # a terminal, but SIGINT ignored (how a shell without job control starts `… &` with a terminal)
    assert foreground_in_a_terminal("trap '' INT; PROBE").endswith("False")

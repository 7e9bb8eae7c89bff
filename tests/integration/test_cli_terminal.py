"""``docshift run`` on a real 80-column terminal (a pseudo-terminal), stopped by Ctrl-C: the live
view's names and states stay whole, and the command that resumes the run, by its id, is the last
thing printed, below the live view's final frame; after one Ctrl-C and after two."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from docshift.runfolder import Checkpoint
from docshift.store import RetryingStore
from tests.integration.run_support import DOCSHIFT, SLOW_SPLIT, project_folder, seed_users

_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_INTERRUPTED = re.compile(
    r"error: interrupted by SIGINT"
    r"(; [0-9,]+ updated landed after the cursor, beside the counts behind it \(counted once on resume\))?"
)


class Terminal:
    """``docshift ARGS`` with stdin, stdout and stderr on an 80-column pseudo-terminal."""

    def __init__(self, folder: Path, env: dict[str, str], *args: str, columns: int = 80) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        terminal_env = {k: v for k, v in env.items() if k not in ("NO_COLOR", "TERM")}
        terminal_env.update(COLUMNS=str(columns), LINES="50", TERM="xterm-256color")
        self.process = subprocess.Popen(
            [DOCSHIFT, *args],
            cwd=folder,
            env=terminal_env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.output = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the other side closed: the process has ended
                    return
                if not chunk:
                    return
                self.output += chunk
            elif self.process.poll() is not None:
                return

    def finish(self, timeout: float = 60) -> int:
        self.read(timeout)
        code = self.process.wait(10)
        os.close(self.master)
        return code

    def lines(self) -> list[str]:
        """What was printed, line by line, without colours and cursor moves (each frame of the
        live view, in order, as it was drawn)."""
        text = _ESCAPE.sub("", self.output.decode("utf-8", "replace"))
        drawn = [line.rstrip("\r").split("\r")[-1].rstrip() for line in text.split("\n")]
        return [line for line in drawn if line.strip()]


def _wait_for_writes(folder: Path, terminal: Terminal) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        terminal.read(0.1)
        saved = [Checkpoint.load(p) for p in folder.glob(".docshift/runs/*/*/checkpoint.json")]
        if any(c.counters.get("updated", 0) for c in saved):
            return
    raise AssertionError("the run wrote nothing within 60 s:\n" + "\n".join(terminal.lines()))


def test_after_one_ctrl_c_the_resume_command_is_the_last_line_and_nothing_is_cut_at_80_columns(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 3000)
    folder = project_folder(tmp_path / "project", "checkpoint_every_seconds = 0.2\nbatch_size = 100\n")
    terminal = Terminal(folder, cli_env, "run", "--execute", "--max-writes-per-second", "500")
    _wait_for_writes(folder, terminal)
    terminal.process.send_signal(signal.SIGINT)
    assert terminal.finish() == 10
    lines = terminal.lines()
    [run_folder] = folder.glob(".docshift/runs/*/")
    resume = f"docshift run --execute --resume {run_folder.name}"
    # Batches that finished past the last contiguous cursor when the signal came are named too.
    assert _INTERRUPTED.fullmatch(lines[-2]), lines[-6:]
    assert lines[-1] == f"  hint: the checkpoint is kept: resume with `{resume}`", lines[-6:]
    drawn = [line for line in lines if "waiting for the first migration" not in line]
    assert not [line for line in drawn if "…" in line], drawn  # no name, state or number cut
    assert all(len(line) <= 80 for line in drawn[:-2]), drawn  # only the error lines are click's
    # The final frame and the stacked summary: the name with its state, whole.
    assert any(line.startswith("0001_split_full_name stopped") for line in lines), lines
    assert any(line.startswith("0001_split_full_name  stopped") for line in lines), lines  # the summary


def test_after_a_second_ctrl_c_the_resume_command_with_the_run_id_is_the_last_line(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 2000)
    folder = project_folder(
        tmp_path / "project",
        "checkpoint_every_seconds = 0.2\nbatch_size = 100\n",
        files=(),
        extra={"0001_slow_split.py": SLOW_SPLIT},
    )
    marker = tmp_path / "slow"
    marker.touch()
    terminal = Terminal(folder, {**cli_env, "SLOW_MARKER": str(marker)}, "run", "--execute")
    _wait_for_writes(folder, terminal)
    terminal.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("Ctrl-C again" in line for line in terminal.lines()):
        terminal.read(0.05)
    assert terminal.process.poll() is None  # still draining: each writer is in a batch that takes 5 s
    terminal.process.send_signal(signal.SIGINT)
    assert terminal.finish() == 10
    lines = terminal.lines()
    [run_folder] = folder.glob(".docshift/runs/*/")
    assert lines[-1] == f"resume with: docshift run --execute --resume {run_folder.name}", lines[-8:]
    assert lines[-2] == "SIGINT: stopping at once", lines[-8:]
    frame = max(i for i, line in enumerate(lines) if line.startswith(f"run {run_folder.name} "))
    assert frame < len(lines) - 2  # below the live view's last frame, not above it

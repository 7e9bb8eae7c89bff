"""Steering without networking: control files in the run folder.

* ``RUN_FOLDER/pause`` — while it exists the run is paused; remove it to resume.
* ``RUN_FOLDER/stop`` — stop gracefully (checkpoint kept, exit 10); the file is removed once honoured,
  so ``--resume`` is not stopped again.
* ``RUN_FOLDER/throttle`` — a number: the new write limit in ops/s (0 = no cap).

The run's presence file (``RUN_FOLDER/status.json``) is :mod:`docshift.runfolder.presence`.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from docshift.engine.controls import Controls
from docshift.engine.hooks import ControlApplied, RunHooks, Warned
from docshift.runfolder.layout import RunFolder

__all__ = ["ControlFiles"]


class ControlFiles:
    """Polls the run folder for control files about once a second, in a daemon thread."""

    def __init__(
        self, folder: Path, controls: Controls, *, hooks: RunHooks | None = None, interval: float = 0.5
    ) -> None:
        self.folder = folder
        self.files = RunFolder(folder)
        self.controls = controls
        self.hooks = hooks or RunHooks()
        self.interval = interval
        self._paused_by_file = False
        self._throttle_seen: tuple[int, int] | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="docshift-control-files")
        self._thread.start()

    def _loop(self) -> None:
        while not self._closing.wait(self.interval):
            with contextlib.suppress(OSError):
                self.check()

    def check(self) -> None:
        """One look at the folder (acts on changes only, so HTTP control keeps working alongside)."""
        pause = self.files.control("pause").exists()
        if pause and not self._paused_by_file:
            self.controls.pause()
            self.hooks.control_applied(ControlApplied("pause", "file"))
        elif not pause and self._paused_by_file:
            self.controls.resume()
            self.hooks.control_applied(ControlApplied("resume", "file"))
        self._paused_by_file = pause
        stop = self.files.control("stop")
        if stop.exists():
            self.controls.request_stop(f"stopped by the control file {stop}")
            self.hooks.control_applied(ControlApplied("stop", "file"))
            stop.unlink(missing_ok=True)
        self._check_throttle(self.files.control("throttle"))

    def _check_throttle(self, path: Path) -> None:
        try:
            info = path.stat()
        except FileNotFoundError:
            self._throttle_seen = None
            return
        seen = (info.st_mtime_ns, info.st_size)
        if seen == self._throttle_seen:
            return
        self._throttle_seen = seen
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value < float("inf"):
            self.hooks.warning(
                Warned(f"ignored {path}: {text[:40]!r} is not a write limit in ops/s (a number >= 0)")
            )
            return
        self.controls.throttle(value)
        self.hooks.control_applied(ControlApplied("throttle", "file", value))

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

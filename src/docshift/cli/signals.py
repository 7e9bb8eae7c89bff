"""Ctrl-C and SIGTERM during ``docshift run`` and ``docshift rollback``."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from docshift.cli.output import err_console
from docshift.engine.controls import Controls
from docshift.errors import ExitCode

__all__ = ["SignalHandlers", "install_signal_handlers"]


class SignalHandlers:
    """First Ctrl-C/SIGTERM: stop gracefully. Second: stop at once (safe: the checkpoint never
    claims an unacknowledged write, and before-images precede every write), saying last, below
    the live view's final frame, the command that resumes the run (``run_id``, once known).

    Once the run has finished (``controls.finished``, set by the command, or :meth:`finished`), a
    signal changes nothing any more: the data is migrated and recorded, so it is noted and ignored,
    and the process exits with the run's result (:func:`docshift.cli.main` keeps them ignored while
    the interpreter shuts down)."""

    def __init__(self, controls: Controls, *, kind: str = "run", execute: bool = True) -> None:
        self.controls = controls
        self.kind = kind
        """``run``, ``retry`` or ``rollback``: the command that resumes it."""
        self.execute = execute
        """A dry run writes nothing and is not resumed."""
        self.run_id: str | None = None
        """Set once the run's folder is known (see :func:`docshift.cli.display.watch_options`)."""
        self.before_exit: Callable[[], None] | None = None
        """Called before the stop at once says so (the live view leaves its last frame above)."""
        self.hits = 0

    def finished(self) -> None:
        self.controls.finished.set()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.hits += 1
        if self.controls.finished.is_set():
            if self.hits == 1:
                err_console.print(f"[dim]{name}: the run has already finished; exiting with its result[/]")
            return
        if self.hits == 1:
            then = "" if self.execute else " (dry run: nothing is written)"
            err_console.print(
                f"[yellow]{name}: stopping after in-flight commits{then}; Ctrl-C again to stop at once[/]"
            )
            self.controls.request_stop(f"interrupted by {name}")
            return
        if self.before_exit is not None:
            self.before_exit()
        err_console.print(f"[red]{name}: stopping at once[/]", soft_wrap=True)
        err_console.print(self.next_step(), soft_wrap=True, highlight=False)
        os._exit(int(ExitCode.INTERRUPTED))

    def next_step(self) -> str:
        """What to do after a stop at once: the command that resumes this run, by its id."""
        if not self.execute:
            return "dry run: nothing was written; run it again to see the whole plan"
        if self.run_id is None:  # stopped before the run's folder was known
            return (
                f"`docshift runs` shows whether the {self.kind} was left unfinished "
                f"(resume it with `docshift {self.kind} --execute --resume RUN_ID`)"
            )
        return f"resume with: docshift {self.kind} --execute --resume {self.run_id}"


def install_signal_handlers(controls: Controls, *, kind: str = "run", execute: bool = True) -> SignalHandlers:
    """Route SIGINT and SIGTERM to a :class:`SignalHandlers` (from the main thread only)."""
    handlers = SignalHandlers(controls, kind=kind, execute=execute)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handlers)
        signal.signal(signal.SIGTERM, handlers)
    return handlers

"""The run's presence file, ``RUN_FOLDER/status.json``: which process runs the run and where its
status endpoint is (never its token).

``docshift monitor``, ``docshift pause|resume|throttle|stop`` and every view of a run's state read
it; it is removed when the process ends (a killed process leaves it behind, so readers check the
pid). It lives with the run folder's other files because the run's record (``record.live_state``)
reads it, below the remote-steering package that writes it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.errors import DataError
from docshift.runfolder.layout import STATUS_FORMAT, RunFolder

__all__ = ["RunPresence", "read_presence", "remove_presence", "write_presence"]


@dataclass(frozen=True)
class RunPresence:
    """Who runs a run, and where its status endpoint is (``url`` is None without one)."""

    pid: int
    hostname: str
    url: str | None
    token_required: bool
    started_at: float

    @property
    def alive(self) -> bool:
        """Whether the process is still there (assumed when it runs on another machine)."""
        if self.hostname != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def write_presence(folder: Path, url: str | None, token_required: bool) -> None:
    body: dict[str, Any] = {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "url": url,
        "token_required": token_required,
        "started_at": time.time(),
    }
    STATUS_FORMAT.write(RunFolder(folder).presence, body)


def read_presence(folder: Path) -> RunPresence | None:
    path = RunFolder(folder).presence
    if not path.is_file():
        return None
    try:
        info = STATUS_FORMAT.read(path)
    except DataError:
        return None
    return RunPresence(
        int(info.get("pid", 0)),
        str(info.get("hostname", "")),
        info.get("url"),
        bool(info.get("token_required")),
        float(info.get("started_at", 0.0)),
    )


def remove_presence(folder: Path) -> None:
    RunFolder(folder).presence.unlink(missing_ok=True)

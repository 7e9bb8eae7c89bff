"""Steering a run from outside its process: the status endpoint, control files, and their client.

Every way in acts through the run's one :class:`~docshift.engine.controls.Controls`, so pausing
by HTTP, by a ``pause`` file or by ``docshift pause`` has exactly the same effect.
"""

from __future__ import annotations

from docshift.remote.client import ControlResult, fetch_status, send_control
from docshift.remote.files import ControlFiles
from docshift.remote.server import StatusServer, is_loopback
from docshift.runfolder.presence import RunPresence, read_presence

__all__ = [
    "ControlFiles",
    "ControlResult",
    "RunPresence",
    "StatusServer",
    "fetch_status",
    "is_loopback",
    "read_presence",
    "send_control",
]

"""Seeing a run: its event log, its live status and health, and its report (JSON and HTML).

Nothing here prints or imports rich: the CLI renders what these modules compute, and the same
code serves ``docshift run``, ``docshift monitor``, the status endpoint and ``docshift report``.
"""

from __future__ import annotations

from docshift.reports.events import EventLog, Logged, read_events
from docshift.reports.report import ReportPaths, build_report
from docshift.reports.status import ProgressExtras, RunStatus

__all__ = [
    "EventLog",
    "Logged",
    "ProgressExtras",
    "ReportPaths",
    "RunStatus",
    "build_report",
    "read_events",
]

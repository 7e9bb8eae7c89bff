"""The client side of run control: ``docshift pause|resume|throttle|stop RUN_ID`` and monitor.

A running run is reached through its status endpoint when it has one (its address is in
``RUN_FOLDER/status.json``), and through control files otherwise, or when the endpoint does not
answer; the result says which way was used.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.errors import UsageError
from docshift.runfolder.layout import RunFolder
from docshift.runfolder.presence import RunPresence, read_presence

__all__ = ["ACTIONS", "ControlResult", "fetch_status", "request", "send_control"]

ACTIONS = ("pause", "resume", "throttle", "stop")


@dataclass(frozen=True)
class ControlResult:
    run_id: str
    action: str
    via: str
    """``the status endpoint URL`` or ``control file PATH``."""
    answer: dict[str, Any]


def request(
    url: str,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, Any]]:
    """One JSON request; returns the status code and the JSON answer (HTTP errors included)."""
    data = json.dumps(body).encode("utf-8") if body is not None else (b"" if method == "POST" else None)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    prepared = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as response:
            return int(response.status), _json(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), _json(error.read())


def _json(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _refused(run_id: str, code: int, answer: dict[str, Any]) -> UsageError:
    if code == 401:
        return UsageError(
            f"the status endpoint of run {run_id} refused the token",
            hint="pass the run's --status-token with --token or DOCSHIFT_STATUS_TOKEN",
        )
    return UsageError(
        f"the status endpoint of run {run_id} answered {code}: {answer.get('error', answer)}",
        hint="check the run is still running (`docshift show`); its run.json names the endpoint",
    )


def fetch_status(folder: Path, *, token: str | None = None, timeout: float = 3.0) -> dict[str, Any] | None:
    """``GET /status`` of a running run; None when it has no endpoint or the endpoint is gone."""
    presence = read_presence(folder)
    if presence is None or presence.url is None or not presence.alive:
        return None
    try:
        code, answer = request(presence.url + "/status", token=token, timeout=timeout)
    except (OSError, urllib.error.URLError):
        return None
    if code != 200:
        raise _refused(folder.name, code, answer)
    return answer


def send_control(
    folder: Path, action: str, *, value: float | None = None, token: str | None = None, timeout: float = 5.0
) -> ControlResult:
    """Pause, resume, throttle (``value`` ops/s) or stop the run in ``folder``."""
    if action not in ACTIONS:
        raise UsageError(f"unknown control action {action!r}", hint=f"one of {', '.join(ACTIONS)}")
    if action == "throttle" and (value is None or not 0 <= value < float("inf")):
        raise UsageError(
            "throttle needs a write limit in ops/s (a number >= 0; 0 = no cap)",
            hint="e.g. docshift throttle 200",
        )
    run_id = folder.name
    presence = read_presence(folder)
    if presence is None or not presence.alive:
        raise UsageError(
            f"run {run_id} is not running (no live process in {folder})",
            hint="see `docshift runs`; a stopped run continues with `docshift run --execute "
            f"--resume {run_id}`",
        )
    if presence.url is not None:
        body = {"ops_per_second": value} if action == "throttle" else None
        try:
            code, answer = request(f"{presence.url}/{action}", "POST", body, token=token, timeout=timeout)
        except (OSError, urllib.error.URLError):
            pass  # the endpoint is gone or unreachable from here: fall back to the files
        else:
            if code != 200:
                raise _refused(run_id, code, answer)
            return ControlResult(run_id, action, presence.url, answer)
    return _by_file(folder, presence, action, value)


def _by_file(folder: Path, presence: RunPresence, action: str, value: float | None) -> ControlResult:
    path = RunFolder(folder).control(action)
    if action == "resume":
        path.unlink(missing_ok=True)
    elif action == "throttle":
        path.write_text(f"{value:g}\n", encoding="utf-8")
    else:
        path.touch()
    return ControlResult(folder.name, action, f"control file {path}", {"ok": True, "pid": presence.pid})

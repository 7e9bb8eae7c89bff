"""Steering a run in-process: the status endpoint (answers, control, token rules), control files,
and the client that uses one or the other."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docshift.engine.controls import Controls
from docshift.engine.hooks import ControlApplied, PassStarted
from docshift.errors import EmergencyStop, UsageError
from docshift.remote import ControlFiles, StatusServer, is_loopback, read_presence, send_control
from docshift.remote.client import fetch_status, request
from docshift.reports import RunStatus
from docshift.runfolder.presence import remove_presence, write_presence
from docshift.testing import RecordingHooks


@pytest.fixture
def served() -> Iterator[tuple[StatusServer, Controls]]:
    controls = Controls()
    status = RunStatus("run-1", controls=controls)
    status.pass_started(PassStarted("0001_x", shards=1, execute=True, counters={}))
    server = StatusServer(status, controls, port=0)
    yield server, controls
    server.close()


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if method == "POST" and data is None:
        data = b""
    prepared = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(prepared, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_status_and_health_answer(served: tuple[StatusServer, Controls]) -> None:
    server, controls = served
    code, status = call(server.url + "/status")
    assert code == 200 and status["run_id"] == "run-1" and status["migrations"][0]["migration"] == "0001_x"
    assert call(server.url + "/health") == (200, {"status": "HEALTHY", "score": 100, "reasons": []})
    controls.request_stop("circuit breaker: 5 failed commits in a row", EmergencyStop)
    code, health = call(server.url + "/health")
    assert code == 503 and health["status"] == "CRITICAL" and "circuit breaker" in health["reasons"][0]


def test_control_requests_act_on_the_controls(served: tuple[StatusServer, Controls]) -> None:
    server, controls = served
    noted: list[tuple[str, dict[str, Any]]] = []
    server.on_control = lambda action, **fields: noted.append((action, fields))
    assert call(server.url + "/pause", "POST") == (200, {"ok": True, "paused": True})
    assert controls.paused and call(server.url + "/status")[1]["state"] == "paused"
    assert call(server.url + "/resume", "POST")[0] == 200 and not controls.paused
    assert call(server.url + "/throttle", "POST", {"ops_per_second": 250})[1]["write_limit"] == 250
    assert call(server.url + "/throttle?ops_per_second=125", "POST")[0] == 200
    assert call(server.url + "/throttle", "POST", raw=b"60")[0] == 200 and controls.limiter.limit == 60
    for bad in ({"ops_per_second": -1}, {"ops_per_second": "fast"}, {}):
        assert call(server.url + "/throttle", "POST", bad)[0] == 400
    assert controls.limiter.limit == 60
    assert call(server.url + "/stop", "POST")[0] == 200
    assert controls.stop.is_set() and controls.stop_reason == "stopped by request (POST /stop)"
    assert [action for action, _ in noted] == ["pause", "resume", "throttle", "throttle", "throttle", "stop"]
    assert call(server.url + "/nothing")[0] == 404 and call(server.url + "/pause")[0] == 405
    assert call(server.url + "/status", "POST")[0] == 405


def test_a_token_is_checked_on_every_request() -> None:
    controls = Controls()
    server = StatusServer(RunStatus("r", controls=controls), controls, host="0.0.0.0", port=0, token="s3cret")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "Bearer s3cret-and-more"},
        ):
            assert call(server.url + "/status", headers=headers)[0] == 401
            assert call(server.url + "/stop", "POST", headers=headers)[0] == 401
        assert not controls.stop.is_set()
        good = {"Authorization": "Bearer s3cret"}
        assert call(server.url + "/status", headers=good)[0] == 200
        assert call(server.url + "/pause", "POST", headers=good)[0] == 200 and controls.paused
    finally:
        server.close()


def test_off_loopback_without_a_token_is_refused_and_a_busy_port_is_one_line() -> None:
    controls = Controls()
    with pytest.raises(UsageError, match="needs a token"):
        StatusServer(RunStatus("r"), controls, host="0.0.0.0", port=0)
    first = StatusServer(RunStatus("r"), controls, port=0)
    try:
        with pytest.raises(UsageError, match="cannot serve the status endpoint"):
            StatusServer(RunStatus("r"), controls, port=first.port)
    finally:
        first.close()


def test_loopback_detection() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org", "192.168.1.5"]))


def test_control_files_pause_resume_stop_and_throttle(tmp_path: Path) -> None:
    controls, events = Controls(), RecordingHooks()
    files = ControlFiles(tmp_path, controls, hooks=events)
    files.check()
    assert not controls.paused
    (tmp_path / "pause").touch()
    files.check()
    assert controls.paused
    controls.resume()  # resumed another way (HTTP): the file does not pause it again
    files.check()
    assert not controls.paused
    (tmp_path / "pause").unlink()
    files.check()
    (tmp_path / "throttle").write_text("75\n")
    files.check()
    assert controls.limiter.limit == 75
    (tmp_path / "throttle").write_text("lots")
    files.check()
    assert controls.limiter.limit == 75 and "not a write limit" in events.warnings()[-1]
    (tmp_path / "stop").touch()
    files.check()
    assert controls.stop.is_set() and not (tmp_path / "stop").exists()  # honoured, then removed
    assert [event.action for event in events.of(ControlApplied)] == [
        "pause",
        "resume",
        "throttle",
        "stop",
    ]


def test_control_files_watch_in_the_background(tmp_path: Path) -> None:
    controls = Controls()
    files = ControlFiles(tmp_path, controls, interval=0.05)
    files.start()
    try:
        (tmp_path / "stop").touch()
        assert controls.stop.wait(5)
    finally:
        files.close()


def test_the_client_uses_the_endpoint_and_falls_back_to_files(
    tmp_path: Path, served: tuple[StatusServer, Controls]
) -> None:
    server, controls = served
    folder = tmp_path / "run-1"
    folder.mkdir()
    with pytest.raises(UsageError, match="is not running"):
        send_control(folder, "pause")
    write_presence(folder, server.url, token_required=False)
    presence = read_presence(folder)
    assert presence is not None and presence.alive and presence.pid == os.getpid()
    result = send_control(folder, "pause")
    assert result.via == server.url and controls.paused
    assert send_control(folder, "throttle", value=10).answer["write_limit"] == 10
    fetched = fetch_status(folder)
    assert fetched is not None and fetched["state"] == "paused"
    with pytest.raises(UsageError, match="throttle needs"):
        send_control(folder, "throttle")
    # Without an endpoint: control files.
    write_presence(folder, None, token_required=False)
    assert fetch_status(folder) is None
    assert send_control(folder, "pause").via.startswith("control file") and (folder / "pause").exists()
    send_control(folder, "resume")
    assert not (folder / "pause").exists()
    send_control(folder, "throttle", value=5)
    assert (folder / "throttle").read_text() == "5\n"
    send_control(folder, "stop")
    assert (folder / "stop").exists()
    remove_presence(folder)
    assert read_presence(folder) is None


def test_the_client_reports_a_refused_token(tmp_path: Path) -> None:
    controls = Controls()
    server = StatusServer(RunStatus("r", controls=controls), controls, port=0, token="right")
    try:
        write_presence(tmp_path, server.url, token_required=True)
        with pytest.raises(UsageError, match="refused the token"):
            send_control(tmp_path, "stop", token="wrong")
        with pytest.raises(UsageError, match="refused the token"):
            fetch_status(tmp_path)
        assert not controls.stop.is_set()
        assert send_control(tmp_path, "stop", token="right").answer == {"ok": True, "stopping": True}
        assert request(server.url + "/health", token="right")[0] == 200
    finally:
        server.close()


def test_a_dead_process_is_not_running(tmp_path: Path) -> None:
    write_presence(tmp_path, None, token_required=False)
    text = (tmp_path / "status.json").read_text()
    (tmp_path / "status.json").write_text(text.replace(f'"pid": {os.getpid()}', '"pid": 999999999'))
    presence = read_presence(tmp_path)
    assert presence is not None and not presence.alive
    with pytest.raises(UsageError, match="is not running"):
        send_control(tmp_path, "stop")

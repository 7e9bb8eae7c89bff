"""Seeing and steering a run against the emulator, through the real CLI in another process: the JSON
event stream, the status endpoint (pause, throttle, resume, stop), the token off loopback, control
files, ``runs``/``show``/``report``/``monitor``, and the HTML report (screenshot when Chromium is
installed)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from docshift.remote.client import request
from docshift.runfolder import Checkpoint, read_versioned
from docshift.runfolder.presence import read_presence
from docshift.store import Query, RetryingStore, Write
from tests.integration.run_support import DOCSHIFT, ROOT, docshift, project_folder

T = TypeVar("T")


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The event log's lines as JSON (what `docshift monitor` and scripts read); a line torn by a
    write still under way is left out."""
    lines: list[dict[str, Any]] = []
    for line in path.read_bytes().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            lines.append(json.loads(line))
    return lines


TOUCH = '''"""Mark every item (idempotent)."""
from docshift import UNCHANGED

description = "mark every item"
collection = "items"


def up(doc):
    data = doc.data
    if data.get("touched"):
        return UNCHANGED
    data["touched"] = True
    return data
'''
URL = re.compile(r"(?i)\b(?:https?|ftp|wss?)://|\bsrc\s*=|<script|<link|@import|url\(")


def seed_items(store: RetryingStore, count: int) -> None:
    for start in range(0, count, 500):
        writes = [Write.set(f"items/i{n:05d}", {"n": n}) for n in range(start, min(count, start + 500))]
        assert all(result.ok for result in store.commit(writes))


def touched(store: RetryingStore) -> int:
    return sum(1 for doc in store.stream(Query("items")) if doc.data.get("touched"))


def project(tmp_path: Path, config: str = "") -> Path:
    return project_folder(
        tmp_path / "project",
        "checkpoint_every_seconds = 0.5\nbatch_size = 100\n" + config,
        files=(),
        extra={"0001_touch.py": TOUCH},
    )


def start(folder: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``docshift ARGS`` in the background; output goes to files (a full pipe would stall the run)."""
    out, err = folder / "run.out", folder / "run.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [DOCSHIFT, *args],
            cwd=folder,
            env=env,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return process, out, err


def wait_for(check: Callable[[], T | None], timeout: float = 30, what: str = "a condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def settled(
    read: Callable[[], dict[str, Any]],
    paused: Callable[[dict[str, Any]], bool],
    count: Callable[[dict[str, Any]], int],
    timeout: float = 30,
) -> dict[str, Any]:
    """The first of two reads 1.2 s apart (longer than the 1 s between progress events) that are
    both paused with the same count: the commits in flight when the pause came have landed. A
    run that goes on writing while paused never settles, and this fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = read()
        time.sleep(1.2)
        after = read()
        if paused(before) and paused(after) and count(before) == count(after):
            return after
    raise AssertionError("the paused run's count did not settle")


def presence_of(folder: Path) -> tuple[Path, Any]:
    """The run folder of the run starting in ``folder`` and its presence file, once written."""

    def found() -> tuple[Path, Any] | None:
        for run in (folder / ".docshift" / "runs").glob("*/"):
            presence = read_presence(run)
            if presence is not None:
                return run, presence
        return None

    return wait_for(found, what="the run's status.json")


def get(url: str, token: str | None = None) -> dict[str, Any]:
    code, answer = request(url, token=token)
    assert code == 200, (code, answer)
    return answer


def done(status: dict[str, Any]) -> int:
    return sum(int(m.get("done") or 0) for m in status["migrations"])


def finish(process: subprocess.Popen[bytes], err: Path, code: int) -> str:
    assert process.wait(timeout=60) == code, err.read_text()
    return err.read_text()


def test_json_events_parse_match_the_store_and_the_event_log(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_items(firestore_store, 1500)
    folder = project(tmp_path)
    result = docshift(folder, cli_env, "run", "--execute", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds.count("finish") == 1 and "checkpoint" in kinds
    assert "stop" not in kinds
    [finished] = [e for e in events if e["event"] == "finish"]
    assert finished["updated"] == touched(firestore_store) == 1500 and finished["failed"] == 0
    assert finished["processed"] == finished["read"] == 1500 and isinstance(finished["retries"], int)
    assert [e["total"] for e in events if e["event"] == "total"] == [1500]
    [run] = (folder / ".docshift" / "runs").glob("*/")
    logged = list(log_lines(run / "events.jsonl"))
    assert [e["event"] for e in logged] == [*kinds, "end"]  # the same stream, then how it ended
    assert logged[-1]["state"] == "finished" and logged[-1]["exit_code"] == 0
    assert not (run / "status.json").exists()  # gone with the process
    report = read_versioned(run / "report.json", "docshift-report", 1)
    assert report["outcome"]["state"] == "finished" and report["totals"]["updated"] == 1500
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3 and 'data-series="0001_touch"' in page and not URL.search(page)
    listed = docshift(folder, cli_env, "runs", "--json")
    [row] = json.loads(listed.stdout)
    assert row["run_id"] == run.name and row["state"] == "finished" and row["counts"]["updated"] == 1500


def test_the_status_endpoint_answers_and_pause_throttle_resume_stop_take_effect(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_items(firestore_store, 4000)
    folder = project(tmp_path)
    process, _, err = start(
        folder, cli_env, "run", "--execute", "--max-writes-per-second", "500", "--status-port", "0"
    )
    run, presence = presence_of(folder)
    url = presence.url
    assert url and url.startswith("http://127.0.0.1:") and not presence.token_required

    def started() -> dict[str, Any] | None:
        status = get(url + "/status")
        return status if status["migrations"] and done(status) and status["migrations"][0]["total"] else None

    status = wait_for(started, what="progress with a total")
    assert status["run_id"] == run.name and status["state"] == "running" and status["write_limit"] == 500
    assert status["migrations"][0]["total"] == 4000
    assert request(url + "/health") == (200, {"status": "HEALTHY", "score": 100, "reasons": []})

    assert request(url + "/pause", "POST")[0] == 200
    first = settled(lambda: get(url + "/status"), lambda s: s["state"] == "paused", done)  # in flight: landed
    written = touched(firestore_store)
    time.sleep(1.5)
    second = get(url + "/status")
    assert second["state"] == "paused" and done(second) == done(first) < 4000
    assert touched(firestore_store) == written  # nothing written while paused
    watched = docshift(folder, cli_env, "monitor", run.name, "--once")
    assert watched.returncode == 0 and f"run {run.name} paused" in watched.stdout

    throttled = docshift(folder, cli_env, "throttle", run.name, "150")
    assert throttled.returncode == 0 and f"via {url}" in throttled.stderr
    assert get(url + "/status")["write_limit"] == 150
    assert request(url + "/resume", "POST")[0] == 200
    resumed = wait_for(
        lambda: next((s for s in [get(url + "/status")] if done(s) > done(second)), None), what="writing"
    )
    before, began = touched(firestore_store), time.monotonic()
    time.sleep(6)  # long beside one 100-document batch and the bucket's burst
    rate = (touched(firestore_store) - before) / (time.monotonic() - began)
    assert resumed["state"] == "running" and rate < 150 * 1.6  # the new limit holds (token bucket burst)

    stopped = docshift(folder, cli_env, "stop", run.name)
    assert stopped.returncode == 0, stopped.stderr
    stderr = finish(process, err, 10)
    assert f"resume with `docshift run --execute --resume {run.name}`" in stderr.strip().splitlines()[-1]
    said = " ".join(stderr.split())
    assert "paused (by POST /pause)" in said and "write limit set to 150 ops/s (by POST /throttle)" in said
    checkpoint = Checkpoint.load(run / "0001_touch" / "checkpoint.json")
    assert checkpoint.state == "stopped" and 0 < checkpoint.counters["updated"] < 4000
    assert checkpoint.counters["updated"] <= touched(firestore_store)
    report = read_versioned(run / "report.json", "docshift-report", 1)
    assert report["outcome"]["state"] == "stopped" and report["outcome"]["exit_code"] == 10
    actions = [m["text"] for m in report["timeline"]["markers"] if m["kind"] == "control"]
    assert actions == ["pause", "throttle", "resume", "stop"]
    assert report["commands"]["resume"] == f"docshift run --execute --resume {run.name}"
    again = docshift(folder, cli_env, "run", "--execute", "--resume")
    assert again.returncode == 0, again.stderr
    assert touched(firestore_store) == 4000


def test_off_loopback_a_token_is_required_and_never_written(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_items(firestore_store, 2000)
    folder = project(tmp_path)
    secret = "s3cret-token-7f1e"
    refused = docshift(folder, cli_env, "run", "--execute", "--status-host", "0.0.0.0", "--status-port", "0")
    assert refused.returncode == 2 and "needs a token" in refused.stderr
    assert touched(firestore_store) == 0 and not list((folder / ".docshift" / "runs").glob("*/"))

    env = {**cli_env, "DOCSHIFT_STATUS_TOKEN": secret}
    process, out, err = start(
        folder,
        env,
        "run",
        "--execute",
        "--max-writes-per-second",
        "100",  # 20 s of writes: two docshift stop commands starting cold come first
        "--status-host",
        "0.0.0.0",
        "--status-port",
        "0",
    )
    run, presence = presence_of(folder)
    assert presence.token_required and presence.url
    for token in (None, "wrong", secret + "x"):
        assert request(presence.url + "/status", token=token)[0] == 401
        assert request(presence.url + "/health", token=token)[0] == 401
        assert request(presence.url + "/stop", "POST", token=token)[0] == 401
    assert get(presence.url + "/status", token=secret)["run_id"] == run.name
    without = docshift(folder, cli_env, "stop", run.name)
    assert without.returncode == 2 and "refused the token" in without.stderr
    wait_for(lambda: done(get(presence.url + "/status", token=secret)) > 0, what="progress")
    assert docshift(folder, env, "stop", run.name).returncode == 0
    finish(process, err, 10)
    outputs = [out.read_text(), err.read_text()]
    files = [
        p.read_bytes().decode("utf-8", "replace")
        for p in run.rglob("*")
        if p.is_file() and not p.name.endswith(".gz")
    ]
    assert (run / "report.html").is_file() and all(secret not in text for text in outputs + files)


def test_control_files_runs_show_report_and_monitor_without_an_endpoint(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_items(firestore_store, 3000)
    folder = project(tmp_path)
    process, _, err = start(folder, cli_env, "run", "--execute", "--max-writes-per-second", "400")
    run, presence = presence_of(folder)
    assert presence.url is None

    def progress() -> list[dict[str, Any]]:
        return [e for e in log_lines(run / "events.jsonl") if e["event"] == "progress"]

    wait_for(lambda: any(e["processed"] for e in progress()), what="progress")
    (run / "pause").touch()
    wait_for(lambda: any(e["event"] == "control" for e in log_lines(run / "events.jsonl")), what="pause")
    first = settled(lambda: progress()[-1], lambda e: bool(e["paused"]), lambda e: int(e["processed"]))
    last = wait_for(
        lambda: next((e for e in progress()[-1:] if e["at"] > first["at"]), None), what="progress"
    )
    assert last["paused"] and last["processed"] == first["processed"]
    watched = docshift(folder, cli_env, "monitor", "--once")  # the running run, from its files
    assert watched.returncode == 0 and f"run {run.name} paused" in watched.stdout

    resumed = docshift(folder, cli_env, "resume", run.name)
    assert resumed.returncode == 0 and "via control file" in resumed.stderr and not (run / "pause").exists()
    wait_for(lambda: progress()[-1]["processed"] > last["processed"], what="writing again")
    assert docshift(folder, cli_env, "stop", run.name).returncode == 0
    stderr = finish(process, err, 10)
    assert "paused (by the control file)" in stderr and "stopping (by the control file)" in stderr
    assert not (run / "stop").exists()  # honoured and removed: a resume is not stopped again

    listed = docshift(folder, cli_env, "runs")
    assert listed.returncode == 0 and run.name in listed.stdout and "stopped" in listed.stdout
    shown = docshift(folder, cli_env, "show", run.name)
    assert shown.returncode == 0 and f"docshift run --execute --resume {run.name}" in shown.stdout
    assert "health" in shown.stdout and "report.html" in shown.stdout
    details = json.loads(docshift(folder, cli_env, "show", run.name, "--json").stdout)
    assert details["state"] == "stopped" and details["outcome"]["exit_code"] == 10
    (run / "report.html").unlink()
    rebuilt = docshift(folder, cli_env, "report", run.name)
    assert rebuilt.returncode == 0 and Path(rebuilt.stdout.strip()) == run / "report.html"
    assert (run / "report.html").is_file()
    followed = docshift(folder, cli_env, "monitor", run.name, timeout=30)  # ended: returns at once
    assert followed.returncode == 0 and "stopped" in followed.stdout
    missing = docshift(folder, cli_env, "pause", run.name)
    assert missing.returncode == 2 and "is not running" in missing.stderr


CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (scripts/screenshot_report.sh installs it)")
def test_the_html_report_renders_in_headless_chromium(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_items(firestore_store, 600)
    folder = project(tmp_path)
    assert docshift(folder, cli_env, "run", "--execute", "--max-writes-per-second", "300").returncode == 0
    [run] = (folder / ".docshift" / "runs").glob("*/")
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [str(ROOT / "scripts" / "screenshot_report.sh"), str(run), str(shot)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000

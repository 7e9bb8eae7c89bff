"""Seeing a run, on the memory store: the event log, live status and health, charts, the report
files (structure, self-containment, redaction), the live view, and ``Observation`` around run_migrations()."""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from docshift.cli.live import LiveHooks, plain_status_line, render_status
from docshift.commands.observe import Observation, ObserveOptions, migration_totals, outcome_of
from docshift.commands.operate import StatusSource, list_runs, show_run
from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    Checkpointed,
    FanOutHooks,
    HealthIssue,
    HealthReported,
    PassFinished,
    PassStarted,
    PassStopped,
    Progressed,
    RunResumed,
    TotalKnown,
    Warned,
)
from docshift.errors import EmergencyStop, LockedError, RunStopped, TooManyFailures
from docshift.history import History, MigrationStatus
from docshift.lock import LeaseLock
from docshift.reports import EventLog, ProgressExtras, RunStatus, build_report, read_events
from docshift.reports.charts import Series, downsample, line_chart, nice_ticks
from docshift.reports.events import EventFollower, event_from_fields, kind_of
from docshift.reports.report import REDACTED, redact
from docshift.reports.status import stop_severity
from docshift.runfolder import Checkpoint, ShardCursor, read_versioned, write_versioned
from docshift.runfolder.presence import remove_presence, write_presence
from docshift.testing import MemoryStore, RecordingHooks
from docshift.validators import Severity
from docshift.values import Timestamp
from tests.unit.engine_support import seed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"
URL = re.compile(r"(?i)\b(?:https?|ftp|wss?)://|\bsrc\s*=|<script|<link|@import|url\(")


# --------------------------------------------------------------------------- event log
def test_the_event_log_appends_json_lines_lazily_and_reads_back_exact_values(tmp_path: Path) -> None:
    path = tmp_path / "run" / "events.jsonl"
    log = EventLog(path)
    assert not path.exists()  # nothing happened, nothing written
    stamp = Timestamp(1_700_000_000, 123456789)
    log.pass_started(PassStarted("0001_x", shards=1, execute=True, counters={"updated": 0}))
    log.checkpointed(Checkpointed("0001_x", "running", ("users/a",)))
    log.run_resumed(RunResumed("r1", {"saved": stamp}, {}))
    log.close()
    EventLog(path).progressed(Progressed("0001_x", {"updated": 5}))  # a resume appends
    with path.open("ab") as handle:
        handle.write(b'{"event": "progress", "at": 1.0, "processed"')  # torn by a kill
    events = list(read_events(path))
    assert [type(e.event) for e in events] == [PassStarted, Checkpointed, RunResumed, Progressed]
    assert [orjson.loads(line)["event"] for line in path.read_bytes().splitlines()[:4]] == [
        "start",
        "checkpoint",
        "resume",
        "progress",
    ]
    assert events[1].event == Checkpointed("0001_x", "running", ("users/a",))
    assert events[2].event == RunResumed("r1", {"saved": stamp}, {}) and isinstance(events[0].at, float)
    assert list(read_events(tmp_path / "missing.jsonl")) == []


def test_the_follower_returns_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    follower = EventFollower(path)
    assert follower.new_events() == []
    start = b'{"event": "start", "at": 1.0, "migration": "m", "shards": 1, "execute": true, "counters": {}}'
    path.write_bytes(start + b'\n{"event": "prog')
    assert [e.event for e in follower.new_events()] == [PassStarted("m", 1, True)]
    with path.open("ab") as handle:
        handle.write(b'ress", "at": 2.0, "migration": "m", "updated": 3}\n')
    [logged] = follower.new_events()
    assert logged.event == Progressed("m", {"updated": 3}) and follower.new_events() == []


def test_fan_out_sends_every_event_to_every_hook_in_order() -> None:
    first, second = RecordingHooks(), RecordingHooks()
    FanOutHooks(first, second).warning(Warned("careful"))
    assert first.events == second.events == [Warned("careful")]


# --------------------------------------------------------------------------- status and health
def progress_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "migration": "0001_x",
        "read": 500,
        "updated": 400,
        "unchanged": 100,
        "created": 0,
        "deleted": 0,
        "failed": 0,
        "conflicts": 0,
        "skipped": 0,
        "rejected": 0,
        "processed": 500,
        "docs_per_second_now": 100.0,
        "docs_per_second_avg": 50.0,
        "commit_p50": 0.01,
        "commit_p95": 0.02,
        "commit_p99": 0.03,
        "commits": 5,
        "elapsed_seconds": 5.0,
        "batch_size": 100,
        "write_limit": 300.0,
        "memory_mb": 80.0,
        "paused": False,
    }
    fields.update(overrides)
    return fields


def progressed(**overrides: Any) -> Progressed:
    return event_from_fields(Progressed, progress_fields(**overrides))


def started(label: str = "0001_x", **counters: int) -> PassStarted:
    return PassStarted(label, shards=1, execute=True, counters=counters)


def test_status_tracks_progress_totals_and_eta() -> None:
    status = RunStatus("r1")
    status.pass_started(started(updated=0))
    status.total_known(TotalKnown("0001_x", 2000))
    status.progressed(progressed())
    snapshot = status.snapshot()
    [entry] = snapshot["migrations"]
    assert snapshot["state"] == "running" and snapshot["current"] == "0001_x"
    assert entry["done"] == 500 and entry["fraction"] == 0.25 and entry["eta_seconds"] == pytest.approx(15.0)
    assert snapshot["write_limit"] == 300.0 and snapshot["health"]["status"] == "HEALTHY"
    status.pass_ended(event_from_fields(PassFinished, progress_fields(processed=2000, updated=1900)))
    assert status.snapshot()["migrations"][0]["fraction"] == 1.0 and status.snapshot()["current"] is None


def test_status_follows_the_controls_pause_and_stop() -> None:
    controls = Controls()
    status = RunStatus("r1", controls=controls)
    status.total_known(TotalKnown("0001_x", 2000))
    status.progressed(progressed())
    controls.pause()
    assert status.snapshot()["state"] == "paused"
    assert status.snapshot()["migrations"][0]["eta_seconds"] is None
    controls.throttle(42)
    assert status.snapshot()["write_limit"] == 42
    controls.request_stop("circuit breaker: too many failures", EmergencyStop)
    assert status.snapshot()["state"] == "stopping"
    health = status.health()
    assert health.status.value == "CRITICAL" and health.score == 70


def test_health_weighs_warnings_errors_and_stops_like_the_validators() -> None:
    status = RunStatus("r1")
    status.warning(Warned("memory above the soft limit"))
    status.warning(Warned("memory above the soft limit"))  # told twice, counted once
    assert (status.health().score, status.health().status.value) == (95, "HEALTHY")
    status.progressed(progressed(failed=3))
    assert (status.health().score, status.health().status.value) == (80, "DEGRADED")
    status.pass_ended(
        event_from_fields(PassStopped, progress_fields(failed=3, reason="interrupted by SIGTERM"))
    )
    assert status.health().score == 75 and status.snapshot()["stop_reason"] == "interrupted by SIGTERM"
    status.health_reported(HealthReported(55, "DEGRADED", (HealthIssue("error", "x", None),)))
    assert status.health().score == 55  # the validators' final word wins


def test_stop_severity() -> None:
    assert stop_severity("anything", RunStopped) is Severity.WARNING
    assert stop_severity("anything", EmergencyStop) is Severity.CRITICAL
    assert stop_severity("anything", TooManyFailures) is Severity.ERROR
    assert stop_severity("stopped by request (POST /stop)") is Severity.WARNING
    assert stop_severity("integrity gate: 80% pass") is Severity.CRITICAL
    assert stop_severity("the store kept failing") is Severity.ERROR


def test_extras_add_retries_and_a_total_from_a_background_count() -> None:
    sink = RecordingHooks()
    counted = threading.Event()

    def total(label: str) -> int:
        counted.set()
        return 1234

    extras = ProgressExtras(sink, retries=lambda: 7, totals=total)
    extras.pass_started(started())
    extras.progressed(progressed())
    assert counted.wait(5)
    deadline = time.monotonic() + 5
    while not sink.of(TotalKnown) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [event.retries for event in sink.of(Progressed)] == [7]
    assert TotalKnown("0001_x", 1234) in sink.events
    failing = ProgressExtras(RecordingHooks(), totals=lambda label: 1 // 0)
    failing.pass_started(started("m"))  # a failed count leaves the total unknown, quietly


# --------------------------------------------------------------------------- charts
def test_ticks_and_downsampling() -> None:
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0, 0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    points: list[tuple[float, float | None]] = [(float(i), float(i % 100)) for i in range(5000)]
    points[2500] = (2500.0, None)
    kept = downsample(points, 100)
    assert len(kept) <= 110 and max(y for _, y in kept if y is not None) == 99
    assert (2500.0, None) in kept


def test_a_line_chart_is_inline_svg_with_one_polyline_per_segment() -> None:
    svg = line_chart(
        "Throughput",
        [Series("a", [(0, 1), (1, 2), (2, None), (3, 4), (4, 5)]), Series("b", [(0, 3)])],
        y_label="docs/s",
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<script" not in svg
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1  # a lone point is a dot
    assert "no data" in line_chart("Empty", [Series("a", [])], y_label="x")


# --------------------------------------------------------------------------- report files
def fake_run(folder: Path, *, events: int = 30) -> None:
    """A run folder as a stopped run leaves it: run.json, a checkpoint, an event log."""
    write_versioned(
        folder / "run.json",
        "docshift-run",
        1,
        {
            "run_id": folder.name,
            "kind": "run",
            "execute": True,
            "state": "stopped",
            "migrations": ["0001"],
            "created_at": "2026-01-01T00:00:00+00:00",
            "user": "me@host",
            "target": "project p (emulator)",
        },
    )
    checkpoint = Checkpoint(
        run_id=folder.name,
        migration_id="0001",
        checksum="c",
        shards=[ShardCursor()],
        counters={"updated": 900, "unchanged": 100, "failed": 2},
        state="stopped",
        elapsed_seconds=31.0,
        settings={"engine": {"batch_size": 100}, "status_token": "hunter2"},
    )
    checkpoint.save(folder / "0001_x" / "checkpoint.json")
    (folder / "0001_x" / "dead-letters.jsonl").write_text('{"path": "a"}\n{"path": "b"}\n')
    lines = [{"event": "start", "at": 1000.0, "migration": "0001_x", "shards": 1, "counters": {}}]
    for i in range(events):
        lines.append(
            {
                "event": "progress",
                "at": 1001.0 + i,
                **progress_fields(
                    processed=30 * i, failed=i // 10, docs_per_second_now=float(20 + i), retries=i // 5
                ),
            }
        )
    lines.append({"event": "control", "at": 1001.0 + events, "action": "pause", "source": "http"})
    lines.append({"event": "warning", "at": 1002.0 + events, "message": "token hunter2 leaked?"})
    lines.append(
        {
            "event": "stop",
            "at": 1003.0 + events,
            **progress_fields(processed=1000, failed=2),
            "reason": "stopped by request (POST /stop)",
        }
    )
    (folder / "events.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def test_the_report_is_self_contained_with_three_charts_and_no_secrets(tmp_path: Path) -> None:
    folder = tmp_path / "20260101T000000-abcdef"
    fake_run(folder)
    paths = build_report(folder, outcome=outcome_of(RunStopped("stopped by request")), secrets=("hunter2",))
    body = read_versioned(paths.json, "docshift-report", 1)
    assert body["outcome"]["state"] == "stopped" and body["outcome"]["exit_code"] == 10
    [migration] = body["migrations"]
    assert migration["counters"]["updated"] == 900 and migration["dead_letters"] == 2
    assert body["commands"]["resume"] == f"docshift run --execute --resume {folder.name}"
    assert body["commands"]["rollback"] == f"docshift rollback {folder.name} --execute"
    assert body["settings"]["status_token"] == REDACTED
    assert len(body["timeline"]["throughput"]["0001_x"]) == 30 + 1  # progress events, then the stop
    page = paths.html.read_text(encoding="utf-8")
    assert page.count("<svg") == 3 and page.count("<polyline") >= 3 + 2  # p50/p95/p99, failed/retries...
    points = re.findall(r'<polyline[^>]*data-series="0001_x"[^>]*points="([^"]+)"', page)
    assert points and len(points[0].split()) == 31
    assert not URL.search(page), URL.search(page)
    for text in (page, paths.json.read_text(encoding="utf-8")):
        assert "hunter2" not in text
    assert "docshift run --execute --resume" in page and "batch_size" in page
    assert "stopped by request (POST /stop)" in page and "pause" in page


def test_rebuilding_keeps_the_recorded_outcome(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    fake_run(folder, events=3)
    with (folder / "events.jsonl").open("ab") as handle:
        handle.write(
            orjson.dumps(
                {
                    "event": "end",
                    "at": 2000.0,
                    "state": "stopped",
                    "exit_code": 10,
                    "error": "stopped by request",
                    "hint": None,
                }
            )
            + b"\n"
        )
    body = read_versioned(build_report(folder).json, "docshift-report", 1)
    assert body["outcome"]["exit_code"] == 10 and body["state"] == "stopped"


def test_redact_masks_secret_names_and_given_strings() -> None:
    data = {"password": "p", "api_key": "k", "nested": [{"Authorization": "Bearer x"}], "note": "say s3"}
    assert redact(data, ("s3",)) == {
        "password": REDACTED,
        "api_key": REDACTED,
        "nested": [{"Authorization": REDACTED}],
        "note": f"say {REDACTED}",
    }
    assert redact({"token": None}) == {"token": None}  # nothing to hide


# --------------------------------------------------------------------------- live view
def test_the_live_view_renders_bars_rates_latency_counts_and_health() -> None:
    status = RunStatus("r1", controls=Controls())
    status.pass_started(started())
    status.total_known(TotalKnown("0001_x", 2000))
    status.progressed(progressed(retries=3))
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=130, color_system=None)
    console.print(render_status(status.snapshot()))
    text = out.getvalue()
    for expected in (
        "0001_x",
        "25.0%",
        "500/2,000",
        "ETA 0:15",
        "100 docs/s now",
        "p95 20ms",
        "updated 400",
        "unchanged 100",
        "failed 0",
        "conflicts 0",
        "retries 3",
        "write limit",
        "memory 80 MiB",
        "health 100/100 HEALTHY",
    ):
        assert expected in text, expected
    line = plain_status_line(status.snapshot())
    assert "500/2,000" in line and "ETA 0:15" in line and "\n" not in line


def test_live_progress_draws_while_running_and_stops_cleanly() -> None:
    out = io.StringIO()
    live = LiveHooks(Console(file=out, force_terminal=True, width=120), Controls())
    live.pass_started(started())
    live.progressed(progressed())
    live.warning(Warned("careful"))
    live.close()
    assert "careful" in out.getvalue() and "0001_x" in out.getvalue()


# ------------------------------------------------------------------- Observation around run_migrations()
@pytest.fixture
def config(tmp_path: Path) -> Config:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", migrations)
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=50, min_batch_size=10),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def test_an_observed_run_logs_events_writes_its_report_and_cleans_up(config: Config) -> None:
    store = MemoryStore()
    seed(store, 300)
    controls = Controls()
    present: list[bool] = []

    class Shown(RecordingHooks):
        def pass_started(self, event: PassStarted) -> None:
            super().pass_started(event)
            present.append(seen.folder is not None and (seen.folder / "status.json").is_file())

    shown = Shown()
    watch = ObserveOptions(status_port=0, totals=migration_totals(config, store))
    with Observation(config, store, controls, display=shown, options=watch) as seen:
        # The folder is made when the run starts (a run refused before leaves none behind).
        assert seen.run_id and seen.url and seen.folder and not seen.folder.exists()
        report = run_migrations(
            config,
            RunOptions(execute=True, run_id=seen.run_id),
            store=store,
            hooks=seen.hooks,
            controls=controls,
        )
    assert present == [True]  # while it ran
    assert report.folder == seen.folder and not (report.folder / "status.json").exists()
    lines = (report.folder / "events.jsonl").read_bytes().splitlines()
    kinds = [orjson.loads(line)["event"] for line in lines]
    assert kinds[0] == "start" and kinds[-1] == "end" and "finish" in kinds
    assert [kind_of(e.event) for e in read_events(report.folder / "events.jsonl")] == kinds
    assert [kind_of(e) for e in shown.events if kind_of(e)] == kinds  # the display saw the same events
    assert seen.report is not None and seen.report.html.is_file()
    body = read_versioned(seen.report.json, "docshift-report", 1)
    assert body["outcome"] == {"state": "finished", "exit_code": 0, "error": None, "hint": None}
    assert body["totals"]["updated"] == 270  # seed(): every tenth person has no full_name
    [summary] = list_runs(config)
    assert summary.state == "finished" and summary.counts["updated"] == 270
    assert show_run(config, None)["commands"]["rollback"].endswith("--execute")
    snapshot = StatusSource(report.folder).poll()
    assert snapshot["state"] == "finished" and snapshot["migrations"][0]["updated"] == 270
    # Nothing left to do: no run folder is left behind.
    with Observation(config, store, Controls()) as again:
        assert (
            run_migrations(config, RunOptions(execute=True, run_id=again.run_id), store=store).outcomes == []
        )
    assert again.folder is not None and not again.folder.exists()


class StopAtFirstCheckpoint(RecordingHooks):
    def __init__(self, controls: Controls) -> None:
        super().__init__()
        self.controls = controls

    def checkpointed(self, event: Checkpointed) -> None:
        super().checkpointed(event)
        self.controls.request_stop("stopped by request (POST /stop)")


def test_a_stopped_observed_run_reports_how_it_stopped_and_a_refused_resume_changes_nothing(
    config: Config,
) -> None:
    config = dataclasses.replace(config, engine=dataclasses.replace(config.engine, checkpoint_every_docs=50))
    store = MemoryStore()
    seed(store, 400)
    controls = Controls()
    with (
        pytest.raises(RunStopped),
        Observation(config, store, controls, display=StopAtFirstCheckpoint(controls)) as seen,
    ):
        run_migrations(
            config,
            RunOptions(execute=True, run_id=seen.run_id),
            store=store,
            hooks=seen.hooks,
            controls=controls,
        )
    assert seen.folder is not None and seen.report is not None
    body = read_versioned(seen.report.json, "docshift-report", 1)
    assert body["outcome"]["state"] == "stopped" and body["outcome"]["exit_code"] == 10
    assert body["commands"]["resume"] == f"docshift run --execute --resume {seen.run_id}"
    assert body["health"]["status"] == "HEALTHY" and body["health"]["score"] == 95  # a requested stop
    events = (seen.folder / "events.jsonl").read_bytes()
    report = seen.report.json.read_bytes()

    # Another process (here: this one) still runs it: a resume attempt leaves its files alone.
    write_presence(seen.folder, None, token_required=False)
    with Observation(config, store, Controls(), resume=seen.run_id) as busy:
        assert busy.folder is None and busy.hooks is busy.display
    assert (seen.folder / "status.json").is_file()
    remove_presence(seen.folder)

    # A resume refused before it starts (here: the lease is held) does not rewrite the report.
    holder = LeaseLock(store, config.store.state_prefix, run_id="someone-else")
    with (
        pytest.raises(LockedError),
        holder,
        Observation(config, store, Controls(), resume=seen.run_id) as refused,
    ):
        run_migrations(config, RunOptions(resume=seen.run_id), store=store, hooks=refused.hooks)
    assert (seen.folder / "events.jsonl").read_bytes() == events
    assert seen.report.json.read_bytes() == report and not (seen.folder / "status.json").exists()


FAILING_STAGE = '''
"""Give every person a tier; person 7's document cannot be migrated."""
collection = "users"

def up(doc):
    if doc.get("n") == 7:
        raise ValueError("person 7 is broken")
    return {**doc.data, "tier": "gold"}
'''


def test_a_canary_rolled_back_by_its_gate_is_rolled_back_in_every_view(config: Config) -> None:
    """run.json, the report, `runs`, `show`, the status endpoint's snapshot and the history all say
    rolled_back with the same counts (every stage's) and the working time of every stage."""
    (config.migrations_dir / "0001_split_full_name.py").unlink()
    (config.migrations_dir / "0001_tier.py").write_text(FAILING_STAGE, encoding="utf-8")
    limits = dataclasses.replace(config.limits, stage_max_failure_rate=0.0)
    config = dataclasses.replace(config, limits=limits)
    store = MemoryStore()
    seed(store, 400, make=lambda n: {"n": n})
    controls = Controls()
    with pytest.raises(EmergencyStop, match="failed its gate"), Observation(config, store, controls) as seen:
        run_migrations(
            config,
            RunOptions(execute=True, run_id=seen.run_id, stages=(50.0, 100.0)),
            store=store,
            hooks=seen.hooks,
            controls=controls,
        )
    assert seen.folder is not None and seen.report is not None
    body = read_versioned(seen.report.json, "docshift-report", 1)
    [row] = body["migrations"]
    [summary] = list_runs(config)
    snapshot = seen.status.snapshot()
    [live] = snapshot["migrations"]
    states = {
        read_versioned(seen.folder / "run.json", "docshift-run", 1)["state"],
        body["state"],
        body["outcome"]["state"],
        row["state"],
        summary.state,
        show_run(config, None)["state"],
        snapshot["state"],
        live["state"],
        StatusSource(seen.folder).poll()["state"],
    }
    assert states == {"rolled_back"}
    assert row["counters"]["failed"] == 1 and row["counters"]["updated"] >= 1
    assert {k: live[k] for k in ("updated", "failed", "unchanged")} == {
        k: row["counters"][k] for k in ("updated", "failed", "unchanged")
    }
    assert summary.counts["updated"] == body["totals"]["updated"] == row["counters"]["updated"]
    record = History(store, config.store.state_prefix).get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK
    assert {k: record.counts.get(k, 0) for k in row["counters"]} == row["counters"]
    assert row["rollback"]["restored"] == row["counters"]["updated"]
    assert "resume" not in body["commands"] and "rollback" not in body["commands"]

"""``docshift runs | show | report | monitor`` (seeing runs) and ``pause | resume | throttle | stop``
(steering a running one through its status endpoint or control files)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.text import Text

from docshift.cli.context import AppContext, pass_app
from docshift.cli.live import plain_status_line, render_status
from docshift.cli.output import CountsTable, console, err_console, summary_table
from docshift.commands.operate import (
    RunSummary,
    StatusSource,
    control_run,
    list_runs,
    rebuild_report,
    resolve_run,
    show_run,
)
from docshift.runfolder.layout import RunFolder
from docshift.runfolder.record import ENDED_STATES

__all__ = [
    "monitor_command",
    "pause_command",
    "report_command",
    "resume_command",
    "runs_command",
    "runs_table",
    "show_command",
    "stop_command",
    "throttle_command",
]

_ENDED = (*ENDED_STATES, "damaged")
_token_option = click.option(
    "--token",
    envvar="DOCSHIFT_STATUS_TOKEN",
    metavar="TOKEN",
    help="The run's --status-token (default: $DOCSHIFT_STATUS_TOKEN).",
)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    return (
        f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
        if whole >= 3600
        else (f"{whole // 60}:{whole % 60:02d}")
    )


def _state(state: str) -> str:
    colour = {
        "finished": "green",
        "running": "cyan",
        "stopped": "yellow",
        "interrupted": "yellow",
        "conflicts": "yellow",
        "failed": "red",
        "rolled_back": "red",
        "partly_rolled_back": "red",
        "damaged": "red",
    }.get(state, "white")
    return f"[{colour}]{state}[/]"


@click.command("runs")
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@pass_app
def runs_command(app: AppContext, limit: int | None, as_json: bool) -> None:
    """List runs, newest first: id, migrations, state, start, duration and counts (--json: all)."""
    runs = list_runs(app.config(), limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in runs], indent=2))
        return
    if not runs:
        console.print(f"no runs in {app.config().runs_dir}")
        return
    console.print(runs_table(runs, f"runs in {app.config().runs_dir}"))


_RUN_COUNTS = ("updated", "created", "deleted", "unchanged", "failed", "conflicts")


def runs_table(runs: Sequence[RunSummary], title: str) -> CountsTable:
    """One row per run; narrower than the table, each run stacks (its id and state, its
    migrations wrapped, then its start, duration and counts), never cutting one."""
    columns = ["run", "kind", "migrations", "state", "started (UTC)", "duration", *_RUN_COUNTS]
    rows: list[list[str | Text]] = [
        [
            run.run_id,
            run.kind if run.execute else f"dry {run.kind}",
            ", ".join(run.migrations),
            Text.from_markup(_state(run.state)),
            (run.created_at or "")[:19].replace("T", " "),
            _duration(run.duration_seconds),
            *(f"{run.counts.get(k, 0):,}" for k in _RUN_COUNTS),
        ]
        for run in runs
    ]
    return CountsTable(
        columns,
        rows,
        title=title,
        state_column=3,
        wrapped=("migrations",),
        text=("kind", "started (UTC)", "duration"),
    )


@click.command("show")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@pass_app
def show_command(app: AppContext, run_id: str | None, as_json: bool) -> None:
    """Show one run (default: the newest): outcome, counts, health, warnings, next commands."""
    body = show_run(app.config(), run_id)
    if as_json:
        click.echo(json.dumps(body, indent=2, default=str))
        return
    run, outcome, health = body.get("run", {}), body.get("outcome", {}), body.get("health") or {}
    mode = "execute" if body.get("execute") else "dry run"
    console.print(f"[bold]{body['kind']} {body['run_id']}[/] {_state(str(body.get('state')))} ({mode})")
    console.print(f"  target: {run.get('target')}")
    console.print(
        f"  started: {run.get('created_at')} by {run.get('user', '?')}; working time "
        f"{_duration(float(body.get('duration_seconds') or 0))}"
    )
    if outcome.get("exit_code") is not None:
        console.print(f"  exit code: {outcome.get('exit_code')}")
    if outcome.get("error"):
        why = (
            "stopped because"
            if body.get("state") in ("stopped", "rolled_back", "partly_rolled_back", "interrupted")
            else "error"
        )
        console.print(f"  {why}: {outcome['error']}")
    if outcome.get("hint"):
        console.print(f"  hint: {outcome['hint']}", soft_wrap=True)
    rows = [(m["migration"], m.get("counters", {}), str(m.get("state"))) for m in body.get("migrations", [])]
    if rows:
        console.print(summary_table(f"{len(rows)} migration(s)", rows, dry_run=not body.get("execute")))
    console.print(f"  health {health.get('score')}/100 {health.get('status')}")
    for issue in health.get("issues") or []:
        console.print(f"    {issue.get('severity')}: {issue.get('message')}", soft_wrap=True)
    for migration in body.get("migrations", []):
        if migration.get("rollback"):
            undone = ", ".join(f"{k} {v:,}" for k, v in migration["rollback"].items() if v)
            undone = undone or "nothing to undo"
            console.print(f"  {migration['migration']}: every stage was rolled back ({undone})")
        if migration.get("dead_letters"):
            console.print(
                f"  {migration['migration']}: {migration['dead_letters']:,} dead letter(s) in "
                f"{RunFolder(Path(body['folder'])).migration(migration['migration']).dead_letters}"
            )
    if body.get("process"):
        process = body["process"]
        console.print(
            f"  running in process {process['pid']} on {process['hostname']}"
            + (f"; status endpoint {process['status_url']}" if process.get("status_url") else "")
        )
    for name, command in (body.get("commands") or {}).items():
        console.print(f"  {name}: [bold]{command}[/]")
    for name, path in (body.get("report_files") or {}).items():
        console.print(f"  {name}: {path}")


@click.command("report")
@click.argument("run_id", required=False)
@pass_app
def report_command(app: AppContext, run_id: str | None) -> None:
    """(Re)build a run's report.json and report.html (default: the newest run); print the HTML's path."""
    paths = rebuild_report(app.config(), run_id)
    click.echo(str(paths.html))


@click.command("monitor")
@click.argument("run_id", required=False)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=None,
    help="Seconds between updates (default: 1 on a terminal, 3 otherwise).",
)
@click.option("--once", is_flag=True, help="Show the current state once and exit.")
@_token_option
@pass_app
def monitor_command(
    app: AppContext, run_id: str | None, interval: float | None, once: bool, token: str | None
) -> None:
    """Show the live view of a run executing in another process (default: the running one).

    Reads the run's status endpoint when it has one, otherwise its event log and checkpoints.
    Ends when the run ends (or at Ctrl-C; the run goes on).
    """
    folder = resolve_run(app.config(), run_id, running=True)
    source = StatusSource(folder, token=token)
    terminal = sys.stdout.isatty()
    every = interval or (1.0 if terminal else 3.0)
    try:
        if once or not terminal:
            while True:
                snapshot = source.poll()
                if once:
                    console.print(
                        render_status(snapshot, source=source.via)
                        if terminal
                        else plain_status_line(snapshot),
                        soft_wrap=True,
                    )
                    return
                click.echo(plain_status_line(snapshot))
                if snapshot.get("state") in _ENDED:
                    return
                time.sleep(every)
        snapshot = source.poll()
        with Live(render_status(snapshot, source=source.via), console=console, refresh_per_second=4) as live:
            while snapshot.get("state") not in _ENDED:
                time.sleep(every)
                snapshot = source.poll()
                live.update(render_status(snapshot, source=source.via))
    except KeyboardInterrupt:
        return


def _control(
    app: AppContext, run_id: str | None, action: str, token: str | None, value: float | None = None
) -> None:
    result = control_run(app.config(), run_id or "latest", action, value=value, token=token)
    done = {
        "pause": "paused",
        "resume": "resumed",
        "stop": "stopping (in-flight commits finish, then a checkpoint)",
        "throttle": f"write limit set to {value:g} ops/s" if value else "write limit removed",
    }
    answer: dict[str, Any] = result.answer
    note = " (takes effect within a second)" if result.via.startswith("control file") else ""
    err_console.print(f"run {result.run_id}: {done[action]} via {result.via}{note}")
    if action == "throttle" and answer.get("write_limit") is not None and answer["write_limit"] != value:
        err_console.print(f"  the limit now in force is {answer['write_limit']:g} ops/s (ramp or cap)")


@click.command("pause")
@click.argument("run_id", required=False)
@_token_option
@pass_app
def pause_command(app: AppContext, run_id: str | None, token: str | None) -> None:
    """Pause a running run (default: the running one): no new reads or commits until resumed."""
    _control(app, run_id, "pause", token)


@click.command("resume")
@click.argument("run_id", required=False)
@_token_option
@pass_app
def resume_command(app: AppContext, run_id: str | None, token: str | None) -> None:
    """Resume a paused run. (A stopped run continues with `docshift run --execute --resume`.)"""
    _control(app, run_id, "resume", token)


@click.command("throttle")
@click.argument("run_id")
@click.argument("ops_per_second", type=click.FloatRange(min=0))
@_token_option
@pass_app
def throttle_command(app: AppContext, run_id: str, ops_per_second: float, token: str | None) -> None:
    """Set a running run's write limit to OPS_PER_SECOND (0 removes the cap)."""
    _control(app, run_id, "throttle", token, ops_per_second)


@click.command("stop")
@click.argument("run_id", required=False)
@_token_option
@pass_app
def stop_command(app: AppContext, run_id: str | None, token: str | None) -> None:
    """Stop a running run gracefully: in-flight commits land, checkpoint kept, resumable (exit 10)."""
    _control(app, run_id, "stop", token)

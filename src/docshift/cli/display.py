"""Wiring for ``docshift run`` and ``docshift rollback``: the status-endpoint flags, the display
(live view on a terminal, plain lines otherwise, JSON lines with --json), how the run is watched,
and what is printed when the run ends (the report's path; on a stop, the summary table too)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from docshift.cli.output import JsonHooks, PlainHooks, err_console, summary_table
from docshift.cli.signals import SignalHandlers
from docshift.commands.observe import Observation, ObserveOptions, migration_totals
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.hooks import ControlApplied, RunHooks
from docshift.reports.report import ReportPaths
from docshift.store import Store

if TYPE_CHECKING:
    from docshift.cli.live import LiveHooks

__all__ = [
    "StatusFlags",
    "close_display",
    "control_note",
    "display_hooks",
    "print_run_end",
    "status_options",
    "watch_options",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class StatusFlags:
    port: int | None = None
    host: str = "127.0.0.1"
    token: str | None = None


def status_options(func: F) -> F:
    """Adds --status-port/--status-host/--status-token; the command receives ``status: StatusFlags``."""

    @click.option(
        "--status-port",
        type=click.IntRange(0, 65535),
        metavar="PORT",
        help="Serve GET /status, GET /health and POST /pause|/resume|/throttle|/stop on this "
        "port while running (0: any free port; see status.json in the run folder).",
    )
    @click.option(
        "--status-host",
        default="127.0.0.1",
        show_default=True,
        metavar="HOST",
        help="Address to bind the status endpoint to; anything but loopback needs a token.",
    )
    @click.option(
        "--status-token",
        envvar="DOCSHIFT_STATUS_TOKEN",
        metavar="TOKEN",
        help="Require 'Authorization: Bearer TOKEN' on every request (default: "
        "$DOCSHIFT_STATUS_TOKEN). Never printed or written to the run folder.",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, status_port: int | None, status_host: str, status_token: str | None, **kwargs: Any
    ) -> Any:
        return func(*args, status=StatusFlags(status_port, status_host, status_token), **kwargs)

    return wrapper  # type: ignore[return-value]


def control_note(event: ControlApplied) -> str:
    """One line saying who steered the run (a pause is otherwise invisible in a log)."""
    action, source = event.action, event.source
    how = "the control file" if source == "file" else f"POST /{action}" if source == "http" else str(source)
    if action == "throttle":
        value = float(event.ops_per_second or 0)
        action = f"write limit set to {value:g} ops/s" if value else "write limit removed"
    else:
        action = {"pause": "paused", "resume": "resumed", "stop": "stopping"}.get(action, action)
    return f"{action} (by {how})"


def display_hooks(as_json: bool, quiet: bool, controls: Controls) -> RunHooks:
    """JSON lines with --json; the live view on a terminal; otherwise a plain line every few seconds."""
    if as_json:
        return JsonHooks()
    if err_console.is_terminal and not quiet:
        from docshift.cli.live import LiveHooks  # deferred: rich's live display, for a terminal only

        return LiveHooks(err_console, controls, notes=control_note)
    return PlainHooks(quiet=quiet, notes=control_note)


def _live_view(display: RunHooks) -> LiveHooks | None:
    """``display`` if it is the live view. Its module is imported only to make one
    (:func:`display_hooks`): while it is not, no display is one."""
    live = sys.modules.get("docshift.cli.live")
    return cast("LiveHooks", display) if live is not None and isinstance(display, live.LiveHooks) else None


def watch_options(
    config: Config,
    store: Store,
    display: RunHooks,
    status: StatusFlags,
    *,
    as_json: bool = False,
    limit: int | None = None,
    signals: SignalHandlers | None = None,
) -> ObserveOptions:
    """How ``docshift run`` and ``docshift rollback`` are watched: the status endpoint, the ETA, and
    what is shown once the observation is set up (the live view's run id, the endpoint's URL);
    ``signals`` learn the run id (a stop at once names it) and to close the live view first."""
    # The count query behind the ETA costs a scan of the target; only pay for it where an ETA is shown.
    live = _live_view(display)
    shows_eta = as_json or status.port is not None or live is not None

    if signals is not None and live is not None:
        signals.before_exit = live.close

    def started(observation: Observation) -> None:
        if signals is not None and observation.folder is not None:
            signals.run_id = observation.folder.name
        if live is not None:
            live.set_run_id(observation.status.run_id)
        if observation.url and not as_json:
            auth = " (token required)" if status.token else ""
            err_console.print(f"status endpoint: {observation.url}/status{auth}")

    return ObserveOptions(
        status_port=status.port,
        status_host=status.host,
        status_token=status.token,
        totals=migration_totals(config, store, limit=limit) if shows_eta else None,
        on_start=started,
    )


def close_display(display: RunHooks) -> None:
    """The command is over: the live view leaves its last frame on screen and stops (the
    observation gave it the run's end; also when nothing ran: a run refused before its first pass)."""
    if (live := _live_view(display)) is not None:
        live.close()


def print_run_end(
    kind: str, report: ReportPaths | None, report_error: BaseException | None, as_json: bool
) -> None:
    """The report's path (and a run that did not finish: its summary table, on stderr)."""
    if report_error is not None:
        err_console.print(f"[yellow]warning:[/] the run report could not be written: {report_error}")
    if report is None:
        return
    state = report.body.get("outcome", {}).get("state")
    rows = [
        (m["migration"], m.get("counters", {}), str(m.get("state")))
        for m in report.body.get("migrations", [])
    ]
    if state not in (None, "finished") and rows and not as_json:
        title = f"{kind} {report.body.get('run_id')} {state}"
        err_console.print(summary_table(title, rows, dry_run=not report.body.get("execute")))
    err_console.print(f"report: {report.html}")

"""The live view of a run (rich), for ``docshift run`` on a terminal and ``docshift monitor``.

Both render the same status snapshot (:meth:`docshift.reports.RunStatus.snapshot`, also what
``GET /status`` answers), so what a person sees in either place is the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from docshift.cli.output import counter_name, warning_line
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    ControlApplied,
    FanOutHooks,
    PassEnded,
    PassStarted,
    PassStopped,
    RunEnded,
    StageEntered,
    Warned,
)
from docshift.reports.status import RunStatus

__all__ = ["LiveHooks", "plain_status_line", "render_status"]

_HEALTH_STYLE = {"HEALTHY": "green", "DEGRADED": "yellow", "CRITICAL": "red"}
_STATE_STYLE = {
    "running": "cyan",
    "paused": "yellow",
    "stopping": "yellow",
    "finished": "green",
    "stopped": "yellow",
    "failed": "red",
    "interrupted": "yellow",
    "conflicts": "yellow",
    "rolled_back": "red",
    "partly_rolled_back": "red",
}


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value * 1000:.0f}ms"


def _eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "ETA ?"
    whole = int(seconds)
    return (
        f"ETA {whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
        if whole >= 3600
        else (f"ETA {whole // 60}:{whole % 60:02d}")
    )


def _limit(value: Any) -> str:
    return "none" if not value else f"{value:,.0f} ops/s"


def _limit_parts(snapshot: dict[str, Any]) -> str:
    """Which limits make the write limit: the adaptive rate the store's refusals set, the ramp."""
    named = (("adaptive", "adaptive_limit"), ("ramp", "ramp_limit"))
    parts = [f"{name} {snapshot[key]:,.0f}" for name, key in named if snapshot.get(key)]
    return f" ({', '.join(parts)})" if parts else ""


def _health(snapshot: dict[str, Any]) -> Text:
    health = snapshot.get("health") or {}
    status = str(health.get("status", "?"))
    return Text(f"health {health.get('score', '?')}/100 {status}", style=_HEALTH_STYLE.get(status, ""))


_BAR_WIDTH = 32
_NAME_WIDTH = 24
_MIN_BAR = 10


class _MigrationView:
    """One migration's bar and numbers, laid out for the width it is given: on one line where
    the name, bar, percentage, count and state all fit whole; otherwise the name and state on
    one line and a bar as wide as the line leaves with the percentage and count on the next.
    Nothing is cut: rates and counts wrap between words."""

    def __init__(self, entry: dict[str, Any], dry_run: bool) -> None:
        self.entry = entry
        self.dry_run = dry_run

    def _bar(self, width: int) -> ProgressBar:
        entry = self.entry
        total, done, state = entry.get("total"), int(entry.get("done") or 0), str(entry.get("state", ""))
        if state == "finished":
            return ProgressBar(total=1.0, completed=1.0, width=width)
        return ProgressBar(
            total=float(total) if isinstance(total, int) and total > 0 else None,
            completed=float(min(done, total)) if isinstance(total, int) else 0.0,
            width=width,
            pulse=not isinstance(total, int) and state == "running",
        )

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        entry = self.entry
        total, done = entry.get("total"), int(entry.get("done") or 0)
        fraction = entry.get("fraction")
        state = str(entry.get("state", ""))
        name = str(entry.get("migration"))
        percent = f"{fraction * 100:5.1f}%" if isinstance(fraction, float) else "    ?"
        count = f"{done:,}/{total:,}" if isinstance(total, int) else f"{done:,}/?"
        eta = "" if state != "running" else _eta(entry.get("eta_seconds"))
        status = Text(f"{eta} {state}".strip(), style=_STATE_STYLE.get(state, ""))
        width = options.max_width
        one_line = max(len(name), _NAME_WIDTH) + _BAR_WIDTH + len(percent) + len(count) + len(status) + 4
        if one_line <= width:
            grid = Table.grid(padding=(0, 1))
            grid.add_column(min_width=_NAME_WIDTH, no_wrap=True)
            grid.add_column(width=_BAR_WIDTH)
            for _ in range(3):
                grid.add_column(no_wrap=True)
            grid.add_row(Text(name, style="bold"), self._bar(_BAR_WIDTH), percent, count, status)
            yield grid
        else:
            heading = Text.assemble((name, "bold"), " ", status)
            yield heading
            numbers = f" {percent.strip()} {count}"
            bar = max(_MIN_BAR, min(width - len(numbers), 2 * _BAR_WIDTH))
            if bar + len(numbers) <= width:
                grid = Table.grid()
                grid.add_column(width=bar)
                grid.add_column(no_wrap=True)
                grid.add_row(self._bar(bar), numbers)
                yield grid
            else:  # a very narrow terminal: the numbers under the bar
                yield self._bar(max(1, width))
                yield Text(numbers.strip())
        yield Text(
            f"  {entry.get('docs_per_second_now') or 0:,.0f} docs/s now, "
            f"{entry.get('docs_per_second_avg') or 0:,.0f} avg · commit p50 {_ms(entry.get('commit_p50'))} "
            f"p95 {_ms(entry.get('commit_p95'))} p99 {_ms(entry.get('commit_p99'))}",
            style="dim",
        )
        yield Text(
            "  "
            + " · ".join(
                f"{counter_name(name, self.dry_run)} {int(entry.get(name) or 0):,}"
                for name in ("updated", "unchanged", "deleted", "created", "failed", "conflicts")
                if name != "created" or entry.get("created")
            )
        )


class _Footer:
    """The run-wide line: the run, its state and health first; the write limit, memory and
    retries after them on the same line where it fits whole, else on the next."""

    def __init__(self, snapshot: dict[str, Any], source: str | None) -> None:
        self.snapshot = snapshot
        self.source = source

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        snapshot = self.snapshot
        state = str(snapshot.get("state", "?"))
        dry = " (dry run)" if snapshot.get("execute") is False else ""
        head = Text.assemble(
            (f"run {snapshot.get('run_id')} ", "bold"), (state, _STATE_STYLE.get(state, "")), dry, " · "
        )
        head.append_text(_health(snapshot))
        engine = Text(
            f"write limit {_limit(snapshot.get('write_limit'))}{_limit_parts(snapshot)}"
            f" · memory {snapshot.get('memory_mb') or 0:.0f} MiB · retries {snapshot.get('retries') or 0:,}"
        )
        if snapshot.get("in_flight"):
            engine.append(f" · {snapshot['in_flight']} commits in flight")
        if self.source:
            engine.append(f" · via {self.source}", style="dim")
        if head.cell_len + 3 + engine.cell_len <= options.max_width:
            yield Text.assemble(head, " · ", engine)
        else:
            yield head
            yield engine


def render_status(snapshot: dict[str, Any], *, source: str | None = None) -> RenderableType:
    """One frame of the live view: each migration's bar and numbers, then the run-wide line
    (laid out for the console's width, see :class:`_MigrationView`)."""
    dry_run = snapshot.get("execute") is False
    parts: list[RenderableType] = [_MigrationView(entry, dry_run) for entry in snapshot.get("migrations", [])]
    if not parts:
        parts.append(Text("waiting for the first migration to start…", style="dim"))
    parts.append(_Footer(snapshot, source))
    if snapshot.get("stop_reason"):
        parts.append(Text(f"stop: {snapshot['stop_reason']}", style="yellow"))
    return Group(*parts)


def plain_status_line(snapshot: dict[str, Any]) -> str:
    """The same information on one line, for logs (output that is not a terminal)."""
    health = snapshot.get("health") or {}
    migrations = snapshot.get("migrations") or [{}]
    current = next((m for m in migrations if m.get("migration") == snapshot.get("current")), migrations[-1])
    total = current.get("total")
    count = (
        f"{int(current.get('done') or 0):,}/{total:,}"
        if isinstance(total, int)
        else (f"{int(current.get('done') or 0):,}")
    )
    dry_run = snapshot.get("execute") is False
    counts = ", ".join(
        f"{int(current.get(name) or 0):,} {counter_name(name, dry_run)}"
        for name in ("updated", "unchanged", "deleted", "failed", "conflicts")
    )
    return (
        f"run {snapshot.get('run_id')} {snapshot.get('state')}{' (dry run)' if dry_run else ''}: "
        f"{current.get('migration', '-')} {count} ({counts}) "
        f"{current.get('docs_per_second_now') or 0:,.0f} docs/s now, "
        f"{current.get('docs_per_second_avg') or 0:,.0f} avg; p95 {_ms(current.get('commit_p95'))}; "
        f"{_eta(current.get('eta_seconds'))}; "
        f"limit {_limit(snapshot.get('write_limit'))}{_limit_parts(snapshot)}; "
        f"health {health.get('score', '?')}/100 {health.get('status', '?')}"
    )


class LiveHooks(FanOutHooks):
    """Hooks drawing the live view on a terminal (stderr) while the run goes on.

    It keeps its own :class:`RunStatus` from the events it receives; warnings and stops are printed
    above the view so they stay on screen after it ends. The run's end draws the last frame (with
    how the run ended) and leaves it on screen.
    """

    def __init__(
        self,
        console: Console,
        controls: Controls | None = None,
        *,
        quiet: bool = False,
        notes: Callable[[ControlApplied], str] | None = None,
    ) -> None:
        self.console = console
        self.status = RunStatus("", controls=controls)
        super().__init__(self.status)
        self.quiet = quiet
        self.notes = notes
        """Turns a control event into a line printed above the view."""
        self._live: Live | None = None

    def control_applied(self, event: ControlApplied) -> None:
        super().control_applied(event)
        if self.notes is not None:
            self.console.print(f"[yellow]{self.notes(event)}[/]")

    def warning(self, event: Warned) -> None:
        super().warning(event)
        self.console.print(warning_line(event))

    def stage(self, event: StageEntered) -> None:
        super().stage(event)
        self.console.print(f"[cyan]{event.message}[/]")

    def pass_ended(self, event: PassEnded) -> None:
        super().pass_ended(event)
        if isinstance(event, PassStopped) and not self.quiet:
            self.console.print(f"[red]{event.migration}: stopped[/]: {event.reason}")

    def pass_started(self, event: PassStarted) -> None:
        super().pass_started(event)
        if self._live is None and not self.quiet:
            self._live = Live(
                console=self.console,
                refresh_per_second=2,
                transient=False,
                get_renderable=self._render,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()

    def run_ended(self, event: RunEnded) -> None:
        super().run_ended(event)
        self.close()

    def set_run_id(self, run_id: str | None) -> None:
        self.status.run_id = run_id or ""

    def _render(self) -> RenderableType:
        return render_status(self.status.snapshot())

    def close(self) -> None:
        """Draw the last frame and leave it on screen."""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

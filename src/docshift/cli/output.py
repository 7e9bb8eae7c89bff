"""Printing for the CLI (the only place that uses rich): progress, diffs, summaries."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from docshift.engine.diff import FieldChange
from docshift.engine.hooks import (
    ControlApplied,
    EventSink,
    PassEnded,
    PassStarted,
    PassStopped,
    Progressed,
    RunEnded,
    RunEvent,
    RunHooks,
    StageEntered,
    Warned,
)
from docshift.reports.events import encode_event
from docshift.runfolder.record import display_counts

__all__ = ["JsonHooks", "PlainHooks", "console", "err_console", "print_change", "summary_table"]

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


def _fmt_latency(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def progress_line(event: Progressed) -> str:
    counts, stats, engine = event.counters, event.stats, event.engine
    limit = engine.write_limit if engine is not None else 0
    processed = stats.processed if stats is not None else 0
    return (
        f"{event.migration}: {processed:,} done "
        f"({counts.get('updated', 0):,} updated, {counts.get('unchanged', 0):,} unchanged, "
        f"{counts.get('deleted', 0):,} deleted, {counts.get('created', 0):,} created, "
        f"{counts.get('failed', 0):,} failed, {counts.get('conflicts', 0):,} conflicts) "
        f"{stats.docs_per_second_now if stats else 0:,.0f} docs/s now, "
        f"{stats.docs_per_second_avg if stats else 0:,.0f} avg; "
        f"commit p50 {_fmt_latency(stats.commit_p50 if stats else None)} "
        f"p95 {_fmt_latency(stats.commit_p95 if stats else None)}; limit "
        f"{'none' if not limit else f'{limit:,.0f} ops/s'}; "
        f"memory {engine.memory_mb if engine else 0:.0f} MiB"
    )


class PlainHooks(RunHooks):
    """One line every few seconds on stderr; warnings, stages, stops and (with ``notes``) who
    steered the run, as they come."""

    def __init__(
        self, every: float = 3.0, quiet: bool = False, notes: Callable[[ControlApplied], str] | None = None
    ) -> None:
        self.every = every
        self.quiet = quiet
        self.notes = notes
        self._last = 0.0

    def warning(self, event: Warned) -> None:
        err_console.print(f"[yellow]warning:[/] {event.message}")

    def control_applied(self, event: ControlApplied) -> None:
        if self.notes is not None:
            err_console.print(f"[yellow]{self.notes(event)}[/]")

    def stage(self, event: StageEntered) -> None:
        if not self.quiet:
            err_console.print(f"[cyan]{event.message}[/]")

    def pass_started(self, event: PassStarted) -> None:
        if not self.quiet:
            err_console.print(f"[bold]{event.migration}[/]: started ({event.shards} shard(s))")

    def progressed(self, event: Progressed) -> None:
        processed = event.stats.processed if event.stats is not None else 0
        if self.quiet or not processed or time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        err_console.print(progress_line(event))

    def pass_ended(self, event: PassEnded) -> None:
        if isinstance(event, PassStopped) and not self.quiet:
            err_console.print(f"[red]{event.migration}: stopped[/]: {event.reason}")


class JsonHooks(EventSink):
    """JSON lines on stdout, one per event, for CI and log shippers: the lines of the event log
    (how the run ended is its exit code, and run.json's, as the log's last line says it)."""

    def record(self, event: RunEvent) -> None:
        line = encode_event(event)
        if line is None:
            return
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.flush()

    def run_ended(self, event: RunEnded) -> None:
        return None


def print_change(path: str, kind: str, changes: list[FieldChange], data: Any = None) -> None:
    colour = {"update": "yellow", "set": "yellow", "delete": "red", "create": "green"}.get(kind, "white")
    label = "update" if kind == "set" else kind
    console.print(f"  [{colour}]{label}[/] {path}")
    if kind == "create" and data is not None:
        for key, value in data.items():
            console.print(f"      [green]+ {key}: {value!r}[/]", soft_wrap=True)
    for change in changes:
        name = ".".join(change.path)
        if change.added:
            console.print(f"      [green]+ {name}: {change.new!r}[/]", soft_wrap=True)
        elif change.removed:
            console.print(f"      [red]- {name}: {change.old!r}[/]", soft_wrap=True)
        else:
            console.print(
                f"      [yellow]~ {name}:[/] [red]{change.old!r}[/] -> [green]{change.new!r}[/]",
                soft_wrap=True,
            )


def summary_table(title: str, rows: list[tuple[str, dict[str, int], str]], dry_run: bool) -> Table:
    """One row per migration: its counters (see ``docshift.runfolder.record``) and state."""
    verb = "would " if dry_run else ""
    table = Table(title=title, title_justify="left")
    table.add_column("migration")
    for name in ("update", "delete", "create"):
        table.add_column(f"{verb}{name}", justify="right")
    for name in ("unchanged", "failed", "conflicts", "skipped"):
        table.add_column(name, justify="right")
    table.add_column("state")
    for label, counters, state in rows:
        counts = display_counts(counters)  # a restore's counters too, under the same columns
        table.add_row(
            label,
            *(
                f"{counts.get(k, 0):,}"
                for k in ("updated", "deleted", "created", "unchanged", "failed", "conflicts", "skipped")
            ),
            state,
        )
    return table

"""Printing for the CLI (the only place that uses rich): progress, diffs, summaries."""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from docshift import codec
from docshift.engine.diff import FieldChange
from docshift.runfolder.record import display_counts

__all__ = ["JsonProgress", "PlainProgress", "console", "err_console", "print_change", "summary_table"]

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


def _fmt_latency(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def progress_line(fields: dict[str, Any]) -> str:
    limit = fields.get("write_limit") or 0
    return (
        f"{fields.get('migration')}: {fields.get('processed', 0):,} done "
        f"({fields.get('updated', 0):,} updated, {fields.get('unchanged', 0):,} unchanged, "
        f"{fields.get('deleted', 0):,} deleted, {fields.get('created', 0):,} created, "
        f"{fields.get('failed', 0):,} failed, {fields.get('conflicts', 0):,} conflicts) "
        f"{fields.get('docs_per_second_now', 0):,.0f} docs/s now, "
        f"{fields.get('docs_per_second_avg', 0):,.0f} avg; "
        f"commit p50 {_fmt_latency(fields.get('commit_p50'))} "
        f"p95 {_fmt_latency(fields.get('commit_p95'))}; limit "
        f"{'none' if not limit else f'{limit:,.0f} ops/s'}; memory {fields.get('memory_mb', 0):.0f} MiB"
    )


class PlainProgress:
    """One line every few seconds on stderr; warnings and stops as they come."""

    def __init__(self, every: float = 3.0, quiet: bool = False) -> None:
        self.every = every
        self.quiet = quiet
        self._last = 0.0

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "warning":
            err_console.print(f"[yellow]warning:[/] {fields.get('message')}")
        if self.quiet:
            return
        if kind == "stage":
            err_console.print(f"[cyan]{fields.get('message')}[/]")
        elif kind == "start":
            err_console.print(f"[bold]{fields['migration']}[/]: started ({fields['shards']} shard(s))")
        elif kind == "progress" and fields.get("processed") and time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            err_console.print(progress_line(fields))
        elif kind == "stop":
            err_console.print(f"[red]{fields['migration']}: stopped[/]: {fields.get('reason')}")


class JsonProgress:
    """JSON lines on stdout, one per event, for CI and log shippers."""

    def event(self, kind: str, **fields: Any) -> None:
        line = orjson.dumps(
            {"event": kind, "at": time.time(), **codec.encode(fields)}, option=orjson.OPT_NON_STR_KEYS
        )
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.flush()


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

"""Printing for the CLI (the only place that uses rich): progress, diffs, summaries."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

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

__all__ = [
    "CountsTable",
    "JsonHooks",
    "PlainHooks",
    "console",
    "counter_name",
    "err_console",
    "print_change",
    "summary_table",
    "warning_line",
]

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


def _fmt_latency(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


_TO_WRITE = {"updated": "to update", "deleted": "to delete", "created": "to create"}
"""A dry run's names for the writes it counts: nothing was written, they are what would be."""


def counter_name(name: str, dry_run: bool) -> str:
    """What a counter is called in the views: ``updated``, or in a dry run ``to update``."""
    return _TO_WRITE.get(name, name) if dry_run else name


def progress_line(event: Progressed, dry_run: bool = False) -> str:
    counts, stats, engine = event.counters, event.stats, event.engine
    limit = engine.write_limit if engine is not None else 0
    processed = stats.processed if stats is not None else 0
    numbers = ", ".join(
        f"{counts.get(name, 0):,} {counter_name(name, dry_run)}"
        for name in ("updated", "unchanged", "deleted", "created", "failed", "conflicts")
    )
    return (
        f"{event.migration}: {processed:,} {'checked (dry run)' if dry_run else 'done'} ({numbers}) "
        f"{stats.docs_per_second_now if stats else 0:,.0f} docs/s now, "
        f"{stats.docs_per_second_avg if stats else 0:,.0f} avg; "
        f"commit p50 {_fmt_latency(stats.commit_p50 if stats else None)} "
        f"p95 {_fmt_latency(stats.commit_p95 if stats else None)}; limit "
        f"{'none' if not limit else f'{limit:,.0f} ops/s'}; "
        f"memory {engine.memory_mb if engine else 0:.0f} MiB"
    )


_SEVERITY_STYLE = {"warning": "yellow", "error": "red", "critical": "bold red"}


def warning_line(event: Warned) -> Text:
    """A warning (or a validation finding) as one line: its one label, then its message."""
    return Text.assemble(
        (f"{event.severity}:", _SEVERITY_STYLE.get(event.severity, "yellow")), " ", event.message
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
        self._dry_run = False

    def warning(self, event: Warned) -> None:
        err_console.print(warning_line(event))

    def control_applied(self, event: ControlApplied) -> None:
        if self.notes is not None:
            err_console.print(f"[yellow]{self.notes(event)}[/]")

    def stage(self, event: StageEntered) -> None:
        if not self.quiet:
            err_console.print(f"[cyan]{event.message}[/]")

    def pass_started(self, event: PassStarted) -> None:
        self._dry_run = not event.execute
        if not self.quiet:
            dry = ", dry run: nothing is written" if self._dry_run else ""
            err_console.print(f"[bold]{event.migration}[/]: started ({event.shards} shard(s){dry})")

    def progressed(self, event: Progressed) -> None:
        processed = event.stats.processed if event.stats is not None else 0
        if self.quiet or not processed or time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        err_console.print(progress_line(event, self._dry_run))

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


class CountsTable:
    """Rows of counts under named columns, laid out for the width they are given: a table where
    every cell fits whole, otherwise each row stacked as its label (and state) on one line, its
    ``wrapped`` columns (free text: descriptions, lists, details) each on a line of their own that
    wraps at spaces, and its other cells as ``name value`` pairs under it, as many to a line as fit.
    Names, ids, states and numbers are never cut. A cell is shown as it is (never read as markup),
    or is rich ``Text`` (a coloured state)."""

    def __init__(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str | Text]],
        *,
        title: str | None = None,
        labelled: bool = True,
        with_state: bool = False,
        state_column: int | None = None,
        wrapped: Sequence[str] = (),
        text: Sequence[str] = (),
        plain: bool = False,
    ) -> None:
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.title = title
        self.labelled = labelled
        """The first column names the row (a migration, a run)."""
        self.state_column = (
            state_column if state_column is not None else (len(self.columns) - 1 if with_state else None)
        )
        """The column holding the row's state (words, not a count): by default the last one."""
        self.wrapped = frozenset(wrapped)
        self.text = frozenset(text)
        """Columns of words that are not counts (a kind, a time, a user): left-aligned; stacked,
        they share one line, ``name value`` each."""
        self.plain = plain
        """Without borders (a listing, such as ``docshift status``)."""

    def _words(self, index: int) -> bool:
        words = self.wrapped | self.text
        return (index == 0 and self.labelled) or index == self.state_column or self.columns[index] in words

    def table(self, wrap_at: int | None = None) -> Table:
        """The table; ``wrap_at``: with the ``wrapped`` cells cut to that many characters (to
        measure what the table needs when they wrap)."""
        if self.plain:
            table = Table(
                title=self.title,
                title_justify="left",
                show_edge=False,
                pad_edge=False,
                box=None,
                padding=(0, 2, 0, 0),
            )
        else:
            table = Table(title=self.title, title_justify="left")
        for index, name in enumerate(self.columns):
            table.add_column(
                name, justify="left" if self._words(index) else "right", no_wrap=name not in self.wrapped
            )
        for row in self.rows:
            cells = row
            if wrap_at is not None:
                cells = [
                    _text(cell)[:wrap_at] if name in self.wrapped else cell
                    for name, cell in zip(self.columns, row, strict=True)
                ]
            table.add_row(*(_text(cell) for cell in cells))  # words as given, never read as markup
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # Measured without the width limit: a table measured within it says it fits, then cuts
        # cells. Wrapped columns may wrap within _WRAP_AT characters.
        wrap_at = _WRAP_AT if self.wrapped else None
        natural = Measurement.get(console, options.update_width(_UNLIMITED), self.table(wrap_at)).maximum
        if natural <= options.max_width:
            yield self.table()
            return
        if self.title:
            yield Text(self.title, style="italic")
        for row in self.rows:
            heading: list[Text] = []
            if self.labelled:
                heading.append(_text(row[0], style="bold"))
            if self.state_column is not None:
                heading.append(_text(row[self.state_column]))
            if heading:
                yield Text("  ").join(heading)
            pairs: list[tuple[str, str]] = []
            words: list[Text] = []
            for index, (name, cell) in enumerate(zip(self.columns, row, strict=True)):
                if (index == 0 and self.labelled) or index == self.state_column:
                    continue
                if name in self.text:
                    if _text(cell).plain:
                        words.append(Text.assemble((f"{name} ", "dim"), _text(cell)))
                elif name in self.wrapped:
                    if _text(cell).plain:
                        yield Padding(Text.assemble((f"{name}: ", "dim"), _text(cell)), (0, 0, 0, 2))
                else:
                    pairs.append((name, _text(cell).plain))
            if words:
                yield Padding(Text("   ").join(words), (0, 0, 0, 2))
            if pairs:
                yield Padding(_pairs_grid(pairs, options.max_width - 2), (0, 0, 0, 2))


def _text(cell: str | Text, style: str = "") -> Text:
    return cell if isinstance(cell, Text) else Text(cell, style=style)


_UNLIMITED = 10_000
_WRAP_AT = 24


def _pairs_grid(pairs: list[tuple[str, str]], width: int) -> Table:
    """``name value`` pairs, values right-aligned, as many to a line as ``width`` holds."""
    key_width = max((len(key) for key, _ in pairs), default=0)
    value_width = max((len(value) for _, value in pairs), default=0)
    per_line = max(1, (width + 3) // (key_width + 1 + value_width + 3))
    grid = Table.grid(padding=(0, 1))
    for column in range(per_line):
        grid.add_column(no_wrap=True, min_width=key_width)
        grid.add_column(no_wrap=True, justify="right", min_width=value_width)
        if column < per_line - 1:
            grid.add_column(width=1)
    for start in range(0, len(pairs), per_line):
        cells: list[str] = []
        for key, value in pairs[start : start + per_line]:
            cells += [key, value, ""]
        grid.add_row(*cells[: 3 * per_line - 1])
    return grid


def summary_table(title: str, rows: list[tuple[str, dict[str, int], str]], dry_run: bool) -> CountsTable:
    """One row per migration: its counters (see ``docshift.runfolder.record``) and state."""
    verb = "would " if dry_run else ""
    columns = [
        "migration",
        *(f"{verb}{name}" for name in ("update", "delete", "create")),
        "unchanged",
        "failed",
        "conflicts",
        "skipped",
        "state",
    ]
    body = []
    for label, counters, state in rows:
        counts = display_counts(counters)  # a restore's counters too, under the same columns
        body.append(
            [
                label,
                *(
                    f"{counts.get(k, 0):,}"
                    for k in ("updated", "deleted", "created", "unchanged", "failed", "conflicts", "skipped")
                ),
                state,
            ]
        )
    return CountsTable(columns, body, title=title, with_state=True)

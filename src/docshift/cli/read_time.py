"""``--read-time``, shared by the commands that read one consistent snapshot of the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from docshift.cli.output import err_console
from docshift.store.read_time import ReadTime, parse_read_time
from docshift.values import Timestamp

__all__ = ["note_read_time", "read_time_option"]

F = TypeVar("F", bound=Callable[..., Any])


def _parsed(ctx: click.Context, param: click.Parameter, value: str | None) -> ReadTime | None:
    return None if value is None else parse_read_time(value, Timestamp.now().stored)


def read_time_option(what: str) -> Callable[[F], F]:
    """The ``--read-time`` option: parsed and checked (a :class:`~docshift.errors.UsageError`, exit
    2, outside what Firestore serves) into a :class:`ReadTime`."""
    return click.option(
        "--read-time",
        "read_time",
        metavar="TIME",
        callback=_parsed,
        expose_value=True,
        help=f"Read {what} as it was at TIME (RFC 3339, or relative such as -10m): within the last "
        "hour, or up to 7 days back where point-in-time recovery is on. Default: the moment it starts.",
    )


def note_read_time(read_time: ReadTime | None) -> None:
    """Say on stderr what the user must know about the chosen read time (point-in-time recovery)."""
    if read_time is not None and read_time.note:
        err_console.print(f"note: {read_time.note}", soft_wrap=True, markup=False)

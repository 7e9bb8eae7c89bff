"""``--estimate`` on ``run``, ``backup``, ``validate``, ``verify`` and ``rollback``: what the
command will bill, as a table or (``--json``) one JSON object with the same figures. The figures
are the library's (:mod:`docshift.commands.estimate`); an estimate writes nothing, takes no lock
and exits 0."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson
from rich.table import Table

from docshift.cli.output import console

if TYPE_CHECKING:  # the estimate's code (backup, rollback, validate) is imported for --estimate only
    from docshift.commands.estimate import Estimate

__all__ = ["estimate_option", "print_estimate"]

F = TypeVar("F", bound=Callable[..., Any])


def estimate_option(what: str) -> Callable[[F], F]:
    """The ``--estimate`` flag, saying what it estimates."""
    return click.option(
        "--estimate",
        is_flag=True,
        help=f"Print the Firestore operations {what} will bill and their price (prices: docs/estimate.md), "
        "then exit; writes nothing, takes no lock.",
    )


def print_estimate(estimate: Estimate, as_json: bool) -> None:
    """The estimate's items and total (80 columns), or its JSON."""
    if as_json:
        click.echo(orjson.dumps(estimate.to_json()).decode())
        return
    prices = estimate.prices
    table = Table(title=f"estimate: docshift {estimate.command} on {estimate.target}", title_justify="left")
    for name, justify in (("item", "left"), ("reads", "right"), ("writes", "right"), ("deletes", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for line in estimate.lines:
        ops = line.operations
        table.add_row(line.item, f"{ops.reads:,}", f"{ops.writes:,}", f"{ops.deletes:,}")
    total = estimate.total
    table.add_row("total", f"{total.reads:,}", f"{total.writes:,}", f"{total.deletes:,}", style="bold")
    console.print(table)
    for line in estimate.lines:
        if line.basis:
            console.print(f"  {line.item}: {line.basis}", markup=False)
    console.print(
        f"price: {estimate.price:,.4f} {prices.price_currency} at {prices.price_reads_per_100k:g} / "
        f"{prices.price_writes_per_100k:g} / {prices.price_deletes_per_100k:g} per 100,000 reads / "
        "writes / deletes (price_* in docshift.toml; defaults: us-central1 list prices)",
        markup=False,
    )
    console.print(
        f"documents to read: {estimate.documents:,}; writes from: {estimate.writes_from}", markup=False
    )
    entries = "unknown" if estimate.index_entries is None else f"{estimate.index_entries:,}"
    console.print(f"index entries: {entries}", markup=False)
    for item in estimate.unknown:
        console.print(f"not counted (unknown in advance): {item}", markup=False)

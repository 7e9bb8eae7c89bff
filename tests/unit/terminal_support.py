"""What the terminal shows, captured: rich's recording console at a given width."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console


def capture(renderable: Any, width: int) -> str:
    """``renderable`` as a terminal ``width`` columns wide shows it, as plain text."""
    console = Console(record=True, width=width, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    text = console.export_text()
    console.file.close()
    return text

"""State shared by CLI commands: the global flags, and the config resolved from them once."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from docshift.config import Config, load_config
from docshift.errors import UsageError

__all__ = ["AppContext", "check_runs_dir", "collect_flags", "pass_app"]

T = TypeVar("T")


@dataclass
class AppContext:
    flags: dict[str, Any]
    config_file: Path | None = None
    debug: bool = False
    runs_dir_use: str | None = None
    """How the command uses ``runs_dir`` (``read`` or ``write``): checked with the config, before
    the command reads or writes anything."""
    _config: Config | None = field(default=None, repr=False)

    def config(self, **command_flags: Any) -> Config:
        """Resolve the config once, with the command's own flags over the global ones."""
        if self._config is None or command_flags:
            merged = {**self.flags, **{k: v for k, v in command_flags.items() if v is not None}}
            resolved = load_config(merged, config_file=self.config_file)
            if self.runs_dir_use is not None:
                check_runs_dir(resolved, write=self.runs_dir_use == "write")
            if command_flags:
                return resolved
            self._config = resolved
        return self._config


def check_runs_dir(config: Config, *, write: bool) -> None:
    """``runs_dir`` must be a folder (or one to create inside a folder) that docshift can read and,
    with ``write``, write: otherwise the first run file would fail halfway through a command."""
    runs_dir = config.runs_dir
    named = f"runs_dir {runs_dir} (from {config.sources.get('runs_dir', 'default')})"
    choose = "set runs_dir in docshift.toml (or DOCSHIFT_RUNS_DIR) to a folder docshift can write"
    existing = runs_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        blocked = "is a file" if existing == runs_dir else f"is inside {existing}, which is a file"
        raise UsageError(f"{named} is not a folder: it {blocked}", hint=f"move {existing} away, or {choose}")
    if existing == runs_dir and not os.access(runs_dir, os.R_OK | os.X_OK):
        raise UsageError(
            f"{named} cannot be read (permissions)", hint=f"give this user read access to it, or {choose}"
        )
    if write and not os.access(existing, os.W_OK | os.X_OK):
        where = "is read-only" if existing == runs_dir else f"cannot be created: {existing} is read-only"
        raise UsageError(
            f"{named} {where}; docshift keeps each run's checkpoint, before-images and report there",
            hint=f"make it writable (permissions, mount), or {choose}",
        )


pass_app = click.make_pass_decorator(AppContext)


def collect_flags(
    flags: Callable[..., T],
) -> Callable[[Callable[[AppContext, T], None]], Callable[..., None]]:
    """A command with many flags receives them as one value, ``flags(**every flag)`` (a frozen
    dataclass that turns them into the command's options), after the :class:`AppContext`."""

    def decorate(command: Callable[[AppContext, T], None]) -> Callable[..., None]:
        @functools.wraps(command)
        def wrapper(app: AppContext, **given: Any) -> None:
            command(app, flags(**given))

        return wrapper

    return decorate

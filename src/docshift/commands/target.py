"""Which project and database a command about an existing run works on: the run's own.

A run folder records where the run wrote (``run.json``: ``project``, ``database``). Rolling it back,
resuming it, showing or reporting it works on that target, not on whatever the defaults or the
config file say today: a rollback of a run made on database ``mydb`` sent to ``(default)`` would
find none of its documents. A target given explicitly for this command (a ``--project`` or
``--database`` flag, or ``DOCSHIFT_PROJECT``/``DOCSHIFT_DATABASE``) that names another one is refused
rather than silently overridden either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from docshift.config import Config, with_values
from docshift.errors import UsageError
from docshift.runfolder.record import read_info
from docshift.store.base import Store

__all__ = ["check_store", "recorded_target", "refuse_other_target", "target_config"]

_KEYS = ("project", "database")


def recorded_target(info: Mapping[str, Any]) -> dict[str, str]:
    """The project and database a run's ``run.json`` records (older runs may record neither)."""
    return {key: str(info[key]) for key in _KEYS if info.get(key)}


def _describe(target: Mapping[str, str]) -> str:
    return ", ".join(f"{key} {target[key]}" for key in _KEYS if key in target)


def _explicit(config: Config, key: str) -> str | None:
    """Where an explicitly given value came from (``--database``, ``DOCSHIFT_DATABASE``), if it was."""
    source = config.sources.get(key, "default")
    return source if source.startswith(("--", "DOCSHIFT_")) else None


def target_config(config: Config, folder: Path) -> Config:
    """``config`` pointed at the project and database run ``folder`` was made on."""
    info = read_info(folder)
    recorded = recorded_target(info)
    changes: dict[str, str] = {}
    for key, value in recorded.items():
        current = getattr(config.store, key)
        if current == value:
            continue
        origin = _explicit(config, key)
        if origin is not None:
            given = f"{origin} {current}" if origin.startswith("--") else f"{origin}={current}"
            raise UsageError(
                f"{given} is not where run {folder.name} was made ({_describe(recorded)})",
                hint=f"drop {origin} to work on the run's {key} {value}, or pass --{key} {value}",
            )
        changes[key] = value
    return with_values(config, changes, f"run {folder.name}") if changes else config


def refuse_other_target(config: Config, folder: Path) -> None:
    """For commands that only read a run's folder (show, report): an explicitly given project or
    database that is not the run's is a mistake worth saying, not something to ignore."""
    if any(_explicit(config, key) for key in _KEYS):
        target_config(config, folder)


def check_store(store: Store, info: Mapping[str, Any], run_id: str) -> None:
    """Refuse a store that points elsewhere than the run recorded (the API lets callers pass one)."""
    recorded = recorded_target(info)
    actual = {"project": store.info.project, "database": store.info.database}
    wrong = [key for key, value in recorded.items() if actual[key] != value]
    if wrong:
        raise UsageError(
            f"run {run_id} was made on {_describe(recorded)}, but the store given is on "
            f"{_describe({k: actual[k] for k in wrong})}",
            hint="open the store on the run's project and database (docshift does so when it opens one)",
        )

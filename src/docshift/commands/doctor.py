"""``docshift doctor``: every way a run could fail before it starts, checked one line at a time."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.config import Config, load_config
from docshift.errors import DocshiftError, ExitCode
from docshift.store import Store, Write, open_store

__all__ = ["Check", "doctor"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    exit_code: ExitCode = ExitCode.OK


def _failed(name: str, error: DocshiftError) -> Check:
    return Check(name, False, error.message, error.hint, error.exit_code)


def doctor(config_file: Path | None, flags: Mapping[str, Any]) -> list[Check]:
    """Run the checks in order; later checks are skipped when an earlier one makes them moot."""
    checks: list[Check] = []
    try:
        config = load_config(flags, config_file=config_file)
    except DocshiftError as exc:
        return [_failed("config", exc)]
    where = str(config.config_file) if config.config_file else "no config file; defaults, env and flags"
    checks.append(Check("config", True, f"loaded ({where})"))
    checks.append(_migrations_check(config))
    try:
        store = open_store(config)
    except DocshiftError as exc:
        checks.append(_failed("credentials", exc))
        return checks
    with store:
        how = (
            f"emulator at {config.store.emulator_host}"
            if config.store.emulator_host
            else ("Application Default Credentials")
        )
        checks.append(Check("credentials", True, how))
        checks.extend(_store_checks(store, config))
    return checks


def _migrations_check(config: Config) -> Check:
    folder = config.migrations_dir
    if folder.is_dir():
        count = len(list(folder.glob("[0-9]*.py")))
        return Check("migrations", True, f"{folder} ({count} migration files)")
    return Check(
        "migrations",
        False,
        f"{folder} does not exist",
        "run `docshift init` to create it, or set migrations_dir",
        ExitCode.USAGE,
    )


def _store_checks(store: Store, config: Config) -> list[Check]:
    prefix = config.store.state_prefix
    target = store.info.describe()
    try:
        store.list_collections()
    except DocshiftError as exc:
        return [_failed("reachable", exc)]
    checks = [Check("reachable", True, target)]
    probe = f"{prefix}/doctor-{uuid.uuid4().hex[:12]}"
    try:
        results = store.commit([Write.create(probe, {"probe": True})])
        if results[0].error:
            raise results[0].error
        store.get(probe)
        cleanup = store.commit([Write.delete(probe)])
        if cleanup[0].error:
            raise cleanup[0].error
    except DocshiftError as exc:
        checks.append(_failed("permissions", exc))
        return checks
    checks.append(Check("permissions", True, f"can read and write {prefix}/"))
    return checks

"""``docshift doctor``: every way a run could fail before it starts, checked one line at a time.

Every failed check carries a fix, and the whole check ends within the store's connect deadline when
nothing answers (an unreachable store fails at its first connection attempt, see ``open_store``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.config import Config, load_config
from docshift.errors import ConfigError, DocshiftError, ExitCode, StoreError
from docshift.store import Store, Write, open_store

__all__ = ["Check", "doctor"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    exit_code: ExitCode = ExitCode.OK


_FIXES = {
    "config": "fix the setting named above (the README's Configuration table lists every key)",
    "project": "set --project, DOCSHIFT_PROJECT or project in docshift.toml",
    "credentials": "run `gcloud auth application-default login`, or set FIRESTORE_EMULATOR_HOST",
    "reachable": "check that the store is running and reachable from here",
    "permissions": "check the account has Cloud Datastore User access to this project and database",
}
"""A check's fix when its error carries no hint of its own: every FAIL line says what to do."""


def _failed(name: str, error: DocshiftError) -> Check:
    return Check(name, False, error.message, error.hint or _FIXES[name], error.exit_code)


def _unreachable(error: DocshiftError) -> bool:
    """The store was not reached at all (its address is wrong, or nothing answers there)."""
    return isinstance(error, StoreError) and error.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


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
    how = (
        f"emulator at {config.store.emulator_host}"
        if config.store.emulator_host
        else "Application Default Credentials"
    )
    try:
        store = open_store(config)
    except DocshiftError as exc:
        if _unreachable(exc):  # the credentials were found: it is the store that does not answer
            checks += [Check("credentials", True, how), _failed("reachable", exc)]
        else:
            checks.append(_failed("project" if isinstance(exc, ConfigError) else "credentials", exc))
        return checks
    with store:
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

"""Shared by the run tests against the emulator: project folders, seeding, exports, expectations."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from docshift.loader import load_migrations
from docshift.migration import DELETE, UNCHANGED, DocView, Migration
from docshift.store import Document, Query, Store, Write
from docshift.values import Value, values_equal

ROOT = Path(__file__).resolve().parents[2]
DOCSHIFT = str(Path(sys.executable).parent / "docshift")
EXAMPLES = ROOT / "examples" / "migrations"
EXAMPLE_FILES = ("0001_split_full_name.py", "0002_normalise_age.py")
PREFIX = "_docshift"


def seed_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docshift_seed_script", ROOT / "scripts" / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_users(store: Store, count: int) -> None:
    """The realistic seed data (users with every value type, some messy; 20 teams)."""
    assert seed_module().seed(store, count) == count


def seed_bystanders(store: Store) -> list[str]:
    """Documents the migrations must never touch: another collection and a subcollection."""
    writes = [Write.set(f"audit/a{i}", {"event": "login", "n": i}) for i in range(5)]
    writes += [Write.set(f"users/u000001/orders/o{i}", {"total": i * 1.5}) for i in range(3)]
    assert all(result.ok for result in store.commit(writes))
    return [w.path for w in writes]


def project_folder(
    path: Path, config: str = "", files: Iterable[str] = EXAMPLE_FILES, extra: dict[str, str] | None = None
) -> Path:
    """A folder with ``migrations/`` and a ``docshift.toml`` (the emulator and project come from
    the environment, see the ``cli_env`` fixture)."""
    migrations = path / "migrations"
    migrations.mkdir(parents=True)
    for name in files:
        shutil.copy(EXAMPLES / name, migrations / name)
    for name, source in (extra or {}).items():
        (migrations / name).write_text(source, encoding="utf-8")
    (path / "docshift.toml").write_text(
        'migrations_dir = "migrations"\nruns_dir = ".docshift/runs"\n' + config, encoding="utf-8"
    )
    return path


def docshift(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def export(store: Store, collections: Iterable[str]) -> dict[str, Document]:
    docs: dict[str, Document] = {}
    for collection in collections:
        docs.update({doc.path: doc for doc in store.stream(Query(collection))})
    return docs


def export_all(store: Store, extra_collections: Iterable[str] = ()) -> dict[str, Document]:
    """Every document of every root collection, plus the given subcollections."""
    return export(store, [*store.list_collections(), *extra_collections])


def differences(
    actual: dict[str, Document], expected: dict[str, Document], *, times: bool = True
) -> list[str]:
    """Paths whose data (exact equality) or, with ``times``, server times differ; missing or extra."""
    problems = sorted(set(actual) ^ set(expected))
    for path in set(actual) & set(expected):
        a, b = actual[path], expected[path]
        if not values_equal(a.data, b.data):
            problems.append(f"{path}: {a.data} != {b.data}")
        elif times and (a.update_time, a.create_time) != (b.update_time, b.create_time):
            problems.append(
                f"{path}: times {a.update_time}/{a.create_time} != {b.update_time}/{b.create_time}"
            )
    return problems


def apply_migrations(
    docs: dict[str, Document], migrations: Iterable[Migration]
) -> dict[str, dict[str, Value]]:
    """What an uninterrupted run leaves: each migration's up() applied in order, in Python."""
    state = {path: doc.data for path, doc in docs.items()}
    for migration in migrations:
        for path, data in list(state.items()):
            result = migration.up(DocView(Document(path, data)))
            if result is DELETE:
                del state[path]
            elif result is not UNCHANGED:
                state[path] = result
    return state


def data_differences(actual: dict[str, Document], expected: dict[str, dict[str, Value]]) -> list[str]:
    problems = sorted(set(actual) ^ set(expected))
    problems += [
        f"{p}: {actual[p].data} != {expected[p]}"
        for p in set(actual) & set(expected)
        if not values_equal(actual[p].data, expected[p])
    ]
    return problems


def examples() -> list[Migration]:
    return load_migrations(EXAMPLES)


def where(docs: dict[str, Document], test: Callable[[dict[str, Any]], bool]) -> set[str]:
    return {path for path, doc in docs.items() if test(doc.data)}


def watch_for_start(process: subprocess.Popen[bytes], started: threading.Event) -> None:
    """Set ``started`` once the ``--json`` run's first migration started (its ``start`` event)."""
    assert process.stdout is not None
    for line in process.stdout:
        if b'"event":"start"' in line:
            started.set()


def run_until_killed(
    folder: Path, env: dict[str, str], moment: float, log: Path, *, writes_per_second: int
) -> None:
    """Start (or resume) ``docshift run --execute`` in ``folder``, and kill -9 its process group
    ``moment`` seconds after it started migrating (stderr goes to ``log``)."""
    resuming = any(folder.glob(".docshift/runs/*/run.json"))
    args = [
        "run",
        "--execute",
        *(["--resume"] if resuming else []),
        "--json",
        "--max-writes-per-second",
        str(writes_per_second),
    ]
    with log.open("w") as errors:
        process = subprocess.Popen(
            [DOCSHIFT, *args],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    started = threading.Event()
    threading.Thread(target=watch_for_start, args=(process, started), daemon=True).start()
    assert started.wait(60), log.read_text()
    time.sleep(moment)
    assert process.poll() is None, log.read_text()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


SLOW_SPLIT = '''
"""Split full_name; slowly while the marker file exists, so a graceful stop takes seconds."""

import os
import time
from pathlib import Path

from docshift import UNCHANGED

description = "split full_name, slowly"
collection = "users"


def up(doc):
    marker = os.environ.get("SLOW_MARKER")
    if marker and Path(marker).exists():
        time.sleep(0.05)
    data = doc.data
    if "full_name" not in data:
        return UNCHANGED
    first, _, last = str(data.pop("full_name")).partition(" ")
    data["first_name"] = first
    data["last_name"] = last or None
    return data
'''
"""A migration over the example users that is slow while ``$SLOW_MARKER`` exists."""

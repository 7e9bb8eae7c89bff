"""What a run leaves behind, made comparable between two runs of the same migration on two
projects: its run folder (every file; the JSON files' contents), the history records and the
store's documents, with what differs by nature (run ids, project ids, times, durations, hosts,
users, process ids) replaced or left out."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path
from typing import Any

from docshift.history import History
from docshift.store import Query, Store
from docshift.values import Timestamp, Value

PREFIX = "_docshift"

_VOLATILE_KEYS = {
    "first_event_at",
    "last_event_at",
    "at",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "saved_at",
    "journal",
    "update_time",
    "generated_at",
    "elapsed_seconds",
    "seconds",
    "duration_seconds",
    "user",
    "host",
    "hostname",
    "pid",
    "docshift_version",
}
"""Keys whose values differ between two runs by nature (when, how long, who, where; a checkpoint's
``journal``: byte offsets in the journal, whose entries hold times)."""
_TIMINGS = re.compile(
    r"(_ms|_p\d+|_per_second|_bytes|latency|throughput|timeline|memory|rss|eta)", re.IGNORECASE
)
"""Keys of timings, rates and sizes of files that hold times (journals, dead letters)."""
_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{6}")
_PROJECT = re.compile(r"demo-[0-9a-f]{12}|memory-[a-z]+")


MIGRATION = '''
"""Split full_name; every user must keep a sane age and get a first name."""
from docshift import UNCHANGED
from docshift.validators import in_range, not_null

collection = "users"
rules = [not_null("first_name"), in_range("age", 0, 150)]

def up(doc):
    data = doc.data
    if "full_name" not in data:
        return UNCHANGED
    first, _, last = data.pop("full_name").partition(" ")
    return {**data, "first_name": first, "last_name": last}
'''
# One reader, one commit in flight, a fixed batch size: both runs stop the gate at the same document.
SETTINGS = (
    'runs_dir = "runs"\nbatch_size = 50\nmin_batch_size = 50\nmax_batch_size = 50\nconcurrency = 1\n'
    "shards = 1\n"
)
COLLECTIONS = ("users", "teams")


def normalised(value: Any, names: dict[str, str], root: str = "") -> Any:
    """``value`` with volatile keys dropped and run ids and project ids replaced (each by its
    order of first appearance, so that the two runs' ids map to the same names)."""
    if isinstance(value, dict) and value.get("$t") == "ts":  # an encoded timestamp
        return "<time>"
    if isinstance(value, dict):
        return {
            key: normalised(item, names, root)
            for key, item in sorted(value.items())
            if key not in _VOLATILE_KEYS and not _TIMINGS.search(key)
        }
    if isinstance(value, list | tuple):
        return [normalised(item, names, root) for item in value]
    if isinstance(value, Timestamp):
        return "<time>"
    if isinstance(value, str):
        text = value.replace(root, "<project folder>") if root else value
        for pattern, kind in ((_RUN_ID, "run"), (_PROJECT, "project")):
            for found in pattern.findall(text):
                names.setdefault(
                    found, f"<{kind}-{sum(1 for v in names.values() if v.startswith(f'<{kind}'))}>"
                )
                text = text.replace(found, names[found])
        return text
    return value


def _json_of(path: Path) -> Any:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return json.loads(raw)


COMPARED = ("run.json", "checkpoint.json", "report.json", "validation.json", "dead-letters.jsonl")
"""The files whose contents must be equal (every other file must exist in both folders)."""


def folder_snapshot(runs_dir: Path, root: Path) -> dict[str, Any]:
    """Every file under ``runs_dir`` (by path, ids replaced): the contents of the compared ones
    (and of every ``validation-*.json``), ``None`` for the others. ``root``: the project folder
    (paths in the files start with it)."""
    names: dict[str, str] = {}
    runs = sorted(
        runs_dir.iterdir(), key=lambda folder: json.loads((folder / "run.json").read_text())["created_at"]
    )
    for folder in runs:  # ids named in the order the runs were made, in either project
        normalised(folder.name, names)
    snapshot: dict[str, Any] = {}
    for path in sorted(p for p in runs_dir.rglob("*") if p.is_file()):
        relative = normalised(str(path.relative_to(runs_dir)), names)
        compared = path.name in COMPARED or (path.name.startswith("validation-") and path.suffix == ".json")
        snapshot[relative] = normalised(_json_of(path), names, str(root)) if compared else None
    return snapshot


def history_snapshot(store: Store) -> dict[str, Any]:
    names: dict[str, str] = {}
    return {
        migration_id: normalised(dataclasses.asdict(record), names)
        for migration_id, record in sorted(History(store, PREFIX).all().items())
    }


def documents(store: Store, collections: tuple[str, ...]) -> dict[str, dict[str, Value]]:
    return {doc.path: doc.data for name in collections for doc in store.stream(Query(name))}

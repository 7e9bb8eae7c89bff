"""``docshift verify`` on a copy migration against the emulator: a clean copy passes; a planted
missing, extra and altered target document are each found, the altered one with its field diff."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from docshift.commands.run import RunOptions, run_migrations
from docshift.commands.verify import verify
from docshift.config import Config
from docshift.errors import UsageError
from docshift.store import Store, Write
from docshift.testing import RecordingHooks
from docshift.values import Timestamp

DOCSHIFT = str(Path(sys.executable).parent / "docshift")

COPY = """
from docshift import DELETE, UNCHANGED

collection = "users"
copy_to = "users_v2"

def up(doc):
    data = doc.data
    if data.get("skip"):
        return UNCHANGED
    if data.get("gone"):
        return DELETE
    first, _, last = data.pop("full_name").partition(" ")
    return {**data, "name": {"first": first, "last": last}}
"""


@pytest.fixture
def copied(emulator_config: Config, firestore_store: Store) -> Config:
    """A copy migration, run: 300 users transformed, 2 copied as they are (UNCHANGED), 2 left out (DELETE)."""
    emulator_config.migrations_dir.mkdir(parents=True)
    (emulator_config.migrations_dir / "0001_copy_users.py").write_text(textwrap.dedent(COPY))
    writes = [
        Write.set(
            f"users/u{i:03d}",
            {"full_name": f"First{i} Last{i}", "n": i, "seen": Timestamp(1_700_000_000 + i, 0)},
        )
        for i in range(300)
    ]
    writes += [Write.set(f"users/s{i}", {"skip": True}) for i in range(2)]
    writes += [Write.set(f"users/g{i}", {"gone": True}) for i in range(2)]
    assert all(result.ok for result in firestore_store.commit(writes))
    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store)
    assert report.outcomes[0].result.counters["created"] == 302
    return emulator_config


def test_a_clean_copy_verifies(copied: Config, firestore_store: Store) -> None:
    report = verify(copied, "0001", store=firestore_store)
    assert report.passed, report.examples
    assert (report.source_count, report.target_count, report.expected, report.matched) == (304, 302, 302, 302)
    assert report.counts == {"missing": 0, "extra": 0, "different": 0, "failed": 0, "skipped": 0}
    assert report.path is not None and report.path.is_file()


def test_verify_finds_a_planted_missing_extra_and_altered_document(
    copied: Config, firestore_store: Store
) -> None:
    firestore_store.commit(
        [
            Write.delete("users_v2/u017"),
            Write.set("users_v2/intruder", {"n": -1}),
            Write.set(
                "users_v2/u123",
                {"full_name": "First123 Last123", "n": 124, "seen": Timestamp(1_700_000_123, 0)},
            ),
            Write.set("users_v2/g0", {"gone": True}),  # up() deletes it: should not be in the copy
        ]
    )
    report = verify(copied, "0001", store=firestore_store)
    assert not report.passed
    assert report.counts == {"missing": 1, "extra": 2, "different": 1, "failed": 0, "skipped": 0}
    assert (report.source_count, report.target_count, report.matched) == (304, 303, 300)
    found = {(d.kind, d.path, d.source) for d in report.examples}
    assert found == {
        ("missing", "users_v2/u017", "users/u017"),
        ("extra", "users_v2/g0", None),
        ("extra", "users_v2/intruder", None),
        ("different", "users_v2/u123", "users/u123"),
    }
    [altered] = [d for d in report.examples if d.kind == "different"]
    assert {c.describe() for c in altered.changes} == {
        "- full_name: 'First123 Last123'",
        "~ n: 124 -> 123",
        "+ name: {'first': 'First123', 'last': 'Last123'}",
    }


def test_the_verify_command_exits_14_on_differences_and_refuses_in_place_migrations(
    copied: Config, firestore_store: Store, cli_env: dict[str, str]
) -> None:
    project = copied.migrations_dir.parent
    (project / "docshift.toml").write_text(f'runs_dir = "{copied.runs_dir}"\n')

    def docshift(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCSHIFT, *args],
            cwd=project,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    clean = docshift("verify", "0001")
    assert clean.returncode == 0, clean.stderr
    assert "302 of 302 expected copies match; 0 missing, 0 extra, 0 different, 0 failed" in clean.stdout
    firestore_store.commit([Write.set("users_v2/u005", {"n": 5})])
    different = docshift("verify", "0001", "--json")
    assert different.returncode == 14
    report = json.loads(different.stdout)
    assert report["different"] == 1 and report["examples"][0]["path"] == "users_v2/u005"
    fields = {change["field"] for change in report["examples"][0]["changes"]}
    assert fields == {"name", "seen"}
    assert "error: 0001_copy_users: 304 source and 302 target documents" in different.stderr
    (copied.migrations_dir / "0002_in_place.py").write_text(
        "collection = 'users'\n\ndef up(doc):\n    return doc.data\n"
    )
    with pytest.raises(UsageError, match="changes documents in place"):
        verify(copied, "0002", store=firestore_store)


STAMP = """
from docshift import Timestamp

collection = "users"
copy_to = "stamped"

def up(doc):
    return {**doc.data, "at": Timestamp(1_700_000_000, 123_456_789), "log": [{"at": Timestamp(7, 999)}]}
"""


def test_a_copy_with_nanosecond_timestamps_verifies_at_the_microsecond_the_store_keeps(
    emulator_config: Config, firestore_store: Store
) -> None:
    """The emulator stores 123,456,789 ns as 123,456,000: the run writes them so, says so once, and
    verify compares at that precision (before, it found every document different)."""
    emulator_config.migrations_dir.mkdir(parents=True)
    (emulator_config.migrations_dir / "0001_stamp.py").write_text(textwrap.dedent(STAMP))
    writes = [Write.set(f"users/u{i:03d}", {"n": i}) for i in range(120)]
    assert all(result.ok for result in firestore_store.commit(writes))
    hooks = RecordingHooks()
    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store, hooks=hooks)
    assert report.outcomes[0].result.counters["created"] == 120
    [message] = hooks.warnings()
    assert "nanoseconds below a microsecond" in message
    stored = firestore_store.get("stamped/u007")
    assert stored is not None and stored.data["at"] == Timestamp(1_700_000_000, 123_456_000)
    assert stored.data["log"] == [{"at": Timestamp(7, 0)}]
    verified = verify(emulator_config, "0001", store=firestore_store)
    assert verified.passed, verified.examples[:2]
    assert verified.matched == 120

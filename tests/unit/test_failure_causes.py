"""A run stopped because its documents fail says why they fail, with a document each and where the
dead letters are; when every document failed the same way it does not offer a resume that would
only fail again."""

from __future__ import annotations

from pathlib import Path

import pytest

from docshift.commands.run import RunOptions, result_of, run
from docshift.config import Config, load_config
from docshift.errors import EmergencyStop
from docshift.store import Write
from docshift.testing import MemoryStore

EVERY_ONE_FAILS = """
collection = "users"

def up(doc):
    return [1, 2, 3]
"""

TWO_WAYS = """
collection = "users"

def up(doc):
    if int(doc.id[1:]) % 2:
        raise ValueError("odd documents are not wanted")
    return {1, 2}
"""

SOME_SUCCEED = """
collection = "users"

def up(doc):
    if int(doc.id[1:]) % 4 == 0:
        return {**doc.data, "seen": True}
    raise ValueError("most documents are not wanted")
"""


def project(tmp_path: Path, source: str) -> Config:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_fails.py").write_text(source, encoding="utf-8")
    return load_config(
        {"project": "memory", "migrations_dir": "migrations", "runs_dir": "runs", "concurrency": 1},
        env={},
        cwd=tmp_path,
    )


def seeded() -> MemoryStore:
    store = MemoryStore()
    store.commit([Write.set(f"users/u{i:04d}", {"n": i}) for i in range(400)])
    return store


def test_every_document_failing_the_same_way_names_the_reason_and_offers_no_resume(tmp_path: Path) -> None:
    config = project(tmp_path, EVERY_ONE_FAILS)
    with pytest.raises(EmergencyStop) as stopped:
        run(config, RunOptions(execute=True), store=seeded())
    message = stopped.value.message
    assert "circuit breaker" in message
    assert "the first failures: users/u0000: up() returned list" in message
    [letters] = (tmp_path / "runs").glob("*/0001_fails/dead-letters.jsonl")
    assert str(letters.relative_to(tmp_path)) in message or str(letters) in message
    assert "fix the migration" in (stopped.value.hint or "")
    result = result_of(stopped.value)
    assert result is not None and result.resume_command is None and stopped.value.resume_command is None


def test_failures_of_several_kinds_are_each_named_once(tmp_path: Path) -> None:
    config = project(tmp_path, TWO_WAYS)
    with pytest.raises(EmergencyStop) as stopped:
        run(config, RunOptions(execute=True), store=seeded())
    message = stopped.value.message
    assert "users/u0000: up() returned set" in message
    assert "users/u0001: " in message and "odd documents are not wanted" in message
    assert message.count("odd documents are not wanted") == 1
    assert "fix the migration" not in (stopped.value.hint or "")


def test_a_run_where_some_documents_succeed_still_offers_its_resume(tmp_path: Path) -> None:
    config = project(tmp_path, SOME_SUCCEED)
    with pytest.raises(EmergencyStop) as stopped:
        run(config, RunOptions(execute=True), store=seeded())
    assert "most documents are not wanted" in stopped.value.message
    assert stopped.value.resume_command is not None and "--resume" in stopped.value.resume_command

"""The run folder's layout (``runfolder/layout.py``) names every file once, and nothing else does;
its formats read older versions through their upgrade chain and refuse newer ones."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.run import RunOptions, run_migrations
from docshift.config import load_config
from docshift.errors import DataError, StageFailed
from docshift.runfolder import Checkpoint, FileFormat, MigrationFolder, ReportFolder, RunFolder, run_folders
from docshift.runfolder.atomic import write_versioned
from docshift.runfolder.checkpoint import JournalMark, Scope, StageRollback, UndoStep
from docshift.runfolder.layout import CHECKPOINT_FORMAT, CONTROL_ACTIONS, RUN_FORMAT
from docshift.runfolder.upgrades import checkpoint_1_to_2
from docshift.testing import MemoryStore
from tests.unit.test_run_folder_compat import FIXTURE, documents, lines

SRC = Path(__file__).resolve().parents[2] / "src" / "docshift"
NAMES = (
    "run.json",
    "checkpoint.json",
    "report.json",
    "report.html",
    "dead-letters.jsonl",
    "before-images.jsonl.gz",
    "validation.json",
    "validation-before.json",
    "validation-after.json",
    "validation-inline.json",
    "plan.jsonl.gz",
    "conflicts.jsonl",
    "rollback-conflicts.jsonl",
    "mismatches.jsonl",
    "rollback-mismatches.jsonl",
    "events.jsonl",
    "status.json",
)


# ---------------------------------------------------------------------------------------- the layout
def test_every_file_of_a_run_folder_has_its_own_name() -> None:
    run_folder = RunFolder(Path("runs") / "r1")
    migration = run_folder.migration("0001_tier")
    paths = [
        run_folder.info,
        run_folder.events,
        run_folder.presence,
        run_folder.validation,
        run_folder.report,
        run_folder.report_html,
        *(run_folder.control(action) for action in ("pause", "stop", "throttle")),
        migration.checkpoint,
        migration.journal,
        migration.dead_letters,
        migration.plan,
        migration.conflicts,
        migration.mismatches,
        *(migration.validation(phase) for phase in ("before", "inline", "after")),
    ]
    assert len(set(paths)) == len(paths)
    assert all(p.parent in (run_folder.path, migration.path) for p in paths)
    assert migration.run == run_folder and migration.label == "0001_tier" and run_folder.run_id == "r1"
    assert run_folder.control("resume") == run_folder.control("pause")  # resume removes the pause file
    assert set(CONTROL_ACTIONS) == {"pause", "resume", "stop", "throttle"}


def _spelled(path: Path) -> list[str]:
    """The file names a module spells: a string constant that is one, or ends a path with one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [n for n in NAMES if node.value == n or node.value.endswith(("/" + n, "'" + n))]
    return found


def test_no_module_but_the_layout_spells_a_run_folder_file_name() -> None:
    spelled = {
        str(path.relative_to(SRC)): names
        for path in sorted(SRC.rglob("*.py"))
        if (names := _spelled(path)) and path != SRC / "runfolder" / "layout.py"
    }
    assert spelled == {}
    assert set(_spelled(SRC / "runfolder" / "layout.py")) >= set(NAMES) - {
        "validation-before.json",  # validation(phase)
        "validation-after.json",
        "validation-inline.json",
    }


def test_run_folders_are_listed_newest_first_and_only_with_a_run_record(tmp_path: Path) -> None:
    for run_id in ("20240101T000000-aaaaaa", "20240301T000000-bbbbbb", "20240201T000000-cccccc"):
        RUN_FORMAT.write(RunFolder.of(tmp_path, run_id).info, {"run_id": run_id})
    (tmp_path / "20250101T000000-dddddd").mkdir()  # no run.json: not a run
    assert [f.run_id for f in run_folders(tmp_path)] == [
        "20240301T000000-bbbbbb",
        "20240201T000000-cccccc",
        "20240101T000000-aaaaaa",
    ]
    assert RunFolder.of(tmp_path, "20240101T000000-aaaaaa").exists
    assert not RunFolder.of(tmp_path, "20250101T000000-dddddd").exists
    assert run_folders(tmp_path / "missing") == []


def test_a_run_folder_lists_its_migrations_with_a_checkpoint(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    for label in ("0002_b", "0001_a", "0010_c"):
        folder.migration(label).path.mkdir()
        folder.migration(label).checkpoint.write_text("{}")
    folder.migration("0003_no_checkpoint").path.mkdir()
    folder.migration("0001_a").journal.write_bytes(b"")
    assert [m.label for m in folder.migrations()] == ["0001_a", "0002_b", "0010_c"]
    assert [m.label for m in folder.migrations("0002")] == ["0002_b"]
    assert [m.label for m in folder.journals("0001")] == ["0001_a"] and folder.journals("0002") == []
    assert (
        folder.migration("0001_a").has_checkpoint
        and not folder.migration("0003_no_checkpoint").has_checkpoint
    )


def test_report_folders_are_named_by_kind_migration_and_time_and_found_newest_first(tmp_path: Path) -> None:
    made = [ReportFolder.new(tmp_path, "validate", "0001") for _ in range(3)]
    assert len({m.path for m in made}) == 3 and all(m.path.name.startswith("validate-0001-") for m in made)
    for folder in made[:2]:
        folder.report.parent.mkdir()
        folder.report.write_text("{}")
    ReportFolder.new(tmp_path, "verify", "0001").path.mkdir()
    assert ReportFolder.every(tmp_path, "validate", "0001") == [made[1], made[0]]
    assert ReportFolder.every(tmp_path, "validate", "0002") == []


def test_a_file_an_older_docshift_named_otherwise_is_renamed_once(tmp_path: Path) -> None:
    migration = MigrationFolder(tmp_path / "0001_tier")
    migration.path.mkdir()
    (migration.path / "rollback-conflicts.jsonl").write_text('{"path": "users/a"}\n')
    (migration.path / "rollback-mismatches.jsonl").write_text('{"path": "users/b"}\n')
    migration.upgrade()
    assert migration.conflicts.read_text() == '{"path": "users/a"}\n'
    assert migration.mismatches.read_text() == '{"path": "users/b"}\n'
    assert sorted(p.name for p in migration.path.iterdir()) == ["conflicts.jsonl", "mismatches.jsonl"]
    # Under both names (never written by a release): both are kept as they are, nothing is lost.
    (migration.path / "rollback-conflicts.jsonl").write_text('{"path": "users/c"}\n')
    migration.upgrade()
    assert migration.conflicts.read_text() == '{"path": "users/a"}\n'
    assert (migration.path / "rollback-conflicts.jsonl").read_text() == '{"path": "users/c"}\n'
    MigrationFolder(tmp_path / "missing").upgrade()  # nothing there: nothing to do


def test_a_canary_rollback_cut_short_by_0_1_0_lists_its_conflicts_in_one_file_of_today_s_name(
    tmp_path: Path,
) -> None:
    """0.1.0's canary stages' rollback wrote ``rollback-conflicts.jsonl``; its resume goes on in
    ``conflicts.jsonl``, the rollback command's name, with what the older one listed."""
    project = tmp_path / "canary-rollback-stopped"
    shutil.copytree(FIXTURE / project.name, project)
    store = MemoryStore()
    store.load(documents(project / "store.jsonl"))
    config = load_config(env={}, cwd=project)
    folder = RunFolder.of(config.runs_dir, "canary-rollback-stopped-run").migration("0001_tier")
    listed_before = lines(folder.path / "rollback-conflicts.jsonl")

    with pytest.raises(StageFailed):
        run_migrations(config, RunOptions(execute=True, resume="canary-rollback-stopped-run"), store=store)

    assert not (folder.path / "rollback-conflicts.jsonl").exists()
    listed = lines(folder.conflicts)
    assert listed[: len(listed_before)] == listed_before and len(listed) > len(listed_before)
    assert {line["path"] for line in listed} == {"users/u00004"}
    saved = Checkpoint.load(folder.checkpoint)
    assert saved.stage_rollback is not None and saved.stage_rollback.done


# ------------------------------------------------------------------------------ the upgrade chain
def _steps(log: list[str]) -> dict[int, Any]:
    def one_to_two(document: dict[str, Any]) -> dict[str, Any]:
        log.append("1->2")
        return {**document, "name": document.pop("old_name")}

    def two_to_three(document: dict[str, Any]) -> dict[str, Any]:
        log.append("2->3")
        return {**document, "names": [document["name"]]}

    return {1: one_to_two, 2: two_to_three}


@pytest.mark.parametrize(
    ("version", "body", "applied"),
    [
        (1, {"old_name": "a"}, ["1->2", "2->3"]),
        (2, {"name": "a"}, ["2->3"]),
        (3, {"name": "a", "names": ["a"]}, []),
    ],
)
def test_an_older_version_is_upgraded_step_by_step_in_order(
    tmp_path: Path, version: int, body: dict[str, Any], applied: list[str]
) -> None:
    log: list[str] = []
    file_format = FileFormat("docshift-test", 3, _steps(log))
    path = tmp_path / "f.json"
    write_versioned(path, "docshift-test", version, body)
    document = file_format.read(path)
    assert log == applied
    assert document["version"] == 3 and document["names"] == ["a"] and document["name"] == "a"
    assert json.loads(path.read_text())["version"] == version  # reading never rewrites the file
    assert file_format.oldest == 1


@pytest.mark.parametrize(("version", "words"), [(4, "reads up to 3"), (0, "reads versions 1 to 3")])
def test_a_version_outside_the_chain_is_refused_in_one_line_with_a_hint(
    tmp_path: Path, version: int, words: str
) -> None:
    path = tmp_path / "f.json"
    write_versioned(path, "docshift-test", version, {})
    with pytest.raises(DataError, match=words) as refused:
        FileFormat("docshift-test", 3, _steps([])).read(path)
    assert "\n" not in refused.value.message and refused.value.hint
    assert f"version {version}" in refused.value.message


def test_the_checkpoint_format_reads_every_version_a_release_wrote() -> None:
    assert CHECKPOINT_FORMAT.version == 2 and CHECKPOINT_FORMAT.oldest == 1
    assert CHECKPOINT_FORMAT.upgrades[1] is checkpoint_1_to_2


def test_a_checkpoint_newer_than_this_docshift_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    write_versioned(path, "docshift-checkpoint", CHECKPOINT_FORMAT.version + 1, {})
    with pytest.raises(DataError, match=f"format version {CHECKPOINT_FORMAT.version + 1}") as refused:
        Checkpoint.load(path)
    assert refused.value.hint == "upgrade docshift to read it" and "\n" not in refused.value.message


# ----------------------------------------------------------------------- checkpoint 1 -> 2
def v1(extra: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A checkpoint as docshift 0.1.0 wrote it."""
    return {
        "format": "docshift-checkpoint",
        "version": 1,
        "codec": 1,
        "run_id": "r1",
        "migration_id": "0001",
        "checksum": "c" * 64,
        "state": "stopped",
        "shards": [{"start_after": None, "end_at": None, "cursor": "users/u1", "done": False}],
        "counters": {"read": 5, "updated": 4},
        "started_at": None,
        "saved_at": None,
        "elapsed_seconds": 1.5,
        "settings": {"engine": {}},
        "extra": extra,
        **fields,
    }


def load_v1(tmp_path: Path, extra: dict[str, Any], **fields: Any) -> Checkpoint:
    path = tmp_path / "checkpoint.json"
    body = {k: v for k, v in v1(extra, **fields).items() if k not in ("format", "version", "codec")}
    write_versioned(path, "docshift-checkpoint", 1, body)
    return Checkpoint.load(path)


def test_checkpoint_1_to_2_keeps_what_the_engine_continues_from(tmp_path: Path) -> None:
    extra = {
        "dead_letter_bytes": 812,
        "journal_bytes": 5266,
        "journal_unsettled": [[10, 20], [30, 40]],
        "landed": {"users/u1": ["updated"]},
        "note": "a key no release wrote",
    }
    checkpoint = load_v1(tmp_path, extra)
    assert checkpoint.dead_letter_bytes == 812
    assert checkpoint.journal == JournalMark(5266, ((10, 20), (30, 40)))
    assert checkpoint.landed == {"users/u1": ["updated"]}
    assert checkpoint.scope == Scope() and checkpoint.stages is None and checkpoint.undo is None
    assert (checkpoint.counters, checkpoint.shards[0].cursor, checkpoint.elapsed_seconds) == (
        {"read": 5, "updated": 4},
        "users/u1",
        1.5,
    )
    assert "extra" not in checkpoint_1_to_2(v1(extra)) and "note" not in str(checkpoint_1_to_2(v1(extra)))
    older = load_v1(tmp_path, {})  # from before the journal offsets: resumed without settling
    assert older.dead_letter_bytes is None and older.journal is None and older.landed == {}


@pytest.mark.parametrize(
    ("extra", "scope", "whole"),
    [
        ({}, Scope(), True),
        ({"limit_reached": None}, Scope(limited=True), False),  # not known yet
        ({"limit_reached": True}, Scope(limited=True, limit_reached=True), False),
        ({"limit_reached": False}, Scope(limited=True, limit_reached=False), True),
        ({"sample_percent": 30.0}, Scope(sample_percent=30.0), False),
        ({"sample_percent": 100}, Scope(sample_percent=100.0), True),
    ],
)
def test_checkpoint_1_to_2_keeps_the_run_s_scope(
    tmp_path: Path, extra: dict[str, Any], scope: Scope, whole: bool
) -> None:
    checkpoint = load_v1(tmp_path, extra, state="finished", shards=[{"cursor": "users/u9", "done": True}])
    assert checkpoint.scope == scope
    assert checkpoint.covers_target is whole


def test_checkpoint_1_to_2_keeps_the_canary_stages(tmp_path: Path) -> None:
    stages = {"stage": 1, "stages": [30.0, 100.0], "earlier": {"updated": 70}, "earlier_seconds": 0.5}
    running = load_v1(tmp_path, stages)
    assert running.stages is not None
    assert (running.stages.stages, running.stages.stage, running.stages.passed) == ([30.0, 100.0], 1, None)
    assert (running.stages.earlier, running.stages.earlier_seconds) == ({"updated": 70}, 0.5)
    assert running.stage_rollback is None
    passed = load_v1(tmp_path, {**stages, "passed": 1}, state="finished", shards=[{"done": True}])
    assert passed.stages is not None and passed.stages.passed == 1 and passed.covers_target
    why = {"message": "stage 2 failed its gate", "hint": "fix it"}
    begun = load_v1(tmp_path, {**stages, "rolling_back": why})
    assert begun.stage_rollback == StageRollback("stage 2 failed its gate", "fix it")
    assert not begun.stage_rollback.done
    undone = {"restored": 70, "conflicts": 1}
    done = load_v1(tmp_path, {**stages, "rolling_back": why, "rolled_back": True, "rollback": undone})
    assert done.stage_rollback == StageRollback("stage 2 failed its gate", "fix it", undone)
    assert done.stage_rollback.done and not done.covers_target


def test_checkpoint_1_to_2_keeps_a_rollback_s_steps(tmp_path: Path) -> None:
    steps = [
        {"run": "r2", "counters": {"restored": 3}, "position": 7, "finished": True},
        {"run": "r1", "counters": {}, "position": -1, "finished": False},
    ]
    extra = {"kind": "down", "runs": ["r2", "r1"], "steps": steps, "of_run": "r2", "position": 7}
    checkpoint = load_v1(tmp_path, extra, settings={})
    assert checkpoint.undo is not None
    assert (checkpoint.undo.strategy, checkpoint.undo.runs) == ("down", ["r2", "r1"])
    assert checkpoint.undo.steps == [UndoStep("r2", {"restored": 3}, 7, True), UndoStep("r1", {}, -1, False)]


@pytest.mark.parametrize("state", ["stopped", "finished"])
def test_checkpoint_1_to_2_reads_a_one_run_rollback_of_an_older_docshift(tmp_path: Path, state: str) -> None:
    """Before a rollback undid several runs of a migration, its checkpoint held one run's position,
    and its counters and state were that run's."""
    extra = {"kind": "restore", "of_run": "r1", "position": 12}
    checkpoint = load_v1(tmp_path, extra, state=state, counters={"restored": 13})
    assert checkpoint.undo is not None
    assert (checkpoint.undo.strategy, checkpoint.undo.runs) == ("restore", ["r1"])
    assert checkpoint.undo.steps == [UndoStep("r1", {"restored": 13}, 12, state == "finished")]
    assert load_v1(tmp_path, {"kind": "something else"}).undo is None


def test_runs_begun_in_the_same_second_are_ordered_by_when_they_were_made(tmp_path: Path) -> None:
    """Run ids carry their start time to the second and then a random suffix: the newest run is the
    one made last, not the one whose suffix sorts last (`--resume` picks it)."""
    made = [
        ("20261202T010000-ffffff", "2026-12-02T01:00:00.100000+00:00"),
        ("20261202T010000-000000", "2026-12-02T01:00:00.900000+00:00"),
    ]
    for run_id, created_at in made:
        folder = tmp_path / run_id
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"run_id": run_id, "created_at": created_at}))
    (tmp_path / "20261202T020000-aaaaaa").mkdir()  # no readable run.json: not a run
    broken = tmp_path / "20261202T030000-bbbbbb"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    assert [f.run_id for f in run_folders(tmp_path)] == [
        "20261202T010000-000000",
        "20261202T010000-ffffff",
        "20261202T030000-bbbbbb",
    ]

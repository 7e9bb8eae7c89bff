"""Script migrations (``apply(ctx)``) on the memory store: loading, dry run, execute, guards,
checkpoints and resume, faults during a flush, and rollback by restore."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from docshift.commands.history import history
from docshift.commands.project import new_migration
from docshift.commands.rollback import RollbackOptions, run_rollback
from docshift.commands.run import RunOptions, run_migrations
from docshift.commands.status import status
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.engine.controls import Controls
from docshift.engine.hooks import Checkpointed, MigrationEnded
from docshift.errors import (
    EmergencyStop,
    ExitCode,
    MigrationFileError,
    RunStopped,
    ScriptFailed,
    TransientError,
    UsageError,
)
from docshift.history import History, MigrationStatus
from docshift.loader import file_kind, load_migrations
from docshift.migration import MigrationKind
from docshift.reports.report import collect_report
from docshift.runfolder import Checkpoint, JournalReader
from docshift.runfolder.layout import RunFolder
from docshift.runfolder.record import read_run
from docshift.store import DelegatingStore, Query, Store, Write, WriteResult
from docshift.testing import MemoryStore, RecordingHooks
from docshift.values import Value

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "scripts" / "0003_tags_to_subcollection.py"

FAN_OUT = """
description = "fan tags out"

def apply(ctx):
    if ctx.get("settings/app") is None:
        ctx.create("settings/app", {"schema": 2})
    after = f"users/{ctx.resume_key}" if ctx.resume_key else None
    seen = 0
    for user in ctx.stream("users", start_after=after):
        tags = user.get("tags")
        if isinstance(tags, list):
            for tag in tags:
                ctx.set(f"{user.path}/tags/{tag}", {"tag": tag})
            ctx.update(user.path, {"tags": DELETE, "tag_count": len(tags)})
        seen += 1
        if seen % 10 == 0:
            ctx.checkpoint(user.id)
    ctx.delete("legacy/old")
"""


def script_file(folder: Path, source: str = FAN_OUT, name: str = "0001_fan_out.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("from docshift import DELETE\n" + source, encoding="utf-8")
    return path


def make_config(tmp_path: Path, source: str = FAN_OUT, batch_size: int = 7) -> Config:
    migrations = tmp_path / "migrations"
    script_file(migrations, source)
    return Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=batch_size, min_batch_size=1),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )


def seed(store: Store, count: int = 35) -> None:
    writes = [
        Write.set(f"users/u{i:03d}", {"name": f"user {i}", "tags": [f"t{i % 3}", f"x{i % 2}"]})
        for i in range(count)
    ]
    writes.append(Write.set("legacy/old", {"kept": False}))
    assert all(result.ok for result in store.commit(writes))


def export(store: Store) -> dict[str, dict[str, Value]]:
    """Every document (with subcollections), by path."""
    docs: dict[str, dict[str, Value]] = {}
    for collection in store.list_collections():
        if collection.startswith("_docshift"):
            continue
        for doc in store.stream(Query(collection, descendants=True)):
            docs[doc.path] = doc.data
    return docs


def expected(count: int = 35) -> dict[str, dict[str, Value]]:
    docs: dict[str, dict[str, Value]] = {"settings/app": {"schema": 2}}
    for i in range(count):
        tags = [f"t{i % 3}", f"x{i % 2}"]
        docs[f"users/u{i:03d}"] = {"name": f"user {i}", "tag_count": 2}
        for tag in tags:
            docs[f"users/u{i:03d}/tags/{tag}"] = {"tag": tag}
    return docs


def test_the_loader_recognises_a_script_and_list_shows_its_kind(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    [migration] = load_migrations(config.migrations_dir)
    assert migration.kind is MigrationKind.SCRIPT and migration.is_script
    assert migration.apply is not None and migration.description == "fan tags out"
    assert "script" in migration.target.describe()


@pytest.mark.parametrize(
    ("source", "message", "hint"),
    [
        (
            "def up(doc):\n    return doc.data\ndef apply(ctx):\n    pass\n",
            "defines both up(doc) and apply(ctx)",
            "one kind",
        ),
        ("x = 1\n", "has neither up(doc) nor apply(ctx)", "docshift new --script"),
        ("def apply():\n    pass\n", "apply must take exactly one argument", "def apply(ctx)"),
        ("apply = 3\n", "apply must be a function", "def apply(ctx)"),
        ("async def apply(ctx):\n    pass\n", "plain function", "no async"),
        ('collection = "users"\ndef apply(ctx):\n    pass\n', "takes no collection", "ctx.stream"),
        ("def down(doc):\n    pass\ndef apply(ctx):\n    pass\n", "takes no down", "before-images"),
    ],
)
def test_a_bad_script_file_is_refused_with_one_line_and_a_hint(
    tmp_path: Path, source: str, message: str, hint: str
) -> None:
    script_file(tmp_path, source)
    with pytest.raises(MigrationFileError) as raised:
        load_migrations(tmp_path)
    assert message in raised.value.message and "\n" not in raised.value.message
    assert raised.value.hint is not None and hint in raised.value.hint
    assert raised.value.exit_code is ExitCode.MIGRATION_FILE


def test_a_dry_run_lists_every_write_with_its_diff_and_writes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = MemoryStore()
    seed(store)
    before = export(store)
    report = run_migrations(config, RunOptions(), store=store)
    assert export(store) == before and not [c for c in store.list_collections() if c.startswith("_")]
    [outcome] = report.outcomes
    counters = outcome.result.counters
    assert (counters["created"], counters["updated"], counters["deleted"]) == (1 + 70, 35, 1)
    plan = outcome.plan
    assert plan is not None
    kinds = {(s["path"], s["kind"]) for s in plan.samples}
    assert ("settings/app", "create") in kinds and ("users/u000", "update") in kinds
    update = next(s for s in plan.samples if s["path"] == "users/u000")
    assert {".".join(c.path) for c in update["changes"]} == {"tags", "tag_count"}
    assert len(list(JournalReader(RunFolder(report.folder).migration("0001_fan_out").journal))) == 0


def test_execute_then_rollback_restores_the_pre_run_export(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = MemoryStore()
    seed(store)
    before = export(store)
    report = run_migrations(config, RunOptions(execute=True), store=store)
    assert export(store) == expected()
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert (record.counts["created"], record.counts["updated"], record.counts["deleted"]) == (71, 35, 1)
    assert run_migrations(config, RunOptions(execute=True), store=store).outcomes == []

    undone = run_rollback(config, RollbackOptions(run_id=report.run_id, execute=True), store=store)
    assert all(item.clean for item in undone.items), [item.counters for item in undone.items]
    assert export(store) == before
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.ROLLED_BACK


class ChangesUserOnFirstCommit(DelegatingStore):
    """An application write lands between the script's read of users/u003 and its write."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.done = False

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if not self.done and any(w.path == "users/u003" for w in writes):
            self.done = True
            self.inner.commit([Write.update("users/u003", {("name",): "renamed by the app"})])
        return self.inner.commit(writes)


def test_a_concurrent_write_is_never_clobbered_and_a_resume_finishes_on_the_new_data(tmp_path: Path) -> None:
    config = make_config(tmp_path, batch_size=50)
    memory = MemoryStore()
    seed(memory)
    store = ChangesUserOnFirstCommit(memory)
    with pytest.raises(ScriptFailed) as raised:
        run_migrations(config, RunOptions(execute=True), store=store)
    assert (
        "users/u003 was refused" in raised.value.message and "nothing was overwritten" in raised.value.message
    )
    assert raised.value.resume_command is not None
    current = memory.get("users/u003")
    assert current is not None and current.data["name"] == "renamed by the app"
    assert "tags" in current.data  # the script's write of it was refused, not forced
    record = History(memory, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.FAILED

    run_migrations(config, RunOptions(resume="latest"), store=memory)
    want = expected()
    want["users/u003"] = {"name": "renamed by the app", "tag_count": 2}
    assert export(memory) == want
    record = History(memory, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED


class FailsCommitOnce(DelegatingStore):
    """The store keeps failing (after the adapter's retries) for the script's ``at``-th flush."""

    def __init__(self, inner: Store, at: int) -> None:
        super().__init__(inner)
        self.commits, self.at = 0, at

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if not any(w.path.startswith("users/") for w in writes):
            return self.inner.commit(writes)  # the history's and the lease's writes
        self.commits += 1
        if self.commits == self.at:
            raise TransientError("injected", code="UNAVAILABLE")
        return self.inner.commit(writes)


def test_a_store_fault_during_a_flush_stops_the_run_and_resume_reaches_the_same_state(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    memory = MemoryStore()
    seed(memory)
    before = export(memory)
    with pytest.raises(EmergencyStop) as raised:
        run_migrations(config, RunOptions(execute=True), store=FailsCommitOnce(memory, at=12))
    assert "the store kept failing" in raised.value.message and raised.value.resume_command
    folder = RunFolder(next((tmp_path / "runs").iterdir()))
    checkpoint = Checkpoint.load(folder.migration("0001_fan_out").checkpoint)
    assert checkpoint.state == "stopped" and checkpoint.script is not None and checkpoint.script.key
    run_migrations(config, RunOptions(resume="latest"), store=memory)
    assert export(memory) == expected()
    record = History(memory, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    # The counts are those of an uninterrupted run: nothing counted twice, nothing as unchanged.
    assert (record.counts["created"], record.counts["updated"], record.counts["deleted"]) == (71, 35, 1)
    run_rollback(config, RollbackOptions(run_id=folder.path.name, execute=True), store=memory)
    assert export(memory) == before


def test_a_resume_gives_the_script_its_last_checkpoint_key(tmp_path: Path) -> None:
    source = FAN_OUT.replace(
        "def apply(ctx):\n",
        "def apply(ctx):\n"
        "    ctx.set('keys/' + str(len(KEYS)), {'key': ctx.resume_key})\n"
        "    KEYS.append(1)\n",
    )
    config = make_config(tmp_path, "KEYS = []\n" + source)
    store = MemoryStore()
    seed(store)
    controls = Controls()

    class StopAfterSecondMark(RecordingHooks):
        def checkpointed(self, event: Checkpointed) -> None:
            if event.cursors == ("u019",):
                controls.request_stop("test stop")

    with pytest.raises(RunStopped) as raised:
        run_migrations(
            config, RunOptions(execute=True), store=store, hooks=StopAfterSecondMark(), controls=controls
        )
    assert raised.value.resume_command
    first = store.get("keys/0")
    assert first is not None and first.data == {"key": None}
    run_migrations(config, RunOptions(resume="latest"), store=store)
    again = store.get("keys/0")
    assert again is not None and again.data == {"key": "u019"}  # a new process: KEYS is empty again


def test_apply_that_raises_stops_with_the_line_and_a_hint(tmp_path: Path) -> None:
    lines = [
        "def apply(ctx):",
        '    ctx.set("a/b", {"x": 1})',
        '    ctx.checkpoint("one")',
        '    raise KeyError("plan")',
    ]
    source = "\n".join(lines) + "\n"
    config = make_config(tmp_path, source)
    store = MemoryStore()
    with pytest.raises(ScriptFailed) as raised:
        run_migrations(config, RunOptions(execute=True), store=store)
    assert "apply() raised KeyError: 'plan' (0001_fan_out.py:5)" in raised.value.message
    assert (
        raised.value.hint is not None and "--resume" in raised.value.hint and "rollback" in raised.value.hint
    )
    assert raised.value.exit_code is ExitCode.FAILED
    written = store.get("a/b")
    assert written is not None and written.data == {"x": 1}  # flushed at its checkpoint, journalled
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.FAILED


@pytest.mark.parametrize(
    ("call", "message", "hint"),
    [
        ('ctx.set("users", {})', "is not a document path", "even number of segments"),
        ('ctx.get_all("users/a")', "takes a list of paths", "ctx.get(path)"),
        ('list(ctx.stream("users", where=[("a", "in", 3)]))', "needs a list value", '["a", "b"]'),
        ('ctx.checkpoint("")', "non-empty string key", "skip"),
        ('ctx.update("users/none", {"a": 1})', "no document to update", "resume"),
    ],
)
def test_a_bad_ctx_call_stops_with_a_hint(tmp_path: Path, call: str, message: str, hint: str) -> None:
    config = make_config(tmp_path, f"def apply(ctx):\n    {call}\n")
    with pytest.raises(ScriptFailed) as raised:
        run_migrations(config, RunOptions(execute=True), store=MemoryStore())
    assert message in raised.value.message
    assert raised.value.hint is not None and hint in raised.value.hint


def test_scope_flags_are_refused_for_a_script_before_anything_runs(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with pytest.raises(UsageError) as raised:
        run_migrations(config, RunOptions(execute=True, limit=5), store=MemoryStore())
    assert "script migration" in raised.value.message and raised.value.hint
    assert not (tmp_path / "runs").exists()


def test_the_example_script_loads(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / EXAMPLE.name).write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    [migration] = load_migrations(folder)
    assert migration.is_script


def test_new_script_writes_a_template_that_loads_and_status_and_history_show_the_kind(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = new_migration(config.migrations_dir, "seed the settings", script=True)
    assert path.name == "0002_seed_the_settings.py"
    migrations = load_migrations(config.migrations_dir)
    assert [m.kind for m in migrations] == [MigrationKind.SCRIPT, MigrationKind.SCRIPT]
    with pytest.raises(UsageError) as raised:
        new_migration(config.migrations_dir, "both", script=True, collection="users")
    assert raised.value.hint is not None and "ctx.stream" in raised.value.hint
    store = MemoryStore()
    assert [m["kind"] for m in status(config, store=store).to_json()["migrations"]] == ["script", "script"]
    run_migrations(config, RunOptions(execute=True, to="0001"), store=store)
    assert [m.kind for m in history(config, store=store).migrations] == ["script"]
    assert file_kind(EXAMPLE) is MigrationKind.SCRIPT


# A script stopped between two of its checkpoints: what it reports is what it wrote.

TAG = """
import os

STOP_FILE = {stop_file!r}

def apply(ctx):
    after = f"users/{{ctx.resume_key}}" if ctx.resume_key else None
    seen = 0
    for user in ctx.stream("users", start_after=after):
        if user.id == "u030" and os.path.exists(STOP_FILE):
            raise RuntimeError("boom")
        ctx.update(user.path, {{"tagged": True}})
        seen += 1
        if seen % 20 == 0:
            ctx.checkpoint(user.id)
"""
"""Marks after u019; batches of 7 send u020..u026 (27 updates landed) before u030 is reached."""

_CHANGES = ("updated", "created", "deleted", "unchanged", "failed")


def tag_config(tmp_path: Path) -> Config:
    return make_config(tmp_path, TAG.format(stop_file=str(tmp_path / "stop")), batch_size=7)


def tagged(store: Store) -> int:
    return sum(1 for doc in store.stream(Query("users")) if doc.data.get("tagged"))


def uninterrupted_counters(tmp_path: Path) -> dict[str, int]:
    """The counters of the same script run once, uninterrupted, on the same data."""
    store = MemoryStore()
    seed(store)
    hooks = RecordingHooks()
    run_migrations(tag_config(tmp_path / "uninterrupted"), RunOptions(execute=True), store=store, hooks=hooks)
    [ended] = hooks.of(MigrationEnded)
    assert ended.result.counters["updated"] == 35
    return ended.result.counters


class StopsAfterCommitOf(DelegatingStore):
    """A stop request (what Ctrl-C does) once the commit that writes ``path`` landed."""

    def __init__(self, inner: Store, path: str, controls: Controls) -> None:
        super().__init__(inner)
        self.path, self.controls = path, controls

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        results = self.inner.commit(writes)
        if any(w.path == self.path for w in writes):
            self.controls.request_stop("interrupted (Ctrl-C)")
        return results


def assert_counts_what_was_written(
    tmp_path: Path, store: Store, hooks: RecordingHooks, want: dict[str, int], status: MigrationStatus
) -> None:
    """The stopped run's result, history, checkpoint (run record, report) all count ``want``."""
    [ended] = hooks.of(MigrationEnded)
    assert {k: ended.result.counters.get(k, 0) for k in want} == want
    record = History(store, "_docshift").get("0001")
    assert record is not None and record.status is status
    assert {k: record.counts.get(k, 0) for k in want} == want
    [run] = list((tmp_path / "runs").iterdir())
    [migration] = read_run(run).migrations
    assert {k: migration.counters.get(k, 0) for k in want} == want
    [row] = collect_report(run)["migrations"]
    assert {k: row["counters"].get(k, 0) for k in want} == want


@pytest.mark.parametrize(
    ("stop", "status"),
    [
        ("raise", MigrationStatus.FAILED),
        ("stop request", MigrationStatus.INTERRUPTED),
        ("store failure", MigrationStatus.FAILED),
    ],
)
def test_a_script_stopped_between_checkpoints_counts_every_write_it_made_and_a_resume_the_same_totals(
    tmp_path: Path, stop: str, status: MigrationStatus
) -> None:
    config = tag_config(tmp_path)
    memory = MemoryStore()
    seed(memory)
    controls = Controls()
    store: Store = memory
    if stop == "raise":
        (tmp_path / "stop").touch()
    elif stop == "stop request":
        store = StopsAfterCommitOf(memory, "users/u026", controls)
    else:
        store = FailsCommitOnce(memory, at=5)  # the batch u027..u033: not sent
    hooks = RecordingHooks()
    with pytest.raises(RunStopped):
        run_migrations(config, RunOptions(execute=True), store=store, hooks=hooks, controls=controls)
    assert tagged(memory) == 27
    assert_counts_what_was_written(
        tmp_path,
        memory,
        hooks,
        {"updated": 27, "created": 0, "deleted": 0, "unchanged": 0, "failed": 0},
        status,
    )

    (tmp_path / "stop").unlink(missing_ok=True)
    resumed = RecordingHooks()
    run_migrations(config, RunOptions(resume="latest", force=True), store=memory, hooks=resumed)
    assert tagged(memory) == 35
    [ended] = resumed.of(MigrationEnded)
    want = uninterrupted_counters(tmp_path)
    assert {k: ended.result.counters.get(k, 0) for k in _CHANGES} == {k: want.get(k, 0) for k in _CHANGES}
    record = History(memory, "_docshift").get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED
    assert {k: record.counts.get(k, 0) for k in _CHANGES} == {k: want.get(k, 0) for k in _CHANGES}


class ChangesUserBeforeItsCommit(DelegatingStore):
    """An application write to ``path`` lands just before the script's commit that writes it."""

    def __init__(self, inner: Store, path: str) -> None:
        super().__init__(inner)
        self.path, self.done = path, False

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if not self.done and any(w.path == self.path for w in writes):
            self.done = True
            self.inner.commit([Write.update(self.path, {("name",): "renamed by the app"})])
        return self.inner.commit(writes)


def test_a_refused_write_between_checkpoints_is_counted_failed_and_the_rest_of_its_batch_updated(
    tmp_path: Path,
) -> None:
    config = tag_config(tmp_path)
    memory = MemoryStore()
    seed(memory)
    hooks = RecordingHooks()
    with pytest.raises(ScriptFailed):
        run_migrations(
            config,
            RunOptions(execute=True),
            store=ChangesUserBeforeItsCommit(memory, "users/u025"),
            hooks=hooks,
        )
    assert tagged(memory) == 26  # u020..u026 but the refused u025
    assert_counts_what_was_written(
        tmp_path, memory, hooks, {"updated": 26, "unchanged": 0, "failed": 1}, MigrationStatus.FAILED
    )

    resumed = RecordingHooks()
    run_migrations(config, RunOptions(resume="latest"), store=memory, hooks=resumed)
    assert tagged(memory) == 35
    [ended] = resumed.of(MigrationEnded)
    want = uninterrupted_counters(tmp_path)
    assert {k: ended.result.counters.get(k, 0) for k in _CHANGES} == {k: want.get(k, 0) for k in _CHANGES}


def test_a_resume_stopped_again_before_a_checkpoint_counts_from_the_same_mark(tmp_path: Path) -> None:
    config = tag_config(tmp_path)
    memory = MemoryStore()
    seed(memory)
    (tmp_path / "stop").touch()
    for attempt in range(2):  # the resume raises at u030 again: its redone writes are no new ones
        hooks = RecordingHooks()
        options = RunOptions(execute=True) if attempt == 0 else RunOptions(resume="latest", force=True)
        with pytest.raises(ScriptFailed):
            run_migrations(config, options, store=memory, hooks=hooks)
        [ended] = hooks.of(MigrationEnded)
        assert (ended.result.counters["updated"], ended.result.counters["unchanged"]) == (27, 0)
        record = History(memory, "_docshift").get("0001")
        assert record is not None and record.counts["updated"] == 27
    (tmp_path / "stop").unlink()
    resumed = RecordingHooks()
    run_migrations(config, RunOptions(resume="latest", force=True), store=memory, hooks=resumed)
    [ended] = resumed.of(MigrationEnded)
    want = uninterrupted_counters(tmp_path)
    assert {k: ended.result.counters.get(k, 0) for k in _CHANGES} == {k: want.get(k, 0) for k in _CHANGES}

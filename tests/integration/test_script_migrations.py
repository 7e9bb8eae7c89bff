"""Script migrations (``apply(ctx)``) against the emulator, through the CLI: a dry run that lists
its writes and writes nothing, execute, kill -9 twice then resume to the uninterrupted result, and a
rollback back to the pre-run export (the example: seed settings, fan tags out to a subcollection)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from docshift.history import History, MigrationStatus
from docshift.lock import read_lease
from docshift.runfolder import Checkpoint
from docshift.store import Document, Query, RetryingStore
from docshift.values import Value, values_equal
from tests.integration.run_support import (
    PREFIX,
    ROOT,
    docshift,
    project_folder,
    run_until_killed,
    seed_users,
)

SCRIPT = ROOT / "examples" / "scripts" / "0003_tags_to_subcollection.py"
COUNT = 3000


def folder_with_script(path: Path) -> Path:
    return project_folder(
        path, "batch_size = 100\n", files=(), extra={"0001_tags.py": SCRIPT.read_text(encoding="utf-8")}
    )


def export_tree(store: RetryingStore) -> dict[str, Document]:
    """Every document, subcollections included (docshift's own state left out)."""
    docs: dict[str, Document] = {}
    for collection in store.list_collections():
        if not collection.startswith(PREFIX):
            docs.update({doc.path: doc for doc in store.stream(Query(collection, descendants=True))})
    return docs


def expected_after(before: dict[str, Document]) -> dict[str, dict[str, Value]]:
    """What the example script leaves, computed here from the data it starts from."""
    state = {path: dict(doc.data) for path, doc in before.items()}
    state["settings/app"] = {"tags_in": "subcollection", "schema": 2}
    for path, doc in before.items():
        tags = doc.data.get("tags")
        if path.count("/") != 1 or not path.startswith("users/") or not isinstance(tags, list):
            continue
        for tag in tags:
            state[f"{path}/tags/{tag}"] = {"tag": tag, "user": path.split("/")[1]}
        data = dict(doc.data)
        del data["tags"]
        data["tag_count"] = len(tags)
        state[path] = data
    return state


def data_problems(actual: dict[str, Document], expected: dict[str, dict[str, Value]]) -> list[str]:
    problems = sorted(set(actual) ^ set(expected))
    problems += [p for p in set(actual) & set(expected) if not values_equal(actual[p].data, expected[p])]
    return problems


def writes_of(expected: dict[str, dict[str, Value]], before: dict[str, Document]) -> dict[str, int]:
    created = sum(1 for path in expected if path not in before)
    updated = sum(1 for path in before if not values_equal(before[path].data, expected[path]))
    return {"created": created, "updated": updated, "deleted": 0}


def test_a_dry_run_lists_the_writes_with_diffs_and_writes_nothing(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 60)
    before = export_tree(firestore_store)
    folder = folder_with_script(tmp_path)
    listed = docshift(folder, cli_env, "status")
    assert "[script]" in listed.stdout, listed.stdout
    done = docshift(folder, cli_env, "run")
    assert done.returncode == 0, done.stderr
    assert "0001_tags" in done.stdout and "a script" in done.stdout
    assert "settings/app" in done.stdout  # the create it would make
    assert "tag_count" in done.stdout and "tags" in done.stdout  # an update's diff
    after = export_tree(firestore_store)
    assert data_problems(after, {p: d.data for p, d in before.items()}) == []
    assert History(firestore_store, PREFIX).all() == {}


def _resume(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = docshift(folder, env, "run", "--execute", "--resume", "--json", "--max-writes-per-second", "0")
    if done.returncode == 6:  # the killed run's lease has not expired: remove it
        assert docshift(folder, env, "unlock", "--force", "--yes").returncode == 0
        done = docshift(folder, env, "run", "--execute", "--resume", "--json", "--max-writes-per-second", "0")
    return done


def test_execute_killed_twice_resumes_to_the_uninterrupted_result_and_rolls_back_to_the_export(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, COUNT)
    before = export_tree(firestore_store)
    expected = expected_after(before)
    folder = folder_with_script(tmp_path)

    keys: list[str | None] = []
    for kill, moment in enumerate((2.0, 1.5)):
        run_until_killed(folder, cli_env, moment, tmp_path / f"stderr-{kill}.txt", writes_per_second=700)
        [path] = folder.glob(".docshift/runs/*/0001_tags/checkpoint.json")
        checkpoint = Checkpoint.load(path)
        assert checkpoint.state == "running" and checkpoint.script is not None
        keys.append(checkpoint.script.key)
    assert keys[-1] is not None, keys  # the second process resumed from a key, and got further
    assert data_problems(export_tree(firestore_store), expected), "the killed runs did not stop midway"

    done = _resume(folder, cli_env)
    assert done.returncode == 0, done.stderr
    assert data_problems(export_tree(firestore_store), expected) == []
    record = History(firestore_store, PREFIX).all()["0001"]
    assert record.status is MigrationStatus.APPLIED
    assert {k: record.counts.get(k, 0) for k in ("created", "updated", "deleted")} == writes_of(
        expected, before
    )
    assert read_lease(firestore_store, PREFIX) is None
    history = json.loads(docshift(folder, cli_env, "history", "--json").stdout)
    assert history["migrations"][0]["kind"] == "script"

    run_id = record.run_id
    undone = docshift(folder, cli_env, "rollback", run_id, "--execute", "--yes")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    after = export_tree(firestore_store)
    assert data_problems(after, {p: d.data for p, d in before.items()}) == []
    assert History(firestore_store, PREFIX).all()["0001"].status is MigrationStatus.ROLLED_BACK


def test_an_application_write_during_the_script_is_never_overwritten(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The script reads a user, the application changes it, the script's write of it is refused
    (the run stops, exit 1, saying so); the resume re-reads it and keeps the application's change."""
    seed_users(firestore_store, 40)
    source = SCRIPT.read_text(encoding="utf-8").replace(
        '        tags = user.get("tags")\n',
        '        tags = user.get("tags")\n'
        "        if user.id == 'u000007' and ctx.get('marks/app') is None:\n"
        "            ctx.set('marks/app', {'seen': True})\n"
        "            APP(user.path)\n",
    )
    source = source.replace(
        "EVERY = 200\n",
        "EVERY = 200\n\n\ndef APP(path: str) -> None:\n"
        "    from docshift.store import Write, open_store\n"
        "    from docshift.config import load_config\n"
        "    with open_store(load_config()) as store:\n"
        "        assert store.commit([Write.update(path, {('name',): 'the app'})])[0].ok\n",
    )
    folder = project_folder(tmp_path, "batch_size = 100\n", files=(), extra={"0001_tags.py": source})
    done = docshift(folder, cli_env, "run", "--execute")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "users/u000007 was refused" in done.stderr and "nothing was overwritten" in done.stderr
    current = firestore_store.get("users/u000007")
    assert current is not None and current.data["name"] == "the app" and "tags" in current.data
    done = _resume(folder, cli_env)
    assert done.returncode == 0, done.stderr
    current = firestore_store.get("users/u000007")
    assert current is not None and current.data["name"] == "the app" and "tags" not in current.data

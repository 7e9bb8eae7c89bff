"""``docshift retry`` end to end through the CLI against the emulator: a run where some documents
fail, ``status`` naming the dead letters, the fix, the retry (dry run, execute), ``status`` and
``history`` after it, and the rollback of the retry; and a run that fails before it starts (no
migrations folder, the lock held) leaving no run folder behind."""

from __future__ import annotations

import json
from pathlib import Path

from docshift.lock import LeaseLock
from docshift.runfolder.record import read_info
from docshift.store import Query, Store, Write
from tests.integration.run_support import PREFIX, differences, docshift, export, project_folder

MIGRATION = '''"""Mark people as version 2."""

description = "mark people as version 2"
collection = "users"
where = [("kind", "==", "person")]


def up(doc):
    data = doc.data
    if data.get("broken"):
        raise ValueError(f"cannot migrate {doc.id}: broken")
    data["v"] = 2
    return data
'''

FIXED = MIGRATION.replace('raise ValueError(f"cannot migrate {doc.id}: broken")', 'data["was_broken"] = True')

BROKEN = [f"users/u{i:03d}" for i in (4, 24, 44)]  # 3 of 60: 5%


def _seed(store: Store) -> None:
    writes = [
        Write.set(f"users/u{i:03d}", {"n": i, "kind": "person", "broken": f"users/u{i:03d}" in BROKEN})
        for i in range(60)
    ]
    writes.append(Write.set("teams/t1", {"name": "bystander"}))
    assert all(result.ok for result in store.commit(writes))


def _runs(folder: Path, kind: str) -> list[str]:
    runs = folder / ".docshift" / "runs"
    found = [read_info(p) for p in runs.iterdir() if (p / "run.json").is_file()]
    return sorted(str(i["run_id"]) for i in found if i.get("kind") == kind and i.get("execute"))


def test_a_run_with_failures_is_finished_by_a_retry_and_the_retry_rolls_back(
    tmp_path: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    project = project_folder(
        tmp_path / "app", 'max_failures = "10%"\n', files=(), extra={"0001_mark_v2.py": MIGRATION}
    )
    _seed(firestore_store)
    seeded = export(firestore_store, ["users", "teams"])

    ran = docshift(project, cli_env, "run", "--execute")
    assert ran.returncode == 0, ran.stderr
    [run_id] = _runs(project, "run")
    shown = docshift(project, cli_env, "status")
    assert shown.returncode == 0, shown.stderr
    assert f"3 dead letter(s) (run {run_id}) — docshift retry {run_id}" in shown.stdout
    as_json = json.loads(docshift(project, cli_env, "status", "--json").stdout)
    [left] = as_json["migrations"][0]["dead_letters"]
    assert (left["run_id"], left["count"], left["command"]) == (run_id, 3, f"docshift retry {run_id}")

    # One of them is deleted meanwhile; the migration is fixed for the others.
    assert all(r.ok for r in firestore_store.commit([Write.delete(BROKEN[0])]))
    (project / "migrations" / "0001_mark_v2.py").write_text(FIXED, encoding="utf-8")
    drifted = docshift(project, cli_env, "retry", run_id)
    assert drifted.returncode == 7 and "--allow-drift" in drifted.stderr and "hint:" in drifted.stderr

    dry = docshift(project, cli_env, "retry", run_id, "--allow-drift")
    assert dry.returncode == 0, dry.stderr
    assert "3 listed: 2 retried, 1 gone (deleted since)" in dry.stdout
    assert f"to apply it: docshift retry {run_id} --execute --allow-drift" in dry.stdout
    before_retry = export(firestore_store, ["users", "teams"])

    retried = docshift(project, cli_env, "retry", run_id, "--execute", "--allow-drift")
    assert retried.returncode == 0, retried.stderr
    [retry_id] = _runs(project, "retry")
    after = export(firestore_store, ["users", "teams"])
    for path in BROKEN[1:]:
        assert after[path].data["v"] == 2 and after[path].data["was_broken"] is True
    untouched = {p: d for p, d in after.items() if p not in BROKEN[1:]}
    assert differences(untouched, {p: d for p, d in before_retry.items() if p not in BROKEN[1:]}) == []
    assert (project / ".docshift" / "runs" / retry_id / "report.html").is_file()

    shown = docshift(project, cli_env, "status")
    assert shown.returncode == 0 and "dead letter" not in shown.stdout and "up to date" in shown.stdout
    events = json.loads(docshift(project, cli_env, "history", "0001", "--json").stdout)["migrations"][0][
        "events"
    ]
    assert [e["event"] for e in events][-3:] == ["drift_accepted", "retry_started", "retried"]
    assert events[-1]["run_id"] == retry_id and events[-1]["counts"]["updated"] == 2
    assert events[-1]["counts"]["gone"] == 1 and events[-1]["status"] == "applied"

    undone = docshift(project, cli_env, "rollback", retry_id, "--execute")
    assert undone.returncode == 0, undone.stderr
    restored = export(firestore_store, ["users", "teams"])
    expected = {p: d for p, d in seeded.items() if p != BROKEN[0]}
    assert differences(restored, expected, times=False) == []
    as_json = json.loads(docshift(project, cli_env, "status", "--json").stdout)
    assert (
        as_json["migrations"][0]["state"] == "rolled_back" and as_json["migrations"][0]["dead_letters"] == []
    )


def test_a_failed_run_in_an_empty_folder_creates_no_runs_folder(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("run",), ("run", "--execute")):
        failed = docshift(empty, cli_env, *args)
        assert failed.returncode == 2 and "hint:" in failed.stderr
    assert list(empty.iterdir()) == []  # no .docshift/runs


def test_a_run_refused_by_the_lock_leaves_no_run_folder_or_report(
    tmp_path: Path, cli_env: dict[str, str], firestore_store: Store
) -> None:
    project = project_folder(tmp_path / "app", files=(), extra={"0001_mark_v2.py": FIXED})
    _seed(firestore_store)
    with LeaseLock(firestore_store, PREFIX, run_id="someone-else"):
        refused = docshift(project, cli_env, "run", "--execute")
    assert refused.returncode == 6 and "someone-else" in refused.stderr
    assert not (project / ".docshift").exists()  # no run folder, no report
    assert not any("v" in doc.data for doc in firestore_store.stream(Query("users")))
    ran = docshift(project, cli_env, "run", "--execute")
    assert ran.returncode == 0, ran.stderr
    assert len(_runs(project, "run")) == 1

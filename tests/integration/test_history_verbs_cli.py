"""``docshift history``, ``stamp`` and ``repair`` through the CLI (click's CliRunner, in process)
against the emulator: what they print, their exit codes, and what the other commands make of them."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import click
import pytest
from click.testing import CliRunner, Result

from docshift.cli import main
from docshift.history import EventKind, History, MigrationStatus
from docshift.store import Store
from tests.integration.run_support import PREFIX, differences, export, project_folder, seed_users

THIRD = """description = "tag users"
collection = "users"


def up(doc):
    return {**doc.data, "tagged": True}
"""


class _Main:
    """The CLI as the ``docshift`` script runs it: :func:`main` turns errors into one line with a
    hint and the exit code, which ``cli`` alone would leave to click."""

    name = "docshift"

    def main(self, args: list[str], prog_name: str, **_: Any) -> None:
        main(list(args))


@pytest.fixture
def project(tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = project_folder(tmp_path / "app", extra={"0003_tag_users.py": THIRD})
    monkeypatch.chdir(folder)
    yield folder


@pytest.fixture
def docshift(cli_env: dict[str, str]) -> Iterator[Any]:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        result = runner.invoke(cast(click.Command, _Main()), list(args), env=cli_env, prog_name="docshift")
        for sig, handler in handlers.items():  # main() ignores signals once it has decided its exit
            signal.signal(sig, handler)
        assert "Traceback" not in result.output and "unexpected" not in result.stderr, result.output
        return result

    yield invoke


def refused(result: Result, code: int, *wanted: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and lines[-1].startswith("  hint: "), result.stderr
    for text in wanted:
        assert text in result.stderr, result.stderr


def test_history_shows_every_event_with_counts_and_json(
    project: Path, docshift: Any, firestore_store: Store
) -> None:
    seed_users(firestore_store, 40)
    empty = docshift("history")
    assert empty.exit_code == 0 and "no history yet" in empty.stdout
    applied = docshift("run", "--execute", "--to", "0001")
    assert applied.exit_code == 0, applied.stderr
    run_id = History(firestore_store, PREFIX).get("0001").run_id  # type: ignore[union-attr]
    rolled = docshift("rollback", run_id, "--execute")
    assert rolled.exit_code == 0, rolled.stderr
    again = docshift("run", "--execute", "--to", "0001")
    assert again.exit_code == 0, again.stderr

    text = docshift("history")
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("project demo-") and "0001_split_full_name: applied" in text.stdout
    events = [line.split()[2] for line in lines if line.startswith("  20")]
    assert events == ["started", "applied", "rolled", "started", "applied"]
    assert run_id in text.stdout and "updated 3" in text.stdout

    shown = docshift("history", "0001", "--json")
    assert shown.exit_code == 0, shown.stderr
    document = json.loads(shown.stdout)
    [migration] = document["migrations"]
    assert migration["id"] == "0001" and migration["state"] == "applied"
    assert [e["event"] for e in migration["events"]] == [
        "started",
        "applied",
        "rolled_back",
        "started",
        "applied",
    ]
    assert migration["events"][0]["run_id"] == run_id and migration["events"][0]["counts"] is None
    assert migration["events"][1]["counts"]["updated"] == migration["events"][4]["counts"]["updated"] > 0
    assert all(e["user"] and e["at"].endswith("Z") for e in migration["events"])
    assert migration["earlier_events_dropped"] is False

    pending = docshift("history", "0003")
    assert pending.exit_code == 0 and "never run or stamped" in pending.stdout
    refused(docshift("history", "0042"), 2, "no migration '0042'")


def test_stamp_then_status_run_and_rollback(project: Path, docshift: Any, firestore_store: Store) -> None:
    seed_users(firestore_store, 30)
    before = export(firestore_store, ["users"])
    refused(
        docshift("stamp", "0002", "--reason", "adopting"),
        2,
        "0001_split_full_name (pending)",
        "--include-older",
    )
    missing = docshift("stamp", "0002")
    assert missing.exit_code == 2 and "--reason" in missing.stderr
    refused(docshift("stamp", "0002", "--reason", "  "), 2, "needs a reason")

    dry = docshift("stamp", "0002", "--include-older", "--reason", "adopting", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "0001_split_full_name" in dry.stdout and "0002_normalise_age" in dry.stdout
    assert "dry run: nothing recorded" in dry.stdout
    assert History(firestore_store, PREFIX).all() == {}

    done = docshift("stamp", "2", "--include-older", "--reason", "migrated by the old [bold]script")
    assert done.exit_code == 0, done.stderr
    assert "record as applied without running them" in done.stdout
    assert "stamped 0001_split_full_name, 0002_normalise_age" in done.stdout
    assert differences(export(firestore_store, ["users"]), before) == []  # not written, not even touched
    records = History(firestore_store, PREFIX).all()
    assert [r.status for r in records.values()] == [MigrationStatus.STAMPED] * 2
    assert records["0002"].events[-1].reason == "migrated by the old [bold]script"

    status = json.loads(docshift("status", "--json").stdout)
    assert [m["state"] for m in status["migrations"]] == ["stamped", "stamped", "pending"]
    history = docshift("history", "0002")
    assert "stamped" in history.stdout and "reason: migrated by the old [bold]script" in history.stdout
    nothing = docshift("stamp", "0002", "--reason", "again")
    assert nothing.exit_code == 0 and "nothing to stamp: 0002_normalise_age is stamped" in nothing.stdout

    ran = docshift("run", "--execute")
    assert ran.exit_code == 0, ran.stderr
    assert History(firestore_store, PREFIX).get("0003").status is MigrationStatus.APPLIED  # type: ignore[union-attr]
    assert docshift("status").exit_code == 0
    refused(
        docshift("rollback", "--to", "0001", "--execute"), 2, "0002_normalise_age is stamped", "--to 0002"
    )
    assert History(firestore_store, PREFIX).get("0003").status is MigrationStatus.APPLIED  # type: ignore[union-attr]
    undone = docshift("rollback", "--to", "0002", "--execute")
    assert undone.exit_code == 0, undone.stderr
    assert differences(export(firestore_store, ["users"]), before, times=False) == []


def test_stamp_is_refused_while_a_run_holds_the_lease(
    project: Path, docshift: Any, firestore_store: Store
) -> None:
    from docshift.lock import LeaseLock

    with LeaseLock(firestore_store, PREFIX, run_id="20260101T000000-aaaaaa"):
        refused(docshift("stamp", "0001", "--reason", "x"), 6, "locked by")
    assert History(firestore_store, PREFIX).all() == {}


def test_repair_accepts_an_edited_file_and_status_is_clean_again(
    project: Path, docshift: Any, firestore_store: Store
) -> None:
    seed_users(firestore_store, 20)
    assert docshift("run", "--execute", "--to", "0001").exit_code == 0
    refused(docshift("repair", "0001", "--reason", "x"), 2, "did not change since it was applied")
    refused(docshift("repair", "0002", "--reason", "x"), 2, "never ran here", "docshift stamp 0002")
    path = project / "migrations" / "0001_split_full_name.py"
    path.write_text(path.read_text(encoding="utf-8") + "\n# clarified a comment\n", encoding="utf-8")
    drifted = docshift("status")
    assert drifted.exit_code == 7 and "docshift repair 0001 --reason" in drifted.stdout
    refused(docshift("run", "--execute"), 7, "docshift repair 0001")

    dry = docshift("repair", "0001", "--reason", "comment only", "--dry-run")
    assert dry.exit_code == 0 and "dry run: nothing recorded" in dry.stdout
    assert docshift("status").exit_code == 7
    done = docshift("repair", "0001_split_full_name", "--reason", "comment only")
    assert done.exit_code == 0, done.stderr
    assert "repaired 0001_split_full_name: the history now has checksum" in done.stdout
    status = json.loads(docshift("status", "--json").stdout)
    assert status["migrations"][0]["state"] == "applied" and status["migrations"][0]["drift"] is False
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.events[-1].kind is EventKind.REPAIRED
    assert record.events[-1].previous_checksum == record.previous_checksums[-1]
    events = json.loads(docshift("history", "0001", "--json").stdout)["migrations"][0]["events"]
    assert events[-1]["event"] == "repaired" and events[-1]["reason"] == "comment only"
    assert events[-1]["previous_checksum"] == events[0]["checksum"] != events[-1]["checksum"]
    assert docshift("run", "--execute", "--to", "0002").exit_code == 0  # runs again past it


def test_the_verbs_are_in_the_help(docshift: Any) -> None:
    top = docshift("--help")
    for verb in ("history", "stamp", "repair"):
        assert verb in top.stdout
    assert "--include-older" in docshift("stamp", "--help").stdout
    assert "(Flyway" in docshift("repair", "--help").stdout

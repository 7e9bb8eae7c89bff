"""What the terminal shows: the live view and the summaries laid out whole at 80 and 160 columns
(rich's recording console), a dry run's counts named as what it would write, one label per
warning line, ``--quiet``, the top-level ``--help``, and contradictory flags refused."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from docshift.cli import cli, main
from docshift.cli.live import plain_status_line, render_status
from docshift.cli.output import CountsTable, progress_line, summary_table, warning_line
from docshift.commands.session import ErrorResults
from docshift.engine.hooks import PassStarted, Progressed, TotalKnown, Warned
from docshift.reports.events import event_from_fields
from docshift.reports.status import RunStatus
from docshift.store import Write
from docshift.testing import MemoryStore
from tests.unit.terminal_support import capture

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "migrations"
LONG_NAME = "0001_split_full_name_into_first_and_last"
RUN_ID = "20261202T031041-fa681a"


def snapshot(*, execute: bool = True, state: str = "running") -> dict[str, Any]:
    status = RunStatus(RUN_ID)
    status.pass_started(PassStarted(LONG_NAME, shards=1, execute=execute))
    status.total_known(TotalKnown(LONG_NAME, 4000))
    fields = {
        "migration": LONG_NAME,
        "read": 3600,
        "updated": 3500,
        "unchanged": 88,
        "failed": 12,
        "processed": 3600,
        "docs_per_second_now": 1633.0,
        "docs_per_second_avg": 1600.0,
        "commit_p50": 0.246,
        "commit_p95": 0.469,
        "commit_p99": 0.5,
        "commits": 12,
        "elapsed_seconds": 2.2,
        "write_limit": 1500.0,
        "memory_mb": 70.0,
        "batch_size": 300,
        "paused": False,
    }
    status.progressed(event_from_fields(Progressed, fields))
    view = status.snapshot()
    view["migrations"][0]["state"] = view["state"] = state
    return view


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(word in line for word in words)]


# --------------------------------------------------------------------------- the live view
@pytest.mark.parametrize("width", [80, 160])
def test_the_live_view_shows_names_states_and_numbers_whole(width: int) -> None:
    text = capture(render_status(snapshot()), width)
    assert "…" not in text, text
    for whole in (
        LONG_NAME,
        "running",
        "ETA 0:0",
        "90.0%",
        "3,600/4,000",
        "1,633 docs/s now",
        "p99 500ms",
        "updated 3,500",
        "unchanged 88",
        "failed 12",
        "conflicts 0",
        f"run {RUN_ID}",
        "write limit 1,500 ops/s",
        "memory 70 MiB",
        "retries 0",
        "health",
    ):
        assert whole in text, f"{whole!r} at {width} columns:\n{text}"
    assert all(len(line.rstrip()) <= width for line in text.splitlines())


def test_at_160_columns_each_migration_is_one_line_and_the_run_one_line() -> None:
    text = capture(render_status(snapshot()), 160)
    assert lines_with(text, LONG_NAME, "90.0%", "3,600/4,000", "running")  # as it always was
    assert lines_with(text, f"run {RUN_ID}", "health", "write limit", "retries")


def test_at_80_columns_the_bar_and_its_numbers_go_under_the_name() -> None:
    text = capture(render_status(snapshot()), 80)
    [heading] = lines_with(text, LONG_NAME)
    assert "running" in heading
    [bar] = lines_with(text, "3,600/4,000")
    assert "90.0%" in bar and "━" in bar


def test_a_stopped_run_says_stopped_whole_at_80_columns() -> None:
    text = capture(render_status(snapshot(state="stopped")), 80)
    assert lines_with(text, LONG_NAME, "stopped") and "stopp…" not in text


def test_a_dry_run_says_what_it_would_write_in_the_live_and_plain_views() -> None:
    dry = snapshot(execute=False)
    for width in (80, 160):
        text = capture(render_status(dry), width)
        assert "to update 3,500" in text and "updated" not in text, text
        assert "(dry run)" in text
    line = plain_status_line(dry)
    assert "3,500 to update" in line and "updated" not in line and "(dry run)" in line
    assert "3,500 updated" in plain_status_line(snapshot())  # an executed run did update them
    assert "updated 3,500" in capture(render_status(snapshot()), 160)
    progress = event_from_fields(
        Progressed,
        {"migration": "0001_x", "updated": 7, "processed": 9, "commits": 0, "elapsed_seconds": 1.0}
        | {"docs_per_second_now": 9.0, "docs_per_second_avg": 9.0}
        | dict.fromkeys(("commit_p50", "commit_p95", "commit_p99")),
    )
    assert "7 to update" in progress_line(progress, dry_run=True)
    assert "updated" not in progress_line(progress, dry_run=True)
    assert "7 updated" in progress_line(progress)


# --------------------------------------------------------------------------- the summaries
ROWS = [
    (LONG_NAME, {"updated": 3893, "unchanged": 107}, "applied"),
    ("0002_normalise_age", {"updated": 215, "unchanged": 3785, "failed": 12}, "interrupted"),
]
TITLE = f"run {RUN_ID} on project demo-h3, database (default) (emulator 127.0.0.1:51485)"


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize("dry_run", [False, True])
def test_the_summary_shows_names_states_and_numbers_whole(width: int, dry_run: bool) -> None:
    text = capture(summary_table(TITLE, ROWS, dry_run=dry_run), width)
    assert "…" not in text, text
    for whole in (LONG_NAME, "0002_normalise_age", "applied", "interrupted", "3,893", "3,785", "12"):
        assert whole in text, f"{whole!r} at {width} columns:\n{text}"
    for column in ("unchanged", "failed", "conflicts", "skipped"):
        assert column in text
    assert ("would update" in text) is dry_run
    assert all(len(line.rstrip()) <= width for line in text.splitlines())


def test_the_summary_is_a_table_at_160_columns_and_stacked_rows_at_80() -> None:
    wide = capture(summary_table(TITLE, ROWS, dry_run=True), 160)
    assert lines_with(wide, LONG_NAME, "3,893", "107", "applied")  # one row each, as before
    narrow = capture(summary_table(TITLE, ROWS, dry_run=True), 80)
    assert lines_with(narrow, LONG_NAME, "applied")
    assert lines_with(narrow, "would update", "3,893")
    assert lines_with(narrow, "0002_normalise_age", "interrupted")


def test_a_rollback_table_without_a_label_column_stacks_whole() -> None:
    columns = ("restored", "recreated", "deleted", "unchanged", "conflicts", "verified", "mismatched")
    rows = [["1,234,567", "0", "0", "0", "0", "1,234,567", "0"]]
    for width in (60, 160):
        text = capture(CountsTable(columns, rows, labelled=False), width)
        assert "…" not in text and all(column in text for column in columns), text
        assert text.count("1,234,567") == 2


# --------------------------------------------------------------------------- labels
def test_a_warning_line_has_one_label() -> None:
    assert str(warning_line(Warned("careful"))) == "warning: careful"
    line = str(warning_line(Warned("0001: 3 documents failed", severity="error")))
    assert line == "error: 0001: 3 documents failed"
    assert Warned("x", severity="critical").labelled == "critical: x"


# --------------------------------------------------------------------------- the CLI on the memory store
@pytest.fixture(autouse=True)
def _signal_handlers_kept() -> Iterator[None]:
    """The commands install their SIGINT/SIGTERM handlers; the test process gets its own back."""
    kept = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, kept[0])
    signal.signal(signal.SIGTERM, kept[1])


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    (tmp_path / "migrations").mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", tmp_path / "migrations")
    (tmp_path / "docshift.toml").write_text('migrations_dir = "migrations"\nruns_dir = ".docshift/runs"\n')
    store = MemoryStore("memory-terminal")
    writes = [Write.set(f"users/u{i:03d}", {"full_name": f"Ada L{i}", "email": f"a{i}@x"}) for i in range(30)]
    assert all(result.ok for result in store.commit(writes))
    store.close = lambda: None  # type: ignore[method-assign]  # one store for every invocation
    monkeypatch.setattr("docshift.cli.run.open_store", lambda config: store)
    monkeypatch.setattr("docshift.cli.rollback.open_store", lambda config: store)
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("DOCSHIFT_") or n == "FIRESTORE_EMULATOR_HOST"]:
        monkeypatch.delenv(name)
    return store


@dataclass(frozen=True)
class Invoked:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(*args: str) -> Invoked:
    """``docshift ARGS`` as the entry point runs it (errors printed and mapped to exit codes)."""
    with CliRunner().isolation(env={"DOCSHIFT_PROJECT": "memory-terminal"}) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        return Invoked(code, out.getvalue().decode(), err.getvalue().decode())


def test_rollback_quiet_prints_its_summary_but_no_diffs(project: MemoryStore) -> None:
    assert invoke("run", "--execute", "--quiet", "--yes").exit_code == 0
    [run_folder] = Path(".docshift/runs").iterdir()
    loud = invoke("rollback", run_folder.name)
    assert loud.exit_code == 0, loud.output
    assert "- first_name: 'Ada'" in loud.stdout  # the dry run's diffs
    quiet = invoke("rollback", run_folder.name, "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert "first_name" not in quiet.stdout and "update users/" not in quiet.stdout, quiet.stdout
    assert "undone by" in quiet.stdout and "nothing was written" in quiet.stdout


def test_a_failing_migration_says_error_once_not_warning_error(project: MemoryStore) -> None:
    (Path("migrations") / "0001_split_full_name.py").write_text(
        'description = "returns a list"\ncollection = "users"\n\n\ndef up(doc):\n    return [1]\n'
    )
    result = invoke("run", "--execute", "--yes")
    assert result.exit_code == 12, result.output
    assert "warning: error:" not in result.stderr and "warning: critical:" not in result.stderr
    assert re.search(r"^error: 0001_split_full_name: 30 documents failed", result.stderr, re.M), result.stderr


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("run", "--only", "0001", "--to", "0001"), "--only runs one migration and --to"),
        (("run", "--resume", "--to", "0001"), "--resume continues a run's own migrations; --to"),
        (("run", "--resume", "--only", "0001"), "--resume continues a run's own migrations; --only"),
        (("run", "--force"), "--force only applies to --resume"),
        (("run", "--execute", "--pause-between-stages"), "--pause-between-stages needs --stages"),
        (("run", "--auto-rollback"), "--auto-rollback rolls back what a run wrote; a dry run"),
        (("rollback", "--resume", "--to", "0001"), "--resume continues a stopped rollback; --to"),
        (("rollback", "--resume", "--steps", "1"), "--resume continues a stopped rollback; --steps"),
    ],
)
def test_contradictory_flags_are_refused_with_a_hint_and_exit_2(
    project: MemoryStore, args: tuple[str, ...], refused: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith(f"error: {refused}") and lines[-1].startswith("  hint: "), result.stderr
    assert not Path(".docshift/runs").exists()  # refused before anything ran


def test_resuming_a_run_as_a_rollback_is_refused_with_a_hint(project: MemoryStore) -> None:
    assert invoke("run", "--execute", "--quiet", "--yes").exit_code == 0
    [run_folder] = Path(".docshift/runs").iterdir()
    result = invoke("rollback", "--yes", "--resume", run_folder.name)  # RUN_ID taken as --resume's value
    assert result.exit_code == 2, result.output
    assert f"error: {run_folder.name} is a run, not a rollback" in result.stderr
    assert f"docshift run --execute --resume {run_folder.name}" in result.stderr


def test_a_ctrl_c_before_the_run_started_says_interrupted_not_aborted_at_a_prompt(
    project: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(config: Any) -> MemoryStore:
        raise KeyboardInterrupt  # a Ctrl-C while the store is being opened

    monkeypatch.setattr("docshift.cli.run.open_store", interrupted)
    result = invoke("run", "--execute", "--yes")
    assert result.exit_code == 10, result.output
    assert "error: interrupted" in result.stderr and "prompt" not in result.stderr, result.stderr
    assert "hint: `docshift runs` shows whether a run was left unfinished" in result.stderr


def test_a_result_is_found_for_a_built_in_exception_too() -> None:
    results: ErrorResults[str] = ErrorResults()
    builtin, ours = KeyError("plan"), click.ClickException("x")
    results[builtin] = "folder a"  # a built-in exception takes no weak reference
    results[ours] = "folder b"
    assert results.get(builtin) == "folder a" and results.get(ours) == "folder b"
    assert results.get(KeyError("plan")) is None and results.get(ValueError()) is None


# --------------------------------------------------------------------------- --help
def test_the_command_list_fits_80_columns_without_cutting_a_description() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    listed = result.output.split("Commands:")[1].splitlines()
    rows = [line for line in listed if line.strip()]
    names = cli.list_commands(click.Context(cli))
    assert len(rows) == len(names) == 25
    for row in rows:
        assert len(row) <= 80 and not row.rstrip().endswith("..."), row
    for name in names:
        command = cli.get_command(click.Context(cli), name)
        assert command is not None and command.short_help, name
        assert command.short_help in " ".join(result.output.split()), name  # listed as it says
        first = (command.help or "").split("\n\n")[0].replace("\n", " ").strip()
        own = CliRunner().invoke(cli, [name, "--help"], terminal_width=80).output
        assert " ".join(first.split()[:6]) in " ".join(own.split()), name  # its whole help there

"""``docshift status``, ``runs`` and ``history`` laid out whole at 80 and 160 columns (rich's
recording console): a table where every cell fits, otherwise each row stacked, with no id, state,
time or count cut; a stopped run's history says what landed after its cursor."""

from __future__ import annotations

from pathlib import Path

import pytest

from docshift.cli.history import history_table
from docshift.cli.migrations import status_table
from docshift.cli.operate import runs_table
from docshift.commands.history import history
from docshift.commands.operate import list_runs
from docshift.commands.run import RunOptions, run
from docshift.commands.status import status
from docshift.config import Config, EngineConfig, StoreConfig
from docshift.history import History
from docshift.testing import MemoryStore
from tests.unit.engine_support import seed
from tests.unit.terminal_support import capture

LONG = "0001_split_the_full_name_of_every_user_into_first_and_last_name"
DESCRIPTION = "Split the full name of every user into a first and a last name, keeping the original"
MIGRATION = f'''"""{DESCRIPTION}."""
description = "{DESCRIPTION}"
collection = "users"


def up(doc):
    return {{**doc.data, "split": True}}
'''
SECOND = '''"""Tag every user."""
description = "tag every user"
collection = "users"


def up(doc):
    return {**doc.data, "tag": 1}
'''


@pytest.fixture
def ran(tmp_path: Path) -> tuple[Config, MemoryStore, str]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / f"{LONG}.py").write_text(MIGRATION, encoding="utf-8")
    (migrations / "0002_tag.py").write_text(SECOND, encoding="utf-8")
    config = Config(
        store=StoreConfig(project="memory"),
        engine=EngineConfig(batch_size=50),
        migrations_dir=migrations,
        runs_dir=tmp_path / "runs",
    )
    store = MemoryStore()
    seed(store, 1234, make=lambda i: {"n": i})
    result = run(config, RunOptions(execute=True, to="0001"), store=store)
    return config, store, result.run_id


def whole(text: str, width: int, *words: str) -> None:
    assert "…" not in text, text
    assert all(len(line.rstrip()) <= width for line in text.splitlines()), text
    for word in words:
        assert word in text, (word, text)


@pytest.mark.parametrize("width", [80, 160])
def test_status_shows_ids_states_times_users_and_counts_whole(
    ran: tuple[Config, MemoryStore, str], width: int
) -> None:
    config, store, _ = ran
    report = status(config, store=store)
    record = History(store, config.store.state_prefix).get("0001")
    assert record is not None
    text = capture(status_table(report), width)
    whole(text, width, "0001", "0002", "applied", "pending", record.user, "updated 1,234"[:-6])
    assert "1234" in text.replace(",", "")
    assert " ".join(DESCRIPTION.split()) in " ".join(text.split())  # wrapped at spaces, not cut
    if width == 160:  # a table: one row per migration
        assert [
            line for line in text.splitlines() if "0001" in line and "applied" in line and record.user in line
        ]


@pytest.mark.parametrize("width", [80, 160])
def test_runs_shows_run_ids_states_and_counts_whole(ran: tuple[Config, MemoryStore, str], width: int) -> None:
    config, store, run_id = ran
    run(config, RunOptions(run_id="20261202T031041-dryrun"), store=store)  # a dry run of 0002
    runs = list_runs(config)
    text = capture(runs_table(runs, f"runs in {config.runs_dir}"), width)
    whole(text, width, run_id, "20261202T031041-dryrun", "finished", "dry run", "1,234")
    assert "migrations: 0002" in text or "0002" in text.split(run_id)[0]  # the dry run's migration
    if width == 160:
        assert [
            line for line in text.splitlines() if run_id in line and "finished" in line and "1,234" in line
        ]
    else:  # stacked: the run's id and state on one line, its counts under it
        assert [line for line in text.splitlines() if run_id in line and "finished" in line]
        assert [line for line in text.splitlines() if "updated" in line and "1,234" in line]


@pytest.mark.parametrize("width", [80, 160])
def test_history_shows_times_events_runs_and_checksums_whole(
    ran: tuple[Config, MemoryStore, str], width: int
) -> None:
    config, store, run_id = ran
    [item] = history(config, "0001", store=store).migrations
    text = capture(history_table(item), width)
    checksum = item.events[0].checksum[:12]
    whole(text, width, run_id, "started", "applied", checksum, item.events[0].user)
    assert "updated 1,234" in " ".join(text.split())


def test_the_tables_show_words_as_given_not_as_markup(ran: tuple[Config, MemoryStore, str]) -> None:
    config, store, _ = ran
    (config.migrations_dir / "0003_brackets.py").write_text(
        SECOND.replace("tag every user", "keep [bold]this[/bold] as typed"), encoding="utf-8"
    )
    for width in (80, 160):
        assert "keep [bold]this[/bold] as typed" in " ".join(
            capture(status_table(status(config, store=store)), width).split()
        )

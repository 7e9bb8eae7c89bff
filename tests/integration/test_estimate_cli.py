"""``--estimate`` as a real subprocess against the emulator: it writes nothing (the store and the
run folder are as they were), its figures are the data's, and the dry run's summary says what the
execute will bill."""

from __future__ import annotations

import json
import re
from pathlib import Path

from docshift.commands.estimate import count_reads
from docshift.store import RetryingStore
from tests.integration.run_support import docshift, export_all, project_folder, seed_users
from tests.integration.test_run_cli import summary


def _runs(folder: Path) -> list[str]:
    runs = folder / ".docshift" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def test_run_estimate_writes_nothing_and_the_dry_run_summary_has_the_estimate(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 300)
    folder = project_folder(tmp_path)
    before = export_all(firestore_store)
    shown = docshift(folder, cli_env, "run", "--estimate")
    assert shown.returncode == 0, shown.stderr
    assert "estimate: docshift run" in shown.stdout and "price:" in shown.stdout
    assert "index entries: unknown" in shown.stdout
    assert "up() on all 300 documents (exact)" in shown.stdout
    as_json = docshift(folder, cli_env, "run", "--estimate", "--json")
    assert as_json.returncode == 0, as_json.stderr
    figures = json.loads(as_json.stdout)
    assert figures["documents"] == 600 and figures["index_entries"] == "unknown"  # two migrations
    assert figures["reads"] >= 600 + 2 * count_reads(300)
    # Nothing written: no document, no history, no lease, no run folder.
    assert export_all(firestore_store) == before
    assert not [name for name in firestore_store.list_collections() if name.startswith("_docshift")]
    assert _runs(folder) == []
    dry = docshift(folder, cli_env, "run")
    assert dry.returncode == 0, dry.stderr
    line = next(x for x in dry.stdout.splitlines() if x.startswith("estimate for --execute:"))
    writes = int(re.search(r"([\d,]+) writes", line).group(1).replace(",", ""))  # type: ignore[union-attr]
    rows = summary(dry.stdout)
    would = sum(row["updated"] + row["created"] for row in rows.values())
    # Each history record is written when its migration starts, at its two checkpoints (before the
    # first write and at the end) and when it finishes; the lease once.
    assert would > 0 and writes == would + 4 * len(rows) + 1
    # --json: the same estimate, as the last JSON line.
    dry_json = docshift(folder, cli_env, "run", "--json")
    assert dry_json.returncode == 0, dry_json.stderr
    last = json.loads(dry_json.stdout.splitlines()[-1])
    assert last["event"] == "estimate" and last["command"] == "run" and last["writes"] == writes


def test_a_bad_price_is_refused_with_a_hint(cli_env: dict[str, str], tmp_path: Path) -> None:
    folder = project_folder(tmp_path, config="price_reads_per_100k = -0.5\n")
    refused = docshift(folder, cli_env, "run", "--estimate")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert any("price_reads_per_100k" in x and "must not be negative" in x for x in lines), refused.stderr
    assert any(x.strip().startswith("hint:") and "100,000 document reads" in x for x in lines), refused.stderr
    assert "Traceback" not in refused.stderr


def test_backup_and_validate_estimates_write_nothing(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 120)
    folder = project_folder(tmp_path)
    before = export_all(firestore_store)
    backup = docshift(folder, cli_env, "backup", "users", "--out", "b", "--estimate", "--json")
    assert backup.returncode == 0, backup.stderr
    assert json.loads(backup.stdout)["documents"] == 120 and not (folder / "b").exists()
    validate = docshift(folder, cli_env, "validate", "0001", "--before", "--estimate", "--json")
    assert validate.returncode == 0, validate.stderr
    assert json.loads(validate.stdout)["documents"] == 120
    assert export_all(firestore_store) == before and _runs(folder) == []


def test_a_rollback_estimate_counts_the_before_images_and_writes_nothing(
    firestore_store: RetryingStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 80)
    folder = project_folder(tmp_path, files=("0001_split_full_name.py",))
    executed = docshift(folder, cli_env, "run", "--execute", "--yes", "--quiet")
    assert executed.returncode == 0, executed.stderr
    run_id = _runs(folder)[0]
    after, runs = export_all(firestore_store), _runs(folder)
    shown = docshift(folder, cli_env, "rollback", run_id, "--estimate", "--json")
    assert shown.returncode == 0, shown.stderr
    figures = json.loads(shown.stdout)
    changed = sum(1 for line in figures["lines"] if "before-image" in line["item"])
    assert changed == 1 and figures["documents"] > 0
    assert figures["writes"] + figures["deletes"] >= figures["documents"]  # one undo write each, or none
    assert export_all(firestore_store) == after and _runs(folder) == runs  # no rollback folder, no lease

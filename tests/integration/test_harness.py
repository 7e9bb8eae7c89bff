"""The test harness itself: the runs emulator tests make in this process are judged by their own
behaviour, not by the state the rest of the suite leaves the test runner in."""

from __future__ import annotations

import textwrap

from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, LimitsConfig
from docshift.store import Store, Write
from docshift.testing import RecordingHooks

TOUCH = """
collection = "users"

def up(doc):
    return {**doc.data, "touched": True}
"""


def test_an_in_process_run_is_not_warned_about_the_test_runners_memory(
    emulator_config: Config, firestore_store: Store
) -> None:
    """Late in the suite the runner holds ~712 MiB (the emulator client, the Beam tests); a run in
    this process under the 512 MiB default would warn that memory is above its soft limit, and the
    tests that count warnings would fail on one that is not theirs (measured: 9 unit tests and one
    emulator test did)."""
    ballast = b"x" * ((LimitsConfig().memory_soft_limit_mb + 200) << 20)
    emulator_config.migrations_dir.mkdir(parents=True)
    (emulator_config.migrations_dir / "0001_touch.py").write_text(textwrap.dedent(TOUCH))
    assert all(
        result.ok for result in firestore_store.commit([Write.set(f"users/u{i}", {"n": i}) for i in range(5)])
    )
    hooks = RecordingHooks()
    report = run_migrations(emulator_config, RunOptions(execute=True), store=firestore_store, hooks=hooks)
    assert report.outcomes[0].result.counters["updated"] == 5
    assert hooks.warnings() == []
    del ballast  # held until the run had ended

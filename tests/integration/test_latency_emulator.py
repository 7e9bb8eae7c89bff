"""A run through the latency proxy (the emulator 20 ms away each way, as a distant Firestore is):
the whole CLI, dry run and execute, migrates every document exactly as a direct run would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from docshift.store import Document, RetryingStore
from tests.integration.run_support import (
    apply_migrations,
    data_differences,
    docshift,
    examples,
    export,
    project_folder,
    seed_users,
)
from tests.latency_support import latency_proxy


@pytest.fixture
def distant_env(emulator_host: str, cli_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The CLI's environment with the emulator reached through the proxy, 20 ms each way."""
    proxy = latency_proxy().LatencyProxy(emulator_host, 0.02).start()
    try:
        yield {**cli_env, "FIRESTORE_EMULATOR_HOST": proxy.address}
    finally:
        assert proxy.forwarded > 0  # the run did go through it
        proxy.stop()


def test_a_run_through_a_distant_store_migrates_everything_exactly(
    firestore_store: RetryingStore, distant_env: dict[str, str], tmp_path: Path
) -> None:
    seed_users(firestore_store, 1200)
    before: dict[str, Document] = export(firestore_store, ["users"])
    folder = project_folder(tmp_path / "project", "batch_size = 50\nmax_batch_size = 50\n")
    dry = docshift(folder, distant_env, "run", "--quiet")
    assert dry.returncode == 0, dry.stderr
    assert export(firestore_store, ["users"]) == before  # a dry run writes nothing
    done = docshift(folder, distant_env, "run", "--execute", "--quiet")
    assert done.returncode == 0, done.stderr
    after = export(firestore_store, ["users"])
    assert data_differences(after, apply_migrations(before, examples())) == []
    again = docshift(folder, distant_env, "run", "--execute", "--quiet")
    assert again.returncode == 0, again.stderr
    assert export(firestore_store, ["users"]) == after  # nothing left to do

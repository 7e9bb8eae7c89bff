"""Test harness: one real Firestore emulator per session, a fresh project id per test.

Integration tests FAIL (as fixture errors) when no emulator can be started: a green run must mean
the real store was exercised.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from docshift.config import Config, StoreConfig
from docshift.emulator import Emulator, find_emulator
from docshift.store import RetryingStore, RetryPolicy, Store, open_store
from docshift.testing import MemoryStore

FAST_RETRY = RetryPolicy(attempts=6, initial_wait=0.01, max_wait=0.05)


@pytest.fixture(scope="session")
def emulator_host() -> Iterator[str]:
    location = find_emulator()
    if location.host:
        yield location.host
        return
    with Emulator(location) as emulator:
        assert emulator.host is not None
        yield emulator.host


@pytest.fixture
def project_id() -> str:
    return f"demo-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def emulator_config(emulator_host: str, project_id: str, tmp_path: Path) -> Config:
    return Config(
        store=StoreConfig(project=project_id, emulator_host=emulator_host),
        migrations_dir=tmp_path / "migrations",
        runs_dir=tmp_path / "runs",
    )


@pytest.fixture
def firestore_store(emulator_config: Config) -> Iterator[RetryingStore]:
    store = open_store(emulator_config, retry=FAST_RETRY)
    yield store
    store.close()


@pytest.fixture
def memory_store() -> RetryingStore:
    return RetryingStore(MemoryStore(), FAST_RETRY)


@pytest.fixture(params=["memory", "firestore"])
def any_store(request: pytest.FixtureRequest) -> Store:
    """The same behavioural test, against the in-memory store and against the real emulator."""
    store: Store = request.getfixturevalue(f"{request.param}_store")
    return store


@pytest.fixture
def cli_env(emulator_host: str, project_id: str) -> dict[str, str]:
    """Environment for running the docshift CLI as a subprocess against this test's project."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCSHIFT_")}
    env.update(FIRESTORE_EMULATOR_HOST=emulator_host, DOCSHIFT_PROJECT=project_id)
    return env

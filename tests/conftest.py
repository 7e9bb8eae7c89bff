"""Test harness: one real Firestore emulator per session, a fresh project id per test.

Integration tests FAIL (as fixture errors) when no emulator can be started: a green run must mean
the real store was exercised.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from docshift.config import Config, LimitsConfig, StoreConfig
from docshift.emulator import running_emulator
from docshift.store import RetryingStore, RetryPolicy, Store, open_store
from docshift.testing import MemoryStore

FAST_RETRY = RetryPolicy(attempts=6, initial_wait=0.01, max_wait=0.05)

IN_PROCESS_LIMITS = LimitsConfig(memory_soft_limit_mb=4096, memory_hard_limit_mb=8192)
"""Memory limits for the runs the emulator tests make in this process. A run's memory guard reads
the RSS of the process it runs in; here that is the test runner's, which the emulator client and
the Beam tests grow past the 512 MiB default (measured: ~712 MiB late in the suite). Under the
defaults a run would warn of, or stop at, memory that is not its own. The tests of the guard set
their own limits; the CLI's runs are processes of their own and keep the defaults."""

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # Started as a background job (`make test &`), the suite inherits SIGINT ignored, and so would
    # every docshift process the tests start: the tests that stop one with Ctrl-C would then fail.
    # A handled signal is reset to its default in a child, so the children get Ctrl-C back.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def emulator_host() -> Iterator[str]:
    with running_emulator() as host:
        yield host


@pytest.fixture
def project_id() -> str:
    return f"demo-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def emulator_config(emulator_host: str, project_id: str, tmp_path: Path) -> Config:
    return Config(
        store=StoreConfig(project=project_id, emulator_host=emulator_host),
        limits=IN_PROCESS_LIMITS,
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The in-memory unit tests first: runs in them guard the memory of this very process, which
    the emulator tests grow (Apache Beam's in-process runner alone holds hundreds of MiB), so run
    after those they would see a soft-limit warning that is not theirs."""
    items.sort(key=lambda item: 0 if "tests/unit/" in item.path.as_posix() else 1)

"""The lease lock against the real emulator, with real OS processes where it matters."""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from docshift.commands.run import RunOptions, run_migrations
from docshift.config import Config, StoreConfig
from docshift.errors import ExitCode, LockedError
from docshift.history import History, MigrationStatus, current_user
from docshift.lock import Lease, LeaseLock, force_unlock, lease_path, read_lease
from docshift.store import DelegatingStore, Document, Query, Store, Write, open_store
from docshift.testing import RecordingStore
from docshift.values import Timestamp
from tests.unit.engine_support import seed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "migrations"

PREFIX = "_docshift"
FREE_ROUNDS = 20
EXPIRED_ROUNDS = 10

HOLDER = """
import sys, time
from docshift.config import Config, StoreConfig
from docshift.lock import LeaseLock
from docshift.store import open_store

host, project, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = open_store(Config(store=StoreConfig(project=project, emulator_host=host)))
with LeaseLock(store, "_docshift", run_id="holder", ttl_seconds=ttl, heartbeat_seconds=ttl / 4):
    print("acquired", flush=True)
    time.sleep(600)
"""


def _seconds_ago(seconds: float) -> Timestamp:
    return Timestamp.from_datetime(Timestamp.now().to_datetime() - timedelta(seconds=seconds))


def _plant_expired_lease(store: Store, run_id: str = "dead-run") -> None:
    data = {
        "owner": "ghost@nowhere",
        "pid": 999999,
        "run_id": run_id,
        "acquired_at": _seconds_ago(120),
        "expires_at": _seconds_ago(60),
    }
    [result] = store.commit([Write.set(lease_path(PREFIX), data)])
    assert result.ok, result.error


def _racer(host: str, project: str, name: str, rounds: int, barrier: Any, results: Any) -> None:
    """One racing process: each round, start together with the other, try once, report, release."""
    store = open_store(Config(store=StoreConfig(project=project, emulator_host=host)))
    try:
        for round_no in range(rounds):
            lock = LeaseLock(store, PREFIX, run_id=f"{name}-{round_no}", ttl_seconds=30, heartbeat_seconds=10)
            barrier.wait(timeout=60)  # go!
            try:
                lock.acquire()
                outcome = "won"
            except LockedError as exc:
                outcome = f"locked: {exc.message}"
            except Exception as exc:
                outcome = f"error: {exc!r}"
            results.put((round_no, name, os.getpid(), outcome))
            barrier.wait(timeout=60)  # the parent has inspected the lease
            lock.release()
            barrier.wait(timeout=60)  # released; the parent prepares the next round
    finally:
        store.close()


def test_two_processes_race_and_exactly_one_wins_every_round(emulator_host: str, project_id: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    results = context.Queue()
    rounds = FREE_ROUNDS + EXPIRED_ROUNDS
    racers = [
        context.Process(target=_racer, args=(emulator_host, project_id, name, rounds, barrier, results))
        for name in ("left", "right")
    ]
    for racer in racers:
        racer.start()
    store = open_store(Config(store=StoreConfig(project=project_id, emulator_host=emulator_host)))
    winners: list[str] = []
    try:
        for round_no in range(rounds):
            if round_no >= FREE_ROUNDS:
                _plant_expired_lease(store)  # both race to take over the same expired lease
            barrier.wait(timeout=120)
            outcomes = [results.get(timeout=60) for _ in racers]
            won = [o for o in outcomes if o[3] == "won"]
            lost = [o for o in outcomes if o[3] != "won"]
            assert len(won) == 1, f"round {round_no}: {outcomes}"
            assert lost[0][3].startswith("locked: locked by "), f"round {round_no}: {outcomes}"
            _, name, pid, _ = won[0]
            lease = read_lease(store, PREFIX)
            assert lease is not None and lease.run_id == f"{name}-{round_no}" and lease.pid == pid
            winners.append(name)
            barrier.wait(timeout=60)
            barrier.wait(timeout=60)
            assert read_lease(store, PREFIX) is None, f"round {round_no}: the winner did not release"
    except BaseException:
        barrier.abort()
        raise
    finally:
        for racer in racers:
            racer.join(timeout=30)
            if racer.is_alive():
                racer.terminate()
                racer.join()
        store.close()
    assert len(winners) == rounds
    assert [racer.exitcode for racer in racers] == [0, 0]


def test_a_held_lease_fails_fast_with_owner_since_and_expiry(firestore_store: Store) -> None:
    first = LeaseLock(firestore_store, PREFIX, run_id="first")
    lease = first.acquire()
    try:
        assert lease.owner == current_user() and lease.pid == os.getpid()
        assert lease.expires_at > lease.acquired_at and lease.update_time is not None
        started = time.monotonic()
        with pytest.raises(LockedError) as caught:
            LeaseLock(firestore_store, PREFIX, run_id="second").acquire()
        assert time.monotonic() - started < 5
        error = caught.value
        assert error.exit_code == ExitCode.LOCKED == 6
        assert error.message.startswith(f"locked by {current_user()} ")
        assert f"since {lease.acquired_at}, expires at {lease.expires_at}" in error.message
        assert error.hint is not None and "docshift unlock --force" in error.hint
    finally:
        first.release()
    assert read_lease(firestore_store, PREFIX) is None


def test_an_expired_lease_of_a_killed_process_is_taken_over(
    emulator_host: str, project_id: str, firestore_store: Store
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, emulator_host, project_id, "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "acquired"
        holder.send_signal(signal.SIGKILL)  # no chance to release
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    stale = read_lease(firestore_store, PREFIX)
    assert stale is not None and stale.run_id == "holder"
    if not stale.expired():
        with pytest.raises(LockedError, match="locked by"):
            LeaseLock(firestore_store, PREFIX, run_id="taker").acquire()
    remaining = (stale.expires_at.to_datetime() - Timestamp.now().to_datetime()).total_seconds()
    time.sleep(max(0.0, remaining) + 0.1)
    taker = LeaseLock(firestore_store, PREFIX, run_id="taker")
    lease = taker.acquire()
    try:
        assert lease.run_id == "taker"
        current = read_lease(firestore_store, PREFIX)
        assert current is not None and current.run_id == "taker" and not current.expired()
    finally:
        taker.release()
    assert read_lease(firestore_store, PREFIX) is None


def test_an_unreadable_lease_document_counts_as_expired(firestore_store: Store) -> None:
    [result] = firestore_store.commit([Write.set(lease_path(PREFIX), {"garbage": True})])
    assert result.ok
    with LeaseLock(firestore_store, PREFIX, run_id="fixer") as lease:
        assert lease.run_id == "fixer"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_lease_is_released_when_the_holder_is_terminated(
    emulator_host: str, project_id: str, firestore_store: Store, signum: signal.Signals
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, emulator_host, project_id, "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "acquired"
        held = read_lease(firestore_store, PREFIX)
        assert held is not None and held.run_id == "holder" and held.pid == holder.pid
        holder.send_signal(signum)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode != -signal.SIGTERM, "SIGTERM must be handled, not kill the process outright"
    assert read_lease(firestore_store, PREFIX) is None


def test_the_lease_is_released_on_errors_and_release_is_idempotent(firestore_store: Store) -> None:
    lock = LeaseLock(firestore_store, PREFIX, run_id="failing")
    with pytest.raises(RuntimeError, match="migration blew up"), lock:
        assert read_lease(firestore_store, PREFIX) is not None
        raise RuntimeError("migration blew up")
    assert read_lease(firestore_store, PREFIX) is None
    lock.release()
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)  # handler restored


def test_heartbeat_extends_the_expiry_while_the_run_lives(firestore_store: Store) -> None:
    lock = LeaseLock(firestore_store, PREFIX, run_id="beating", ttl_seconds=1.5, heartbeat_seconds=0.2)
    first = lock.acquire()
    try:
        time.sleep(2.0)  # longer than the TTL: only the heartbeat keeps it alive
        current = read_lease(firestore_store, PREFIX)
        assert current is not None and current.run_id == "beating"
        assert current.expires_at > first.expires_at and not current.expired()
        assert current.update_time != first.update_time
        assert current.acquired_at == first.acquired_at
        assert not lock.lost.is_set()
        with pytest.raises(LockedError):
            LeaseLock(firestore_store, PREFIX, run_id="other").acquire()
    finally:
        lock.release()
    assert read_lease(firestore_store, PREFIX) is None


def test_a_lease_removed_under_a_live_run_is_noticed_and_not_deleted_on_release(
    firestore_store: Store,
) -> None:
    victim = LeaseLock(firestore_store, PREFIX, run_id="victim", ttl_seconds=5, heartbeat_seconds=0.1)
    shown = victim.acquire()
    removed = force_unlock(firestore_store, PREFIX, expected=shown)  # heartbeats in between are fine
    assert removed is not None and removed.run_id == "victim"
    newcomer = LeaseLock(firestore_store, PREFIX, run_id="newcomer")
    newcomer.acquire()
    try:
        assert victim.lost.wait(timeout=5), "the heartbeat must notice the lease is gone"
        victim.release()  # must not delete the newcomer's lease
        current = read_lease(firestore_store, PREFIX)
        assert current is not None and current.run_id == "newcomer"
    finally:
        newcomer.release()


def test_force_unlock_refuses_when_the_lease_changed_hands(firestore_store: Store) -> None:
    _plant_expired_lease(firestore_store, "old-run")
    shown = read_lease(firestore_store, PREFIX)
    assert isinstance(shown, Lease)
    with LeaseLock(firestore_store, PREFIX, run_id="new-run"):
        with pytest.raises(LockedError, match="changed hands"):
            force_unlock(firestore_store, PREFIX, expected=shown)
        assert read_lease(firestore_store, PREFIX) is not None
    assert force_unlock(firestore_store, PREFIX) is None


def test_concurrent_acquires_in_threads_also_have_one_winner(firestore_store: Store) -> None:
    """Cheap extra pressure on the same path the process race covers."""
    outcomes: queue.Queue[str] = queue.Queue()
    go = threading.Barrier(8)
    locks = [LeaseLock(firestore_store, PREFIX, run_id=f"t{i}") for i in range(8)]

    def attempt(lock: LeaseLock) -> None:
        go.wait()
        try:
            lock.acquire()
            outcomes.put("won")
        except LockedError:
            outcomes.put("locked")

    threads = [threading.Thread(target=attempt, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [outcomes.get() for _ in threads]
    assert results.count("won") == 1
    for lock in locks:
        lock.release()
    assert read_lease(firestore_store, PREFIX) is None


class _AnotherRunFinishesFirst(DelegatingStore):
    """Once this run has read the history, its first read of the lease document lets another run
    (``other``) take the free lease, apply the same pending migration and release the lease."""

    def __init__(self, inner: Store, other: Callable[[], None]) -> None:
        super().__init__(inner)
        self.other = other
        self.history_read = threading.Event()
        self.other_went_after_the_history_read: list[bool] = []

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        if query.collection != f"{PREFIX}_history":
            return self.inner.stream(query, read_time=read_time)
        documents = list(self.inner.stream(query, read_time=read_time))
        self.history_read.set()
        return iter(documents)

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        if lease_path(PREFIX) in paths and not self.other_went_after_the_history_read:
            self.other_went_after_the_history_read.append(self.history_read.wait(60))
            self.other()
        return self.inner.get_many(paths, read_time=read_time)


def test_a_run_whose_migration_another_run_applied_while_it_took_the_lease_writes_nothing(
    emulator_config: Config, firestore_store: Store
) -> None:
    emulator_config.migrations_dir.mkdir()
    shutil.copy(EXAMPLES / "0001_split_full_name.py", emulator_config.migrations_dir)
    seed(firestore_store, 30)
    others: list[str] = []

    def other_run() -> None:
        report = run_migrations(
            emulator_config, RunOptions(execute=True, run_id="other-run"), store=firestore_store
        )
        others.extend(o.migration.id for o in report.outcomes)

    recorded = RecordingStore(firestore_store)
    with pytest.raises(LockedError) as refused:
        run_migrations(
            emulator_config,
            RunOptions(execute=True, run_id="late-run"),
            store=_AnotherRunFinishesFirst(recorded, other_run),
        )
    assert others == ["0001"]
    assert refused.value.exit_code is ExitCode.LOCKED
    assert refused.value.hint == "another run changed the history while this one started; run again"
    assert {path for request in recorded.paths() for path in request} == {lease_path(PREFIX)}
    record = History(firestore_store, PREFIX).get("0001")
    assert record is not None and record.status is MigrationStatus.APPLIED and record.runs == ("other-run",)
    assert read_lease(firestore_store, PREFIX) is None

"""Lost commit replies against the real emulator: BatchWrite applied, then the connection reset.

The retry layer resends; the emulator refuses the resend by its preconditions (update time for
sets and deletes, existence for creates). The run must count its own writes as applied, journal
them, and a rollback through the same lossy connection must give back the exact pre-run data.
"""

from __future__ import annotations

import dataclasses

from docshift.config import Config
from docshift.errors import ConflictError
from docshift.store import RetryingStore, Write, write_landed
from docshift.testing import LostReplies
from tests.conftest import FAST_RETRY
from tests.integration.test_rollback import every_type
from tests.unit.test_lost_replies import check_lease_heartbeat, check_lossy_run, write_migrations


def test_the_emulator_refuses_resent_writes_and_the_store_shows_they_landed(
    firestore_store: RetryingStore,
) -> None:
    """What the engine relies on, as the emulator does it: each resent write is refused as a
    conflict, and reading back tells that the first send was applied."""
    inner = firestore_store.inner
    project = inner.info.project
    seeded = inner.commit([Write.set(f"users/u{i}", every_type(i, project)) for i in range(3)])
    assert all(r.ok for r in seeded)
    one, two, three = inner.get_many(["users/u0", "users/u1", "users/u2"])
    assert one is not None and two is not None and three is not None
    changed = {**two.data, "extra": {"deep": [1, 2]}}
    writes = [
        Write.set(one.path, {**one.data, "flag": True}, update_time=one.update_time),
        Write.update(two.path, {("extra",): {"deep": [1, 2]}}, update_time=two.update_time),
        Write.delete(three.path, update_time=three.update_time),
        Write.create("users/new", every_type(9, project)),
    ]
    results = RetryingStore(LostReplies(inner, every=2), FAST_RETRY).commit(writes)
    assert all(isinstance(r.error, ConflictError) and r.resent for r in results), results
    now = inner.get_many([w.path for w in writes])
    assert write_landed(writes[0], now[0])
    assert write_landed(writes[1], now[1], changed)
    assert write_landed(writes[2], now[2])
    assert write_landed(writes[3], now[3])


def test_a_run_whose_replies_are_lost_is_counted_truthfully_and_rolls_back_exactly(
    emulator_config: Config,
    firestore_store: RetryingStore,
) -> None:
    inner = firestore_store.inner
    project = inner.info.project
    writes = [Write.set(f"users/u{i:04d}", every_type(i, project)) for i in range(150)]
    for start in range(0, len(writes), 50):
        assert all(r.ok for r in inner.commit(writes[start : start + 50]))
    write_migrations(emulator_config.migrations_dir)
    config = dataclasses.replace(
        emulator_config, engine=dataclasses.replace(emulator_config.engine, batch_size=20, min_batch_size=10)
    )
    check_lossy_run(config, inner, 150)


def test_a_lease_heartbeat_whose_reply_was_lost_keeps_the_lease(firestore_store: RetryingStore) -> None:
    check_lease_heartbeat(firestore_store.inner)

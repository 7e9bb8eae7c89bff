"""Adaptive throttling and stream breaks over the real Firestore adapter: the rate-refusing and
stream-breaking wrappers sit over the emulator's store, under docshift's own retry layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from docshift.commands.run import RunOptions, run
from docshift.config import Config, EngineConfig
from docshift.engine.hooks import PassEnded
from docshift.store import RetryingStore, RetryPolicy
from docshift.testing import BreakingStreams, RecordingHooks
from tests.throttle_support import (
    accepted_rate,
    bumped,
    items,
    project,
    refused_share,
    seed_items,
    throttled_run,
)

COUNT = 3200
CHANGE_AT = 10.0
FALLS_TO = 60.0
TINY_BATCHES = EngineConfig(batch_size=5, min_batch_size=2, max_batch_size=10)
"""At 60 writes/s, requests of 10 at most: six a second, enough to judge a share of refusals."""


def test_a_run_over_firestore_converges_to_the_rate_it_accepts_and_loses_nothing(
    firestore_store: RetryingStore, emulator_config: Config, tmp_path: Path
) -> None:
    firestore = firestore_store.inner
    seed_items(firestore, COUNT)
    config = project(tmp_path, emulator_config, TINY_BATCHES)

    throttled = throttled_run(firestore, config, lambda now: 100.0 if now < CHANGE_AT else FALLS_TO)

    assert throttled.result.state == "finished", throttled.result.error
    [outcome] = throttled.result.run.outcomes
    assert outcome.result.counters["updated"] == COUNT and outcome.result.counters["failed"] == 0
    assert items(firestore) == bumped(COUNT)
    settled_from = CHANGE_AT + 15.0
    end = throttled.clock.now()
    assert end > settled_from + 10.0
    assert refused_share(throttled, settled_from) < 0.05
    assert accepted_rate(throttled, settled_from, end - 1.0) == pytest.approx(FALLS_TO, rel=0.10)
    # The settled rate shown is what the store accepted over the 2 s before its last refusal, and
    # the wrapper allows 1 s bursts: over the emulator's real timing it reads up to ~1/6 high (the
    # accepted rate above, over the whole settled period, is the convergence, within 10%).
    assert throttled.ended().write_rate == pytest.approx(FALLS_TO, rel=0.20)
    [row] = throttled.report_json()["migrations"]
    assert row["write_rate"] == throttled.ended().write_rate


def test_a_run_over_firestore_whose_every_stream_breaks_processes_each_document_once(
    firestore_store: RetryingStore, emulator_config: Config, tmp_path: Path
) -> None:
    firestore = firestore_store.inner
    seed_items(firestore, 400)
    breaking = BreakingStreams(firestore, every=30)
    store = RetryingStore(breaking, RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.002))
    hooks = RecordingHooks()

    result = run(project(tmp_path, emulator_config), RunOptions(execute=True), store=store, hooks=hooks)

    assert result.state == "finished", result.error
    [outcome] = result.run.outcomes
    counters = outcome.result.counters
    assert counters["read"] == counters["updated"] == 400 and counters["failed"] == 0
    assert items(firestore) == bumped(400)
    assert breaking.breaks >= 400 // 30 and store.stream_resumes >= breaking.breaks - 1
    assert store.retries == 0
    [ended] = hooks.of(PassEnded)
    assert ended.reason is None

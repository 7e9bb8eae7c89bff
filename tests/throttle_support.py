"""A migration run over a store that refuses writes above a rate (``RateLimitedStore``) or breaks
every stream (``BreakingStreams``), on a simulated clock: shared by the in-memory and emulator tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docshift.commands.run import RunOptions, RunResult, run
from docshift.config import Config, EngineConfig
from docshift.engine.controls import Controls
from docshift.engine.hooks import PassEnded
from docshift.engine.limits import RateLimiter
from docshift.store import Query, RetryingStore, RetryPolicy, Store, Write
from docshift.testing import RateLimitedStore, RecordingHooks, SimulatedClock

BUMP = '''
"""Add one to every item's n."""

collection = "items"


def up(doc):
    data = doc.data
    data["n"] += 1
    return data
'''
PATIENT = RetryPolicy(attempts=8, initial_wait=0.001, max_wait=0.002)
SMALL_BATCHES = EngineConfig(batch_size=10, min_batch_size=5, max_batch_size=20)


def seed_items(store: Store, count: int) -> None:
    for start in range(0, count, 500):
        writes = [Write.set(f"items/{i:06d}", {"n": i}) for i in range(start, min(count, start + 500))]
        assert all(result.ok for result in store.commit(writes))


def items(store: Store) -> dict[str, Any]:
    return {doc.path: doc.data for doc in store.stream(Query("items"))}


def bumped(count: int) -> dict[str, Any]:
    return {f"items/{i:06d}": {"n": i + 1} for i in range(count)}


def project(tmp_path: Path, base: Config | None = None, engine: EngineConfig = SMALL_BATCHES) -> Config:
    (tmp_path / "migrations").mkdir(exist_ok=True)
    (tmp_path / "migrations" / "0001_bump.py").write_text(BUMP)
    store_config = base.store if base is not None else Config().store
    return Config(
        store=store_config, engine=engine, migrations_dir=tmp_path / "migrations", runs_dir=tmp_path / "runs"
    )


@dataclass
class ThrottledRun:
    result: RunResult
    store: RateLimitedStore
    retrying: RetryingStore
    limiter: RateLimiter
    clock: SimulatedClock
    hooks: RecordingHooks

    def ended(self) -> PassEnded:
        [ended] = self.hooks.of(PassEnded)
        return ended

    def report_json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads((self.result.run.folder / "report.json").read_text())
        return body


def throttled_run(inner: Store, config: Config, rate: Callable[[float], float]) -> ThrottledRun:
    """Run the migration over ``inner`` behind a store accepting ``rate(now)`` writes per second."""
    clock = SimulatedClock()
    limited = RateLimitedStore(inner, rate, clock=clock.now)
    retrying = RetryingStore(limited, PATIENT)
    limiter = RateLimiter(adaptive=True, clock=clock.now, sleep=clock.sleep)
    hooks = RecordingHooks()
    result = run(config, RunOptions(execute=True), store=retrying, controls=Controls(limiter), hooks=hooks)
    return ThrottledRun(result, limited, retrying, limiter, clock, hooks)


def refused_share(run: ThrottledRun, since: float) -> float:
    judged = run.store.judged(since)
    return sum(1 for request in judged if not request.accepted) / max(len(judged), 1)


def accepted_rate(run: ThrottledRun, since: float, until: float) -> float:
    judged = [r for r in run.store.judged(since) if r.at < until]
    return sum(r.writes for r in judged if r.accepted) / (until - since)

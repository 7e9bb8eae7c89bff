"""Adaptive throttling and stream breaks, in memory: a store that refuses writes above a rate it
chooses (and changes mid-run) on a simulated clock, and one that breaks every stream."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from docshift.commands.run import RunOptions, result_of, run
from docshift.config import EngineConfig, LimitsConfig
from docshift.engine.controls import Controls
from docshift.engine.hooks import PassEnded
from docshift.engine.limits import AdaptiveRate, RateLimiter
from docshift.engine.writer import BatchWriter, Outgoing, WriteGuards
from docshift.errors import ConflictError, EmergencyStop, LoadRefused, PermanentError, TransientError
from docshift.store import DelegatingStore, Query, RetryingStore, RetryPolicy, Store, Write, WriteResult
from docshift.store.firestore import translate_error
from docshift.store.resilience import pacing
from docshift.testing import BreakingStreams, MemoryStore, RateLimitedStore, RecordingHooks, SimulatedClock
from tests.throttle_support import (
    accepted_rate,
    bumped,
    items,
    project,
    refused_share,
    seed_items,
    throttled_run,
)

QUICK = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.002)


# --------------------------------------------------------------------------- the adaptive rate


def test_the_rate_is_unset_until_the_store_refuses_and_then_starts_below_what_it_accepted() -> None:
    clock = SimulatedClock()
    rate = AdaptiveRate(clock.now)
    for _ in range(40):  # 100 writes every 0.1 s: 1,000 writes/s accepted
        clock.sleep(0.1)
        rate.accepted(100)
    assert rate.rate == 0.0
    assert rate.refused()
    assert rate.rate == pytest.approx(900.0, rel=0.06)
    assert rate.ceiling == pytest.approx(1000.0, rel=0.06)


def test_refusals_in_flight_together_lower_the_rate_once_per_epoch() -> None:
    clock = SimulatedClock()
    rate = AdaptiveRate(clock.now)
    rate.refused()
    first = rate.rate
    rate.refused()
    rate.refused()
    assert rate.rate == first and rate.refusals == 3
    clock.sleep(AdaptiveRate.EPOCH)
    rate.refused()
    assert rate.rate == pytest.approx(first * AdaptiveRate.DECREASE)


def test_the_rate_climbs_back_slowly_below_the_ceiling_and_probes_faster_above_it() -> None:
    clock = SimulatedClock()
    rate = AdaptiveRate(clock.now)
    rate.refused()  # nothing measured: from START
    start, ceiling = rate.rate, rate.ceiling
    clock.sleep(1.0)
    rate.accepted(10)
    assert rate.rate == pytest.approx(start + ceiling * AdaptiveRate.GROW)
    while rate.rate < ceiling:
        clock.sleep(1.0)
        rate.accepted(10)
    steps = []
    for _ in range(12):
        before = rate.rate
        clock.sleep(1.0)
        rate.accepted(10)
        steps.append(rate.rate - before)
    assert steps[-1] > 3 * steps[0]  # growth doubles every DOUBLE_EVERY seconds past the ceiling


def test_the_rate_never_falls_below_its_floor_and_says_when_it_cannot_fall_further() -> None:
    clock = SimulatedClock()
    rate = AdaptiveRate(clock.now, floor=50.0)
    lowered = []
    for _ in range(40):
        lowered.append(rate.refused())
        clock.sleep(AdaptiveRate.EPOCH)
    assert rate.rate == 50.0
    assert lowered[0] and not lowered[-1]


def test_the_rate_counts_how_often_in_a_row_it_came_down_with_nothing_accepted() -> None:
    clock = SimulatedClock()
    rate = AdaptiveRate(clock.now)
    rate.refused()
    rate.refused()  # the same epoch: in flight together, not a second lowering
    assert rate.refusing == 1
    clock.sleep(AdaptiveRate.EPOCH)
    rate.refused()
    assert rate.refusing == 2
    rate.accepted(10)  # the store took something: it is throttling, not refusing
    assert rate.refusing == 0
    clock.sleep(AdaptiveRate.EPOCH)
    rate.refused()
    assert rate.refusing == 1


def test_the_ramp_cap_and_adaptive_rate_combine_and_the_lowest_wins() -> None:
    clock = SimulatedClock()
    limiter = RateLimiter(0.0, ramp=True, adaptive=True, clock=clock.now, sleep=clock.sleep)
    assert (limiter.limit, limiter.ramp_limit, limiter.adaptive_limit) == (500.0, 500.0, 0.0)
    limiter.refused()  # nothing measured yet: the adaptive rate starts below the recommended 500
    assert limiter.adaptive_limit == pytest.approx(450.0)
    assert limiter.limit == limiter.adaptive_limit < limiter.ramp_limit
    for _ in range(60):  # accepted for a minute: the adaptive rate passes the ramp's level
        clock.sleep(1.0)
        limiter.accepted(10)
    assert limiter.adaptive_limit > 500.0
    assert limiter.limit == limiter.ramp_limit == 500.0
    limiter.set_cap(100.0)
    assert limiter.limit == 100.0


def test_a_refusal_drops_the_tokens_saved_at_the_old_rate() -> None:
    clock = SimulatedClock()
    limiter = RateLimiter(0.0, adaptive=True, clock=clock.now, sleep=clock.sleep)
    limiter.refused()  # 450/s
    clock.sleep(AdaptiveRate.EPOCH)  # a second's worth of tokens saved up at 450/s
    limiter.refused()
    before = clock.now()
    assert limiter.acquire(100)
    assert clock.now() - before == pytest.approx(100 / limiter.limit, rel=0.01)


# --------------------------------------------------------------------------- what is retried


class Refuses(DelegatingStore):
    """Raises ``errors`` one per commit request (nothing applied), then passes commits on."""

    def __init__(self, inner: Store, errors: list[Exception]) -> None:
        super().__init__(inner)
        self.errors = list(errors)
        self.calls = 0

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.commit(writes)


class Pacer:
    """A pacer whose run's other requests are accepted (``refusing`` stays 0) unless told
    ``refusing``: then each refusal is one more lowering of the rate with nothing accepted."""

    def __init__(self, lowers: bool = True, *, accepting: bool = True) -> None:
        self.lowers = lowers
        self.accepting = accepting
        self.refusals = 0
        self.resends: list[int] = []

    def refused(self) -> bool:
        self.refusals += 1
        return self.lowers

    def refusing(self) -> int:
        return 0 if self.accepting else self.refusals

    def resend(self, writes: int) -> bool:
        self.resends.append(writes)
        return True


def _refused(code: str) -> TransientError:
    return TransientError("slow down", code=code)


def test_failed_precondition_is_never_taken_for_a_transient_error() -> None:
    assert isinstance(translate_error("FAILED_PRECONDITION", "x", guarded=True), ConflictError)
    assert isinstance(translate_error("FAILED_PRECONDITION", "x", guarded=False), PermanentError)
    for code in ("RESOURCE_EXHAUSTED", "ABORTED", "UNAVAILABLE"):
        assert isinstance(translate_error(code, "x"), TransientError)


@pytest.mark.parametrize("paced", [False, True])
def test_a_failed_precondition_is_returned_at_once_not_retried(paced: bool) -> None:
    memory = MemoryStore()
    assert memory.commit([Write.set("items/a", {"n": 1})])[0].ok
    stale = memory.get_many(["items/a"])[0]
    assert stale is not None
    assert memory.commit([Write.set("items/a", {"n": 2})])[0].ok  # the application changed it
    counting = Refuses(memory, [])
    store = RetryingStore(counting, QUICK)
    pacer = Pacer()
    with pacing(pacer if paced else None):
        [result] = store.commit([Write.set("items/a", {"n": 3}, update_time=stale.update_time)])
    assert isinstance(result.error, ConflictError) and result.error.code == "FAILED_PRECONDITION"
    assert counting.calls == 1 and store.retries == 0 and pacer.refusals == 0
    whole = Refuses(memory, [PermanentError("failed precondition", code="FAILED_PRECONDITION")])
    with pacing(pacer if paced else None), pytest.raises(PermanentError):
        RetryingStore(whole, QUICK).commit([Write.set("items/b", {})])
    assert whole.calls == 1


def test_a_paced_request_refused_for_load_is_resent_at_the_pacers_rate_beyond_the_attempts() -> None:
    refusals = [_refused("RESOURCE_EXHAUSTED"), _refused("ABORTED")] * 4  # 8 > QUICK.attempts
    memory = MemoryStore()
    refusing = Refuses(memory, list(refusals))
    store = RetryingStore(refusing, QUICK)
    pacer = Pacer()
    with pacing(pacer):
        results = store.commit([Write.set("items/a", {}), Write.set("items/b", {})])
    assert all(result.ok for result in results)
    assert pacer.refusals == len(refusals) and pacer.resends == [2] * len(refusals)
    assert refusing.calls == len(refusals) + 1 and store.retries == len(refusals)


def test_a_paced_request_refused_with_nothing_accepted_in_between_runs_out_of_attempts() -> None:
    refusing = Refuses(MemoryStore(), [_refused("RESOURCE_EXHAUSTED")] * 10)
    store = RetryingStore(refusing, QUICK)
    pacer = Pacer(accepting=False)
    with pacing(pacer), pytest.raises(LoadRefused) as refused:
        store.commit([Write.set("items/a", {})])
    assert refusing.calls == QUICK.attempts and pacer.resends == [1] * (QUICK.attempts - 1)
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    assert "refused every write for load" in refused.value.message
    assert refused.value.hint is not None and "quota" in refused.value.hint


def _limited_writer(
    store: RateLimitedStore, clock: SimulatedClock, policy: RetryPolicy, latencies: list[float]
) -> tuple[BatchWriter, RateLimiter]:
    limiter = RateLimiter(adaptive=True, clock=clock.now, sleep=clock.sleep)
    engine = EngineConfig(batch_size=100, max_batch_size=500)
    guards = WriteGuards.from_config(engine, LimitsConfig(), Controls(limiter))
    return BatchWriter(RetryingStore(store, policy), guards, latency=latencies.append), limiter


def _outgoing(start: int, count: int) -> list[Outgoing[None]]:
    return [Outgoing(Write.set(f"items/{i:06d}", {"n": i}), None) for i in range(start, start + count)]


class Answers(DelegatingStore):
    """A store that takes ``seconds`` of the clock to answer each commit."""

    def __init__(self, inner: Store, clock: SimulatedClock, seconds: float) -> None:
        super().__init__(inner)
        self.clock = clock
        self.seconds = seconds

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        self.clock.sleep(self.seconds)
        return self.inner.commit(writes)


def test_commit_latency_is_what_the_store_took_to_answer_not_the_wait_for_the_lowered_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = SimulatedClock()
    monkeypatch.setattr(time, "monotonic", clock.now)  # every duration docshift measures: simulated
    limited = RateLimitedStore(Answers(MemoryStore(), clock, 0.002), 400.0, clock=clock.now)
    latencies: list[float] = []
    writer, limiter = _limited_writer(limited, clock, QUICK, latencies)
    sent = 0
    while clock.now() < 6.0:
        size = writer.batch_size
        assert all(result.ok for result in writer.write(_outgoing(sent, size)))
        sent += size
    assert limiter.adaptive is not None and limiter.adaptive.refusals > 0  # requests waited for the rate
    assert len(latencies) == sum(1 for request in limited.requests if request.accepted)
    assert max(latencies) == pytest.approx(0.002)  # the store's own answer, however long the wait
    assert writer.guards.sizer.per_write is not None and writer.guards.sizer.per_write <= 0.002 / 100


def test_a_store_that_accepts_no_write_stops_the_writer_after_its_attempts_with_what_to_do() -> None:
    clock = SimulatedClock()
    limited = RateLimitedStore(MemoryStore(), 0.0, clock=clock.now)  # its quota is used up
    policy = RetryPolicy()
    writer, limiter = _limited_writer(limited, clock, policy, [])
    with pytest.raises(EmergencyStop) as stopped:
        writer.write(_outgoing(0, 500))
    assert len(limited.requests) == policy.attempts  # not resent for ever at an ever lower rate
    assert clock.now() < 30.0
    assert "the store refused every write for load" in stopped.value.message
    hint = stopped.value.hint or ""
    assert "quota" in hint and "max_writes_per_second" in hint and hint.endswith("resume the run")
    assert limiter.limit > 100.0  # it gave up while the rate was still far from its floor


def test_unavailable_lowers_the_pacers_rate_but_keeps_its_backoff_and_attempts() -> None:
    refusing = Refuses(MemoryStore(), [_refused("UNAVAILABLE")] * 10)
    store = RetryingStore(refusing, QUICK)
    pacer = Pacer()
    with pacing(pacer), pytest.raises(TransientError):
        store.commit([Write.set("items/a", {})])
    assert refusing.calls == QUICK.attempts and pacer.refusals == QUICK.attempts and pacer.resends == []


def test_at_the_floor_a_refusal_for_load_counts_against_the_attempts() -> None:
    refusing = Refuses(MemoryStore(), [_refused("RESOURCE_EXHAUSTED")] * 10)
    store = RetryingStore(refusing, QUICK)
    with pacing(Pacer(lowers=False)), pytest.raises(TransientError):
        store.commit([Write.set("items/a", {})])
    assert refusing.calls == QUICK.attempts


def test_unpaced_commits_keep_the_plain_backoff() -> None:
    refusing = Refuses(MemoryStore(), [_refused("RESOURCE_EXHAUSTED")] * 10)
    with pytest.raises(TransientError):
        RetryingStore(refusing, QUICK).commit([Write.set("items/a", {})])
    assert refusing.calls == QUICK.attempts


# --------------------------------------------------------------------------- a throttled run

COUNT = 8000
CHANGE_AT = 20.0


@pytest.mark.parametrize(("first", "then"), [(200.0, 100.0), (100.0, 200.0)], ids=["falls", "rises"])
def test_a_run_converges_to_the_rate_the_store_accepts_and_loses_nothing(
    tmp_path: Path, first: float, then: float
) -> None:
    memory = MemoryStore()
    seed_items(memory, COUNT)
    config = project(tmp_path)

    throttled = throttled_run(memory, config, lambda now: first if now < CHANGE_AT else then)

    assert throttled.result.state == "finished", throttled.result.error
    [outcome] = throttled.result.run.outcomes
    assert outcome.result.counters["updated"] == COUNT and outcome.result.counters["failed"] == 0
    assert items(memory) == bumped(COUNT)  # every document written once, nothing lost
    end = throttled.clock.now()
    settled_from = CHANGE_AT + 15.0
    assert end > settled_from + 10.0, "the run ended before it could settle"
    assert refused_share(throttled, settled_from) < 0.05
    assert accepted_rate(throttled, settled_from, end - 1.0) == pytest.approx(then, rel=0.10)
    ended = throttled.ended()
    assert ended.write_rate == pytest.approx(then, rel=0.10)
    assert ended.throttled == throttled.limiter.adaptive.refusals > 0  # type: ignore[union-attr]
    [row] = throttled.report_json()["migrations"]
    assert row["write_rate"] == ended.write_rate and row["throttled"] == ended.throttled


def test_a_store_that_never_refuses_leaves_the_rate_unset(tmp_path: Path) -> None:
    memory = MemoryStore()
    seed_items(memory, 300)
    throttled = throttled_run(memory, project(tmp_path), lambda now: 1e9)
    assert throttled.limiter.adaptive_limit == 0.0 and throttled.limiter.limit == 0.0
    assert throttled.ended().write_rate is None and throttled.ended().throttled is None
    assert items(memory) == bumped(300)


def test_a_run_over_a_store_that_accepts_no_write_stops_soon_saying_so_and_loses_nothing(
    tmp_path: Path,
) -> None:
    memory = MemoryStore()
    seed_items(memory, 300)
    clock = SimulatedClock()
    limited = RateLimitedStore(memory, 0.0, clock=clock.now)  # its quota is used up
    limiter = RateLimiter(adaptive=True, clock=clock.now, sleep=clock.sleep)
    with pytest.raises(EmergencyStop) as stopped:
        run(
            project(tmp_path),
            RunOptions(execute=True),
            store=RetryingStore(limited),
            controls=Controls(limiter),
        )
    assert "the store refused every write for load" in stopped.value.message
    assert "quota" in (stopped.value.hint or "")
    result = result_of(stopped.value)
    assert result is not None and result.state == "stopped" and result.resume_command is not None
    assert clock.now() < 60.0  # not an hour of ever longer waits
    assert items(memory) == {f"items/{i:06d}": {"n": i} for i in range(300)}  # nothing written, nothing lost


# --------------------------------------------------------------------------- stream breaks


def test_a_stream_broken_at_its_lifetime_resumes_without_a_retry_or_a_backoff() -> None:
    memory = MemoryStore()
    seed_items(memory, 25)
    breaking = BreakingStreams(memory, every=4)
    store = RetryingStore(breaking, RetryPolicy(attempts=2, initial_wait=60.0, max_wait=60.0))
    docs = [doc.path for doc in store.stream(Query("items"))]
    assert docs == sorted(bumped(25))
    assert breaking.breaks == 6 and store.stream_resumes == 6 and store.retries == 0


def test_a_stream_broken_before_any_document_still_counts_as_a_failure() -> None:
    memory = MemoryStore()
    seed_items(memory, 3)
    store = RetryingStore(BreakingStreams(memory, every=0), QUICK)
    with pytest.raises(TransientError):
        list(store.stream(Query("items")))
    assert store.retries == QUICK.attempts - 1 and store.stream_resumes == 0


@pytest.mark.parametrize("every", [1, 7, 64])
def test_a_run_whose_every_stream_breaks_processes_each_document_once(tmp_path: Path, every: int) -> None:
    memory = MemoryStore()
    seed_items(memory, 600)
    breaking = BreakingStreams(memory, every=every)
    store = RetryingStore(breaking, RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.002))
    hooks = RecordingHooks()
    config = project(tmp_path)

    result = run(config, RunOptions(execute=True), store=store, hooks=hooks)

    assert result.state == "finished", result.error
    [outcome] = result.run.outcomes
    counters = outcome.result.counters
    assert counters["read"] == counters["updated"] == 600
    assert counters["failed"] == counters["conflicts"] == 0
    assert items(memory) == bumped(600)
    assert breaking.breaks >= 600 // every - 1
    assert store.stream_resumes >= breaking.breaks - 1 and store.retries == 0
    [ended] = hooks.of(PassEnded)
    assert ended.reason is None  # no breaker trip, no stop

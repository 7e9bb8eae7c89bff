"""Steering a running migration from outside the pipeline: stop, pause, resume, throttle.

Signal handlers, the status endpoint and control files all act through one :class:`Controls`, so
every way of steering a run has the same effect.
"""

from __future__ import annotations

import threading

from docshift.engine.limits import RateLimiter
from docshift.errors import EmergencyStop, RunStopped

__all__ = ["LEASE_LOST", "Controls"]

LEASE_LOST = "the lease was lost to another run"
"""The stop reason when another run took the lease while this one held it."""


class Controls:
    def __init__(self, limiter: RateLimiter | None = None) -> None:
        self.stop = threading.Event()
        self.limiter = limiter or RateLimiter()
        self.stop_reason: str | None = None
        self.stop_class: type[RunStopped] | None = None
        self.lease_lost: threading.Event | None = None
        """Set by the lease's heartbeat when another run took the lease: writing must stop."""
        self.finished = threading.Event()
        """Set by the command once the run's work is done (only its report is left to write): a
        stop asked for from then on changes nothing."""
        self._lock = threading.Lock()

    def request_stop(self, reason: str, error: type[RunStopped] = RunStopped) -> None:
        """Stop gracefully: no new reads or commits; in-flight commits finish; checkpoint kept.

        The first reason wins, so the report names the cause rather than a later symptom.
        """
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
                self.stop_class = error
            self.stop.set()
        self.limiter.resume()  # a paused run must wake up to stop

    def check_lease(self) -> bool:
        """Stop at once (an :class:`EmergencyStop`) if the lease was lost to another run: every
        loop that writes, or has workers write, asks this between its steps. Whether the run is
        stopping (for this or any other reason)."""
        lost = self.lease_lost
        if lost is not None and lost.is_set():
            self.request_stop(LEASE_LOST, EmergencyStop)
        return self.stop.is_set()

    def refine_stop_reason(self, reason: str, refined: str) -> None:
        """Replace the stop reason ``reason`` with ``refined`` (the same cause, told with what
        became known since, e.g. the final counts), if it is still the reason in force."""
        with self._lock:
            if self.stop_reason == reason:
                self.stop_reason = refined

    @property
    def paused(self) -> bool:
        return self.limiter.paused

    def pause(self) -> None:
        self.limiter.pause()

    def resume(self) -> None:
        self.limiter.resume()

    def throttle(self, ops_per_second: float) -> None:
        self.limiter.set_cap(ops_per_second)

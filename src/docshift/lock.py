"""The lease that keeps two runs off one database at once.

The lease is one document, ``{prefix}_lock/lease``. Taking it is a single guarded write, so the
store decides who wins and no two processes can both hold it:

* free: a ``create`` (precondition "must not exist"); of two creators exactly one succeeds;
* expired: a ``set`` guarded by the old lease's update time; of two takers exactly one succeeds,
  because the winner's write changes that update time;
* held and not expired: :class:`~docshift.errors.LockedError` at once, naming owner and expiry.

A daemon thread extends the expiry every ``heartbeat_seconds`` with updates guarded the same way. If
an extension is refused (someone forced the lease away or took it after it expired) or the expiry
passes without one succeeding, :attr:`LeaseLock.lost` is set and the run must stop writing.

Clocks: expiry times are wall-clock UTC from the machine that writes them, and other machines compare
them with their own clock. This assumes clocks agree to well within ``ttl_seconds`` (NTP gives
milliseconds; the default TTL is 60 s). A badly skewed clock can only make a live lease look expired
to that one machine earlier than it should; keep the TTL far above any skew you expect.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType, TracebackType
from typing import Any

from docshift.errors import ConflictError, LockedError, StoreError
from docshift.history import current_user
from docshift.store.base import Document, Store, Write, WriteResult, write_landed
from docshift.values import Timestamp

__all__ = ["Lease", "LeaseLock", "force_unlock", "lease_path", "read_lease"]


def lease_path(prefix: str) -> str:
    return f"{prefix}_lock/lease"


def _later(stamp: Timestamp, seconds: float) -> Timestamp:
    return Timestamp.from_datetime(stamp.to_datetime() + timedelta(seconds=seconds))


@dataclass(frozen=True)
class Lease:
    """Who holds the lock, as stored; ``update_time`` is the document's, for guarded writes."""

    owner: str
    pid: int
    run_id: str
    acquired_at: Timestamp
    expires_at: Timestamp
    update_time: Timestamp | None = None

    def expired(self, now: Timestamp | None = None) -> bool:
        return (now or Timestamp.now()) >= self.expires_at

    def describe(self) -> str:
        return (
            f"locked by {self.owner} (pid {self.pid}, run {self.run_id}) since {self.acquired_at}, "
            f"expires at {self.expires_at}"
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "pid": self.pid,
            "run_id": self.run_id,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_document(cls, doc: Document) -> Lease:
        data = doc.data
        try:
            return cls(
                str(data["owner"]),
                int(data["pid"]),
                str(data["run_id"]),
                _stamp(data["acquired_at"]),
                _stamp(data["expires_at"]),
                doc.update_time,
            )
        except (KeyError, TypeError, ValueError):
            # Unreadable: treat as expired so it can be taken over (guarded, so still safely).
            epoch = Timestamp(0)
            return cls(
                str(data.get("owner", "unknown")),
                0,
                str(data.get("run_id", "?")),
                epoch,
                epoch,
                doc.update_time,
            )


def _stamp(value: Any) -> Timestamp:
    if not isinstance(value, Timestamp):
        raise TypeError("not a timestamp")
    return value


def read_lease(store: Store, prefix: str) -> Lease | None:
    """The current lease, or ``None`` when no run holds (or recently held) one."""
    doc = store.get(lease_path(prefix))
    return Lease.from_document(doc) if doc else None


def force_unlock(store: Store, prefix: str, expected: Lease | None = None) -> Lease | None:
    """Delete the lease; return what was deleted (``None`` if there was none).

    With ``expected`` (the lease a user confirmed), only that run's lease is deleted: if another run
    has taken the lease since, nothing is deleted and :class:`LockedError` says so.
    """
    path = lease_path(prefix)
    for _ in range(5):
        current = read_lease(store, prefix)
        if current is None:
            return None
        if expected is not None and current.run_id != expected.run_id:
            raise LockedError(
                f"the lease changed hands while you confirmed: now {current.describe()}; not removed",
                hint="run `docshift unlock --force` again to see and confirm the new holder",
            )
        [result] = store.commit([Write.delete(path, update_time=current.update_time)])
        if result.ok:
            return current
        if not isinstance(result.error, ConflictError):
            assert result.error is not None
            raise result.error
        # The holder's heartbeat moved the update time; read again and retry.
    raise LockedError("the lease keeps changing; its holder is alive", hint="stop that run first")


class LeaseLock:
    """Hold the database's lease for one run. Use as a context manager::

        with LeaseLock(store, config.store.state_prefix, run_id=run_id) as lease:
            ...  # check lock.lost.is_set() between batches

    On exit (normal, error, Ctrl-C) the lease is deleted. While held inside ``with`` in the main
    thread, SIGTERM is turned into :class:`KeyboardInterrupt` so the lease is released then too,
    unless the program already installed its own SIGTERM handler (which then owns that job).
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        *,
        run_id: str,
        ttl_seconds: float = 60.0,
        heartbeat_seconds: float = 15.0,
    ) -> None:
        if not 0 < heartbeat_seconds < ttl_seconds:
            raise ValueError("heartbeat_seconds must be above 0 and below ttl_seconds")
        self.store = store
        self.prefix = prefix
        self.path = lease_path(prefix)
        self.run_id = run_id
        self.ttl_seconds = ttl_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.lost = threading.Event()
        """Set when the lease was lost while held: the run must stop writing."""
        self.lease: Lease | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restore_sigterm: Any = None

    def _new_lease(self, now: Timestamp) -> Lease:
        return Lease(current_user(), os.getpid(), self.run_id, now, _later(now, self.ttl_seconds))

    def acquire(self) -> Lease:
        """Take the lease or raise :class:`LockedError` at once; start the heartbeat."""
        if self.lease is not None:
            return self.lease
        for _ in range(5):
            now = Timestamp.now()
            wanted = self._new_lease(now)
            existing = read_lease(self.store, self.prefix)
            if existing is None:
                write = Write.create(self.path, wanted.to_data())
            elif (
                existing.run_id == self.run_id
                and existing.pid == os.getpid()
                and (existing.owner == current_user())
            ):
                return self._won(existing)  # our own create, answered late and retried
            elif not existing.expired(now) and not self._abandoned(existing):
                raise LockedError(
                    existing.describe(),
                    hint="wait for that run to finish; if it died, its lease expires by itself, "
                    "or remove it with `docshift unlock --force`",
                )
            else:
                write = Write.set(self.path, wanted.to_data(), update_time=existing.update_time)
            [result] = self.store.commit([write])
            if result.ok:
                return self._won(dataclasses.replace(wanted, update_time=result.update_time))
            if not isinstance(result.error, ConflictError):
                assert result.error is not None
                raise result.error
            # Someone else created or took it between our read and write: look again.
        current = read_lease(self.store, self.prefix)
        raise LockedError(
            current.describe() if current else "the lease keeps changing hands",
            hint="another run is starting at the same time; try again shortly",
        )

    def _abandoned(self, lease: Lease) -> bool:
        """A lease of this same run whose process is gone from this machine (killed, say): a resume
        may take it over at once, with the same guarded write as an expired one."""
        return lease.run_id == self.run_id and lease.owner == current_user() and not process_exists(lease.pid)

    def _won(self, lease: Lease) -> Lease:
        self.lease = lease
        self.lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="docshift-lease", daemon=True)
        self._thread.start()
        return lease

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            if not self.extend():
                return

    def extend(self) -> bool:
        """Push the expiry ``ttl_seconds`` ahead; ``False`` (and :attr:`lost` set) if the lease
        is no longer ours. A store error only counts as lost once the expiry has passed."""
        with self._mutex:
            lease = self.lease
            if lease is None or self._stop.is_set():
                return False
            now = Timestamp.now()
            expires = _later(now, self.ttl_seconds)
            write = Write.update(self.path, {("expires_at",): expires}, update_time=lease.update_time)
            try:
                [result] = self.store.commit([write])
                if result.resent and isinstance(result.error, ConflictError):
                    # Refused when resent after a lost reply: the first send may be what moved it.
                    [held] = self.store.get_many([self.path])
                    expected = dataclasses.replace(lease, expires_at=expires).to_data()
                    if held is not None and write_landed(write, held, expected):
                        result = WriteResult(self.path, update_time=held.update_time)
            except StoreError:
                result = None
            if result is not None and result.ok:
                self.lease = dataclasses.replace(lease, expires_at=expires, update_time=result.update_time)
                return True
            if (result is not None and isinstance(result.error, ConflictError)) or lease.expired(now):
                self.lost.set()
                return False
            return True  # a passing failure: try again at the next beat

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. Safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._mutex:
            lease, self.lease = self.lease, None
        if lease is None or self.lost.is_set():
            return
        [result] = self.store.commit([Write.delete(self.path, update_time=lease.update_time)])
        if not result.ok and not isinstance(result.error, ConflictError):
            assert result.error is not None
            raise result.error  # a conflict means it is no longer ours: nothing to release

    def __enter__(self) -> Lease:
        lease = self.acquire()
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _terminate)
            self._restore_sigterm = signal.SIG_DFL
        return lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.release()
        finally:
            if self._restore_sigterm is not None:
                signal.signal(signal.SIGTERM, self._restore_sigterm)
                self._restore_sigterm = None


def process_exists(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt("terminated (SIGTERM)")

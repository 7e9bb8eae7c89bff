"""Choosing the moment a command reads at: ``--read-time`` parsed and checked, and the snapshot view.

Dry runs, ``verify``, ``validate`` scans, shard planning and ``backup`` read one consistent state of
the store: by default the moment they start (the store's own clock), or a time given as RFC 3339
(``2026-05-01T10:00:00Z``) or relative to now (``-10m``, ``-1h30m``). Cloud Firestore serves reads
in the last hour at any microsecond, and up to seven days back in whole minutes only where
point-in-time recovery is on; outside that a time is refused before anything is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from docshift.errors import UsageError
from docshift.store.base import SnapshotStore, Store
from docshift.store.semantics import PITR_SECONDS, VERSION_SECONDS
from docshift.values import Timestamp

__all__ = ["ReadTime", "check_resumable", "parse_read_time", "parse_timestamp", "pin", "reads_text"]

_RELATIVE = re.compile(r"-((?:\d+[smhd])+)")
_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", re.IGNORECASE)
_FORMS = "an RFC 3339 time such as 2026-05-01T10:00:00Z, or a time relative to now such as -10m or -1h30m"


@dataclass(frozen=True)
class ReadTime:
    """The moment a command reads at, and what the user should know about it (``note``)."""

    at: Timestamp
    note: str | None = None
    """Set for a time older than an hour: readable only with point-in-time recovery on."""


def _micros(stamp: Timestamp) -> int:
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def _from_micros(micros: int) -> Timestamp:
    return Timestamp(micros // 1_000_000, micros % 1_000_000 * 1000)


def _parse(text: str, now: Timestamp) -> Timestamp:
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(relative.group(1)))
        return _from_micros(_micros(now) - seconds * 1_000_000)
    given = _RFC3339.fullmatch(text.strip())
    if given is None:
        raise UsageError(f"--read-time {text!r} is not a time", hint=f"give {_FORMS}")
    base, fraction, zone = given.groups()
    if fraction and len(fraction) > 6 and fraction[6:].strip("0"):
        raise UsageError(
            f"--read-time {text!r} is finer than a microsecond",
            hint="Firestore reads at whole microseconds: give at most six digits after the second",
        )
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone.upper() == "Z" else zone))
    except ValueError as exc:
        raise UsageError(f"--read-time {text!r} is not a valid time: {exc}", hint=f"give {_FORMS}") from None
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    return Timestamp.from_datetime(moment.replace(microsecond=micros).astimezone(UTC))


def parse_timestamp(text: str) -> Timestamp:
    """An RFC 3339 time as written in run files (``Timestamp.isoformat``)."""
    if _RELATIVE.fullmatch(text.strip()):
        raise UsageError(f"{text!r} is a relative time, not a moment", hint="give an RFC 3339 time")
    return _parse(text, Timestamp(0, 0))


def parse_read_time(text: str, now: Timestamp) -> ReadTime:
    """``text`` (``--read-time``) as the moment to read at, checked against ``now``: refused in
    the future or more than seven days back; rounded down to the whole minute (with a note saying
    point-in-time recovery must be on) when more than an hour back."""
    at = _parse(text, now)
    age = _micros(now) - _micros(at)
    if age < 0:
        raise UsageError(
            f"--read-time {at} is in the future (now is {now})",
            hint="give a time that has passed, or leave --read-time out to read as of now",
        )
    if age <= VERSION_SECONDS * 1_000_000:
        return ReadTime(at)
    if age > PITR_SECONDS * 1_000_000:
        raise UsageError(
            f"--read-time {at} is more than seven days ago: Firestore keeps no version that old",
            hint="give a time within the last hour (or the last seven days with point-in-time recovery "
            "on), or restore from a backup",
        )
    minute = Timestamp(at.seconds - at.seconds % 60, 0)
    return ReadTime(minute, _pitr_note(minute))


def _pitr_note(at: Timestamp) -> str:
    return (
        f"reading at {at}, more than an hour ago: Cloud Firestore serves that only where "
        "point-in-time recovery is on (gcloud firestore databases update --enable-pitr), and only "
        "at whole minutes"
    )


def check_resumable(at: Timestamp, now: Timestamp, what: str) -> ReadTime:
    """The read time ``what`` (a dry run being resumed) started with, if the store still serves it;
    otherwise a :class:`UsageError` saying it cannot continue reading the same snapshot."""
    age = _micros(now) - _micros(at)
    if age <= VERSION_SECONDS * 1_000_000:
        return ReadTime(at)
    if age <= PITR_SECONDS * 1_000_000 and at.nanos == 0 and at.seconds % 60 == 0:
        return ReadTime(at, _pitr_note(at))
    raise UsageError(
        f"{what} read the store as it was at {at}, which is now older than Firestore keeps versions "
        "(an hour): a resume cannot read the same snapshot",
        hint="start a new dry run (docshift run), which reads as of now; its plan replaces this one",
    )


def pin(store: Store, read_time: Timestamp | None) -> SnapshotStore:
    """``store`` pinned to ``read_time``, or to the store's own present moment when None."""
    return SnapshotStore(store, read_time or store.snapshot_time())


def reads_text(read_time: Timestamp | str | None) -> str:
    """How a command read, as its summary and report say: ``reads: snapshot at T`` or ``reads: live``."""
    return f"reads: snapshot at {read_time}" if read_time is not None else "reads: live"

"""Which migrations ran on this database, with what file, by whom, and how it went.

The history lives in the store itself, in the collection ``{prefix}_history`` with one document per
migration id, so every database (including named ones) carries its own history. Writes are
read-modify-write guarded by the document's update time; the run's lease (see :mod:`docshift.lock`)
already makes the writer unique, the guard only keeps a record from being overwritten blindly.
"""

from __future__ import annotations

import dataclasses
import enum
import getpass
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from docshift.errors import ConflictError, DataError, UsageError
from docshift.loader import describe_file
from docshift.migration import Migration
from docshift.store.base import Document, Query, Store, Write, write_landed
from docshift.values import Timestamp

__all__ = [
    "MAX_EVENTS",
    "EventKind",
    "History",
    "HistoryEvent",
    "HistoryRead",
    "HistoryRecord",
    "MigrationStatus",
    "current_user",
    "id_key",
]

MAX_EVENTS = 50
"""How many events a record keeps: the latest ones; older ones drop out."""
_WRITE_ATTEMPTS = 5


class MigrationStatus(enum.StrEnum):
    """What the history says about a migration. ``applied`` only when a run processed every document
    of its target; ``partial`` when a run finished what it was asked (``--limit``, ``--sample``) and
    that left documents out; ``interrupted`` when a run was stopped (signal, ``docshift stop``) and
    can be resumed; ``failed`` when it stopped on a problem (breaker, gate, failures, memory);
    ``stamped`` when ``docshift stamp`` marked it applied without running it (docshift wrote no data
    for it, so there is nothing of it to roll back)."""

    RUNNING = "running"
    APPLIED = "applied"
    PARTIAL = "partial"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    STAMPED = "stamped"

    @property
    def counts_as_applied(self) -> bool:
        """Whether the migration's change is taken as made: ``run`` leaves it alone, and an edit
        of its file is drift."""
        return self in (MigrationStatus.APPLIED, MigrationStatus.STAMPED)


class EventKind(enum.StrEnum):
    """What one event of a migration's history records. ``started``: a run (or a resume of it)
    began working on it; ``applied``, ``partial``, ``interrupted``, ``failed``: how that work ended;
    ``rolled_back``: a rollback undid it; ``stamped``: marked applied without running (``docshift
    stamp``); ``repaired``: an edited file's checksum accepted without running it (``docshift
    repair``); ``drift_accepted``: the same by ``run --allow-drift``; ``retry_started`` and
    ``retried``: ``docshift retry`` began and ended re-processing a run's dead letters (the
    migration keeps its status: the retry adds to its application)."""

    STARTED = "started"
    APPLIED = "applied"
    PARTIAL = "partial"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    STAMPED = "stamped"
    REPAIRED = "repaired"
    DRIFT_ACCEPTED = "drift_accepted"
    RETRY_STARTED = "retry_started"
    RETRIED = "retried"


def current_user() -> str:
    """``user@host``: who ran something, as written to the history and the lease."""
    try:
        user = getpass.getuser()  # LOGNAME, USER, LNAME, USERNAME, then the password database
    except (OSError, KeyError):  # none of those, e.g. an unnamed uid in a container
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _docshift_version() -> str:
    from docshift import __version__

    return __version__


@dataclass(frozen=True)
class HistoryEvent:
    """One line of a migration's audit trail (kept in its history document, newest last).

    ``status`` is the migration's status once the event happened, ``checksum`` the file's it
    happened with. An event written by an older docshift has only those, ``at``, ``run_id`` and
    ``user``: its ``kind`` is derived when it is read (:meth:`from_data`), its counts unknown.
    """

    kind: EventKind
    status: MigrationStatus
    at: Timestamp
    run_id: str
    """The run; for ``stamped`` and ``repaired``, the id of that command (it has no run folder)."""
    user: str
    checksum: str = ""
    counts: Mapping[str, int] | None = None
    """The counters of the work this event closes (``None``: none, or not recorded by an older
    docshift)."""
    previous_checksum: str = ""
    """``repaired``, ``drift_accepted``: the checksum that was replaced."""
    reason: str = ""
    """``stamped``, ``repaired``: why, as the user gave it."""
    error: str | None = None
    """``failed``, ``interrupted``: why the work stopped."""
    landed: Mapping[str, int] | None = None
    """A stopped run's writes that landed past its cursor, which ``counts`` do not hold yet (the
    resume counts them, once): see ``beyond_cursor`` in :mod:`docshift.runfolder.checkpoint`."""

    def to_data(self) -> dict[str, Any]:
        return {
            **vars(self),
            "kind": self.kind.value,
            "status": self.status.value,
            "counts": dict(self.counts) if self.counts is not None else None,
            "landed": dict(self.landed) if self.landed else None,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any], before: HistoryEvent | None) -> HistoryEvent:
        """Parse a stored event (``before``: the one stored before it). Unknown keys (from a newer
        docshift) are ignored; an older docshift's event, which has no ``kind``, gets the one its
        status and checksum tell: ``started`` for running, ``drift_accepted`` where the checksum
        changed without a run starting (the only way that docshift changed it), else the status."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {key: value for key, value in data.items() if key in known}
        status = MigrationStatus(fields["status"])
        counts, landed = fields.get("counts"), fields.get("landed")
        fields.update(
            status=status,
            counts={str(k): int(v) for k, v in counts.items()} if counts is not None else None,
            landed={str(k): int(v) for k, v in landed.items()} if landed else None,
        )
        if fields.get("kind"):
            return cls(**{**fields, "kind": EventKind(fields["kind"])})
        checksum = str(fields.get("checksum") or "")
        if status is MigrationStatus.RUNNING:
            kind = EventKind.STARTED
        elif before is not None and before.checksum and checksum and checksum != before.checksum:
            kind = EventKind.DRIFT_ACCEPTED
            fields["previous_checksum"] = before.checksum
        else:
            kind = EventKind(status.value)
        return cls(**{**fields, "kind": kind})


@dataclass(frozen=True)
class HistoryRecord:
    """The latest state of one migration on this database."""

    migration_id: str
    description: str
    checksum: str
    status: MigrationStatus
    started_at: Timestamp
    finished_at: Timestamp | None
    run_id: str
    user: str
    docshift_version: str
    counts: Mapping[str, int] = field(default_factory=dict)
    previous_checksums: tuple[str, ...] = ()
    error: str | None = None
    name: str = ""
    file: str = ""
    checkpoint: Mapping[str, Any] | None = None
    events: tuple[HistoryEvent, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Settings a resume of this run changed from the run's own: name -> {"was": …, "now": …}."""
    landed: Mapping[str, int] = field(default_factory=dict)
    """The last run's writes that landed past its cursor when it stopped, which ``counts`` do not
    hold yet (empty once a resume counted them)."""
    runs: tuple[str, ...] | None = None
    """Every run that wrote this migration since it was last rolled back, in the order they first
    started: a migration can be applied over several runs (a ``--limit`` run, then a full one; an
    interrupted or failed run, then a new one), and undoing it means undoing all of them. Kept apart
    from ``events``, which are capped, so no run can drop out. ``None``: a record written by an
    older docshift, whose runs :meth:`application_runs` derives from the events."""

    @property
    def label(self) -> str:
        return f"{self.migration_id}_{self.name}" if self.name else self.migration_id

    def rolled_back_after(self, run_id: str) -> bool:
        """Whether this migration was rolled back after run ``run_id`` last started it: the writes
        that run made are undone, so continuing it from its checkpoint would leave them undone."""
        started = [
            i for i, e in enumerate(self.events) if e.run_id == run_id and e.status is MigrationStatus.RUNNING
        ]
        if not started:
            return False
        return any(e.status is MigrationStatus.ROLLED_BACK for e in self.events[started[-1] + 1 :])

    def application_runs(self) -> tuple[str, ...] | None:
        """The runs whose writes make up the migration's current application, oldest first (empty
        once it is rolled back); ``None`` when the record cannot tell: an older docshift's record
        whose event list reached its cap with no rollback in it, so runs may have dropped out."""
        if self.status is MigrationStatus.ROLLED_BACK:
            return ()
        if self.runs is not None:
            return self.runs
        rollbacks = [i for i, e in enumerate(self.events) if e.status is MigrationStatus.ROLLED_BACK]
        if not rollbacks and len(self.events) >= MAX_EVENTS:
            return None
        since = self.events[rollbacks[-1] + 1 :] if rollbacks else self.events
        return tuple(dict.fromkeys(e.run_id for e in since if e.status is MigrationStatus.RUNNING))

    def to_data(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(
            status=self.status.value,
            counts=dict(self.counts),
            landed=dict(self.landed),
            previous_checksums=list(self.previous_checksums),
            checkpoint=dict(self.checkpoint) if self.checkpoint is not None else None,
            overrides=dict(self.overrides),
            events=[e.to_data() for e in self.events],
            runs=list(self.runs) if self.runs is not None else None,
        )
        return data

    @classmethod
    def from_document(cls, doc: Document) -> HistoryRecord:
        """Parse a stored record; unknown keys (from a newer docshift) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        data = {key: value for key, value in doc.data.items() if key in known}
        try:
            record = cls(
                **{
                    **data,
                    "status": MigrationStatus(data["status"]),
                    "counts": {str(k): int(v) for k, v in (data.get("counts") or {}).items()},
                    "landed": {str(k): int(v) for k, v in (data.get("landed") or {}).items()},
                    "previous_checksums": tuple(data.get("previous_checksums") or ()),
                    "overrides": dict(data.get("overrides") or {}),
                    "runs": tuple(str(r) for r in data["runs"]) if data.get("runs") is not None else None,
                    "events": _read_events(data.get("events") or ()),
                }
            )
            stamps = [record.started_at, *(e.at for e in record.events)]
            if not all(isinstance(t, Timestamp) for t in stamps) or not isinstance(
                record.finished_at, Timestamp | None
            ):
                raise TypeError("a time field is not a timestamp")
            return record
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(
                f"history document {doc.path} is malformed ({type(exc).__name__}: {exc})",
                hint="restore it from a backup or delete it; docshift only writes well-formed records",
            ) from None


@dataclass(frozen=True)
class HistoryRead:
    """The records one read of the history saw, with each document's update time: what a run
    decided from, so that once it holds the lease it can tell whether another run changed them
    since (:meth:`History.changed_since`)."""

    records: Mapping[str, HistoryRecord]
    """Every record the read saw, keyed by migration id, in id order."""
    update_times: Mapping[str, Timestamp | None]
    """The update time of each record's document (None: a document without one)."""

    def update_time(self, migration_id: str) -> Timestamp | None:
        """The update time of ``migration_id``'s document as read; None also when it had none."""
        return self.update_times.get(migration_id)


class History:
    """The history collection of one store (one database)."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.collection = f"{prefix}_history"

    def _path(self, migration_id: str) -> str:
        return f"{self.collection}/{migration_id}"

    def all(self) -> dict[str, HistoryRecord]:
        """Every record, keyed by migration id, in id order."""
        return dict(self.read().records)

    def read(self) -> HistoryRead:
        """Every record, with the update times :meth:`changed_since` compares later."""
        read = [(HistoryRecord.from_document(doc), doc) for doc in self.store.stream(Query(self.collection))]
        read.sort(key=lambda pair: id_key(pair[0].migration_id))
        return HistoryRead(
            {record.migration_id: record for record, _ in read},
            {record.migration_id: doc.update_time for record, doc in read},
        )

    def changed_since(self, seen: HistoryRead, migration_ids: Sequence[str]) -> list[str]:
        """Which of ``migration_ids`` have a record now that is not the one ``seen`` read: written,
        created or deleted since (one read of their documents)."""
        docs = self.store.get_many([self._path(i) for i in migration_ids])
        return [
            migration_id
            for migration_id, doc in zip(migration_ids, docs, strict=True)
            if (doc is None) != (migration_id not in seen.records)
            or (doc is not None and doc.update_time != seen.update_time(migration_id))
        ]

    def get(self, migration_id: str) -> HistoryRecord | None:
        doc = self.store.get(self._path(migration_id))
        return HistoryRecord.from_document(doc) if doc else None

    def _change(
        self, migration_id: str, change: Callable[[HistoryRecord | None], HistoryRecord]
    ) -> HistoryRecord:
        """Read, change, write guarded by the read's update time; re-read on a conflict."""
        path = self._path(migration_id)
        for _ in range(_WRITE_ATTEMPTS):
            doc = self.store.get(path)
            record = change(HistoryRecord.from_document(doc) if doc else None)
            write = (
                Write.set(path, record.to_data(), update_time=doc.update_time)
                if doc is not None and doc.update_time is not None
                else Write.create(path, record.to_data())
            )
            [result] = self.store.commit([write])
            if result.ok:
                return record
            if (
                result.resent
                and isinstance(result.error, ConflictError)
                and write_landed(write, self.store.get(path))
            ):
                return record  # our first send landed and its reply was lost: changing again would repeat it
            if not isinstance(result.error, ConflictError):
                assert result.error is not None
                raise result.error
        raise ConflictError(
            f"the history of migration {migration_id} keeps changing under this run",
            code="ABORTED",
            path=path,
            hint="another process is writing the history; check `docshift status` for a running lease",
        )

    def start(
        self, migration: Migration, run_id: str, overrides: Mapping[str, Any] | None = None
    ) -> HistoryRecord:
        """Mark ``migration`` running in this run; the last applied checksum moves to
        ``previous_checksums`` when the file changed since. ``overrides``: the settings resumes of
        this run changed (see :attr:`HistoryRecord.overrides`)."""
        now, user = Timestamp.now(), current_user()
        event = HistoryEvent(
            EventKind.STARTED, MigrationStatus.RUNNING, now, run_id, user, migration.checksum
        )

        def change(old: HistoryRecord | None) -> HistoryRecord:
            return _fresh_record(
                migration,
                old,
                event,
                finished_at=None,
                overrides=dict(overrides or {}),
                runs=_with_run(old, run_id),
            )

        return self._change(migration.id, change)

    def progress(
        self,
        migration_id: str,
        counts: Mapping[str, int],
        checkpoint_summary: Mapping[str, Any] | None = None,
    ) -> HistoryRecord:
        """Record a running migration's counts (and where its checkpoint stands) so far."""
        return self._update(
            migration_id,
            lambda old: dataclasses.replace(
                old,
                counts=dict(counts),
                checkpoint=dict(checkpoint_summary) if checkpoint_summary is not None else old.checkpoint,
            ),
        )

    def finish(
        self,
        migration_id: str,
        status: MigrationStatus,
        counts: Mapping[str, int],
        error: str | None = None,
        landed: Mapping[str, int] | None = None,
    ) -> HistoryRecord:
        """Close the current run of a migration (``error`` says why it did not apply; ``landed``,
        what a stopped run wrote past its cursor besides ``counts``); the caller derives ``status``
        from what the run processed (``commands/run.py``)."""
        status = MigrationStatus(status)
        if status in (MigrationStatus.RUNNING, MigrationStatus.STAMPED):
            raise ValueError(f"finish() needs the outcome of a run, not {status.value}")
        now = Timestamp.now()

        def change(old: HistoryRecord) -> HistoryRecord:
            event = HistoryEvent(
                EventKind(status.value),
                status,
                now,
                old.run_id,
                old.user,
                old.checksum,
                counts=dict(counts),
                error=error,
                landed=dict(landed) if landed else None,
            )
            return dataclasses.replace(
                old,
                status=status,
                finished_at=now,
                counts=dict(counts),
                landed=dict(landed or {}),
                error=error,
                events=_append(old, event),
            )

        return self._update(migration_id, change)

    def mark_rolled_back(
        self, migration_id: str, run_id: str, counts: Mapping[str, int], undone: Sequence[str] | None = None
    ) -> HistoryRecord:
        """Record that run ``run_id`` undid the migration: run, user, times and counts become the
        rollback's; the earlier runs stay in ``events``, and the next run starts a new application
        (``runs``). ``undone``: the runs whose writes were undone, when not every run of the
        application (a canary run's stage rollback undoes its own stages): if others are left, or
        may be (the record cannot name them), the migration is not rolled back; it keeps its
        status, and ``runs`` names the runs whose writes remain."""
        now, user, status = Timestamp.now(), current_user(), MigrationStatus.ROLLED_BACK

        def change(old: HistoryRecord) -> HistoryRecord:
            if old.status is MigrationStatus.STAMPED:
                raise UsageError(
                    f"{old.label} is stamped: it was marked applied without running, so docshift "
                    "wrote nothing of it to undo",
                    hint=f"`docshift history {old.migration_id}` shows who stamped it and why",
                )
            runs = old.application_runs()
            if undone is not None and (runs is None or set(runs) - set(undone)):
                left = None if runs is None else tuple(r for r in runs if r not in undone)
                remain = (
                    f"those of run(s) {', '.join(left)} remain" if left else "earlier runs' writes may remain"
                )
                return dataclasses.replace(
                    old,
                    runs=left,
                    error=(
                        f"{old.error + '; ' if old.error else ''}the writes of run(s) {', '.join(undone)} "
                        f"were rolled back; {remain}"
                    ),
                )
            return dataclasses.replace(
                old,
                status=status,
                started_at=now,
                finished_at=now,
                run_id=run_id,
                user=user,
                counts=dict(counts),
                landed={},
                error=None,
                docshift_version=_docshift_version(),
                events=_append(
                    old,
                    HistoryEvent(
                        EventKind.ROLLED_BACK, status, now, run_id, user, old.checksum, counts=dict(counts)
                    ),
                ),
                runs=(),
            )

        return self._update(migration_id, change)

    def retry_started(self, migration: Migration, run_id: str) -> HistoryRecord:
        """Run ``run_id`` (``docshift retry``) begins re-processing dead letters of ``migration``:
        its status stays, and the run joins its application (``runs``), so rolling the migration
        back undoes the retry's writes too."""
        now, user = Timestamp.now(), current_user()

        def change(old: HistoryRecord) -> HistoryRecord:
            event = HistoryEvent(EventKind.RETRY_STARTED, old.status, now, run_id, user, migration.checksum)
            return dataclasses.replace(old, events=_append(old, event), runs=_with_run(old, run_id))

        return self._update(migration.id, change)

    def retried(
        self, migration_id: str, run_id: str, counts: Mapping[str, int], error: str | None = None
    ) -> HistoryRecord:
        """Run ``run_id`` ended its retry of ``migration_id`` (``error``: why it stopped): an event
        with its counts; the migration's status and counts stay those of the run that applied it."""
        now, user = Timestamp.now(), current_user()

        def change(old: HistoryRecord) -> HistoryRecord:
            event = HistoryEvent(
                EventKind.RETRIED,
                old.status,
                now,
                run_id,
                user,
                old.checksum,
                counts=dict(counts),
                error=error,
            )
            return dataclasses.replace(old, events=_append(old, event))

        return self._update(migration_id, change)

    def accept_drift(self, migration_id: str, checksum: str, run_id: str) -> HistoryRecord:
        """After ``--allow-drift``: adopt the file's new checksum, keeping the applied one in
        ``previous_checksums`` so the history shows both."""
        return self._update(
            migration_id, lambda old: _accepted(old, checksum, EventKind.DRIFT_ACCEPTED, run_id, "")
        )

    def stamp(self, migration: Migration, stamp_id: str, reason: str) -> HistoryRecord:
        """Record ``migration`` as applied without running it (``docshift stamp``): the data already
        has its shape. Only a migration of which no docshift writes remain can be stamped: one
        never run here, or rolled back; anything else is refused here too, where the write is
        guarded, so a run that started after the caller checked is not overwritten."""
        now, user = Timestamp.now(), current_user()
        event = HistoryEvent(
            EventKind.STAMPED,
            MigrationStatus.STAMPED,
            now,
            stamp_id,
            user,
            migration.checksum,
            reason=reason,
        )

        def change(old: HistoryRecord | None) -> HistoryRecord:
            if old is not None and old.status is not MigrationStatus.ROLLED_BACK:
                raise UsageError(
                    f"{old.label} is {old.status.value.replace('_', ' ')} in the history, not pending or "
                    "rolled back: it cannot be stamped",
                    hint=f"`docshift history {old.migration_id}` shows what happened to it",
                )
            return _fresh_record(migration, old, event, finished_at=now, runs=())

        return self._change(migration.id, change)

    def repair(self, migration: Migration, repair_id: str, reason: str) -> HistoryRecord:
        """Accept the edited file of an applied (or stamped) migration without running it
        (``docshift repair``): its checksum becomes the file's, the applied one moves to
        ``previous_checksums``, and the event keeps both and the reason."""

        def change(old: HistoryRecord) -> HistoryRecord:
            if not old.status.counts_as_applied:
                raise UsageError(
                    f"{old.label} is {old.status.value.replace('_', ' ')}, not applied: there is no "
                    "applied file to repair",
                    hint="`docshift run --execute` runs it with the file as it is now",
                )
            if old.checksum == migration.checksum:
                raise UsageError(
                    f"{migration.label}: the file did not change since it was applied (checksum "
                    f"{old.checksum[:12]}); nothing to repair",
                    hint="`docshift status` shows which migrations drifted",
                )
            return _accepted(old, migration.checksum, EventKind.REPAIRED, repair_id, reason)

        return self._update(migration.id, change)

    def _update(self, migration_id: str, change: Callable[[HistoryRecord], HistoryRecord]) -> HistoryRecord:
        """Change a record that must already exist (History.start creates it)."""

        def existing(old: HistoryRecord | None) -> HistoryRecord:
            if old is None:
                raise DataError(
                    f"migration {migration_id} has no history record",
                    hint="a run must call History.start before recording progress or results",
                )
            return change(old)

        return self._change(migration_id, existing)


def _accepted(old: HistoryRecord, checksum: str, kind: EventKind, by_id: str, reason: str) -> HistoryRecord:
    """``old`` with the file's new ``checksum`` accepted without running (repair, --allow-drift):
    the status, run and counts stay those of the work that applied it."""
    event = HistoryEvent(
        kind,
        old.status,
        Timestamp.now(),
        by_id,
        current_user(),
        checksum,
        previous_checksum=old.checksum,
        reason=reason,
    )
    return dataclasses.replace(
        old,
        checksum=checksum,
        previous_checksums=_with_checksum(old, checksum),
        events=_append(old, event),
    )


def _read_events(stored: Sequence[Mapping[str, Any]]) -> tuple[HistoryEvent, ...]:
    events: list[HistoryEvent] = []
    for data in stored:
        events.append(HistoryEvent.from_data(data, events[-1] if events else None))
    return tuple(events)


def _fresh_record(
    migration: Migration,
    old: HistoryRecord | None,
    event: HistoryEvent,
    *,
    finished_at: Timestamp | None,
    runs: tuple[str, ...] | None,
    overrides: dict[str, Any] | None = None,
) -> HistoryRecord:
    """A migration's record begun anew by ``event`` (a run's start, a stamp): its status, time, run
    and user are the event's; what came before stays in the checksums and the events."""
    return HistoryRecord(
        migration_id=migration.id,
        description=migration.description,
        checksum=migration.checksum,
        status=event.status,
        started_at=event.at,
        finished_at=finished_at,
        run_id=event.run_id,
        user=event.user,
        docshift_version=_docshift_version(),
        counts={},
        previous_checksums=_with_checksum(old, migration.checksum),
        name=migration.name,
        file=describe_file(migration.path) if migration.path else "",
        events=_append(old, event),
        overrides=overrides or {},
        runs=runs,
    )


def _with_checksum(old: HistoryRecord | None, new_checksum: str) -> tuple[str, ...]:
    if old is None:
        return ()
    previous = list(old.previous_checksums)
    if old.checksum != new_checksum and old.checksum not in previous:
        previous.append(old.checksum)
    return tuple(previous)


def _with_run(old: HistoryRecord | None, run_id: str) -> tuple[str, ...] | None:
    """``runs`` once ``run_id`` starts the migration: added to the current application's runs (a
    resume is already there), or the first of a new one. ``None`` stays unknown (see
    :meth:`HistoryRecord.application_runs`): a rollback then refuses rather than miss a run."""
    if old is None:
        return (run_id,)
    runs = old.application_runs()
    if runs is None:
        return None
    return runs if run_id in runs else (*runs, run_id)


def _append(old: HistoryRecord | None, event: HistoryEvent) -> tuple[HistoryEvent, ...]:
    return (*(old.events if old else ()), event)[-MAX_EVENTS:]


def id_key(migration_id: str) -> tuple[int, str]:
    return (int(migration_id), migration_id) if migration_id.isdigit() else (1 << 62, migration_id)

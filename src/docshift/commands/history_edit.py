"""What ``docshift stamp`` and ``docshift repair`` share: they change the history and nothing else.

Both plan from what the history says now, show the plan to a ``confirm`` callback (the CLI prints it
and asks on Cloud Firestore), then take the lease like any writer of the history, plan again under
it, and record only if the plan is still the one that was confirmed: a run that started or finished
in between is never overwritten by what the user agreed to before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from docshift.commands.session import new_run_id
from docshift.config import Config
from docshift.errors import ConflictError, UsageError
from docshift.history import History, HistoryRecord, id_key
from docshift.lock import LeaseLock
from docshift.migration import Migration
from docshift.store import Store, store_for

__all__ = ["HistoryEdit", "HistoryEditPlan", "edit_history", "find_migration_id", "require_reason"]


class HistoryEditPlan(Protocol):
    @property
    def empty(self) -> bool:
        """Nothing would be recorded: no confirmation, no lease, no write."""

    def key(self) -> tuple[Any, ...]:
        """What the confirmation covered: planning again under the lease must give the same."""


PlanT = TypeVar("PlanT", bound=HistoryEditPlan)


@dataclass(frozen=True)
class HistoryEdit(Generic[PlanT]):
    plan: PlanT
    edit_id: str | None
    """The id the events were recorded under (also the lease's run id); ``None``: nothing was."""
    records: tuple[HistoryRecord, ...] = ()
    """The records as written, in the order they were."""
    confirmed: bool = False

    @property
    def recorded(self) -> bool:
        return self.edit_id is not None


def require_reason(reason: str, verb: str) -> str:
    """The reason a user gave, stripped; an empty one is refused (it is the audit trail's why)."""
    text = " ".join(reason.split())
    if not text:
        raise UsageError(
            f"{verb} needs a reason: it is recorded in the history with who and when",
            hint='pass --reason "why", e.g. --reason "data already migrated by the release-42 script"',
        )
    return text


def find_migration_id(wanted: str, migrations: Sequence[Migration], ids: Iterable[str] = ()) -> str | None:
    """The migration id ``wanted`` names: an id (``0003``, or ``3``), or a label (``0003_add_tier``)
    of a file in the folder; ``ids``: more ids to look in (the history's). ``None``: none."""
    labels = {m.label: m.id for m in migrations}
    known = sorted({m.id for m in migrations} | set(ids), key=id_key)
    if wanted in known:
        return wanted
    if wanted in labels:
        return labels[wanted]
    if wanted.isdigit():
        for migration_id in known:
            if migration_id.isdigit() and int(migration_id) == int(wanted):
                return migration_id
    return None


def edit_history(
    config: Config,
    store: Store | None,
    plan: Callable[[History, str], PlanT],
    record: Callable[[History, PlanT, str], Sequence[HistoryRecord]],
    *,
    confirm: Callable[[PlanT], bool] | None,
    dry_run: bool,
) -> HistoryEdit[PlanT]:
    """Plan (``plan(history, where)``), confirm, then under the lease plan again and ``record``.

    ``confirm`` ``None``: a library caller that asked for it; ``dry_run``: plan only.
    """
    with store_for(config, store) as active:
        prefix = config.store.state_prefix
        history, where = History(active, prefix), active.info.describe()
        planned = plan(history, where)
        if dry_run or planned.empty:
            return HistoryEdit(planned, None)
        if confirm is not None and not confirm(planned):
            return HistoryEdit(planned, None)
        edit_id = new_run_id()
        with LeaseLock(active, prefix, run_id=edit_id):
            again = "run the same command again to see, and confirm, what it would record now"
            try:
                now = plan(history, where)
            except UsageError as refused:  # what was confirmed is no longer allowed
                raise ConflictError(
                    f"the history changed while you confirmed: {refused.message}; nothing was recorded",
                    code="ABORTED",
                    hint=refused.hint or again,
                ) from None
            if now.key() != planned.key():
                raise ConflictError(
                    "the history changed while you confirmed (a run started or finished); nothing "
                    "was recorded",
                    code="ABORTED",
                    hint=again,
                )
            records = tuple(record(history, now, edit_id))
        return HistoryEdit(now, edit_id, records, confirmed=True)

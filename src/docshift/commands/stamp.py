"""``docshift stamp ID --reason "..."``: mark migrations applied without running them.

For a database whose data already has a migration's shape (adopting docshift on an existing
database, a change made by an earlier tool or by hand): Alembic's ``stamp``, Flyway's ``baseline``.
Each migration has its own history record here, so ``stamp ID`` records ID; the older migrations
still pending would be left behind (and ``run`` would then refuse them as out of order), so that is
refused unless ``include_older`` stamps them too. Only migrations of which no docshift writes remain
(pending, rolled back) can be stamped: a partial, failed or interrupted one has writes of a run
that stamping would hide from rollback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from docshift.commands.history_edit import HistoryEdit, edit_history, find_migration_id, require_reason
from docshift.config import Config
from docshift.errors import DocshiftError, UsageError
from docshift.history import History, HistoryRecord, current_user, id_key
from docshift.loader import load_migrations
from docshift.migration import Migration
from docshift.planning import MigrationState, StateKind, migration_states
from docshift.store import Store

__all__ = ["StampItem", "StampOptions", "StampPlan", "plan_stamp", "stamp"]

_STAMPABLE = (StateKind.PENDING, StateKind.ROLLED_BACK)
_TAKEN_AS_APPLIED = (StateKind.APPLIED, StateKind.STAMPED, StateKind.DRIFTED)


@dataclass(frozen=True)
class StampOptions:
    migration_id: str
    reason: str
    include_older: bool = False
    """Also stamp every older migration still pending or rolled back (refused without it)."""
    dry_run: bool = False


@dataclass(frozen=True)
class StampItem:
    migration: Migration
    was: StateKind
    """``pending`` or ``rolled_back``."""


@dataclass(frozen=True)
class StampPlan:
    where: str
    target: Migration
    target_state: StateKind
    items: tuple[StampItem, ...]
    """What will be stamped, oldest first (empty: ``target`` is taken as applied already)."""
    reason: str
    user: str

    @property
    def empty(self) -> bool:
        return not self.items

    def key(self) -> tuple[Any, ...]:
        return tuple((i.migration.id, i.was, i.migration.checksum) for i in self.items)


def plan_stamp(
    migrations: Sequence[Migration],
    records: Mapping[str, HistoryRecord],
    options: StampOptions,
    where: str = "",
) -> StampPlan:
    """What ``stamp`` would record, or the refusal (:class:`UsageError` with a hint)."""
    reason = require_reason(options.reason, "stamp")
    wanted = find_migration_id(options.migration_id, migrations, records)
    by_id = {m.id: m for m in migrations}
    if wanted is None:
        raise UsageError(
            f"no migration {options.migration_id!r} in the folder or the history",
            hint="`docshift status` lists the migrations and their ids",
        )
    if wanted not in by_id:
        raise UsageError(
            f"migration {wanted} has no file here: stamp records the file's checksum",
            hint="restore the migration file from version control",
        )
    states = {s.migration_id: s for s in migration_states(migrations, records)}
    target = states[wanted]
    if target.kind not in _STAMPABLE and target.kind not in _TAKEN_AS_APPLIED:
        raise _written_by_a_run(target)
    older = [
        s
        for s in states.values()
        if id_key(s.migration_id) < id_key(wanted) and s.migration is not None and s.runnable
    ]
    chosen = [target] if target.kind in _STAMPABLE else []
    if options.include_older or chosen:
        for state in older:
            if state.kind not in _STAMPABLE:
                raise _written_by_a_run(state)
    if older and chosen and not options.include_older:
        labels = ", ".join(f"{s.label} ({_shown(s)})" for s in older)
        raise UsageError(
            f"stamping {target.label} would leave older migration(s) behind, not applied: {labels}",
            hint="pass --include-older to stamp those too, or run them first "
            f"(docshift run --execute --to {older[-1].migration_id})",
        )
    if options.include_older:
        chosen = [*older, *chosen]
    items = tuple(StampItem(s.migration, s.kind) for s in chosen if s.migration is not None)
    return StampPlan(where, by_id[wanted], target.kind, items, reason, current_user())


def _shown(state: MigrationState) -> str:
    if state.kind is StateKind.RUNNING:  # its run may be live, or killed (status tells by the lease)
        return "recorded as running"
    return state.kind.value.replace("_", " ")


def _written_by_a_run(state: MigrationState) -> UsageError:
    """A partial, failed, interrupted or running migration: a run wrote some of it."""
    run_id = state.record.run_id if state.record is not None else "?"
    return UsageError(
        f"{state.label} is {_shown(state)}: run {run_id} wrote part of it, and stamping would hide "
        "those writes from rollback",
        hint=f"finish it (docshift run --execute, or --resume {run_id}) or undo it "
        f"(docshift rollback {run_id} --execute); then it needs no stamp",
    )


def stamp(
    config: Config,
    options: StampOptions,
    *,
    confirm: Callable[[StampPlan], bool] | None = None,
    store: Store | None = None,
) -> HistoryEdit[StampPlan]:
    """Stamp ``options.migration_id`` (and with ``include_older`` the older pending ones) as
    applied, after ``confirm`` saw the plan; ``dry_run``: plan only. Loads the folder strictly (a
    bad file fails the command), changes only the history, under the lease."""
    migrations = load_migrations(config.migrations_dir)

    def plan(history: History, where: str) -> StampPlan:
        return plan_stamp(migrations, history.all(), options, where)

    return edit_history(config, store, plan, _record, confirm=confirm, dry_run=options.dry_run)


def _record(history: History, plan: StampPlan, stamp_id: str) -> list[HistoryRecord]:
    """One record per migration, oldest first; a failure says which were stamped before it (a
    second ``stamp`` finds those applied and stamps the rest)."""
    done: list[HistoryRecord] = []
    for item in plan.items:
        try:
            done.append(history.stamp(item.migration, stamp_id, plan.reason))
        except DocshiftError as error:
            stamped = ", ".join(r.label for r in done) or "none"
            error.message += f" (while stamping {item.migration.label}; stamped before it: {stamped})"
            error.hint = (
                f"{error.hint}; then " if error.hint else ""
            ) + "run the same stamp again: what is stamped stays, the rest is stamped then"
            raise
    return done

"""``docshift unlock --force``: remove a lease left by a run that cannot release it (killed hard,
machine gone), after a human has seen whose it is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from docshift.config import Config
from docshift.lock import Lease, force_unlock, read_lease
from docshift.store import Store, store_for

__all__ = ["UnlockResult", "unlock"]


@dataclass(frozen=True)
class UnlockResult:
    lease: Lease | None
    """The lease found (``None``: nothing was locked)."""
    confirmed: bool
    removed: bool
    """False when confirmed but the lease vanished meanwhile (its run ended)."""


def unlock(config: Config, confirm: Callable[[Lease], bool], store: Store | None = None) -> UnlockResult:
    """Show the lease to ``confirm``; if it agrees, delete exactly that run's lease."""
    with store_for(config, store) as active:
        prefix = config.store.state_prefix
        lease = read_lease(active, prefix)
        if lease is None:
            return UnlockResult(None, False, False)
        if not confirm(lease):
            return UnlockResult(lease, False, False)
        removed = force_unlock(active, prefix, expected=lease)
        return UnlockResult(lease, True, removed is not None)

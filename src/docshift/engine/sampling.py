"""Deterministic selection by document path, for ``--sample`` and canary stages.

A document's bucket depends only on its path, so the same documents are chosen on every run and a
larger percentage always includes a smaller one.
"""

from __future__ import annotations

import hashlib

__all__ = ["bucket", "in_sample"]


def bucket(path: str) -> float:
    """A stable number in [0, 100) for this path."""
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


def in_sample(path: str, percent: float | None, above: float = 0.0) -> bool:
    """Whether the path falls in ``[above, percent)`` percent (``None`` means everything)."""
    if percent is None:
        return True
    return above <= bucket(path) < percent

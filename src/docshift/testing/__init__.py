"""Test support for migrations, shipped with docshift (as ``click.testing`` ships with click): the
project's own tests use exactly these.

A migration is tested the way it runs: load the file, run it with the library call the CLI makes, on
an in-memory store with Firestore's semantics (name order, update-time guards, value limits), and
check the documents it left::

    from pathlib import Path

    from docshift import Config
    from docshift.commands.run import RunOptions, run
    from docshift.loader import load_migrations
    from docshift.store import Write
    from docshift.testing import MemoryStore, RecordingStore

    def test_split_full_name(tmp_path: Path) -> None:
        assert [m.id for m in load_migrations(Path("migrations"))] == ["0001"]  # the file loads
        store = RecordingStore(MemoryStore())
        store.commit([Write.set("users/ada", {"full_name": "Ada Lovelace", "email": "a@b.c"})])
        config = Config(migrations_dir=Path("migrations"), runs_dir=tmp_path / "runs")

        run(config, RunOptions(), store=store)  # a dry run writes nothing
        assert store.commits == 1

        run(config, RunOptions(execute=True), store=store)
        assert store.get("users/ada").data == {
            "first_name": "Ada", "last_name": "Lovelace", "email": "a@b.c"
        }

What is here:

* :class:`MemoryStore`: the in-memory store (the same one docshift's dry-run rollbacks simulate on).
* :class:`RecordingStore`: wraps a store and keeps every commit request (how many, which paths).
* :class:`FaultInjectingStore` and :class:`LostReplies`: wrap a store so that writes or requests
  fail, or a request lands and its reply is lost; put them under
  ``docshift.store.RetryingStore`` to check that a run still ends with the right data and counts.
* :class:`RateLimitedStore` and :class:`BreakingStreams`: wrap a store so that it refuses writes
  above a rate (RESOURCE_EXHAUSTED) or breaks every stream after some documents (UNAVAILABLE), as
  Firestore does under load and at a stream's lifetime; with a :class:`SimulatedClock` a throttled
  run is exact whatever the machine's speed.
* :class:`RecordingHooks`: keeps every event of a run (``run(..., hooks=...)``), typed: ``of(kind)``,
  ``warnings()`` (:mod:`docshift.engine.hooks` names them).
* :func:`assert_documents`: documents (or one document's data) as expected, or an ``AssertionError``
  listing each field that differs; :class:`Seeder`, :class:`Migrator`, :func:`export`: what the
  pytest plugin's ``seed``, ``migrate`` and ``export`` fixtures are.
* The pytest plugin (:mod:`docshift.testing.plugin`, registered when docshift is installed) and the
  built-in checks as tests to import (:mod:`docshift.testing.builtin`): see docs/testing.md. Only
  pytest imports those two; this package does not import pytest.

Everything here is plain code over the public interfaces (:class:`~docshift.store.Store`,
:class:`~docshift.engine.hooks.RunHooks`): no mocks, so a test that passes here exercises the same
engine as a run against Firestore.
"""

from __future__ import annotations

from docshift.store.memory import MemoryStore
from docshift.testing.faults import FaultInjectingStore, LostReplies
from docshift.testing.harness import Migrated, Migrator, Seeder, assert_documents, export
from docshift.testing.hooks import RecordingHooks
from docshift.testing.recording import RecordingStore
from docshift.testing.throttling import BreakingStreams, RateLimitedStore, Request, SimulatedClock

__all__ = [
    "BreakingStreams",
    "FaultInjectingStore",
    "LostReplies",
    "MemoryStore",
    "Migrated",
    "Migrator",
    "RateLimitedStore",
    "RecordingHooks",
    "RecordingStore",
    "Request",
    "Seeder",
    "SimulatedClock",
    "assert_documents",
    "export",
]

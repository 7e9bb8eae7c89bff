"""``--beam-option run_files=URL``: the workers' files through Beam's ``FileSystems``, against the emulator.

The URL's scheme (``docshift-test://``) is one that only this test registers with Beam, the way
any file system is added to Beam (a ``FileSystem`` subclass: here Beam's local one over a folder
of its own), so nothing can reach those files by a local path: the run, its report, its resume
and both rollbacks must go through ``FileSystems``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

from docshift.beam import ConfiguredStore
from docshift.commands.rollback import RollbackOptions, run_rollback
from docshift.commands.run import RunOptions, result_of, run
from docshift.errors import EmergencyStop
from docshift.history import History, MigrationStatus
from docshift.runfolder.layout import RunFolder
from tests.integration.run_support import differences, export
from tests.integration.test_beam import COLLECTIONS, _counters, _FailingOnce, _letters, _seeded

SCHEME = "docshift-test"


class FolderFileSystem(LocalFileSystem):  # type: ignore[misc]
    """``docshift-test://PATH``: the files of ``root/PATH`` (set by the test)."""

    root: ClassVar[Path | None] = None
    opened: ClassVar[list[str]] = []

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    @classmethod
    def _local(cls, url: str) -> str:
        assert cls.root is not None, "the test sets the folder first"
        prefix = f"{SCHEME}://"
        assert url.startswith(prefix), url
        return str(cls.root / url[len(prefix) :])

    @classmethod
    def _url(cls, path: str) -> str:
        assert cls.root is not None
        return f"{SCHEME}://{os.path.relpath(path, cls.root)}"

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *paths])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        super().mkdirs(self._local(path))

    def create(self, path: str, *args: Any, **kwargs: Any) -> Any:
        FolderFileSystem.opened.append(path)
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path: str) -> bool:
        return bool(super().exists(self._local(path)))

    def size(self, path: str) -> int:
        return int(super().size(self._local(path)))

    def delete(self, paths: list[str]) -> None:
        super().delete([self._local(p) for p in paths])

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def match(self, patterns: list[str], limits: list[int] | None = None) -> list[MatchResult]:
        results = []
        for pattern in patterns:
            paths = sorted(glob.glob(self._local(pattern)))
            found = [FileMetadata(self._url(p), os.path.getsize(p)) for p in paths if os.path.isfile(p)]
            results.append(MatchResult(pattern, found))
        return results


@pytest.fixture
def remote_folder(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "bucket"
    root.mkdir()
    FolderFileSystem.root = root
    FolderFileSystem.opened = []
    yield root
    FolderFileSystem.root = None


def _written(root: Path, run_id: str) -> list[str]:
    return sorted(str(p.relative_to(root / run_id)) for p in (root / run_id).rglob("*") if p.is_file())


def test_a_run_writes_its_files_under_the_url_and_reads_them_back_for_the_report_and_rollbacks(
    emulator_host: str, tmp_path: Path, remote_folder: Path
) -> None:
    engine_config, engine_store = _seeded(emulator_host, tmp_path / "engine")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    url = f"{SCHEME}://runs"
    try:
        before = export(beam_store, COLLECTIONS)
        by_engine = run(engine_config, RunOptions(execute=True, shards=4), store=engine_store)
        chosen = RunOptions(execute=True, shards=4, runner="beam", beam_options=(f"run_files={url}",))
        by_beam = run(beam_config, chosen, store=beam_store)
        assert by_beam.state == "finished"
        assert _counters(by_beam) == _counters(by_engine)
        assert _letters(beam_config, by_beam.run_id) == _letters(engine_config, by_engine.run_id)
        # The workers wrote every journal segment, dead letter file and record under the URL.
        written = _written(remote_folder / "runs", by_beam.run_id)
        assert any("/before-images/p00000-" in name for name in written)
        assert any("/partitions/p00003.json" in name for name in written)
        assert any("/dead-letters/" in name for name in written)
        assert all(name.startswith(f"{url}/{by_beam.run_id}/") for name in FolderFileSystem.opened)

        # The Beam rollback reads the journals from the URL and writes its own records under it.
        rolled = run_rollback(
            beam_config,
            RollbackOptions(
                run_id=by_beam.run_id,
                execute=True,
                strategy="restore",
                runner="beam",
                beam_options=(f"run_files={url}",),
            ),
            store=beam_store,
        )
        assert not differences(export(beam_store, COLLECTIONS), before, times=False)
        assert all(item.counters["verified"] > 0 for item in rolled.items)
        assert any("/undo-partitions/" in name for name in _written(remote_folder / "runs", rolled.run_id))
        history = History(beam_store, beam_config.store.state_prefix)
        assert all(r.status is MigrationStatus.ROLLED_BACK for r in history.all().values())
    finally:
        engine_store.close()
        beam_store.close()


def test_a_killed_submitter_leaves_its_files_under_the_url_and_the_rollback_fetches_them(
    emulator_host: str, tmp_path: Path, remote_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run folder holds none of the journals (as after a submitting machine died): the resume
    and the in-process rollback read them back through FileSystems."""
    engine_config, engine_store = _seeded(emulator_host, tmp_path / "engine")
    beam_config, beam_store = _seeded(emulator_host, tmp_path / "beam")
    url = f"{SCHEME}://runs"
    opened = ConfiguredStore.__call__
    _FailingOnce.armed = True
    monkeypatch.setattr(ConfiguredStore, "__call__", lambda self: _FailingOnce(opened(self), after=4))
    try:
        before = export(beam_store, COLLECTIONS)
        by_engine = run(engine_config, RunOptions(execute=True, shards=4), store=engine_store)
        chosen = RunOptions(execute=True, shards=4, runner="beam", beam_options=(f"run_files={url}",))
        with pytest.raises(EmergencyStop, match="the Beam pipeline failed") as stopped:
            run(beam_config, chosen, store=beam_store)
        failed = result_of(stopped.value)
        assert failed is not None
        folder = RunFolder.of(beam_config.runs_dir, failed.run_id)
        for files in folder.migrations():  # as if the submitting machine had copied nothing back
            for path in [*files.attempt_journals(), *files.path.glob("partitions/*.json")]:
                path.unlink()
        resumed = run(beam_config, RunOptions(execute=True, resume=failed.run_id), store=beam_store)
        assert resumed.state == "finished"
        assert _counters(resumed) == _counters(by_engine)
        for files in folder.migrations():
            for path in files.attempt_journals():
                path.unlink()
        run_rollback(
            beam_config,
            RollbackOptions(run_id=failed.run_id, execute=True, strategy="restore"),
            store=beam_store,
        )
        assert not differences(export(beam_store, COLLECTIONS), before, times=False)
    finally:
        engine_store.close()
        beam_store.close()


def test_a_url_no_file_system_knows_is_refused_before_the_run_starts(
    emulator_host: str, tmp_path: Path
) -> None:
    config, store = _seeded(emulator_host, tmp_path / "beam")
    try:
        chosen = RunOptions(execute=True, shards=2, runner="beam", beam_options=("run_files=nosuch://x",))
        from docshift.errors import UsageError

        with pytest.raises(UsageError, match="no file system") as refused:
            run(config, chosen, store=store)
        assert refused.value.hint
        assert not list(config.runs_dir.glob("*/run.json"))
    finally:
        store.close()

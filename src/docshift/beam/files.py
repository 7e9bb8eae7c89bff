"""The run folder files a Beam pipeline's workers write, under a URL through Beam's ``FileSystems``.

``--beam-option run_files=URL`` puts the files the workers write (each attempt's before-image
journal and dead letters, the partitions' records, a rollback's partition records and lists) under
``URL/RUN_ID/NNNN_label/...``, with the names the run folder gives them
(:mod:`docshift.runfolder.layout`), in any file system Beam's ``FileSystems`` knows (``gs://`` on
Dataflow). Without it they are written in the local run folder itself, with the local writers'
fsync and atomic renames.

:class:`RunFiles` names each file by its path in the local run folder and maps it to the URL; the
process that submits the pipeline reads the workers' files back through it, copying them into the
local run folder (:meth:`RunFiles.mirror`), where the checkpoint, the report, ``--resume``,
``status`` and the rollback find them as in any run.

Rules this module keeps:
- a journal under a URL is written as one object per member (:class:`PublishedJournal`), each
  closed (stored for good: an object store has no appends and no fsync) **before** the commit it
  journals is sent, named ``pPART-ATTEMPT.SEGMENT.jsonl.gz`` so the attempt's segments read back in
  order as one journal;
- a record (and a journal segment) is written whole: as one object in an object store (``gs://``,
  ``s3://``, ``azfs://``: stored when closed, replacing the old one at once), elsewhere (a local or
  shared file system, HDFS: a file shows from its creation on) under a ``.partial-`` name that
  nothing reads, then renamed over it, so a reader never finds half a record;
- any failure of the file system is a :class:`~docshift.errors.RunFileError`, as for a local file.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from docshift.errors import RunFileError
from docshift.runfolder.atomic import FileFormat, run_file, write_atomic
from docshift.runfolder.journal import JournalEntry, JournalWriter

__all__ = ["PUBLISHED_WHOLE", "RUN_FILES_OPTION", "PublishedJournal", "RunFiles", "run_files_of"]

RUN_FILES_OPTION = "run_files"
"""The ``--beam-option`` that puts the workers' files under a URL (see the module docstring)."""


def run_files_of(beam_options: Sequence[str]) -> str | None:
    """The ``run_files`` URL among ``KEY=VALUE`` Beam options (the last one given); None: local."""
    found = None
    for pair in beam_options:
        key, sep, value = pair.partition("=")
        if sep and key.strip().removeprefix("--") == RUN_FILES_OPTION and value.strip():
            found = value.strip()
    return found


@contextlib.contextmanager
def _remote(url: str) -> Iterator[None]:
    """Run the block; a failure of the file system becomes a :class:`RunFileError` naming ``url``."""
    try:
        yield
    except RunFileError:
        raise
    except Exception as error:  # Beam's BeamIOError, the file system's own errors
        raise RunFileError(
            f"{url}: {type(error).__name__}: {error}",
            path=url,
            hint="check that every worker and this machine can write the run_files URL, then resume the run",
        ) from None


PUBLISHED_WHOLE = frozenset({"gs", "s3", "azfs"})
"""The schemes of object stores, where an object is stored whole when it is closed, and replaces
the one of its name at once: a reader finds the old object or the new one, never part of one."""


def _create(url: str, payload: bytes) -> None:
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    # Stored as given: Beam would otherwise pick a compression from the name (a journal's ``.gz``).
    handle = FileSystems.create(url, "application/octet-stream", CompressionTypes.UNCOMPRESSED)
    try:
        handle.write(payload)
    finally:
        handle.close()


class RunFiles:
    """The files of the run folders in ``runs_dir``, as the workers write them: under ``url``
    (through Beam's ``FileSystems``), or in ``runs_dir`` itself when ``url`` is None."""

    def __init__(self, runs_dir: Path | str, url: str | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.url = url.rstrip("/") if url else None

    @property
    def remote(self) -> bool:
        return self.url is not None

    def url_of(self, path: Path) -> str:
        """Where the workers write the run folder file ``path``."""
        if self.url is None:
            return str(path)
        return "/".join([self.url, *path.relative_to(self.runs_dir).parts])

    # ------------------------------------------------------------------ writing
    def write(self, path: Path, payload: bytes) -> None:
        """Write the whole file (replacing it): atomically in the run folder, as one object under a URL."""
        if self.url is None:
            write_atomic(path, payload)
            return
        from apache_beam.io.filesystems import FileSystems

        url = self.url_of(path)
        with _remote(url):
            if FileSystems.get_scheme(url) in PUBLISHED_WHOLE:
                _create(url, payload)
                return
            # Elsewhere a file shows from its creation on: written under a name nothing reads, then
            # renamed over the record (a worker killed meanwhile leaves only that name behind).
            partial = f"{url}.partial-{uuid.uuid4().hex}"
            _create(partial, payload)
            try:
                FileSystems.rename([partial], [url])
            except Exception:
                if not FileSystems.exists(url):
                    raise
                # A file system whose rename does not replace (HDFS): the old record goes first, so
                # a reader finds, for a moment, no record rather than half of one.
                FileSystems.delete([url])
                FileSystems.rename([partial], [url])

    def write_format(self, file_format: FileFormat, path: Path, body: dict[str, Any]) -> None:
        """A versioned run file (``file_format``), whole."""
        if self.url is None:
            file_format.write(path, body)
            return
        with tempfile.TemporaryDirectory(prefix="docshift-run-file-") as folder:
            staged = Path(folder) / path.name
            file_format.write(staged, body)
            self.write(path, staged.read_bytes())

    def delete(self, path: Path) -> None:
        """Remove the file if it is there."""
        if self.url is None:
            with run_file(path):
                path.unlink(missing_ok=True)
            return
        from apache_beam.io.filesystems import FileSystems

        url = self.url_of(path)
        with _remote(url):
            if FileSystems.exists(url):
                FileSystems.delete([url])

    # ------------------------------------------------------------------ reading
    def exists(self, path: Path) -> bool:
        if self.url is None:
            return path.is_file()
        from apache_beam.io.filesystems import FileSystems

        url = self.url_of(path)
        with _remote(url):
            return bool(FileSystems.exists(url))

    def read(self, path: Path) -> bytes | None:
        """The file's content; None when it is not there."""
        if self.url is None:
            with run_file(path):
                try:
                    return path.read_bytes()
                except FileNotFoundError:
                    return None
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        url = self.url_of(path)
        with _remote(url):
            if not FileSystems.exists(url):
                return None
            handle = FileSystems.open(url, "application/octet-stream", CompressionTypes.UNCOMPRESSED)
            try:
                return bytes(handle.read())
            finally:
                handle.close()

    def read_format(self, file_format: FileFormat, path: Path) -> dict[str, Any] | None:
        """A versioned run file (``file_format``); None when it is not there."""
        if self.url is None:
            return file_format.read(path) if path.is_file() else None
        payload = self.read(path)
        if payload is None:
            return None
        with tempfile.TemporaryDirectory(prefix="docshift-run-file-") as folder:
            staged = Path(folder) / path.name
            staged.write_bytes(payload)
            return file_format.read(staged)

    def glob(self, pattern: Path) -> list[Path]:
        """The files matching ``pattern`` (a run folder path with ``*``), by their run folder paths,
        in name order."""
        if self.url is None:
            return sorted(pattern.parent.glob(pattern.name))
        from apache_beam.io.filesystems import FileSystems

        url = self.url_of(pattern)
        with _remote(url):
            found = FileSystems.match([url])[0].metadata_list
        prefix = self.url_of(pattern.parent) + "/"
        paths = []
        for metadata in found:
            name = str(metadata.path)
            if name.startswith(prefix) and "/" not in name[len(prefix) :]:
                paths.append(pattern.parent / name[len(prefix) :])
        return sorted(paths)

    def fetch(self, path: Path, into: Path | None = None) -> Path | None:
        """The file as a local file: ``path`` itself in the run folder; under a URL, a copy at
        ``into`` (default: ``path``, the run folder's place for it). None when it is not there."""
        if self.url is None:
            return path if path.is_file() else None
        target = into or path
        payload = self.read(path)
        if payload is None:
            return None
        write_atomic(target, payload)
        return target

    def mirror(self, pattern: Path) -> list[Path]:
        """Copy the files matching ``pattern`` into the run folder (those not there yet: what the
        workers store is written once); their run folder paths."""
        found = self.glob(pattern)
        if self.url is None:
            return found
        for path in found:
            if not path.is_file():
                self.fetch(path)
        return found


class PublishedJournal(JournalWriter):
    """An attempt's before-image journal under a URL: written through the local journal writer
    into a staging file, each appended member also stored as its own object
    (``NAME.SEGMENT.jsonl.gz``) before :meth:`append` returns, so before the commit it journals
    is sent. The segments read back, in name order, as the attempt's journal."""

    def __init__(self, files: RunFiles, path: Path, staging: Path) -> None:
        super().__init__(staging, note_unconfirmed=False)
        self.files = files
        self.published = path
        self._segments = 0
        self._publishing = threading.Lock()

    def segment(self, number: int) -> Path:
        stem = self.published.name.removesuffix(".jsonl.gz")
        return self.published.with_name(f"{stem}.{number:06d}.jsonl.gz")

    def append(
        self,
        entries: Sequence[JournalEntry],
        *,
        durable: bool = False,
        spans: list[tuple[int, int]] | None = None,
    ) -> None:
        if not entries:
            return
        with self._publishing:
            start = self.size()
            super().append(entries, durable=durable, spans=spans)
            end = self.size()
            with run_file(self.path), self.path.open("rb") as staged:
                staged.seek(start)
                member = staged.read(end - start)
            self.files.write(self.segment(self._segments), member)
            self._segments += 1


def staging_folder() -> Path:
    """A worker's own folder for the files it stages before storing them under a URL."""
    return Path(tempfile.mkdtemp(prefix="docshift-beam-"))


def remove_staging(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def mirror_run(runs_dir: Path, run_id: str, url: str) -> None:
    """Copy a Beam run's files under ``url`` into its run folder: the partitions' records, the
    attempts' journals and dead letters of each migration it started (a run killed before it
    copied them itself: a rollback or a resume reads them there)."""
    from docshift.runfolder.layout import RunFolder

    files = RunFiles(runs_dir, url)
    for migration in RunFolder.of(runs_dir, run_id).migrations():
        files.mirror(migration.partition_record(0).with_name("*.json"))
        files.mirror(migration.attempt_journal(0, "*").with_name("*.jsonl.gz"))
        files.mirror(migration.attempt_dead_letters(0, "*").with_name("*.jsonl"))

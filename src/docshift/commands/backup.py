"""``docshift backup`` and ``docshift restore``: full copies of collections in files, and back.

A backup streams each collection (with ``recursive``, in one query that also covers every
subcollection below it) into gzip JSON-lines files, hashing as it writes, and writes the manifest
last. Every read is at one read time (the moment the backup starts, or ``read_time``), recorded in
the manifest: the backup is the store as it was at that moment, whatever is written meanwhile.
A restore refuses a backup whose manifest or files do not match before it writes anything, then
sets every document (safe to repeat), and can read everything back to compare.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from docshift import __version__
from docshift.backup.manifest import BackupFile, BackupManifest, read_manifest, write_manifest
from docshift.backup.reader import check_files
from docshift.backup.restore import (
    PathMap,
    RestoreReport,
    VerifyReport,
    records,
    verify_documents,
    write_documents,
)
from docshift.backup.writer import DEFAULT_DOCS_PER_FILE, CollectionWriter
from docshift.config import Config
from docshift.engine.controls import Controls
from docshift.engine.hooks import (
    BackupFinished,
    BackupHooks,
    BackupProgressed,
    BackupStarted,
    CheckStarted,
    CollectionEmpty,
    FileChecked,
    RestoreFinished,
    RestoreStarted,
    VerifyStarted,
)
from docshift.engine.limits import RateLimiter
from docshift.engine.writer import WriteGuards
from docshift.errors import DataError, StoreError, UsageError
from docshift.store import Query, Store, store_for
from docshift.store.read_time import pin
from docshift.store.semantics import MAX_WRITES_PER_REQUEST
from docshift.values import Timestamp

__all__ = [
    "BackupManifest",
    "BackupOptions",
    "RestoreReport",
    "VerifyReport",
    "backup",
    "restore",
    "restore_failure",
    "verify",
    "verify_failure",
]

_PROGRESS_EVERY = 1000


def _sources(collections: Sequence[str], *, recursive: bool, group: bool) -> list[str]:
    """The collections to back up, checked: valid paths, no repeats, no overlap under recursion."""
    if recursive and group:
        raise UsageError(
            "--recursive cannot be combined with --group",
            hint="a collection group already spans every depth; back up its parents with --recursive instead",
        )
    names = [name.strip("/") for name in collections]
    for name in names:
        Query(name, group=group)  # refuses a document path, or a group id with a slash, with a hint
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"collection {repeated[0]!r} is named twice", hint="name each collection once")
    if recursive:
        for outer in names:
            for inner in names:
                if inner.startswith(outer + "/"):
                    raise UsageError(
                        f"{inner} is inside {outer}, which --recursive already backs up",
                        hint=f"drop {inner} from the command",
                    )
    return names


def _prepare(out: Path) -> bool:
    """Create ``out`` (True if it was created); an existing non-empty folder is refused."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out} exists and is not a folder", hint="pass a new folder to --out")
        if any(out.iterdir()):
            raise UsageError(
                f"{out} is not empty", hint="back up into a new folder; docshift never overwrites a backup"
            )
        return False
    out.mkdir(parents=True)
    return True


def _seconds(start: Timestamp, end: Timestamp) -> float:
    return (end.seconds - start.seconds) + (end.nanos - start.nanos) / 1e9


@dataclass(frozen=True)
class BackupOptions:
    """What ``docshift backup`` backs up, and into which new folder."""

    collections: Sequence[str]
    """Collection paths, or collection group ids with ``group``."""
    out: Path
    recursive: bool = False
    group: bool = False
    all_collections: bool = False
    """Every root collection except docshift's own, recursively (name none)."""
    docs_per_file: int = DEFAULT_DOCS_PER_FILE
    read_time: Timestamp | None = None
    """The moment to back up the store as it was (``--read-time``); None: when the backup starts."""


def backup(
    config: Config,
    options: BackupOptions,
    *,
    store: Store | None = None,
    hooks: BackupHooks | None = None,
) -> BackupManifest:
    """Back up ``options.collections`` into the new folder ``options.out``.

    Memory stays flat: documents stream from one query per collection into the current file.
    A failure removes the files written so far, so an unfinished backup never looks usable.
    """
    collections, out, recursive, group = options.collections, options.out, options.recursive, options.group
    all_collections, docs_per_file = options.all_collections, options.docs_per_file
    hooks = hooks or BackupHooks()
    if docs_per_file < 1:
        raise UsageError("docs_per_file must be at least 1", hint="pass --docs-per-file 1 or more")
    if all_collections and (collections or group):
        raise UsageError(
            "--all backs up every collection: name none, and no --group",
            hint="drop --all to back up the collections named, or drop the names (and --group)",
        )
    if not all_collections and not collections:
        raise UsageError(
            "name at least one collection to back up",
            hint="e.g. docshift backup users orders --out backups/today, or --all",
        )
    with store_for(config, store) as live:
        writers: list[CollectionWriter] = []
        created = prepared = False
        try:
            active = pin(live, options.read_time)
            if all_collections:
                state = config.store.state_prefix + "_"
                collections = [name for name in active.list_collections() if not name.startswith(state)]
                recursive = True
            names = _sources(collections, recursive=recursive, group=group)
            created = _prepare(out)
            prepared = True
            started, clock = Timestamp.now(), time.monotonic()
            total = 0
            for index, name in enumerate(names, start=1):
                writer = CollectionWriter(out, index, name, docs_per_file)
                writers.append(writer)
                hooks.phase_started(BackupStarted(name, group, recursive))
                found = 0
                for doc in active.stream(Query(name, group=group, descendants=recursive)):
                    writer.add(doc)
                    total += 1
                    found += 1
                    if total % _PROGRESS_EVERY == 0:
                        elapsed = time.monotonic() - clock
                        hooks.phase_progressed(
                            BackupProgressed(
                                name,
                                total,
                                sum(len(w.files) for w in writers),
                                total / elapsed if elapsed > 0 else 0.0,
                            )
                        )
                writer.close()
                if not found:
                    hooks.warning(
                        CollectionEmpty(_nothing_found(name, active, group=group, recursive=recursive), name)
                    )
            files: list[BackupFile] = [entry for writer in writers for entry in writer.files]
            manifest = BackupManifest(
                project=active.info.project,
                database=active.info.database,
                emulator=active.info.is_emulator,
                collections=tuple(names),
                group=group,
                recursive=recursive,
                docshift_version=__version__,
                started_at=started,
                finished_at=Timestamp.now(),
                files=tuple(files),
                read_time=active.read_time,
            )
            write_manifest(out, manifest)
        except BaseException:
            for writer in writers:
                writer.discard()
            if prepared:
                # The folder was new or empty, so all in it is this backup's: also a part file that an
                # interrupt (Ctrl-C, SIGTERM) left between its creation and its writer taking note of it.
                for leftover in out.iterdir():
                    if leftover.is_file():
                        leftover.unlink(missing_ok=True)
            if created and not any(out.iterdir()):
                out.rmdir()
            raise
    hooks.phase_finished(
        BackupFinished(
            manifest.documents,
            len(manifest.files),
            manifest.bytes,
            _seconds(manifest.started_at, manifest.finished_at),
        )
    )
    return manifest


def _nothing_found(name: str, store: Store, *, group: bool, recursive: bool) -> str:
    """The warning for a collection with no documents: most often a misspelled name or the wrong
    project; the backup itself is still made (an empty collection is a valid backup)."""
    what = f"collection group {name!r}" if group else f"collection {name!r}"
    where = store.info.describe()
    deeper = "" if recursive or group else "; documents only in its subcollections need --recursive"
    return (
        f"no documents found in {what} in {where}: the backup holds none of it (check the name, "
        f"--project and --database{deeper})"
    )


def _checked(
    folder: Path, into: str | Mapping[str, str] | None, hooks: BackupHooks
) -> tuple[BackupManifest, PathMap]:
    """The manifest and path map, after every file was proven intact: nothing is written before."""
    manifest = read_manifest(folder)
    paths = PathMap.build(manifest, into)
    hooks.phase_started(CheckStarted(len(manifest.files), manifest.documents))
    check_files(
        folder, manifest, lambda entry: hooks.phase_progressed(FileChecked(entry.name, entry.documents))
    )
    return manifest, paths


def _batch_size(config: Config) -> int:
    return min(config.engine.batch_size, MAX_WRITES_PER_REQUEST)


def restore(
    config: Config,
    folder: Path,
    *,
    into: str | Mapping[str, str] | None = None,
    verify: bool = False,
    store: Store | None = None,
    hooks: BackupHooks | None = None,
) -> RestoreReport:
    """Write a backup into the store the config points at (its project and database).

    ``into`` renames the backed-up collection (one name) or collections (``{old: new}``); paths
    below keep their shape. References inside documents are written as they were backed up.
    Every write is a full set, so running the same restore again is safe. The caller confirms
    first (the CLI does, through ``confirm_destructive``).
    """
    hooks = hooks or BackupHooks()
    manifest, paths = _checked(folder, into, hooks)
    with store_for(config, store) as active:
        report = RestoreReport(folder, active.info.describe(), manifest.documents)
        ramp = config.limits.ramp == "on" or (config.limits.ramp == "auto" and not active.info.is_emulator)
        limiter = RateLimiter(
            config.limits.max_writes_per_second, ramp=ramp, adaptive=config.limits.adaptive_rate
        )
        hooks.phase_started(RestoreStarted(manifest.documents, report.target, limiter.limit, ramp))
        write_documents(
            active,
            records(folder, manifest, paths),
            report,
            guards=WriteGuards.from_config(config.engine, config.limits, Controls(limiter)),
            concurrency=config.engine.base_concurrency,
            hooks=hooks,
        )
        if verify:
            hooks.phase_started(VerifyStarted(manifest.documents))
            report.verification = verify_documents(
                active,
                records(folder, manifest, paths),
                manifest.documents,
                batch_size=_batch_size(config),
                concurrency=config.engine.base_concurrency,
                hooks=hooks,
            )
    hooks.phase_finished(RestoreFinished(report.written, report.failed, report.seconds))
    return report


def verify(
    config: Config,
    folder: Path,
    *,
    into: str | Mapping[str, str] | None = None,
    store: Store | None = None,
    hooks: BackupHooks | None = None,
) -> VerifyReport:
    """Compare the store with a backup, document by document, without writing anything."""
    hooks = hooks or BackupHooks()
    manifest, paths = _checked(folder, into, hooks)
    with store_for(config, store) as active:
        hooks.phase_started(VerifyStarted(manifest.documents))
        return verify_documents(
            active,
            records(folder, manifest, paths),
            manifest.documents,
            batch_size=_batch_size(config),
            concurrency=config.engine.base_concurrency,
            hooks=hooks,
        )


def restore_failure(report: RestoreReport) -> StoreError | None:
    """The error a restore with documents that could not be written ends with (exit 5)."""
    if not report.failed:
        return None
    path, error = report.failures[0]
    return StoreError(
        f"{report.failed:,} documents could not be restored (first: {path}: {error})",
        hint="fix the cause and run the same restore again; it is safe to repeat",
    )


def verify_failure(verification: VerifyReport) -> DataError | None:
    """The error a comparison that found the store unlike the backup ends with (exit 3)."""
    if verification.ok:
        return None
    first_path, first_problem = verification.samples[0]
    return DataError(
        f"the store does not match the backup: {verification.missing:,} missing and "
        f"{verification.different:,} different documents (first: {first_path}: {first_problem})",
        hint="something else wrote to them, or a restore did not finish; running the restore again is safe",
    )

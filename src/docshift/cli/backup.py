"""``docshift backup`` and ``docshift restore``: the command line over :mod:`docshift.commands.backup`."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.markup import escape

from docshift.backup import DEFAULT_DOCS_PER_FILE, PathMap, RestoreReport, VerifyReport, read_manifest
from docshift.cli.confirm import confirm_destructive
from docshift.cli.context import AppContext, collect_flags, pass_app
from docshift.cli.estimate import estimate_option, print_estimate
from docshift.cli.output import console, err_console
from docshift.cli.read_time import note_read_time, read_time_option
from docshift.commands.backup import BackupOptions, backup, restore, restore_failure, verify, verify_failure
from docshift.engine.hooks import (
    BackupHooks,
    BackupProgressed,
    BackupStarted,
    CheckStarted,
    FileChecked,
    PhaseProgressed,
    PhaseStarted,
    RestoreProgressed,
    RestoreStarted,
    VerifyProgressed,
    VerifyStarted,
    Warned,
)
from docshift.errors import UsageError
from docshift.store.read_time import ReadTime, reads_text

__all__ = ["backup_command", "restore_command"]


def _say(text: str) -> None:
    """A result line on stdout: never wrapped, and paths are never read as rich markup."""
    console.print(text, soft_wrap=True, markup=False)


def _note(text: str) -> None:
    """A progress line on stderr."""
    err_console.print(text, soft_wrap=True, markup=False)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops a backup or restore like Ctrl-C: a backup removes its files, a restore lets the
    commits in flight finish; both exit with code 10, and running them again is safe."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _BackupDisplay(BackupHooks):
    """Plain lines on stderr: when a phase starts, then at most one every few seconds."""

    def __init__(self, quiet: bool, every: float = 3.0) -> None:
        self.quiet = quiet
        self.every = every
        self._last = time.monotonic()

    def warning(self, event: Warned) -> None:  # said even with --quiet
        err_console.print(f"[yellow]warning:[/] {escape(event.message)}", soft_wrap=True)

    def phase_started(self, event: PhaseStarted) -> None:
        if self.quiet:
            return
        self._last = time.monotonic()
        match event:
            case BackupStarted():
                _note(f"backup: {event.collection}")
            case CheckStarted():
                _note(f"check: {event.files} file(s), {event.documents:,} documents")
            case RestoreStarted():
                _note(f"restore: {event.documents:,} documents")
            case VerifyStarted():
                _note(f"verify: {event.documents:,} documents")

    def phase_progressed(self, event: PhaseProgressed) -> None:
        if self.quiet or time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        match event:
            case BackupProgressed():
                _note(
                    f"backup: {event.done:,} documents ({event.collection}), "
                    f"{event.files} file(s) done, {event.docs_per_second:,.0f} docs/s"
                )
            case FileChecked():
                _note(f"check: {event.file} intact ({event.documents:,} documents)")
            case RestoreProgressed():
                _note(
                    f"restore: {event.done:,}/{event.total:,} ({event.failed:,} failed), "
                    f"{event.docs_per_second:,.0f} docs/s"
                )
            case VerifyProgressed():
                _note(
                    f"verify: {event.done:,}/{event.total:,} checked, {event.missing:,} "
                    f"missing, {event.different:,} different"
                )


@dataclass(frozen=True)
class BackupFlags:
    """``docshift backup``'s flags."""

    collections: tuple[str, ...]
    out: Path
    recursive: bool
    group: bool
    all_collections: bool
    docs_per_file: int
    read_time: ReadTime | None
    estimate: bool
    as_json: bool
    quiet: bool

    def options(self) -> BackupOptions:
        return BackupOptions(
            list(self.collections),
            self.out,
            self.recursive,
            self.group,
            self.all_collections,
            self.docs_per_file,
            read_time=self.read_time.at if self.read_time is not None else None,
        )


@click.command("backup")
@click.argument("collections", nargs=-1)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="New (or empty) folder for the backup; never overwritten.",
)
@click.option("--recursive", is_flag=True, help="Also back up every subcollection, at any depth.")
@click.option("--group", is_flag=True, help="COLLECTIONS are collection group ids (every depth).")
@click.option(
    "--all",
    "all_collections",
    is_flag=True,
    help="Every root collection (except docshift's own), recursively.",
)
@click.option(
    "--docs-per-file",
    type=click.IntRange(min=1),
    default=DEFAULT_DOCS_PER_FILE,
    show_default=True,
    help="Start a new data file after this many documents.",
)
@read_time_option("every collection")
@estimate_option("the backup")
@click.option("--json", "as_json", is_flag=True, help="With --estimate: print the estimate as JSON.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@pass_app
@collect_flags(BackupFlags)
def backup_command(app: AppContext, flags: BackupFlags) -> None:
    """Back up COLLECTIONS (paths such as users or users/alice/orders) into files in --out.

    Documents stream into gzip JSON-lines files (exact values: timestamps with nanoseconds, bytes,
    references, NaN...) with a manifest holding counts and a sha256 per file, written last. Memory
    stays flat at any size. Reads only; use --project and --database to choose the source. A
    collection with no documents is backed up empty, with a warning naming it. Every document is
    read at one read time (the moment the backup starts, or --read-time), recorded in the
    manifest: the backup is one consistent snapshot, whatever is written while it runs.
    """
    config = app.config()
    options = flags.options()
    quiet, read_time = flags.quiet, flags.read_time
    if flags.estimate:
        from docshift.commands.estimate import estimate_backup  # only an estimate needs it

        print_estimate(estimate_backup(config, options), flags.as_json)
        return
    if flags.as_json:
        raise UsageError("--json is for --estimate", hint="add --estimate, or drop --json")
    if not quiet:
        where = f"project {config.store.project}, database {config.store.database}"
        _note(f"source: {where}")
    note_read_time(read_time)
    with _sigterm_interrupts():
        manifest = backup(config, options, hooks=_BackupDisplay(quiet))
    seconds = (
        manifest.finished_at.seconds
        - manifest.started_at.seconds
        + (manifest.finished_at.nanos - manifest.started_at.nanos) / 1e9
    )
    rate = manifest.documents / seconds if seconds > 0 else 0.0
    _say(
        f"backed up {manifest.documents:,} documents from {manifest.describe_source()} into "
        f"{len(manifest.files)} file(s), {_size(manifest.bytes)}, in {seconds:.1f}s "
        f"({rate:,.0f} docs/s): {flags.out}"
    )
    _say(reads_text(manifest.read_time))


def _parse_into(values: tuple[str, ...]) -> str | Mapping[str, str] | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    pairs = [value.partition("=") for value in values]
    if any(not old or not sep or not new for old, sep, new in pairs):
        raise UsageError(
            "with several --into values each must be OLD=NEW",
            hint="e.g. --into users=users_restored --into orders=orders_restored",
        )
    return {old: new for old, _, new in pairs}


def _print_verification(verification: VerifyReport) -> None:
    _say(
        f"verified {verification.checked:,} documents: {verification.missing:,} missing, "
        f"{verification.different:,} different ({verification.seconds:.1f}s)"
    )
    for path, problem in verification.samples:
        _say(f"  {problem}: {path}")
    if (failure := verify_failure(verification)) is not None:
        raise failure


def _print_restore(report: RestoreReport) -> None:
    _say(
        f"restored {report.written:,} of {report.documents:,} documents into {report.target} "
        f"in {report.seconds:.1f}s ({report.docs_per_second:,.0f} docs/s); "
        f"{report.failed:,} failed"
    )
    for path, error in report.failures:
        _say(f"  failed {path}: {error}")
    if (failure := restore_failure(report)) is not None:
        raise failure


@dataclass(frozen=True)
class RestoreFlags:
    """``docshift restore``'s flags."""

    folder: Path
    into: tuple[str, ...]
    verify_after: bool
    verify_only: bool
    batch_size: int | None
    concurrency: int | None
    max_writes_per_second: float | None
    quiet: bool
    yes: bool

    def config_flags(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "max_writes_per_second": self.max_writes_per_second,
        }


@click.command("restore")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--into",
    multiple=True,
    metavar="[OLD=]NEW",
    help="Restore the backed-up collection into NEW instead (repeat OLD=NEW for several).",
)
@click.option(
    "--verify",
    "verify_after",
    is_flag=True,
    help="Read every restored document back and compare it with the backup.",
)
@click.option("--verify-only", is_flag=True, help="Only compare the store with the backup; write nothing.")
@click.option("--batch-size", type=int, help="Documents per commit (at most 500).")
@click.option("--concurrency", type=int, help="Commits in flight.")
@click.option("--max-writes-per-second", type=float, help="Cap on write operations per second.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (Cloud Firestore only asks).")
@pass_app
@collect_flags(RestoreFlags)
def restore_command(app: AppContext, flags: RestoreFlags) -> None:
    """Restore the backup in FOLDER into --project / --database (default: the configured ones).

    Every file is checked against the manifest (sha256, count) before anything is written; a
    changed or damaged backup is refused (exit 3). Documents are set whole: existing documents at
    the same paths are overwritten, others are left alone, and running it again is safe.
    """
    config = app.config(**flags.config_flags())
    folder, targets = flags.folder, _parse_into(flags.into)
    manifest = read_manifest(folder)
    path_map = PathMap.build(manifest, targets)
    display = _BackupDisplay(flags.quiet)
    if not flags.quiet:
        _note(f"backup: {manifest.documents:,} documents, {manifest.describe_source()}")
    if flags.verify_only:
        _print_verification(verify(config, folder, into=targets, hooks=display))
        return
    where = ", ".join(sorted(set(path_map.targets.values()))) or "(nothing)"
    count = f"{manifest.documents:,} document{'' if manifest.documents == 1 else 's'}"
    overwriting = f"restore {count} into {where}, overwriting documents at the same paths"
    confirm_destructive(config, overwriting, flags.yes)
    with _sigterm_interrupts():
        report = restore(config, folder, into=targets, verify=flags.verify_after, hooks=display)
    _print_restore(report)
    if report.verification is not None:
        _print_verification(report.verification)

"""Full backups of collections to gzip JSON-lines files with a checksummed manifest, and restores.

``manifest`` (what a backup holds and proves), ``writer`` (data files, hashed as written),
``reader`` (checks and lazy reading), ``restore`` (batched writes and read-back verification).
The commands are in :mod:`docshift.commands.backup`; the format is described in docs/backup.md.
"""

from __future__ import annotations

from docshift.backup.manifest import FORMAT, MANIFEST_NAME, VERSION, BackupFile, BackupManifest, read_manifest
from docshift.backup.reader import BackupRecord, check_files, read_records
from docshift.backup.restore import PathMap, RestoreReport, VerifyReport
from docshift.backup.writer import DEFAULT_DOCS_PER_FILE

__all__ = [
    "DEFAULT_DOCS_PER_FILE",
    "FORMAT",
    "MANIFEST_NAME",
    "VERSION",
    "BackupFile",
    "BackupManifest",
    "BackupRecord",
    "PathMap",
    "RestoreReport",
    "VerifyReport",
    "check_files",
    "read_manifest",
    "read_records",
]

"""docshift: safe, fast, resumable data migrations for document stores (Firestore first)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from docshift.config import Config, load_config
from docshift.errors import DocshiftError, ExitCode
from docshift.migration import DELETE, UNCHANGED, DocView, Migration, Target
from docshift.values import GeoPoint, Reference, Timestamp

try:
    __version__ = version("docshift")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "DELETE",
    "UNCHANGED",
    "Config",
    "DocView",
    "DocshiftError",
    "ExitCode",
    "GeoPoint",
    "Migration",
    "Reference",
    "Target",
    "Timestamp",
    "__version__",
    "load_config",
]

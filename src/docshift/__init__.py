"""docshift: safe, fast, resumable data migrations for document stores (Firestore first)."""

from __future__ import annotations

from docshift.config import Config, load_config
from docshift.errors import DocshiftError, ExitCode
from docshift.migration import DELETE, UNCHANGED, DocView, Migration, Target
from docshift.values import GeoPoint, Reference, Timestamp

# The one place the version is written (pyproject.toml reads it from here): asking
# importlib.metadata instead costs ~50 ms at every start of the CLI.
__version__ = "0.1.0"

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

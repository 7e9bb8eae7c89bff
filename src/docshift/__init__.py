"""docshift: safe, fast, resumable data migrations for document stores (Firestore first).

The names below are imported when first used (PEP 562): every ``docshift`` command imports this
package first, and ``docshift --version`` or ``--help`` needs none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "Config": "docshift.config",
    "load_config": "docshift.config",
    "DocshiftError": "docshift.errors",
    "ExitCode": "docshift.errors",
    "DELETE": "docshift.migration",
    "UNCHANGED": "docshift.migration",
    "DocView": "docshift.migration",
    "Migration": "docshift.migration",
    "Target": "docshift.migration",
    "GeoPoint": "docshift.values",
    "Reference": "docshift.values",
    "Timestamp": "docshift.values",
}
"""Where each public name lives."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'docshift' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""scripts/latency_proxy.py, loaded for the tests that reach a store through it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def latency_proxy() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docshift_latency_proxy", ROOT / "scripts" / "latency_proxy.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""A dry run's plan: every change it would make, saved in full, a few kept for the screen.

Also checks the idempotency promise on a sample: a migration whose ``up`` changes an already
migrated document again would rewrite data on every resume, so the dry run warns about it.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
from pathlib import Path
from typing import Any

import orjson

from docshift import codec
from docshift.engine.batch import Decision
from docshift.errors import RunFileError
from docshift.migration import Transform, check_idempotent
from docshift.runfolder.atomic import run_file

__all__ = ["DryRunRecorder"]

_CHANGING = ("update", "set", "create", "delete")


class DryRunRecorder:
    """Called with every decision of a dry run (from several threads)."""

    def __init__(
        self, path: Path, transform: Transform, *, samples: int = 5, idempotency_checks: int = 25
    ) -> None:
        self.path = path
        with run_file(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self._broken = False
        self._transform = transform
        self._samples_wanted = samples
        self._checks_left = idempotency_checks
        self.samples: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.not_idempotent: list[str] = []

    def __call__(self, decision: Decision) -> None:
        if decision.kind == "failed":
            failure = {
                "path": decision.source.path,
                "kind": "failed",
                "stage": decision.stage,
                "error": decision.error,
                "rule": decision.rule,
            }
            with self._lock:
                if len(self.failures) < self._samples_wanted:
                    self.failures.append(failure)
                self._write(orjson.dumps(failure) + b"\n")
            return
        if decision.kind not in _CHANGING:
            return
        target = decision.write.path if decision.write else decision.source.path
        record: dict[str, Any] = {
            "path": target,
            "kind": "update" if decision.kind == "set" else decision.kind,
            "changes": [
                {
                    "field": list(c.path),
                    "old": codec.encode(c.old),
                    "new": codec.encode(c.new),
                    "added": c.added,
                    "removed": c.removed,
                }
                for c in decision.changes
            ],
        }
        if decision.kind == "create":
            record["data"] = codec.encode(decision.new_data)
        check = False
        with self._lock:
            self._write(orjson.dumps(record) + b"\n")
            if len(self.samples) < self._samples_wanted:
                self.samples.append({**record, "changes": decision.changes, "data": decision.new_data})
            if self._checks_left > 0 and decision.kind != "delete":
                self._checks_left -= 1
                check = True
        if check:
            try:
                offenders = check_idempotent(self._transform, [decision.source])
            except Exception:
                offenders = [decision.source.path]
            if offenders:
                with self._lock:
                    self.not_idempotent.extend(offenders)

    def _write(self, line: bytes) -> None:
        try:
            with run_file(self.path):
                self._out.write(line)
        except RunFileError:
            self._broken = True  # closed quietly: the failure was raised here already
            raise

    def close(self) -> None:
        with self._lock:
            if self._broken:
                with contextlib.suppress(OSError):
                    self._out.close()
                return
            with run_file(self.path):
                self._out.close()

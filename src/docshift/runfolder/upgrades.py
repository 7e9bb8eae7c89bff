"""The upgrade steps of the run folder's formats: each turns a file's content (decoded) of one version
into the next version's, so a folder written by an older docshift still resumes and rolls back.

A step is a plain function of the document, applied in order by
:meth:`docshift.runfolder.atomic.FileFormat.read` (v1 -> v2 -> ...) before the current version is
parsed; a newer version than this docshift knows is refused there. Steps never change the file: it is
written in the current version the next time the run saves it. ``tests/unit/test_run_folder_compat.py``
resumes and rolls back folders written by docshift 0.1.0 (``tests/fixtures/runs-v1``).

Files whose name changed are renamed by :meth:`docshift.runfolder.layout.MigrationFolder.upgrade`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["checkpoint_1_to_2"]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def checkpoint_1_to_2(document: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint v1 kept what the engine needs to continue in an untyped ``extra`` map; v2 has a field
    per concern (see :mod:`docshift.runfolder.checkpoint`). Keys of ``extra`` no release wrote are
    dropped."""
    upgraded = {key: value for key, value in document.items() if key != "extra"}
    extra: dict[str, Any] = dict(document.get("extra") or {})
    journal_bytes = _int(extra.get("journal_bytes"))
    upgraded["dead_letter_bytes"] = _int(extra.get("dead_letter_bytes"))
    upgraded["journal"] = (
        None
        if journal_bytes is None
        else {
            "size": journal_bytes,
            "unsettled": [list(span) for span in extra.get("journal_unsettled") or []],
        }
    )
    upgraded["landed"] = dict(extra.get("landed") or {})
    # v1: no "limit_reached" key without --limit; None until the run had read up to the limit.
    upgraded["scope"] = {
        "limited": "limit_reached" in extra,
        "limit_reached": extra.get("limit_reached"),
        "sample_percent": extra.get("sample_percent"),
    }
    upgraded["stages"] = _stages(extra)
    upgraded["undo"] = _undo(document, extra)
    return upgraded


def _stages(extra: dict[str, Any]) -> dict[str, Any] | None:
    if not extra.get("stages"):
        return None
    rollback = None
    begun = extra.get("rolling_back")
    if isinstance(begun, dict) or extra.get("rolled_back"):
        begun = begun if isinstance(begun, dict) else {}
        done = extra.get("rollback") if extra.get("rolled_back") else None
        rollback = {
            "message": begun.get("message") or "",
            "hint": begun.get("hint"),
            "counters": dict(done) if isinstance(done, dict) else ({} if extra.get("rolled_back") else None),
        }
    return {
        "stages": list(extra["stages"]),
        "stage": int(extra.get("stage", 0)),
        "passed": extra.get("passed"),
        "earlier": dict(extra.get("earlier") or {}),
        "earlier_seconds": float(extra.get("earlier_seconds", 0.0)),
        "rollback": rollback,
    }


def _undo(document: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any] | None:
    """A rollback's checkpoint (``kind``: its strategy). Before a rollback undid several runs of a
    migration, it kept the one run's position (``of_run``, ``position``) and the checkpoint's counters
    and state were that run's; since, ``steps`` has one entry per run."""
    if extra.get("kind") not in ("restore", "down"):
        return None
    steps = extra.get("steps")
    if not isinstance(steps, list):
        steps = []
        if extra.get("of_run") is not None:
            steps.append(
                {
                    "run": extra["of_run"],
                    "counters": dict(document.get("counters") or {}),
                    "position": extra.get("position", -1),
                    "finished": document.get("state") == "finished",
                }
            )
    runs = extra.get("runs") or [step["run"] for step in steps]
    return {"strategy": extra["kind"], "runs": list(runs), "steps": steps}

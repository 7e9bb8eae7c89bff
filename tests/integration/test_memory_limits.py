"""The memory limits hold for large documents: `docshift run --execute` as a child process over
documents of ~200 KiB on the emulator, its peak resident size (the kernel's figure for the child,
as VmHWM) measured against the limits it was given."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from docshift.store import Query, RetryingStore, Write
from tests.integration.run_support import DOCSHIFT, project_folder

LARGE = '''"""Mark every large document."""
from docshift import UNCHANGED

description = "mark"
collection = "big"


def up(doc):
    data = doc.data
    if data.get("migrated"):
        return UNCHANGED
    data["migrated"] = True
    return data
'''

KIB = 1024
MIB = 1024 * KIB


def peak_rss_run(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, float, str]:
    """Exit code, peak resident size (MiB) and output of one docshift command."""
    process = subprocess.Popen(
        [DOCSHIFT, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / KIB, output


def large(index: int) -> dict[str, object]:
    return {"n": index, "blob": f"{index:07d}-" * (200 * KIB // 8)}


def test_large_documents_stay_within_the_memory_limits(
    tmp_path: Path,
    cli_env: dict[str, str],
    firestore_store: RetryingStore,
) -> None:
    folder = project_folder(tmp_path, files=(), extra={"0001_mark.py": LARGE})
    assert all(r.ok for r in firestore_store.commit([Write.set("big/d0000", {"n": 0})]))
    code, idle, output = peak_rss_run(folder, cli_env, "run")  # a dry run over one small document
    assert code == 0, output
    count = 1000
    for start in range(0, count, 10):
        writes = [Write.set(f"big/d{i:04d}", large(i)) for i in range(start, start + 10)]
        assert all(r.ok for r in firestore_store.commit(writes))
    soft, hard = int(idle) + 40, int(idle) + 90
    assert count * 200 * KIB > 2 * (hard - idle) * MIB  # all of them would not fit, twice over
    env = {**cli_env, "DOCSHIFT_MEMORY_SOFT_LIMIT_MB": str(soft), "DOCSHIFT_MEMORY_HARD_LIMIT_MB": str(hard)}

    code, peak, output = peak_rss_run(folder, env, "run", "--execute", "--quiet")

    assert code == 0, output  # finished: never reached the hard limit
    assert peak < hard, f"peak {peak:.0f} MiB, limits {soft}/{hard} MiB, idle {idle:.0f} MiB"
    migrated = sum(1 for doc in firestore_store.stream(Query("big")) if doc.data.get("migrated"))
    assert migrated == count

"""The start-up case of scripts/bench.py: what a small run pays before its first document is written.

On one fresh emulator (warmed by a discarded first round), each round measures, as child processes:
  * ``python -c pass``: the interpreter alone, the floor every command pays;
  * ``docshift --version``: the command line's own start;
  * ``docshift run --execute --quiet`` over a new project of N documents (default 100);
  * the naive hand-written migration (scripts/bench_baselines.py, the official client: one page
    read, one batch committed) over the same N documents: a bare client's first write.
Time to first write is measured by the store, not by the process: from the moment the benchmark
starts the process to the update time the emulator gave the first migrated document (every
document's update time is its commit's, stamped by the emulator when it applies it, on this
machine's clock). Medians over the rounds; ratios are within this run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from docshift.config import Config, StoreConfig  # noqa: E402
from docshift.emulator import Emulator, find_emulator  # noqa: E402
from docshift.store import Query, Store, open_store  # noqa: E402

__all__ = ["startup"]


@dataclass
class Rounds:
    """Seconds per round of each measurement, by name."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.seconds.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall time of the time the child process was started at, and the seconds it took)."""
    started = time.time()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-2000:]}")
    return started, seconds


def _first_write(store: Store, collection: str, count: int) -> float:
    """The earliest update time (epoch seconds) of the migrated documents, all ``count`` of them."""
    times = [
        doc.update_time.seconds + doc.update_time.nanos / 1e9
        for doc in store.stream(Query(collection))
        if doc.data.get("migrated") is True and doc.update_time is not None
    ]
    if len(times) != count:
        raise SystemExit(f"only {len(times)} of {count} documents were migrated")
    return min(times)


def startup(
    count: int,
    rounds: int,
    workdir: Path,
    *,
    collection: str,
    seed: Callable[[Store, int], None],
    docshift_env: dict[str, str] | None = None,
) -> Rounds:
    """Case 8: ``rounds`` measured rounds after one discarded warm-up; prints the medians."""
    env_base = {k: v for k, v in os.environ.items() if k != "FIRESTORE_EMULATOR_HOST"}
    docshift = str(Path(sys.executable).parent / "docshift")
    measured = Rounds()
    print(
        f"case 8: start-up, {count:,} documents, fresh emulator, median of {rounds} rounds "
        f"(load average {os.getloadavg()[0]:.1f} at the start)",
        flush=True,
    )
    with Emulator(find_emulator(env_base)) as emulator:
        assert emulator.host is not None
        for round_number in range(rounds + 1):
            keep = round_number > 0  # the first round warms the emulator and the page cache
            for kind in ("pass", "version", "docshift", "bare"):
                project = f"demo-bench-startup-{kind}-{round_number}"
                env = {**env_base, "FIRESTORE_EMULATOR_HOST": emulator.host, "DOCSHIFT_PROJECT": project}
                if kind in ("pass", "version"):
                    command = [sys.executable, "-c", "pass"] if kind == "pass" else [docshift, "--version"]
                    _, seconds = _timed(command, {**env, **(docshift_env or {})}, workdir)
                    if keep:
                        measured.add(kind, seconds)
                    continue
                config = Config(store=StoreConfig(project=project, emulator_host=emulator.host))
                with open_store(config) as store:
                    seed(store, count)
                    if kind == "docshift":
                        command = [docshift, "run", "--execute", "--quiet"]
                        env = {**env, **(docshift_env or {})}
                    else:
                        baseline = str(ROOT / "scripts" / "bench_baselines.py")
                        command = [sys.executable, baseline, "naive", project, collection]
                    started, seconds = _timed(command, env, workdir)
                    first = _first_write(store, collection, count)
                if keep:
                    measured.add(f"{kind} first write", first - started)
                    measured.add(f"{kind} process", seconds)
    _print(measured)
    return measured


def _print(measured: Rounds) -> None:
    floor = measured.median("pass")
    version = measured.median("version")
    print(f"  python -c pass                  {floor * 1000:7.0f} ms")
    print(f"  docshift --version              {version * 1000:7.0f} ms  ({version / floor:.1f}x)")
    ours, bare = measured.median("docshift first write"), measured.median("bare first write")
    print(
        f"  time to first write: docshift run --execute {ours * 1000:7.0f} ms "
        f"(process {measured.median('docshift process') * 1000:.0f} ms), "
        f"bare client {bare * 1000:7.0f} ms (process {measured.median('bare process') * 1000:.0f} ms): "
        f"ratio docshift/bare = {ours / bare:.2f}",
        flush=True,
    )

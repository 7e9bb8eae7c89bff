"""The Beam runner against the engine, on the same data, in one run (``make bench-beam``).

The benchmark migration of ``scripts/bench.py`` over the same documents, each case on a fresh
emulator and as its own process (docs/s is documents / wall time of that process, start-up
included):
  (c) ``docshift run --execute`` (the single-process engine);
  (e) ``docshift run --execute --runner beam`` (the DirectRunner, in-process);
  (f) ``docshift run --execute --runner beam`` with ``direct_running_mode=multi_processing`` and
      ``direct_num_workers=2`` (two worker processes).
Ratios e/c and f/c are computed within this run; for (e) and (f) the rate of one worker while it
migrates (its partitions' records, without the pipeline's start-up) is printed too. On a 2-core
machine shared with the emulator, Beam's worker processes compete with the emulator for the same
cores: the figures measure the runner's overhead here, not what more machines give (docs/beam.md
has the model).

    python scripts/bench_beam.py [--docs 5000] [--partitions 8]
"""

from __future__ import annotations

import argparse
import compileall
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402
from docshift.beam.worker import PartitionDone  # noqa: E402
from docshift.config import Config, StoreConfig  # noqa: E402
from docshift.emulator import Emulator, find_emulator  # noqa: E402
from docshift.store import open_store  # noqa: E402

DOCSHIFT = str(Path(sys.executable).parent / "docshift")
CASES = {
    "c": ("docshift run --execute (engine)", []),
    "e": ("--runner beam, in-process", ["--runner", "beam"]),
    "f": (
        "--runner beam, 2 worker processes",
        [
            *("--runner", "beam"),
            *("--beam-option", "direct_running_mode=multi_processing"),
            *("--beam-option", "direct_num_workers=2"),
        ],
    ),
}


def worker_rate(workdir: Path) -> float | None:
    """Documents per second of one worker while it migrates (its partitions' records: reading,
    deciding, journalling and writing, without the pipeline's start-up), in the newest run."""
    runs = sorted((workdir / ".docshift" / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None
    docs, seconds = 0, 0.0
    for record in runs[-1].parent.glob("*/partitions/*.json"):
        done = PartitionDone.read(record)
        docs += done.counters.get("read", 0)
        seconds += done.elapsed_seconds
    return docs / seconds if seconds else None


def measure(kind: str, count: int, partitions: int, workdir: Path) -> bench.Measure:
    env_base = {k: v for k, v in os.environ.items() if k != "FIRESTORE_EMULATOR_HOST"}
    with Emulator(find_emulator(env_base)) as emulator:
        assert emulator.host is not None
        project = f"demo-bench-beam-{kind}-{count}"
        config = Config(store=StoreConfig(project=project, emulator_host=emulator.host))
        with open_store(config) as store:
            bench.seed(store, count)
            env = {**env_base, "FIRESTORE_EMULATOR_HOST": emulator.host, "DOCSHIFT_PROJECT": project}
            command = [DOCSHIFT, "run", "--execute", "--quiet", "--shards", str(partitions), *CASES[kind][1]]
            seconds, rss, _cpu, _ = bench.run_measured(command, env, workdir)
            bench.verify(store, count)
    return bench.Measure(kind, count, seconds, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description="docshift's Beam runner against its engine")
    parser.add_argument("--docs", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    compileall.compile_dir(str(ROOT / "src" / "docshift"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "migrations").mkdir()
        (workdir / "migrations" / "0001_bench.py").write_text(bench.MIGRATION)
        print(f"{args.docs:,} documents, {args.partitions} partitions, fresh emulator per case")
        results = {}
        for kind, (label, _) in CASES.items():
            result = measure(kind, args.docs, args.partitions, workdir)
            results[kind] = result
            per_worker = worker_rate(workdir) if kind != "c" else None
            print(
                f"  ({kind}) {label:<36} {result.rate:8,.0f} docs/s  {result.seconds:6.1f} s  "
                f"peak RSS {result.peak_rss_mib:6.1f} MiB"
                + (f"  one worker while migrating: {per_worker:,.0f} docs/s" if per_worker else ""),
                flush=True,
            )
        c, e, f = results["c"], results["e"], results["f"]
        print(f"  ratios: e/c = {e.rate / c.rate:.2f}, f/c = {f.rate / c.rate:.2f}")


if __name__ == "__main__":
    main()

"""Engine benchmark: docshift against hand-written migrations, on a fresh emulator per case.

Case 1, throughput (20,000 documents of 10 fields, ~550 bytes; add one field, rename one):
  (a) naive loop: page of 500 by name with a cursor, update each, commit the batch;
  (b) best hand-written: one streaming reader feeding 4 writer threads committing batches of 500;
  (c) `docshift run --execute` with update-time preconditions, checkpoints and before-images.
  Each runs as its own process: docs/s is documents / wall time of that process, peak RSS is the
  process's maximum resident set. Ratios c/a and c/b are computed within this run.
Case 2, memory: (c) over 20,000 and 100,000 documents; peak RSS and its growth.
Case 3, large documents: (c) over 2,000 documents of ~200 KiB with memory_soft_limit_mb = 100 and
  memory_hard_limit_mb = 135 (the documents are ~400 MB, three times the hard limit); peak RSS
  against the limits. The run must finish without reaching the hard limit.
Case 4, the write-ahead journal: each batch's before-images are fsynced before its commit is sent
  (group commit: concurrent batches share an fsync). (i) The journal alone, in this process, on the
  disk of the run folder: 4 threads appending batches of 300 before-images, fsync before each
  send versus one fsync per checkpoint (not write-ahead); (ii) end to end, (c) versus
  `docshift run --execute --no-backup` (d), which writes no journal at all.

    python scripts/bench.py [--docs 20000] [--large 100000] [--skip-large]
                            [--large-docs 2000] [--skip-large-docs] [--skip-journal]
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from docshift.config import Config, StoreConfig  # noqa: E402
from docshift.emulator import Emulator, find_emulator  # noqa: E402
from docshift.runfolder import JournalEntry, JournalWriter  # noqa: E402
from docshift.store import Query, Store, Write, open_store  # noqa: E402
from docshift.values import Timestamp  # noqa: E402

COLLECTION = "bench"
MIGRATION = textwrap.dedent('''
    """Benchmark migration: add `migrated`, rename `name` to `full_name`."""
    from docshift import UNCHANGED, DocView

    description = "add one field, rename one field"
    collection = "bench"

    def up(doc: DocView):
        if "name" not in doc:
            return UNCHANGED
        data = doc.data
        data["full_name"] = data.pop("name")
        data["migrated"] = True
        return data
''')


def bench_doc(index: int) -> dict[str, object]:
    return {
        "name": f"User Number {index:07d}",
        "email": f"user{index}@example.com",
        "age": 18 + index % 70,
        "score": index * 0.37,
        "active": index % 3 != 0,
        "created": Timestamp(1_600_000_000 + index, (index * 7919) % 1_000_000 * 1000),
        "city": ["Oslo", "Lyon", "Kyoto", "Quito"][index % 4],
        "tags": ["alpha", "beta", "gamma"][: index % 4],
        "address": {"street": f"{index} Long Street Name", "zip": f"{10000 + index % 89999}"},
        "bio": ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 5)[: 240 + index % 20],
    }


def large_doc(index: int) -> dict[str, object]:
    """~200 KiB: the benchmark document and a long text."""
    return {**bench_doc(index), "text": f"{index:07d} " * (200 * 1024 // 8)}


LARGE_SOFT_MB, LARGE_HARD_MB = 100, 135


def seed(store: Store, count: int, make: Callable[[int], dict[str, object]] = bench_doc) -> None:
    """Commits of at most 500 documents and ~3 MiB (the emulator takes requests up to 4 MiB)."""
    writes: list[Write] = []
    size = 0
    for index in range(count):
        data = make(index)
        writes.append(Write.set(f"{COLLECTION}/d{index:07d}", data))
        size += len(str(data))
        if len(writes) == 500 or size > 3_000_000:
            store.commit(writes)
            writes, size = [], 0
    if writes:
        store.commit(writes)


@dataclass
class Measure:
    name: str
    docs: int
    seconds: float
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.docs / self.seconds


def run_measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of a child process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({process.returncode}):\n{stdout}\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout


def verify(store: Store, count: int) -> None:
    migrated = 0
    for doc in store.stream(Query(COLLECTION)):
        if doc.data.get("migrated") is True and "full_name" in doc.data and "name" not in doc.data:
            migrated += 1
    if migrated != count:
        raise SystemExit(f"only {migrated} of {count} documents were migrated")


def case(
    kind: str,
    count: int,
    workdir: Path,
    make: Callable[[int], dict[str, object]] = bench_doc,
    settings: dict[str, str] | None = None,
) -> Measure:
    """One measurement on a fresh emulator (the emulator slows down as it accumulates data)."""
    env_base = {k: v for k, v in os.environ.items() if k != "FIRESTORE_EMULATOR_HOST"}
    with Emulator(find_emulator(env_base)) as emulator:
        assert emulator.host is not None
        project = f"demo-bench-{kind}-{count}"
        config = Config(store=StoreConfig(project=project, emulator_host=emulator.host))
        with open_store(config) as store:
            seed(store, count, make)
            env = {
                **env_base,
                "FIRESTORE_EMULATOR_HOST": emulator.host,
                "DOCSHIFT_PROJECT": project,
                **(settings or {}),
            }
            if kind in ("c", "d"):
                command = [str(Path(sys.executable).parent / "docshift"), "run", "--execute", "--quiet"]
                command += ["--no-backup"] if kind == "d" else []
            else:
                kind_name = "naive" if kind == "a" else "threaded"
                command = [
                    sys.executable,
                    str(ROOT / "scripts" / "bench_baselines.py"),
                    kind_name,
                    project,
                    COLLECTION,
                ]
            seconds, rss, _ = run_measured(command, env, workdir)
            verify(store, count)
    return Measure(kind, count, seconds, rss)


def journal_cost(folder: Path, count: int, *, batch: int = 300, threads: int = 4) -> None:
    """Case 4 (i): seconds per document of the journal alone, write-ahead versus per checkpoint
    (the best of 5 alternating rounds each: the machine is shared, the noise only adds)."""
    now = Timestamp.now()
    images = [JournalEntry("before", f"{COLLECTION}/d{i:07d}", bench_doc(i), now, now) for i in range(count)]
    batches = [images[start : start + batch] for start in range(0, count, batch)]

    def measure(durable: bool) -> tuple[float, int]:
        path = folder / f"journal-{'ahead' if durable else 'checkpoint'}.jsonl.gz"
        writer = JournalWriter(path)
        pending = list(batches)
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    entries = pending.pop()
                writer.append(entries, durable=durable)

        started = time.perf_counter()
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        writer.sync()
        seconds = time.perf_counter() - started
        fsyncs = writer.fsyncs
        writer.close()
        path.unlink()
        return seconds, fsyncs

    measure(True)  # warm up the page cache and the file system
    rounds = [(measure(True), measure(False)) for _ in range(5)]  # alternating; the best of each
    (ahead, ahead_syncs), (later, later_syncs) = min(r[0] for r in rounds), min(r[1] for r in rounds)
    print(
        f"case 4: write-ahead journal, {count:,} before-images, batches of {batch} from {threads} threads, "
        f"in {folder}"
    )
    print(
        f"  (i)  fsync before each send (group commit) {ahead / count * 1e6:7.1f} us/doc  "
        f"{ahead_syncs} fsyncs for {len(batches)} batches"
    )
    print(
        f"       one fsync per checkpoint              {later / count * 1e6:7.1f} us/doc  {later_syncs} fsync"
    )
    print(f"       ratio write-ahead / per checkpoint = {ahead / later:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="docshift engine benchmark")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--large-docs", type=int, default=2_000)
    parser.add_argument("--skip-large-docs", action="store_true")
    parser.add_argument("--skip-journal", action="store_true")
    args = parser.parse_args()
    # An installed package has its bytecode compiled (pip does it); an editable install run with
    # PYTHONDONTWRITEBYTECODE (as on these machines) has none, which would add ~0.2 s of compiling
    # to every start of (c) while the baselines' google-cloud-firestore is compiled. Level the field.
    compileall.compile_dir(str(ROOT / "src" / "docshift"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "migrations").mkdir()
        (workdir / "migrations" / "0001_bench.py").write_text(MIGRATION)
        print(f"case 1: {args.docs:,} documents, fresh emulator per case")
        results = {}
        for kind, label in (
            ("a", "naive paged loop"),
            ("b", "stream + 4 writer threads"),
            ("c", "docshift run --execute"),
        ):
            measure = case(kind, args.docs, workdir)
            results[kind] = measure
            print(
                f"  ({kind}) {label:<28} {measure.rate:8,.0f} docs/s  {measure.seconds:6.1f} s  "
                f"peak RSS {measure.peak_rss_mib:6.1f} MiB",
                flush=True,
            )
        a, b, c = results["a"], results["b"], results["c"]
        print(
            f"  ratios: c/a = {c.rate / a.rate:.2f} (target >= 3), c/b = {c.rate / b.rate:.2f} "
            "(target >= 1.5)"
        )
        if not args.skip_large:
            print(f"case 2: docshift peak RSS, {args.docs:,} vs {args.large:,} documents")
            large = case("c", args.large, workdir)
            growth = (large.peak_rss_mib - c.peak_rss_mib) / c.peak_rss_mib
            print(f"  {args.docs:>9,} docs: peak RSS {c.peak_rss_mib:6.1f} MiB ({c.rate:,.0f} docs/s)")
            print(
                f"  {args.large:>9,} docs: peak RSS {large.peak_rss_mib:6.1f} MiB ({large.rate:,.0f} docs/s)"
            )
            print(
                f"  growth {growth:+.1%} (target < 10%), limit 150 MiB: "
                f"{'ok' if large.peak_rss_mib < 150 and growth < 0.10 else 'MISSED'}"
            )
        if not args.skip_large_docs:
            large_documents(args.large_docs, workdir)
        if not args.skip_journal:
            journal_cost(workdir, args.docs)
            d = case("d", args.docs, workdir)
            print(
                f"  (ii) (c) with the journal {c.rate:8,.0f} docs/s, (d) --no-backup {d.rate:8,.0f} "
                f"docs/s: ratio c/d = {c.rate / d.rate:.2f}",
                flush=True,
            )


def large_documents(count: int, workdir: Path) -> None:
    print(
        f"case 3: {count:,} documents of ~200 KiB, memory_soft_limit_mb = {LARGE_SOFT_MB}, "
        f"memory_hard_limit_mb = {LARGE_HARD_MB}"
    )
    limits = {
        "DOCSHIFT_MEMORY_SOFT_LIMIT_MB": str(LARGE_SOFT_MB),
        "DOCSHIFT_MEMORY_HARD_LIMIT_MB": str(LARGE_HARD_MB),
    }
    measure = case("c", count, workdir, large_doc, limits)  # fails unless the run finished (exit 0)
    print(
        f"  docshift run --execute: {measure.rate:,.0f} docs/s, peak RSS {measure.peak_rss_mib:6.1f} MiB "
        f"= {measure.peak_rss_mib / LARGE_HARD_MB:.0%} of the hard limit: "
        f"{'ok' if measure.peak_rss_mib < LARGE_HARD_MB else 'MISSED'}"
    )


if __name__ == "__main__":
    main()

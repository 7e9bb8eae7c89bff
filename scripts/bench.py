"""Engine benchmark: docshift against hand-written migrations, on a fresh emulator per case.

Case 1, throughput (20,000 documents of 10 fields, ~550 bytes; add one field, rename one):
  (a) naive loop: page of 500 by name with a cursor, update each, commit the batch;
  (b) best hand-written: one streaming reader feeding 4 writer threads committing batches of 500;
  (c) `docshift run --execute` with update-time preconditions, checkpoints and before-images;
  (e) the bare-write ceiling: the official client writing the documents the migration leaves, 4
      threads of 500-document WriteBatches, no reads at all.
  Each runs as its own process: docs/s is documents / wall time of that process, peak RSS is the
  process's maximum resident set, CPU its user + system seconds (the emulator, on the other core,
  is measured the same way: its JVM's CPU seconds during the case). Ratios c/a, c/b and c/e are
  computed within this run from the median of --rounds (default 3) rounds, each running a, b, c
  and e in turn, so a slow spell of the shared machine falls on all of them; --cases picks which
  of a, b, c, e run (the ratios of those that did).
  Every case's emulator is seeded, then warmed with every kind of request the cases send
  (:func:`warm_up`); --profile runs (c) once more under py-spy and prints where its CPU goes.
Case 2, memory: (c) over 20,000 and 100,000 documents; peak RSS and its growth.
Case 3, large documents: (c) over 2,000 documents of ~200 KiB with memory_soft_limit_mb = 100 and
  memory_hard_limit_mb = 135 (the documents are ~400 MB, three times the hard limit); peak RSS
  against the limits. The run must finish without reaching the hard limit.
Case 4, the write-ahead journal: each batch's before-images are fsynced before its commit is sent
  (group commit: concurrent batches share an fsync). (i) The journal alone, in this process, on the
  disk of the run folder: 4 threads appending batches of 300 before-images, fsync before each
  send versus one fsync per checkpoint (not write-ahead); (ii) end to end, (c) versus
  `docshift run --execute --no-backup` (d), which writes no journal at all.

Case 5, adaptive throttling: `run --execute` (the library call, in this process) over a store that
  refuses writes above --throttle-rate writes/s (default: half of (c)'s rate) with
  RESOURCE_EXHAUSTED (docshift.testing's RateLimitedStore over the emulator, on the real clock).
  Prints the rate docshift settled on against the store's (ratio), the writes/s the store accepted
  over the run's second half, and the share of requests refused there; every document must be
  migrated.

Case 6, latency: (c) and the dry run (r), each direct and with the emulator 20 ms and 50 ms away
  per direction (scripts/latency_proxy.py, started here); docs/s and the ratio to the direct rate
  of the same kind measured in this run (targets: >= 0.8 at 20 ms, >= 0.7 at 50 ms); medians of
  --rounds rounds, each measuring direct, 20 ms and 50 ms in turn.

Case 7, the Beam runner (when the ``beam`` extra is installed): ``scripts/bench_beam.py``
  (``make bench-beam``) on --beam-docs documents: the engine, Beam in-process and Beam with two
  worker processes on the same data, their rates and ratios within that run. Slow (three runs on
  fresh emulators): --skip-beam skips it (``make bench BENCH_FLAGS=--skip-beam``).

Case 8, start-up: `docshift --version` against `python -c pass`, and the time from starting
  `docshift run --execute` on --startup-docs documents to the first document's write landing in the
  store, against a bare client's (scripts/bench_startup.py says how each is measured).

    python scripts/bench.py [--docs 20000] [--cases abce] [--rounds 3] [--large 100000] [--skip-large]
                            [--large-docs 2000] [--skip-large-docs] [--skip-journal]
                            [--throttle-rate N] [--skip-throttle] [--skip-latency]
                            [--beam-docs 5000] [--skip-beam]
                            [--startup-docs 100] [--startup-rounds 5] [--skip-startup]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import functools
import importlib.util
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
from typing import TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_data  # noqa: E402
from docshift.commands.run import RunOptions, run  # noqa: E402
from docshift.config import Config, StoreConfig  # noqa: E402
from docshift.emulator import Emulator, find_emulator  # noqa: E402
from docshift.engine.controls import Controls  # noqa: E402
from docshift.engine.hooks import PassEnded  # noqa: E402
from docshift.engine.limits import RateLimiter  # noqa: E402
from docshift.runfolder import JournalEntry, JournalWriter  # noqa: E402
from docshift.store import Query, RetryingStore, Store, Write, open_store  # noqa: E402
from docshift.testing import RateLimitedStore, RecordingHooks  # noqa: E402
from docshift.values import Timestamp  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from bench_startup import startup  # noqa: E402

COLLECTION = "bench"
WARM_DOCS = 5_000
"""Documents each case's emulator is warmed up with (:func:`warm_up`)."""
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
    return bench_data.bench_doc(index, Timestamp)


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
    cpu_seconds: float = 0.0
    """The process's user + system CPU."""
    store_cpu_seconds: float = 0.0
    """The emulator's JVM's CPU during the process."""

    @property
    def rate(self) -> float:
        return self.docs / self.seconds


def run_measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS (MiB), CPU seconds (user + system) and stdout of a child process."""
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
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, stdout


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
    warm: int = WARM_DOCS,
    delay: float = 0.0,
) -> Measure:
    """One measurement on a fresh emulator (the emulator slows down as it accumulates data),
    warmed first with ``warm`` documents (see :func:`warm_up`); with ``delay``, the process
    reaches it through the latency proxy, ``delay`` s each way."""
    env_base = {k: v for k, v in os.environ.items() if k != "FIRESTORE_EMULATOR_HOST"}
    with Emulator(find_emulator(env_base)) as emulator:
        assert emulator.host is not None
        project = f"demo-bench-{kind}-{count}"
        config = Config(store=StoreConfig(project=project, emulator_host=emulator.host))
        with open_store(config) as store, contextlib.ExitStack() as stack:
            seed(store, count, make)
            host = stack.enter_context(LatencyProxy(emulator.host, delay)).address if delay else emulator.host
            env = {
                **env_base,
                "FIRESTORE_EMULATOR_HOST": host,
                "DOCSHIFT_PROJECT": project,
                **(settings or {}),
            }
            warm_up(store, min(warm, count), {**env, "FIRESTORE_EMULATOR_HOST": emulator.host}, workdir)
            if kind in ("c", "d", "r", "p"):
                command = [str(Path(sys.executable).parent / "docshift"), "run", "--quiet"]
                command += [] if kind == "r" else ["--execute"]
                command += ["--no-backup"] if kind == "d" else []
                if kind == "p":  # (c) under py-spy: where its time goes (--profile)
                    command = [*PROFILER, "-o", str(workdir / "profile.txt"), "--", *command]
            else:
                kind_name = {"a": "naive", "b": "threaded", "e": "bare"}[kind]
                command = [
                    sys.executable,
                    str(ROOT / "scripts" / "bench_baselines.py"),
                    kind_name,
                    project,
                    COLLECTION,
                    str(count),
                ]
            jvm = psutil.Process(emulator.process.pid) if emulator.process else None
            jvm_before = _cpu(jvm)
            seconds, rss, cpu, _ = run_measured(command, env, workdir)
            store_cpu = _cpu(jvm) - jvm_before
            if kind != "r":
                verify(store, count)
    return Measure(kind, count, seconds, rss, cpu, store_cpu)


def warm_up(store: Store, count: int, env: dict[str, str], workdir: Path) -> None:
    """Run every kind of request the cases send over ``count`` documents, rewriting them as they
    are, before a case is measured. The emulator's JVM compiles each request's code path the first
    times it runs (measured: a first stream of the 20,000 documents costs it ~3x the CPU of the
    second): without this, the seeding (unguarded BatchWrites) warms only part of what the cases
    send, and each case would be charged for the compiling of the requests it happens to send
    first (RunQuery for all, Commit for the official client's, guarded BatchWrite for docshift's)."""
    if count <= 0:
        return
    docs = list(store.stream(Query(COLLECTION, limit=count)))
    for start in range(0, len(docs), 500):
        chunk = docs[start : start + 500]
        store.commit([Write.set(doc.path, doc.data, update_time=doc.update_time) for doc in chunk])
    script = [sys.executable, str(ROOT / "scripts" / "bench_baselines.py"), "warm"]
    run_measured([*script, env["DOCSHIFT_PROJECT"], COLLECTION, str(count)], env, workdir)


PROFILER = [
    str(Path(sys.executable).parent / "py-spy"),
    "record",
    "--format",
    "raw",
    "--threads",
    "--gil",
    "--rate",
    "200",
]
"""py-spy (installed ad hoc: ``pip install py-spy``) sampling (c)'s threads while they hold the GIL:
the process is bound to one core by it, so these samples are where its CPU goes."""


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


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
    parser.add_argument(
        "--cases", default="abce", help="which of case 1's a, b, c, e to run (default: all of them)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="then run (c) under py-spy and print where its time goes"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="how many times cases 1 and 6 measure each kind, interleaved; the median is reported",
    )
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--large-docs", type=int, default=2_000)
    parser.add_argument("--skip-large-docs", action="store_true")
    parser.add_argument("--skip-journal", action="store_true")
    parser.add_argument("--throttle-rate", type=float, default=0.0, help="default: half of (c)'s rate")
    parser.add_argument("--skip-throttle", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--skip-beam",
        action="store_true",
        help="skip case 7, the Beam runner against the engine (slow: three runs on fresh emulators)",
    )
    parser.add_argument("--beam-docs", type=int, default=5_000)
    parser.add_argument("--startup-docs", type=int, default=100)
    parser.add_argument("--startup-rounds", type=int, default=5)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    # An installed package has its bytecode compiled (pip does it); an editable install run with
    # PYTHONDONTWRITEBYTECODE (as on these machines) has none, which would add ~0.2 s of compiling
    # to every start of (c) while the baselines' google-cloud-firestore is compiled. Level the field.
    compileall.compile_dir(str(ROOT / "src" / "docshift"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "migrations").mkdir()
        (workdir / "migrations" / "0001_bench.py").write_text(MIGRATION)
        results = throughput(args.docs, args.cases, workdir, rounds=args.rounds, profile=args.profile)
        c = results.get("c")
        if c is None:
            return
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
        if not args.skip_throttle:
            throttled(args.docs, args.throttle_rate or c.rate / 2, workdir)
        if not args.skip_latency:
            latency(args.docs, workdir, rounds=args.rounds)
        if not args.skip_startup:
            startup(args.startup_docs, args.startup_rounds, workdir, collection=COLLECTION, seed=seed)
    if not args.skip_beam:
        beam_against_engine(args.beam_docs)


LATENCY_TARGETS = ((0.020, 0.8), (0.050, 0.7))
"""Seconds added per direction, and the share of the direct rate a run must keep there."""


def latency(count: int, workdir: Path, *, rounds: int = 1) -> None:
    """Case 6: execute and dry run, direct and through the latency proxy, ``rounds`` times with
    direct and far interleaved; the ratio of the medians, within this run."""
    print(
        f"case 6: {count:,} documents, the emulator direct and through scripts/latency_proxy.py, "
        f"median of {rounds} interleaved round{'s' if rounds != 1 else ''}"
    )
    delays = [0.0, *(delay for delay, _ in LATENCY_TARGETS)]
    for kind, label in (("c", "docshift run --execute"), ("r", "docshift run (dry run)")):
        measured = interleaved(delays, rounds, functools.partial(far_case, kind, count, workdir))
        direct = median(measured[0.0])
        print(
            f"  {label:<24} {'direct':<14} {direct.rate:8,.0f} docs/s  {direct.seconds:6.1f} s"
            f"{spread(measured[0.0])}",
            flush=True,
        )
        for delay, target in LATENCY_TARGETS:
            far = median(measured[delay])
            ratio = far.rate / direct.rate
            print(
                f"  {label:<24} {f'{delay * 1000:.0f} ms each way':<14} {far.rate:8,.0f} docs/s  "
                f"{far.seconds:6.1f} s  ratio {ratio:.2f} (target >= {target}): "
                f"{'ok' if ratio >= target else 'MISSED'}{spread(measured[delay])}",
                flush=True,
            )


def far_case(kind: str, count: int, workdir: Path, delay: float) -> Measure:
    return case(kind, count, workdir, delay=delay)


Key = TypeVar("Key")


def interleaved(keys: list[Key], rounds: int, measure: Callable[[Key], Measure]) -> dict[Key, list[Measure]]:
    """``measure`` of every key, round after round (k1, k2, ..., k1, k2, ...): the machine is
    shared and its load drifts, so the measures a ratio compares are taken side by side."""
    measured: dict[Key, list[Measure]] = {key: [] for key in keys}
    for _ in range(max(rounds, 1)):
        for key in keys:
            measured[key].append(measure(key))
    return measured


def median(measures: list[Measure]) -> Measure:
    """The measure of median wall time (of an even number, the slower of the middle two)."""
    ordered = sorted(measures, key=lambda measure: measure.seconds)
    return ordered[len(ordered) // 2]


def spread(measures: list[Measure]) -> str:
    """The range of the rates measured, when there was more than one round."""
    if len(measures) < 2:
        return ""
    rates = sorted(measure.rate for measure in measures)
    return f"  (rounds {rates[0]:,.0f}-{rates[-1]:,.0f})"


def beam_against_engine(count: int) -> None:
    """Case 7: ``make bench-beam`` (scripts/bench_beam.py), when the beam extra is installed."""
    if importlib.util.find_spec("apache_beam") is None:
        print("case 7: skipped, the beam extra is not installed (pip install 'docshift[beam]')")
        return
    print("case 7: the Beam runner against the engine (make bench-beam; --skip-beam skips it)", flush=True)
    script = Path(__file__).resolve().parent / "bench_beam.py"
    subprocess.run([sys.executable, str(script), "--docs", str(count)], check=True)


LABELS = {
    "a": "naive paged loop",
    "b": "stream + 4 writer threads",
    "c": "docshift run --execute",
    "e": "bare writes, 4 threads x 500",
}


def throughput(
    count: int, cases: str, workdir: Path, *, rounds: int = 1, profile: bool = False
) -> dict[str, Measure]:
    """Case 1: each of ``cases`` on its own fresh emulator, ``rounds`` times with the kinds
    interleaved (a round is a, b, c, e in turn, so a slow spell of the shared machine falls on all
    of them), then the ratios of the medians."""
    print(
        f"case 1: {count:,} documents, fresh emulator per case, median of {rounds} interleaved "
        f"round{'s' if rounds != 1 else ''} (load average {_load()})"
    )
    kinds = [kind for kind in "abce" if kind in cases]
    measured = interleaved(kinds, rounds, lambda kind: case(kind, count, workdir))
    results: dict[str, Measure] = {}
    for kind in kinds:
        measure = results[kind] = median(measured[kind])
        print(
            f"  ({kind}) {LABELS[kind]:<29} {measure.rate:8,.0f} docs/s  {measure.seconds:6.1f} s  "
            f"peak RSS {measure.peak_rss_mib:6.1f} MiB  CPU {measure.cpu_seconds:5.1f} s, "
            f"emulator {measure.store_cpu_seconds:5.1f} s{spread(measured[kind])}",
            flush=True,
        )
    targets = (("a", 3.0), ("b", 2.0), ("e", 1.0))
    c = results.get("c")
    ratios = [
        f"c/{kind} = {c.rate / results[kind].rate:.2f} (target >= {target:g})"
        for kind, target in targets
        if c is not None and kind in results
    ]
    if ratios:
        print(f"  ratios: {', '.join(ratios)}; load average {_load()}")
    if profile:
        if not Path(PROFILER[0]).exists():
            raise SystemExit(f"--profile needs py-spy: {Path(sys.executable).parent / 'pip'} install py-spy")
        case("p", count, workdir)
        print_profile(workdir / "profile.txt")
    return results


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def print_profile(path: Path, top: int = 25) -> None:
    """py-spy's raw samples (one line per stack, ``frame;frame;... count``) as the functions with
    the most samples where they run (self) and with what they call (total), per thread."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    threads: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        count = int(number)
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread (") else "?"
        samples += count
        threads[thread] = threads.get(thread, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames[1:]):
            total[frame] = total.get(frame, 0) + count
    print(f"  profile of (c), samples holding the GIL: {samples:,} (at 200/s)")
    for thread, count in sorted(threads.items(), key=lambda item: -item[1]):
        print(f"    {count / samples:6.1%}  {thread}")
    for title, table in (("self", own), ("total", total)):
        print(f"  top {top} by {title}:")
        for frame, count in sorted(table.items(), key=lambda item: -item[1])[:top]:
            print(f"    {count / samples:6.1%}  {frame}")


def throttled(count: int, rate: float, workdir: Path) -> None:
    """Case 5: the rate docshift settles on over a store refusing writes above ``rate``."""
    print(
        f"case 5: {count:,} documents over a store refusing writes above {rate:,.0f}/s (RESOURCE_EXHAUSTED)"
    )
    env_base = {k: v for k, v in os.environ.items() if k != "FIRESTORE_EMULATOR_HOST"}
    with Emulator(find_emulator(env_base)) as emulator:
        assert emulator.host is not None
        config = Config(
            store=StoreConfig(project=f"demo-bench-throttle-{count}", emulator_host=emulator.host),
            migrations_dir=workdir / "migrations",
            runs_dir=workdir / "runs-throttled",
        )
        with open_store(config) as store:
            assert isinstance(store, RetryingStore)  # its inner store is what the wrapper limits
            seed(store, count)
            # A burst of at least one full request: a store whose bucket cannot hold a request of
            # the run's batch size refuses it whatever the rate.
            limited = RateLimitedStore(store.inner, rate, clock=time.monotonic, burst=max(1.0, 500 / rate))
            hooks = RecordingHooks()
            started = time.monotonic()
            result = run(
                config,
                RunOptions(execute=True),
                store=RetryingStore(limited, store.policy),
                controls=Controls(RateLimiter(adaptive=True)),
                hooks=hooks,
            )
            seconds = time.monotonic() - started
            if result.state != "finished":
                raise SystemExit(f"the throttled run ended {result.state}: {result.error}")
            verify(store, count)
    [ended] = hooks.of(PassEnded)
    half = started + seconds / 2
    judged = limited.judged(half)
    accepted = (
        sum(r.writes for r in judged if r.accepted) / max(judged[-1].at - half, 1e-9) if judged else 0.0
    )
    refused = sum(1 for r in judged if not r.accepted) / max(len(judged), 1)
    settled = ended.write_rate or 0.0
    print(
        f"  settled on {settled:,.0f} writes/s for the store's {rate:,.0f}: ratio {settled / rate:.2f} "
        f"(target 0.90-1.10); accepted {accepted:,.0f} writes/s over the second half "
        f"({accepted / rate:.2f}), {refused:.1%} of its requests refused (target < 5%); "
        f"{ended.throttled or 0:,} refusals in all, {count / seconds:,.0f} docs/s overall",
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
    measure = case("c", count, workdir, large_doc, limits, warm=50)  # fails unless the run finished (exit 0)
    print(
        f"  docshift run --execute: {measure.rate:,.0f} docs/s, peak RSS {measure.peak_rss_mib:6.1f} MiB "
        f"= {measure.peak_rss_mib / LARGE_HARD_MB:.0%} of the hard limit: "
        f"{'ok' if measure.peak_rss_mib < LARGE_HARD_MB else 'MISSED'}"
    )


if __name__ == "__main__":
    main()

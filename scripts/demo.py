"""`make demo`: the docshift story on a throw-away emulator, in well under a minute.

Starts the official Firestore emulator (or uses FIRESTORE_EMULATOR_HOST), seeds a realistic, partly
messy dataset, shows it, then walks through status, a dry run with diffs and an execute, using the
real `docshift` CLI on the sample migrations in examples/. Cleans up everything it started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from docshift.config import Config, StoreConfig  # noqa: E402
from docshift.emulator import Emulator, find_emulator  # noqa: E402
from docshift.runfolder import RunFolder, run_folders  # noqa: E402
from docshift.runfolder.record import read_info  # noqa: E402
from docshift.store import Query, Store, open_store  # noqa: E402
from docshift.values import type_name, values_equal  # noqa: E402
from seed import seed  # noqa: E402

DOCSHIFT = str(Path(sys.executable).parent / "docshift")


def banner(text: str) -> None:
    print(f"\n\033[1;36m== {text} ==\033[0m", flush=True)


def cli(args: list[str], env: dict[str, str], cwd: Path) -> int:
    print(f"$ docshift {' '.join(args)}", flush=True)
    return subprocess.run([DOCSHIFT, *args], env=env, cwd=cwd, check=False).returncode


def describe(store: Store) -> None:
    docs = list(store.stream(Query("users")))
    print(f"users: {len(docs):,} documents; teams: {store.count(Query('teams'))}")
    sample = docs[0]
    print(f"a sample document, {sample.path}:")
    for key, value in sample.data.items():
        print(f"  {key:<10} {type_name(value):<10} {value!r}")
    age_types = Counter(type_name(d.data.get("age")) for d in docs)
    missing_name = sum(1 for d in docs if "full_name" not in d.data)
    one_word = sum(1 for d in docs if " " not in str(d.data.get("full_name", " ")))
    print(
        f"messy data: age stored as {dict(age_types)}; {missing_name} without full_name; "
        f"{one_word} with a one-word name"
    )


def export(store: Store) -> dict[str, dict[str, object]]:
    return {doc.path: doc.data for doc in store.stream(Query("users"))}


def latest_run(work: Path) -> str:
    runs = [
        f.run_id
        for f in run_folders(work / ".docshift" / "runs")
        if read_info(f.path).get("kind") != "rollback"
    ]
    return runs[0]


def main() -> None:
    started = time.monotonic()
    project = f"demo-docshift-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="docshift-demo-"))
    shutil.copytree(ROOT / "examples" / "migrations", work / "migrations")
    shutil.copy(ROOT / "examples" / "docshift.toml", work / "docshift.toml")
    try:
        banner("starting the Firestore emulator")
        with Emulator(find_emulator()) as emulator:
            assert emulator.host is not None
            print(f"emulator at {emulator.host} ({emulator.location.source})")
            env = {k: v for k, v in os.environ.items() if not k.startswith("DOCSHIFT_")}
            env.update(FIRESTORE_EMULATOR_HOST=emulator.host, DOCSHIFT_PROJECT=project)
            config = Config(store=StoreConfig(project=project, emulator_host=emulator.host))
            with open_store(config) as store:
                banner("seeding a sample dataset")
                print(f"seeded {seed(store, 3000):,} users into project {project}")
                describe(store)
                original = export(store)
            banner("what docshift knows: status")
            cli(["status"], env, work)
            banner("dry run: what would change, with field-level diffs (nothing is written)")
            cli(["run"], env, work)
            banner("canary execute: 10% first, gate checked, then the rest; rules checked on every write")
            if cli(["run", "--execute", "--stages", "10%,100%", "--validate"], env, work) != 0:
                raise SystemExit("the canary run failed")
            run_id = latest_run(work)
            banner("validation: scan the result against the migration's rules")
            cli(["validate", "0002", "--after"], env, work)
            banner("the run's report: report.json and a self-contained report.html with charts")
            cli(["report", run_id], env, work)
            kept = Path(tempfile.gettempdir()) / "docshift-demo-report.html"
            shutil.copy(RunFolder.of(work / ".docshift" / "runs", run_id).report_html, kept)
            print(f"a copy that outlives the demo: file://{kept}")
            banner("status after the run")
            cli(["status"], env, work)
            banner(f"rollback of run {run_id}: down() where there is one, before-images otherwise")
            if cli(["rollback", run_id, "--execute", "--quiet"], env, work) != 0:
                raise SystemExit("the rollback failed")
            with open_store(config) as store:
                after = export(store)
            same = after.keys() == original.keys() and all(
                values_equal(after[path], original[path]) for path in original
            )
            banner("is the data back as it was?")
            print(
                f"{len(after):,} documents compared value by value with the seeded data: "
                f"{'identical' if same else 'DIFFERENT'}"
            )
            if not same:
                raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; emulator stopped, temp files removed")


if __name__ == "__main__":
    main()

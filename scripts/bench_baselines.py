"""The hand-written scripts docshift is measured against (run by scripts/bench.py).

All use the official google-cloud-firestore client the way its documentation suggests. The two
migrations do the same change as the docshift migration in bench.py (add `migrated = True`, rename
`name` to `full_name`); the bare writer only writes the documents that change leaves, without
reading anything: the ceiling of writing alone, what a migration's reads, diffs, guards and
journal are measured against.

    python scripts/bench_baselines.py naive|threaded|bare|warm PROJECT COLLECTION [COUNT]
(FIRESTORE_EMULATOR_HOST must be set; COUNT: how many documents the bare writer writes, or the
warm-up rewrites as they are.)
"""

from __future__ import annotations

import queue
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from bench_data import bench_doc
from bench_data import migrated as change


def naive(client: firestore.Client, collection: str) -> int:
    """(a) Read a page of 500 ordered by name with a cursor, update each, commit, repeat."""
    ref = client.collection(collection)
    last = None
    done = 0
    while True:
        query = ref.order_by("__name__").limit(500)
        if last is not None:
            query = query.start_after(last)
        page = list(query.stream())
        if not page:
            return done
        batch = client.batch()
        for snapshot in page:
            data = change(snapshot.to_dict() or {})
            if data is not None:
                batch.set(snapshot.reference, data)
                done += 1
        batch.commit()
        last = page[-1]


def threaded(client: firestore.Client, collection: str, writers: int = 4) -> int:
    """(b) One streaming reader feeding 4 writer threads that commit batches of 500."""
    work: queue.Queue[list[Any] | None] = queue.Queue(maxsize=writers * 2)
    counts = [0] * writers

    def write(slot: int) -> None:
        while True:
            items = work.get()
            if items is None:
                return
            batch = client.batch()
            for reference, data in items:
                batch.set(reference, data)
            batch.commit()
            counts[slot] += len(items)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    pending: list[Any] = []
    for snapshot in client.collection(collection).stream():
        data = change(snapshot.to_dict() or {})
        if data is None:
            continue
        pending.append((snapshot.reference, data))
        if len(pending) == 500:
            work.put(pending)
            pending = []
    if pending:
        work.put(pending)
    for _ in threads:
        work.put(None)
    for thread in threads:
        thread.join()
    return sum(counts)


def _timestamp(seconds: int, nanos: int) -> datetime:
    # The benchmark's timestamps are whole microseconds: a datetime holds them exactly.
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)


def bare(client: firestore.Client, collection: str, count: int, writers: int = 4) -> int:
    """(e) No reads: 4 threads each commit 500-document WriteBatches of the migrated documents."""
    ref = client.collection(collection)
    chunks = [range(start, min(start + 500, count)) for start in range(0, count, 500)]
    lock = threading.Lock()
    counts = [0] * writers

    def write(slot: int) -> None:
        while True:
            with lock:
                if not chunks:
                    return
                chunk = chunks.pop()
            batch = client.batch()
            for index in chunk:
                data = change(bench_doc(index, _timestamp))
                assert data is not None
                batch.set(ref.document(f"d{index:07d}"), data)
            batch.commit()
            counts[slot] += len(chunk)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def warm(client: firestore.Client, collection: str, count: int) -> int:
    """Before a case is measured (not one): stream ``count`` documents and commit them back as they
    are, so the emulator has compiled the client's requests too (see bench.py's warm_up)."""
    snapshots = list(client.collection(collection).limit(count).stream())
    for start in range(0, len(snapshots), 500):
        batch = client.batch()
        for snapshot in snapshots[start : start + 500]:
            batch.set(snapshot.reference, snapshot.to_dict() or {})
        batch.commit()
    return len(snapshots)


def main() -> None:
    kind, project, collection = sys.argv[1:4]
    client = firestore.Client(project=project)
    if kind == "bare":
        done = bare(client, collection, int(sys.argv[4]))
    elif kind == "warm":
        done = warm(client, collection, int(sys.argv[4]))
    else:
        done = naive(client, collection) if kind == "naive" else threaded(client, collection)
    print(done)


if __name__ == "__main__":
    main()

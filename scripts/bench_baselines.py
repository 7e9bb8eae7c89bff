"""The two hand-written migrations docshift is measured against (run by scripts/bench.py).

Both use the official google-cloud-firestore client the way its documentation suggests, and do the
same change as the docshift migration in bench.py: add `migrated = True`, rename `name` to
`full_name`.

    python scripts/bench_baselines.py naive|threaded PROJECT COLLECTION
(FIRESTORE_EMULATOR_HOST must be set.)
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

from google.cloud import firestore


def change(data: dict[str, Any]) -> dict[str, Any] | None:
    if "name" not in data:
        return None
    data["full_name"] = data.pop("name")
    data["migrated"] = True
    return data


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


def main() -> None:
    kind, project, collection = sys.argv[1:4]
    client = firestore.Client(project=project)
    done = naive(client, collection) if kind == "naive" else threaded(client, collection)
    print(done)


if __name__ == "__main__":
    main()

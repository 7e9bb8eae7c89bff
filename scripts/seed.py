"""Seed a realistic sample dataset: users with varied Firestore types, some of them messy.

Used by `make demo`, the benchmark and by hand:
    python scripts/seed.py --project demo-docshift --count 3000
(FIRESTORE_EMULATOR_HOST must point at an emulator.)
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from docshift.config import Config, StoreConfig
from docshift.store import Store, Write, open_store
from docshift.values import GeoPoint, Reference, Timestamp

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances", "Linus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Allen"]
CITIES = [("Oslo", 59.91, 10.75), ("Lyon", 45.76, 4.84), ("Kyoto", 35.01, 135.77), ("Quito", -0.18, -78.47)]
PLANS = ["free", "pro", "team", "enterprise"]


def user(index: int, rng: random.Random, project: str) -> dict[str, object]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, lat, lng = rng.choice(CITIES)
    data: dict[str, object] = {
        "full_name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{index}@example.com",
        "age": rng.randint(18, 90),
        "score": round(rng.uniform(0, 100), 3),
        "active": rng.random() < 0.8,
        "plan": rng.choice(PLANS),
        "signup": Timestamp(1_600_000_000 + rng.randint(0, 100_000_000), rng.randint(0, 999_999) * 1000),
        "address": {"city": city, "zip": f"{rng.randint(1000, 99999)}", "geo": GeoPoint(lat, lng)},
        "tags": rng.sample(["beta", "vip", "churn-risk", "newsletter", "mobile"], k=rng.randint(0, 3)),
        "team": Reference(f"teams/t{rng.randint(1, 20)}", project, "(default)"),
    }
    roll = rng.random()
    if roll < 0.05:
        data["age"] = str(data["age"])  # messy: a number stored as text
    elif roll < 0.08:
        del data["full_name"]  # messy: missing field
    elif roll < 0.10:
        data["full_name"] = f"{first}"  # messy: no last name
    if rng.random() < 0.03:
        data["avatar"] = bytes(rng.getrandbits(8) for _ in range(16))
    return data


def seed(store: Store, count: int, collection: str = "users", seed_value: int = 7, batch: int = 400) -> int:
    rng = random.Random(seed_value)
    project = store.info.project
    writes: list[Write] = []
    written = 0
    for index in range(count):
        writes.append(Write.set(f"{collection}/u{index:06d}", user(index, rng, project)))
        if len(writes) >= batch:
            written += sum(1 for r in store.commit(writes) if r.ok)
            writes = []
    if writes:
        written += sum(1 for r in store.commit(writes) if r.ok)
    teams = [Write.set(f"teams/t{i}", {"name": f"Team {i}", "seats": i * 5}) for i in range(1, 21)]
    store.commit(teams)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--emulator-host", required=True)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--collection", default="users")
    args = parser.parse_args()
    config = Config(store=StoreConfig(project=args.project, emulator_host=args.emulator_host))
    with open_store(config) as store:
        written = seed(store, args.count, args.collection)
    print(f"seeded {written} documents into {args.collection} (project {args.project})")


if __name__ == "__main__":
    main()

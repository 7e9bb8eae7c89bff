"""Values a transform returns in a form Firestore changes: timestamps with nanoseconds below a
microsecond (Firestore keeps microseconds) and naive datetimes (stored as UTC). docshift writes
them as the store will keep them, says so once per run, and compares at the store's precision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from docshift.commands.verify import compare
from docshift.migration import DocView
from docshift.testing import MemoryStore, RecordingHooks
from docshift.values import Timestamp, as_stored, values_equal
from tests.unit.engine_support import export, make_migration, run_pipeline, seed

FINE = Timestamp(1_700_000_000, 123_456_789)
KEPT = Timestamp(1_700_000_000, 123_456_000)


def warnings(hooks: RecordingHooks) -> list[str]:
    return hooks.warnings()


def test_timestamps_compare_at_the_microsecond() -> None:
    assert values_equal(FINE, KEPT)
    assert values_equal({"a": [FINE]}, {"a": [KEPT]})
    assert not values_equal(FINE, Timestamp(1_700_000_000, 123_457_000))
    assert not values_equal(Timestamp(1, 999), Timestamp(2, 999))
    assert values_equal(KEPT.to_datetime(), FINE)  # a datetime holds microseconds too
    assert not values_equal(FINE, 1_700_000_000)


def test_as_stored_truncates_once_and_shares_what_it_did_not_change() -> None:
    untouched = {"list": [1, "a"], "map": {"b": None}}
    data: dict[str, Any] = {"at": FINE, "keep": untouched, "deep": {"x": [KEPT, {"y": FINE}]}}
    stored, form = as_stored(data)
    assert stored == {"at": KEPT, "keep": untouched, "deep": {"x": [KEPT, {"y": KEPT}]}}
    assert stored["keep"] is untouched  # shared, not copied
    assert data["at"] is FINE and data["deep"]["x"][1]["y"] is FINE  # the input is left as it was
    assert form is not None and form.truncated == "at" and form.naive is None
    _, nothing = as_stored({"at": KEPT, "n": 1})
    assert nothing is None
    plain = {"at": KEPT}
    assert as_stored(plain)[0] is plain
    _, deep = as_stored({"a": {"b": [1, FINE]}})
    assert deep is not None and deep.truncated == "a.b[1]"
    naive = datetime(2024, 5, 1, 12, 0)
    kept, noted = as_stored({"when": naive, "aware": datetime(2024, 5, 1, tzinfo=UTC)})
    assert kept["when"] is naive and noted is not None and noted.naive == "when" and noted.truncated is None


def stamp_everyone(doc: DocView) -> Any:
    data = doc.data
    data["at"] = FINE
    data["history"] = [{"at": Timestamp(5, 999)}]
    return data


def test_a_run_writes_timestamps_at_the_microsecond_says_so_once_and_is_then_done(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 200)
    progress = RecordingHooks()
    first = run_pipeline(store, make_migration(stamp_everyone), tmp_path / "a", hooks=progress)
    assert first.counters["updated"] == 200
    stored = export(store)
    assert all(
        doc.data["at"] == KEPT and doc.data["history"] == [{"at": Timestamp(5, 0)}] for doc in stored.values()
    )
    [message] = warnings(progress)
    assert "nanoseconds below a microsecond" in message and "field at" in message
    assert "truncated to the microsecond" in message

    # What the store keeps equals what up() returns, at the store's precision: nothing left to do.
    again = run_pipeline(store, make_migration(stamp_everyone), tmp_path / "b")
    assert again.counters.get("updated", 0) == 0 and again.counters["unchanged"] == 200


def test_verify_compares_a_copy_at_the_precision_the_store_keeps(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 120)
    migration = make_migration(stamp_everyone, copy_to="people")
    assert run_pipeline(store, migration, tmp_path / "run").counters["created"] == 120
    report = compare(store, migration)
    assert report.passed, report.examples[:2]
    assert report.matched == 120


def test_a_naive_datetime_is_stored_as_utc_with_one_warning(tmp_path: Path) -> None:
    store = MemoryStore()
    seed(store, 50)
    noon = datetime(2024, 5, 1, 12, 0)

    def naive(doc: DocView) -> Any:
        return {**doc.data, "when": noon}

    progress = RecordingHooks()
    result = run_pipeline(store, make_migration(naive), tmp_path / "a", hooks=progress)
    assert result.counters["updated"] == 50
    assert all(
        doc.data["when"] == Timestamp.from_datetime(noon.replace(tzinfo=UTC))
        for doc in export(store).values()
    )
    [message] = warnings(progress)
    assert "datetime without a time zone" in message and "stored as UTC" in message

    oslo = timezone(timedelta(hours=2))

    def aware(doc: DocView) -> Any:
        return {**doc.data, "when": datetime(2024, 5, 1, 14, 0, tzinfo=oslo)}

    quiet = RecordingHooks()
    again = run_pipeline(store, make_migration(aware), tmp_path / "b", hooks=quiet)
    assert warnings(quiet) == [] and again.counters["unchanged"] == 50  # 14:00+02:00 is 12:00 UTC

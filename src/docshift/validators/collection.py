"""Rules about the collection as a whole: unique values, references to other documents, counts.

Their state lives in a session (one per scan or run): uniqueness keeps an 8-byte digest per distinct
value in sorted arrays (a million documents cost about 8 MB, not a dict of values); references look
up the documents they point to in batches (``get_many``) through a bounded cache; counts compare the
target's size after a run with its size before.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import orjson

from docshift import codec
from docshift.errors import UsageError
from docshift.store.base import Document, Store, parse_field_path, split_path
from docshift.validators.rules import MISSING, Rule, RuleContext, RuleSession, field_value, show_value
from docshift.values import Reference, Value, type_name

__all__ = ["COUNT_EXPECTATIONS", "CountRule", "DigestSet", "count", "digest", "references", "unique"]

COUNT_EXPECTATIONS = ("equal", "minus_deleted", "plus_created")


def digest(value: Value) -> int:
    """A 64-bit digest of a value's exact, type-tagged encoding (``1`` and ``1.0`` differ)."""
    raw = orjson.dumps(codec.encode(value), option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


class DigestSet:
    """A set of 64-bit digests in memory-tight sorted arrays (8 bytes each), for uniqueness checks.

    New digests collect in a small Python set; when it fills up it is sorted into an array, and
    arrays of similar size are merged (like an LSM tree), so lookups stay logarithmic and memory
    stays at about 8 bytes per distinct value. Thread-safe.
    """

    def __init__(self, buffer: int = 65_536) -> None:
        self._buffer_limit = buffer
        self._recent: set[int] = set()
        self._runs: list[array[int]] = []
        self._lock = threading.Lock()
        self.size = 0

    def _in_runs(self, value: int) -> bool:
        for run in self._runs:
            index = bisect.bisect_left(run, value)
            if index < len(run) and run[index] == value:
                return True
        return False

    def add(self, value: int) -> bool:
        """Add ``value``; ``False`` when it was already there."""
        with self._lock:
            if value in self._recent or self._in_runs(value):
                return False
            self._recent.add(value)
            self.size += 1
            if len(self._recent) >= self._buffer_limit:
                self._flush()
            return True

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        with self._lock:
            return value in self._recent or self._in_runs(value)

    def _flush(self) -> None:
        run = array("Q", sorted(self._recent))
        self._recent.clear()
        while self._runs and len(self._runs[-1]) <= len(run):
            run = array("Q", heapq.merge(self._runs.pop(), run))  # streamed: no list of Python ints
        self._runs.append(run)


class _UniqueSession(RuleSession):
    def __init__(self, rule: _Unique) -> None:
        super().__init__(rule)
        self.unique = rule
        self.seen = DigestSet()

    def check_batch(self, documents: Sequence[Document]) -> list[str | None]:
        results: list[str | None] = []
        for doc in documents:
            value = field_value(doc.data, self.unique.path)
            if value is MISSING or value is None or self.seen.add(digest(value)):
                results.append(None)
            else:
                shown = show_value(value)
                results.append(f"{self.unique.field} {shown} is not unique (an earlier document has it)")
        return results


class _Unique(Rule):
    inline = False  # the whole collection only exists once the run is done: checked by scans

    def __init__(self, field: str, name: str | None) -> None:
        self.field = field
        self.path = parse_field_path(field)
        super().__init__(name or f"unique({field})")

    def check(self, doc_path: str, data: Mapping[str, Value]) -> str | None:
        return None  # needs the other documents: see the session

    def session(self, context: RuleContext) -> RuleSession:
        return _UniqueSession(self)


def unique(field: str, *, name: str | None = None) -> Rule:
    """No two documents of the scanned target share a value of ``field`` (type-strict; missing and
    ``null`` values are ignored). Every document after the first with a value fails. Checked by
    scans (``docshift validate``, ``run --validate``), not inline: it describes the whole collection."""
    return _Unique(field, name)


class _ReferenceSession(RuleSession):
    """Looks referenced documents up in batches, remembering the answers (bounded, thread-safe)."""

    def __init__(self, rule: _References, store: Store | None, cache_size: int = 100_000) -> None:
        super().__init__(rule)
        self.references = rule
        self.store = store
        self.cache: OrderedDict[str, bool] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()

    def _exists(self, paths: set[str]) -> dict[str, bool]:
        known: dict[str, bool] = {}
        with self.lock:
            for path in paths:
                if path in self.cache:
                    self.cache.move_to_end(path)
                    known[path] = self.cache[path]
        wanted = sorted(paths - known.keys())
        if wanted and self.store is None:
            raise UsageError(
                f"rule {self.rule.name} needs a store to look documents up",
                hint="check it through a session opened with a store (docshift validate, run --validate)",
            )
        for start in range(0, len(wanted), 300):
            chunk = wanted[start : start + 300]
            assert self.store is not None
            found = self.store.get_many(chunk)
            with self.lock:
                for path, doc in zip(chunk, found, strict=True):
                    known[path] = doc is not None
                    self.cache[path] = doc is not None
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return known

    def check_batch(self, documents: Sequence[Document]) -> list[str | None]:
        targets: list[list[str] | str] = [self.references.targets(doc.data) for doc in documents]
        paths = {path for item in targets if isinstance(item, list) for path in item}
        exists = self._exists(paths) if paths else {}
        results: list[str | None] = []
        for item in targets:
            if isinstance(item, str):
                results.append(item)
                continue
            missing = next((path for path in item if not exists[path]), None)
            results.append(
                None
                if missing is None
                else f"{self.references.field} points to {missing}, which does not exist"
            )
        return results


class _References(Rule):
    def __init__(self, field: str, collection: str, name: str | None) -> None:
        parts = split_path(collection)
        if len(parts) % 2 != 1:
            raise UsageError(
                f"references({field!r}): {collection!r} is not a collection path",
                hint="a collection path has an odd number of segments: users or users/alice/orders",
            )
        self.field = field
        self.path = parse_field_path(field)
        self.collection = "/".join(parts)
        super().__init__(name or f"references({field} -> {self.collection})")

    def targets(self, data: Mapping[str, Value]) -> list[str] | str:
        """The document paths the field points to, or a message when it cannot point anywhere."""
        value = field_value(data, self.path)
        if value is MISSING or value is None:
            return []
        items = value if isinstance(value, list) else [value]
        paths: list[str] = []
        for item in items:
            if isinstance(item, Reference):
                if item.path.rsplit("/", 1)[0] != self.collection:
                    return f"{self.field} points to {item.path}, outside {self.collection}"
                paths.append(item.path)
            elif isinstance(item, str) and item and "/" not in item:
                paths.append(f"{self.collection}/{item}")
            else:
                shown = f"{type_name(item)} {show_value(item)}"
                return f"{self.field} is {shown}, not a reference or a document id"
        return paths

    def check(self, doc_path: str, data: Mapping[str, Value]) -> str | None:
        raise UsageError(
            f"rule {self.name} looks documents up: check it through a session",
            hint="call rule.session(context).check(...) instead of rule.check(...)",
        )

    def session(self, context: RuleContext) -> RuleSession:
        return _ReferenceSession(self, context.store)


def references(field: str, collection: str, *, name: str | None = None) -> Rule:
    """The field holds a reference to (or the id of) an existing document of ``collection``; an
    array field must hold only such values. Missing and ``null`` pass (combine with ``not_null``).
    Checked inline too, with batched, cached lookups."""
    return _References(field, collection, name)


class _CountSession(RuleSession):
    def __init__(self, rule: CountRule, context: RuleContext) -> None:
        super().__init__(rule)
        self.count = rule
        self.context = context

    def check_batch(self, documents: Sequence[Document]) -> list[str | None]:
        return [None] * len(documents)

    def finish(self) -> list[str]:
        context, rule = self.context, self.count
        if context.phase != "after":
            return []
        if context.before_total is None or context.total is None:
            return []  # nothing to compare with: the report says the rule was not checked
        expected, how = context.before_total, f"{context.before_total} before"
        if rule.expect != "equal" and context.target_before is not None:
            expected, how = context.target_before, f"{context.target_before} in the target before"
        if rule.expect == "minus_deleted":
            if context.deleted is None:
                return []
            expected, how = expected - context.deleted, f"{how} - {context.deleted} deleted"
        elif rule.expect == "plus_created":
            if context.created is None:
                return []
            expected, how = expected + context.created, f"{how} + {context.created} created"
        if abs(context.total - expected) <= rule.tolerance:
            return []
        return [f"expected {expected} documents ({how}), found {context.total}"]


class CountRule(Rule):
    inline = False

    def __init__(self, expect: str, tolerance: int, name: str | None) -> None:
        if expect not in COUNT_EXPECTATIONS:
            raise UsageError(
                f"count({expect!r}): unknown expectation", hint=f"use one of {', '.join(COUNT_EXPECTATIONS)}"
            )
        if tolerance < 0:
            raise UsageError("count(): tolerance cannot be negative", hint="pass tolerance=0 or more")
        self.expect = expect
        self.tolerance = tolerance
        super().__init__(name or f"count({expect})")

    def check(self, doc_path: str, data: Mapping[str, Value]) -> str | None:
        return None

    def session(self, context: RuleContext) -> RuleSession:
        return _CountSession(self, context)

    def checkable(self, context: RuleContext) -> bool:
        """Whether an after-scan has the numbers this expectation needs."""
        if context.phase != "after" or context.before_total is None or context.total is None:
            return False
        needs = {"minus_deleted": context.deleted, "plus_created": context.created}.get(self.expect, 0)
        return needs is not None


def count(expect: str = "equal", *, tolerance: int = 0, name: str | None = None) -> Rule:
    """After a run, within ``tolerance``, the target holds as many documents as the source had before
    (``equal``; for a copy: every source document has its copy), or as many as it had itself before,
    minus the documents the run deleted (``minus_deleted``) or plus those it created
    (``plus_created``). Checked by an after-scan, against the before-scan's counts."""
    return CountRule(expect, tolerance, name)

"""Hypothesis strategies for every Firestore value type, within the limits Firestore accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from docshift.values import GeoPoint, Reference, Timestamp

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
# Field names: any unicode, including dots, spaces and backticks; Firestore reserves __x__ names.
FIELD_NAMES = st.text(min_size=1, max_size=12).filter(lambda s: not (s.startswith("__") and s.endswith("__")))
DOC_IDS = st.text(
    alphabet=st.characters(blacklist_characters="/", blacklist_categories=["Cs"]), min_size=1, max_size=20
).filter(lambda s: s not in (".", "..") and not (s.startswith("__") and s.endswith("__")))


def timestamps(micros_only: bool = False) -> st.SearchStrategy[Timestamp]:
    """Firestore stores timestamp *values* to the microsecond; files must keep nanoseconds."""
    nanos = st.integers(0, 999_999).map(lambda u: u * 1000) if micros_only else st.integers(0, 10**9 - 1)
    return st.builds(Timestamp, st.integers(-62135596800, 253402300799), nanos)


def scalars(micros_only: bool = False, project: str = "demo-p") -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        INT64,
        FLOATS,
        st.text(max_size=30),
        st.binary(max_size=30),
        timestamps(micros_only),
        st.builds(GeoPoint, st.floats(-90, 90), st.floats(-180, 180)),
        st.builds(
            Reference,
            st.tuples(st.sampled_from(["users", "a b", "ü"]), DOC_IDS).map("/".join),
            st.just(project),
            st.just("(default)"),
        ),
    )


def values(micros_only: bool = False, project: str = "demo-p") -> st.SearchStrategy[Any]:
    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        # Firestore forbids an array directly inside an array.
        no_arrays = children.filter(lambda v: not isinstance(v, list))
        return st.one_of(st.lists(no_arrays, max_size=4), st.dictionaries(FIELD_NAMES, children, max_size=4))

    return st.recursive(scalars(micros_only, project), extend, max_leaves=12)


def documents(micros_only: bool = False, project: str = "demo-p") -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(FIELD_NAMES, values(micros_only, project), max_size=6)

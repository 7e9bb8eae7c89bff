"""The adapter's own copy of Firestore's protocol schema against the installed google-cloud-firestore.

The adapter builds its message classes from ``store/_firestore_schema.py`` so that starting the CLI
does not import the client package. That copy must stay wire-compatible with the library: every
field it knows has the same number, type and shape there (the library may know more fields).
"""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud.firestore_v1.types import document, firestore, query, write

from docshift.store import firestore as adapter

OURS_AND_THEIRS = [
    ("RunQueryRequest", firestore.RunQueryRequest),
    ("RunQueryResponse", firestore.RunQueryResponse),
    ("BatchGetRequest", firestore.BatchGetDocumentsRequest),
    ("BatchGetResponse", firestore.BatchGetDocumentsResponse),
    ("AggRequest", firestore.RunAggregationQueryRequest),
    ("AggResponse", firestore.RunAggregationQueryResponse),
    ("BatchWriteRequest", firestore.BatchWriteRequest),
    ("BatchWriteResponse", firestore.BatchWriteResponse),
    ("ListCollectionIdsRequest", firestore.ListCollectionIdsRequest),
    ("ListCollectionIdsResponse", firestore.ListCollectionIdsResponse),
    ("PartitionRequest", firestore.PartitionQueryRequest),
    ("PartitionResponse", firestore.PartitionQueryResponse),
    ("StructuredQuery", query.StructuredQuery),
    ("Value", document.Value),
    ("Write", write.Write),
]


def incompatibilities(ours: Any, theirs: Any, seen: set[str]) -> list[str]:
    """Fields of ``ours`` that ``theirs`` lacks or encodes differently, through nested messages."""
    if ours.full_name in seen:
        return []
    seen.add(ours.full_name)
    problems: list[str] = []
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        if other is None:
            problems.append(f"{ours.full_name}.{field.name}: unknown to the library")
            continue
        for aspect in ("number", "type", "is_repeated"):
            if getattr(field, aspect) != getattr(other, aspect):
                problems.append(f"{ours.full_name}.{field.name}: {aspect} differs")
        if field.message_type is not None and other.message_type is not None:
            if field.message_type.full_name != other.message_type.full_name:
                problems.append(f"{ours.full_name}.{field.name}: message type differs")
            else:
                problems += incompatibilities(field.message_type, other.message_type, seen)
    return problems


@pytest.mark.parametrize(("ours", "theirs"), OURS_AND_THEIRS, ids=[name for name, _ in OURS_AND_THEIRS])
def test_the_embedded_schema_is_wire_compatible_with_the_library(ours: str, theirs: Any) -> None:
    problems = incompatibilities(adapter._pb[ours].DESCRIPTOR, theirs.pb().DESCRIPTOR, set())
    assert not problems, "regenerate with `python scripts/gen_firestore_schema.py`:\n" + "\n".join(problems)


def test_a_write_request_built_by_the_adapter_reads_back_identically_with_the_library() -> None:
    request = adapter._pb["BatchWriteRequest"](database="projects/p/databases/(default)")
    out = request.writes.add()
    out.update.name = "projects/p/databases/(default)/documents/c/d"
    out.update.fields["n"].integer_value = 7
    out.update.fields["m"].map_value.fields["x"].string_value = "é"
    out.update_mask.field_paths.append("n")
    out.current_document.update_time.seconds = 12
    out.current_document.update_time.nanos = 345
    parsed = firestore.BatchWriteRequest.pb().FromString(request.SerializeToString())
    assert parsed.writes[0].update.fields["n"].integer_value == 7
    assert parsed.writes[0].update.fields["m"].map_value.fields["x"].string_value == "é"
    assert list(parsed.writes[0].update_mask.field_paths) == ["n"]
    assert (
        parsed.writes[0].current_document.update_time.seconds,
        parsed.writes[0].current_document.update_time.nanos,
    ) == (12, 345)
    # deterministic: map entries in key order (otherwise their order may differ between encoders)
    assert parsed.SerializeToString(deterministic=True) == request.SerializeToString(deterministic=True)


def test_starting_the_adapter_does_not_import_the_client_package() -> None:
    import subprocess
    import sys

    probe = "import sys, docshift.store.firestore; print('google.cloud.firestore_v1' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

"""The Firestore adapter: the only module that imports ``google.*``.

It speaks raw gRPC with the protobuf messages instead of the high-level client: building snapshot
objects costs more than the wire (measured: ~3,500 docs/s through ``collection.stream()`` versus
~13,700 docs/s for raw RunQuery), and the engine needs neither snapshots nor proto-plus wrappers.
The message classes come from docshift's own copy of the protocol schema (``_firestore_schema``,
generated from google-cloud-firestore), so starting the CLI never imports the client package, and
streams are read on the consuming thread (gRPC's single-threaded unary-stream mode).
Google errors are translated here, in :func:`translate_error`, and nowhere else. The module is
longer than docshift's others on purpose: being the only one that may import Google code, it holds
value conversion, queries, writes and error translation together.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import math
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import grpc
import grpc.experimental
from google.protobuf import descriptor_pool, message_factory

from docshift.errors import (
    CodecError,
    ConfigError,
    ConflictError,
    CredentialsError,
    PermanentError,
    StoreError,
    TransientError,
)
from docshift.store._firestore_schema import FILES
from docshift.store.base import (
    DELETE_FIELD,
    Document,
    FieldPath,
    Filter,
    Op,
    Query,
    Store,
    StoreInfo,
    Write,
    WriteKind,
    WriteResult,
    split_path,
)
from docshift.store.semantics import (
    EMULATOR_MAX_REQUEST_BYTES,
    MAX_REQUEST_BYTES,
    MAX_WRITES_PER_REQUEST,
    document_problem,
    error_hint,
    matches,
    read_time_error,
    server_side,
)
from docshift.values import GeoPoint, Reference, Timestamp, Value

__all__ = ["FirestoreStore", "translate_error"]


def _message_classes() -> dict[str, Any]:
    """Firestore's protocol messages, built from the descriptors in ``_firestore_schema`` in a
    private pool (no clash with google-cloud-firestore's own if both are loaded): the client
    package's ``__init__`` would cost ~0.3 s at every start for classes this module never uses."""
    pool = descriptor_pool.DescriptorPool()
    for _name, encoded in FILES:
        pool.AddSerializedFile(base64.b64decode(encoded))

    def message(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"google.firestore.v1.{name}"))

    return {
        "RunQueryRequest": message("RunQueryRequest"),
        "RunQueryResponse": message("RunQueryResponse"),
        "BatchGetRequest": message("BatchGetDocumentsRequest"),
        "BatchGetResponse": message("BatchGetDocumentsResponse"),
        "AggRequest": message("RunAggregationQueryRequest"),
        "AggResponse": message("RunAggregationQueryResponse"),
        "BatchWriteRequest": message("BatchWriteRequest"),
        "BatchWriteResponse": message("BatchWriteResponse"),
        "ListCollectionIdsRequest": message("ListCollectionIdsRequest"),
        "ListCollectionIdsResponse": message("ListCollectionIdsResponse"),
        "PartitionRequest": message("PartitionQueryRequest"),
        "PartitionResponse": message("PartitionQueryResponse"),
        "StructuredQuery": message("StructuredQuery"),
        "Value": message("Value"),
        "Write": message("Write"),
    }


_pb = _message_classes()
_StructuredQuery: Any = _pb["StructuredQuery"]

_FIELD_OPS = {
    Op.LT: 1,
    Op.LE: 2,
    Op.GT: 3,
    Op.GE: 4,
    Op.EQ: 5,
    Op.NE: 6,
    Op.ARRAY_CONTAINS: 7,
    Op.IN: 8,
    Op.ARRAY_CONTAINS_ANY: 9,
    Op.NOT_IN: 10,
}
_IS_NAN, _IS_NULL, _IS_NOT_NAN, _IS_NOT_NULL = 2, 3, 4, 5
_AND, _ASCENDING = 1, 1
_LT, _GE = _FIELD_OPS[Op.LT], _FIELD_OPS[Op.GE]
_MIN_ID = "__id-9223372036854775808__"
"""The smallest document id in Firestore's name order (numeric ids sort first)."""
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "RESOURCE_EXHAUSTED", "INTERNAL"}
_CONFLICT = {"FAILED_PRECONDITION", "NOT_FOUND", "ALREADY_EXISTS"}
_SIMPLE_FIELD = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
_SCOPES = ("https://www.googleapis.com/auth/datastore",)
_FIRESTORE_HOST = "firestore.googleapis.com:443"
_NO_PROJECT_HINT = "set --project, DOCSHIFT_PROJECT or project in docshift.toml"
_REFUSED = "Firestore refuses such a document: change up() so that it stays within Firestore's limits"
_CAUSES = (
    ("Connection refused", "connection refused: nothing listens on that port"),
    ("Domain name not found", "the host name does not resolve"),
    ("DNS resolution failed", "the host name does not resolve"),
    ("lookup", "the host name does not resolve"),
    ("Network is unreachable", "the network is unreachable"),
    ("No route to host", "there is no route to the host"),
    ("timed out", "the connection timed out"),
)
"""gRPC's connection failure texts, and what each means for the user (the first that matches)."""


def translate_error(code: str, message: str, *, path: str | None = None, guarded: bool = False) -> StoreError:
    """Turn a gRPC status into docshift's error tree. ``guarded``: the write had a precondition."""
    hint = error_hint(code, guarded=guarded)
    if code in _TRANSIENT:
        return TransientError(message, code=code, path=path, hint=hint)
    if guarded and code in _CONFLICT:
        return ConflictError(message, code=code, path=path, hint=hint)
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return CredentialsError(message, code=code, path=path, hint=hint)
    return PermanentError(message, code=code, path=path, hint=hint)


def _cause(details: str) -> str:
    """A gRPC connection failure as a few words (connection refused, the host does not resolve…)."""
    for text, cause in _CAUSES:
        if text in details:
            return cause
    return details.strip().splitlines()[0] if details.strip() else "no reason given"


def _quote_field(field_path: FieldPath) -> str:
    return ".".join(
        part if _SIMPLE_FIELD.match(part) else "`" + part.replace("\\", "\\\\").replace("`", "\\`") + "`"
        for part in field_path
    )


def _decode(value: Any) -> Value:
    """A protobuf Value as a docshift value (one table lookup per value: this runs for every field read)."""
    return _DECODERS.get(value.WhichOneof("value_type"), _unsupported)(value)


def _decode_fields(fields: Any) -> dict[str, Value]:
    # Keys then lookups: a protobuf map's items() goes through a Python-level ItemsView.
    return {key: _decode(fields[key]) for key in fields}


def _decode_map(value: Any) -> dict[str, Value]:
    return _decode_fields(value.map_value.fields)


def _decode_timestamp(value: Any) -> Timestamp:
    stamp = value.timestamp_value
    return Timestamp(stamp.seconds, stamp.nanos)


def _decode_geo_point(value: Any) -> GeoPoint:
    point = value.geo_point_value
    return GeoPoint(point.latitude, point.longitude)


def _unsupported(value: Any) -> Value:
    raise CodecError(
        f"unsupported Firestore value kind {value.WhichOneof('value_type')!r}",
        hint="docshift reads every Firestore value type; a newer one needs a newer docshift",
    )


_DECODERS: dict[str | None, Callable[[Any], Value]] = {
    "string_value": lambda value: value.string_value,
    "integer_value": lambda value: value.integer_value,
    "double_value": lambda value: value.double_value,
    "boolean_value": lambda value: value.boolean_value,
    "null_value": lambda value: None,
    "map_value": _decode_map,
    "array_value": lambda value: [_decode(item) for item in value.array_value.values],
    "timestamp_value": _decode_timestamp,
    "bytes_value": lambda value: bytes(value.bytes_value),
    "reference_value": lambda value: _parse_reference(value.reference_value),
    "geo_point_value": _decode_geo_point,
}


class FirestoreStore(Store):
    """Firestore (real or emulator) behind the :class:`Store` interface."""

    def __init__(
        self,
        project: str | None,
        database: str = "(default)",
        *,
        emulator_host: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 3.0,
        host_source: str | None = None,
    ) -> None:
        """Opens the channel and waits until it is connected (see :meth:`_connect`): a store that
        cannot be reached fails here, within ``connect_timeout`` seconds, with what was tried.
        ``host_source`` says where ``emulator_host`` was set (a flag, a variable, a file), for that
        error's hint."""
        self.timeout = timeout
        self._host_source = host_source
        if emulator_host:
            if not project:
                raise ConfigError("no project id given", hint=_NO_PROJECT_HINT)
            self._channel = grpc.insecure_channel(emulator_host, options=_channel_options())
            self._auth: tuple[tuple[str, str], ...] = (("authorization", "Bearer owner"),)
        else:
            project = self._open_real(project)
        assert project is not None
        self.info = StoreInfo(project=project, database=database, emulator_host=emulator_host)
        self.max_request_bytes = EMULATOR_MAX_REQUEST_BYTES if emulator_host else MAX_REQUEST_BYTES
        """The largest BatchWrite request the store takes, in wire bytes; larger ones are split."""
        self._database_name = f"projects/{project}/databases/{database}"
        self._root = f"{self._database_name}/documents"
        self._metadata = (*self._auth, ("x-goog-request-params", f"database={self._database_name}"))
        self._run_query = self._stream_method("RunQuery", "RunQueryRequest", "RunQueryResponse")
        self._batch_get = self._stream_method("BatchGetDocuments", "BatchGetRequest", "BatchGetResponse")
        self._aggregate = self._stream_method("RunAggregationQuery", "AggRequest", "AggResponse")
        self._batch_write = self._unary_method("BatchWrite", "BatchWriteRequest", "BatchWriteResponse")
        self._list_ids = self._unary_method(
            "ListCollectionIds", "ListCollectionIdsRequest", "ListCollectionIdsResponse"
        )
        self._partition = self._unary_method("PartitionQuery", "PartitionRequest", "PartitionResponse")
        try:
            self._connect(connect_timeout)
        except BaseException:
            self._channel.close()
            raise
        _OPEN.add(self)

    def _connect(self, timeout: float) -> None:
        """Wait until the channel is connected; raise at its first failed attempt, or after
        ``timeout`` seconds without a connection (a host that drops packets or never answers).

        gRPC itself would keep reconnecting, and every call would fail as UNAVAILABLE, which is
        transient and retried for ~13 s: right for a store that goes away during a run (it comes
        back), wrong for one that was never there. So a store that cannot be reached when it is
        opened is a :class:`PermanentError` (not retried) saying what was tried and what to do.
        The channel's own state, not a first call: a store that is only slow to answer its first
        call (a cold emulator on a busy machine) is there.
        """
        states: list[grpc.ChannelConnectivity] = []
        settled = threading.Event()
        final = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)

        def watch(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state in final:
                settled.set()

        self._channel.subscribe(watch, try_to_connect=True)
        try:
            settled.wait(timeout)
        finally:
            self._channel.unsubscribe(watch)
        if grpc.ChannelConnectivity.READY in states:
            return
        if not settled.is_set():
            raise self._unreachable(f"no connection within {timeout:g} s", slow=True)
        # A failed channel says why only to a call, and a call on it fails at once.
        request = _pb["ListCollectionIdsRequest"](parent=self._root, page_size=1)
        try:
            self._list_ids(request, metadata=self._metadata, timeout=min(timeout, 1.0))
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                raise self._unreachable(_cause(exc.details() or "")) from None
            # Anything else was an answer: the store is there (the first real call says what is
            # wrong with the request).

    def _unreachable(self, cause: str, *, slow: bool = False) -> PermanentError:
        info = self.info
        if info.emulator_host:
            what = f"the Firestore emulator at {info.emulator_host}"
            where = self._host_source or "--emulator-host, FIRESTORE_EMULATOR_HOST or emulator_host"
            hint = (
                "start one with `docshift emulator` (it prints the FIRESTORE_EMULATOR_HOST to export), "
                f"or correct the address, set by {where}"
            )
        else:
            what = f"Cloud Firestore at {_FIRESTORE_HOST}"
            hint = (
                "check the network connection, proxy and firewall (docshift needs outbound HTTPS to "
                f"{_FIRESTORE_HOST}); to use an emulator instead, set FIRESTORE_EMULATOR_HOST"
            )
        if slow:
            hint += "; on a slow link, raise connect_timeout_seconds"
        message = f"cannot reach {what} (project {info.project}, database {info.database}): {cause}"
        return PermanentError(message, code="UNAVAILABLE", hint=hint)

    def _rpc_error(self, exc: grpc.RpcError, read_time: Timestamp | None = None) -> StoreError:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if read_time is not None and code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"):
            refused = read_time_error(code, details or "", read_time)
            if refused is not None:
                return refused
        if not details or details == code:
            # The emulator answers a malformed project or database name with a bare UNKNOWN.
            details = f"the store answered {code} without saying why ({self.info.describe()})"
        elif "http2 header with status" in details:
            details = f"{self.info.emulator_host or _FIRESTORE_HOST} is not a Firestore server ({details})"
        return translate_error(code, details)

    def _open_real(self, project: str | None) -> str:
        # Imported here: credentials pull in requests and cryptography (~0.1 s) the emulator never needs.
        from google.auth import default as google_auth_default
        from google.auth import exceptions as auth_exceptions
        from google.auth.transport import grpc as auth_grpc
        from google.auth.transport.requests import Request as AuthRequest

        try:
            credentials, default_project = google_auth_default(scopes=_SCOPES)
        except auth_exceptions.DefaultCredentialsError:
            raise CredentialsError(
                "no Google credentials found",
                hint="run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, "
                "or point FIRESTORE_EMULATOR_HOST at an emulator",
            ) from None
        project = project or default_project
        if not project:
            raise ConfigError(
                "no project id given, and the Google credentials name none", hint=_NO_PROJECT_HINT
            )
        self._channel = auth_grpc.secure_authorized_channel(  # type: ignore[no-untyped-call]
            credentials, AuthRequest(), _FIRESTORE_HOST, options=_channel_options()
        )
        self._auth = ()
        return str(project)

    def _stream_method(self, name: str, request: str, response: str) -> Any:
        return self._channel.unary_stream(
            f"/google.firestore.v1.Firestore/{name}",
            request_serializer=_pb[request].SerializeToString,
            response_deserializer=_pb[response].FromString,
        )

    def _unary_method(self, name: str, request: str, response: str) -> Any:
        return self._channel.unary_unary(
            f"/google.firestore.v1.Firestore/{name}",
            request_serializer=_pb[request].SerializeToString,
            response_deserializer=_pb[response].FromString,
        )

    # ----------------------------------------------------------------- names and values
    def _full_name(self, path: str) -> str:
        return f"{self._root}/{path}"

    def _relative(self, name: str) -> str:
        return name[len(self._root) + 1 :]

    def _decode_document(self, pb: Any) -> Document:
        created, updated = pb.create_time, pb.update_time
        return Document(
            self._relative(pb.name),
            _decode_fields(pb.fields),
            Timestamp(created.seconds, created.nanos),
            Timestamp(updated.seconds, updated.nanos),
            pb.ByteSize(),
        )

    def _encode_value(self, value: Value, out: Any) -> None:
        kind = type(value)
        if kind is str:
            out.string_value = value
        elif kind is bool:
            out.boolean_value = value
        elif kind is int:
            if not -(2**63) <= value < 2**63:
                raise CodecError(
                    f"integer {value} does not fit in 64 bits", hint="store it as a string or a float"
                )
            out.integer_value = value
        elif kind is float:
            out.double_value = value
        elif value is None:
            out.null_value = 0
        elif kind is dict:
            fields = out.map_value.fields
            out.map_value.SetInParent()
            for key, item in value.items():
                self._encode_value(item, fields[key])
        elif kind is list or kind is tuple:
            values = out.array_value.values
            out.array_value.SetInParent()
            for item in value:
                self._encode_value(item, values.add())
        else:
            self._encode_rare_value(value, kind, out)

    def _encode_rare_value(self, value: Value, kind: type, out: Any) -> None:
        """The value types after the common ones, kept apart so the common path stays short."""
        if kind is Timestamp or isinstance(value, datetime):
            stamp = value if kind is Timestamp else Timestamp.from_datetime(value)
            out.timestamp_value.seconds = stamp.seconds
            out.timestamp_value.nanos = stamp.nanos
        elif kind is bytes or kind is bytearray:
            out.bytes_value = bytes(value)
        elif kind is GeoPoint:
            out.geo_point_value.latitude = value.latitude
            out.geo_point_value.longitude = value.longitude
        elif kind is Reference:
            project = value.project or self.info.project
            out.reference_value = (
                f"projects/{project}/databases/{value.database or '(default)'}/documents/{value.path}"
            )
        elif isinstance(value, int | float | str):  # subclasses such as IntEnum or StrEnum
            base = next(b for b in (int, float, str) if isinstance(value, b))
            self._encode_value(base(value), out)
        else:
            raise CodecError(
                f"cannot store a value of type {kind.__name__!r} in Firestore",
                hint="store str, int, float, bool, None, bytes, datetime, dict, list, Timestamp, GeoPoint "
                "or Reference",
            )

    # ----------------------------------------------------------------- reading
    def _structured_query(self, query: Query) -> tuple[str, Any]:
        parts = split_path(query.collection)
        structured = _StructuredQuery()
        selector = structured.from_.add()
        selector.all_descendants = query.group or query.descendants
        parent = self._root if query.group or len(parts) == 1 else self._full_name("/".join(parts[:-1]))
        pushed = tuple(f for f in query.filters if server_side(f))
        if query.descendants:
            # A kindless all-descendants query under the parent, cut to the collection's name range
            # (how Google's clients do recursive deletes): [parent/id/MIN, parent/id\0/MIN).
            bounds = structured.where.composite_filter
            bounds.op = _AND
            for op, collection_id in ((_GE, parts[-1]), (_LT, parts[-1] + "\0")):
                bound = bounds.filters.add().field_filter
                bound.field.field_path = "__name__"
                bound.op = op
                bound.value.reference_value = f"{parent}/{collection_id}/{_MIN_ID}"
        else:
            selector.collection_id = parts[-1]
        if pushed:
            self._encode_filters(pushed, structured.where)
        order = structured.order_by.add()
        order.field.field_path = "__name__"
        order.direction = _ASCENDING
        if query.start_after is not None:
            structured.start_at.values.add().reference_value = self._full_name(query.start_after)
            structured.start_at.before = False
        if query.end_at is not None:
            structured.end_at.values.add().reference_value = self._full_name(query.end_at)
            structured.end_at.before = False
        local = len(pushed) < len(query.filters)
        if query.limit is not None and not local:
            structured.limit.value = query.limit
        if query.keys_only and not local:
            structured.select.fields.add().field_path = "__name__"
        return parent, structured

    def _encode_filters(self, filters: tuple[Filter, ...], where: Any) -> None:
        targets = [where]
        if len(filters) > 1:
            where.composite_filter.op = _AND
            targets = [where.composite_filter.filters.add() for _ in filters]
        for condition, target in zip(filters, targets, strict=True):
            value = condition.value
            is_nan = isinstance(value, float) and math.isnan(value)
            if condition.op in (Op.EQ, Op.NE) and (value is None or is_nan):
                unary = target.unary_filter
                unary.field.field_path = _quote_field(condition.field)
                if condition.op == Op.EQ:
                    unary.op = _IS_NULL if value is None else _IS_NAN
                else:
                    unary.op = _IS_NOT_NULL if value is None else _IS_NOT_NAN
                continue
            field_filter = target.field_filter
            field_filter.field.field_path = _quote_field(condition.field)
            field_filter.op = _FIELD_OPS[condition.op]
            self._encode_value(value, field_filter.value)

    def stream(self, query: Query, *, read_time: Timestamp | None = None) -> Iterator[Document]:
        local = tuple(f for f in query.filters if not server_side(f))
        parent, structured = self._structured_query(query)
        request = _pb["RunQueryRequest"](parent=parent, structured_query=structured)
        _set_read_time(request, read_time)
        remaining = query.limit
        if remaining == 0:
            return
        call = None
        try:
            call = self._run_query(request, metadata=self._metadata)
            for response in call:
                if not response.HasField("document"):
                    continue
                pb = response.document
                if query.keys_only and not local:
                    yield Document(self._relative(pb.name), {}, None, None)
                    continue
                doc = self._decode_document(pb)
                if local and not all(matches(doc.data, f) for f in local):
                    continue
                yield Document(doc.path, {}, None, None) if query.keys_only else doc
                if remaining is not None:
                    remaining -= 1
                    if remaining <= 0:
                        return
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, read_time) from None
        finally:
            if call is not None:
                call.cancel()  # a stream left early (limit reached, consumer stopped) ends here, not at GC

    def get_many(self, paths: Sequence[str], *, read_time: Timestamp | None = None) -> list[Document | None]:
        if not paths:
            return []
        request = _pb["BatchGetRequest"](
            database=self._database_name, documents=[self._full_name(p) for p in paths]
        )
        _set_read_time(request, read_time)
        found: dict[str, Document | None] = {}
        try:
            for response in self._batch_get(request, metadata=self._metadata, timeout=self.timeout):
                if response.HasField("found"):
                    doc = self._decode_document(response.found)
                    found[doc.path] = doc
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, read_time) from None
        return [found.get(path) for path in paths]

    def snapshot_time(self) -> Timestamp:
        """The store's own time: the read time of a lookup of a document that never exists."""
        request = _pb["BatchGetRequest"](
            database=self._database_name, documents=[self._full_name("_docshift_clock/now")]
        )
        try:
            for response in self._batch_get(request, metadata=self._metadata, timeout=self.timeout):
                if response.HasField("read_time"):
                    return Timestamp(response.read_time.seconds, response.read_time.nanos).stored
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None
        return Timestamp.now().stored

    def count(self, query: Query, *, read_time: Timestamp | None = None) -> int:
        if not all(server_side(f) for f in query.filters):
            return sum(1 for _ in self.stream(query, read_time=read_time))
        parent, structured = self._structured_query(dataclasses.replace(query, keys_only=False))
        request = _pb["AggRequest"](parent=parent)
        _set_read_time(request, read_time)
        request.structured_aggregation_query.structured_query.CopyFrom(structured)
        aggregation = request.structured_aggregation_query.aggregations.add()
        aggregation.alias = "n"
        aggregation.count.SetInParent()
        try:
            for response in self._aggregate(request, metadata=self._metadata, timeout=self.timeout):
                if response.HasField("result"):
                    return int(response.result.aggregate_fields["n"].integer_value)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, read_time) from None
        return 0

    def list_collections(
        self, document_path: str | None = None, *, read_time: Timestamp | None = None
    ) -> list[str]:
        parent = self._full_name(document_path) if document_path else self._root
        ids: list[str] = []
        token = ""
        try:
            while True:
                request = _pb["ListCollectionIdsRequest"](parent=parent, page_size=300, page_token=token)
                _set_read_time(request, read_time)
                response = self._list_ids(request, metadata=self._metadata, timeout=self.timeout)
                ids.extend(response.collection_ids)
                token = response.next_page_token
                if not token:
                    return sorted(ids)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, read_time) from None

    def partition(self, query: Query, count: int, *, read_time: Timestamp | None = None) -> list[str] | None:
        _, structured = self._structured_query(Query(query.collection, group=True))
        request = _pb["PartitionRequest"](
            parent=self._root, structured_query=structured, partition_count=count
        )
        _set_read_time(request, read_time)
        try:
            response = self._partition(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise self._rpc_error(exc, read_time) from None
        return [self._relative(cursor.values[0].reference_value) for cursor in response.partitions]

    # ----------------------------------------------------------------- writing
    def _encode_write(self, write: Write, out: Any) -> None:
        name = self._full_name(write.path)
        if write.kind == WriteKind.DELETE:
            out.delete = name
        else:
            document = out.update
            document.name = name
            fields = document.fields
            if write.kind == WriteKind.UPDATE:
                paths = out.update_mask.field_paths
                for field_path, value in (write.fields or {}).items():
                    paths.append(_quote_field(field_path))
                    if value is DELETE_FIELD:
                        continue
                    target = fields[field_path[0]]
                    for segment in field_path[1:]:
                        target = target.map_value.fields[segment]
                    self._encode_value(value, target)
            else:
                for key, value in (write.data or {}).items():
                    self._encode_value(value, fields[key])
        guard = write.precondition
        if guard is not None:
            if guard.update_time is not None:
                out.current_document.update_time.seconds = guard.update_time.seconds
                out.current_document.update_time.nanos = guard.update_time.nanos
            elif guard.exists is not None:
                out.current_document.exists = guard.exists

    def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if len({write.path for write in writes}) != len(writes):
            raise PermanentError(
                "the same document cannot be written more than once in a single request",
                code="INVALID_ARGUMENT",
                hint="send each document's writes in separate commits",
            )
        results: list[WriteResult | None] = [None] * len(writes)
        sendable: list[int] = []
        for index, write in enumerate(writes):
            problem = None if write.checked else _write_problem(write)
            if problem:
                invalid = PermanentError(problem, code="INVALID_ARGUMENT", path=write.path, hint=_REFUSED)
                results[index] = WriteResult(write.path, error=invalid)
            else:
                sendable.append(index)
        self._send(writes, sendable, results)
        return [result for result in results if result is not None]

    def _send(
        self,
        writes: Sequence[Write],
        indices: list[int],
        results: list[WriteResult | None],
        answered: list[bool] | None = None,
    ) -> None:
        """The writes in as few BatchWrite requests as the store's limits allow (writes per request,
        wire bytes per request); a request refused as a whole is split until the bad write is alone.

        A request that fails as a whole (unreachable, say) raises only while no earlier request of
        the same commit was answered; after one was, its writes and the ones not sent yet get that
        error each, so that the writes the store applied are still reported as applied (and only the
        others are retried).
        """
        answered = [False] if answered is None else answered
        groups = self._pack(writes, indices, results)
        for number, (sent, request) in enumerate(groups):
            try:
                self._request(writes, sent, request, results, answered)
            except StoreError as error:
                if not answered[0]:
                    raise
                for later, (rest, _) in enumerate(groups[number:]):
                    # The failed request's writes may have been applied (a reply lost); later ones
                    # were never sent.
                    maybe = later == 0 and isinstance(error, TransientError)
                    for index in rest:
                        if results[index] is None:
                            results[index] = WriteResult(writes[index].path, error=error, maybe_applied=maybe)
                return

    def _pack(
        self, writes: Sequence[Write], indices: list[int], results: list[WriteResult | None]
    ) -> list[tuple[list[int], Any]]:
        """Encode the writes into requests within the limits; a write that cannot be encoded gets
        its error in ``results`` and is left out."""
        groups: list[tuple[list[int], Any]] = []
        request = _pb["BatchWriteRequest"](database=self._database_name)
        base = request.ByteSize()
        size = base
        sent: list[int] = []
        for index in indices:
            write = writes[index]
            encoded = request.writes.add()
            try:
                self._encode_write(write, encoded)
            except CodecError as exc:
                del request.writes[-1]
                invalid = PermanentError(exc.message, code="INVALID_ARGUMENT", path=write.path, hint=exc.hint)
                results[index] = WriteResult(write.path, error=invalid)
                continue
            length = encoded.ByteSize()
            weight = 1 + _varint_size(length) + length  # the field's tag, its length, the write
            if sent and (len(sent) >= MAX_WRITES_PER_REQUEST or size + weight > self.max_request_bytes):
                del request.writes[-1]
                groups.append((sent, request))
                request = _pb["BatchWriteRequest"](database=self._database_name)
                self._encode_write(write, request.writes.add())
                size, sent = base, []
            size += weight
            sent.append(index)
        if sent:
            groups.append((sent, request))
        return groups

    def _request(
        self,
        writes: Sequence[Write],
        sent: list[int],
        request: Any,
        results: list[WriteResult | None],
        answered: list[bool],
    ) -> None:
        try:
            response = self._batch_write(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            error = self._rpc_error(exc)
            if error.code != "INVALID_ARGUMENT":
                raise error from None
            if len(sent) == 1:
                error.path = writes[sent[0]].path
                results[sent[0]] = WriteResult(error.path, error=error)
                return
            middle = len(sent) // 2
            self._send(writes, sent[:middle], results, answered)
            self._send(writes, sent[middle:], results, answered)
            return
        answered[0] = True
        for index, result, status in zip(sent, response.write_results, response.status, strict=True):
            write = writes[index]
            if status.code == 0:
                stamp = Timestamp(result.update_time.seconds, result.update_time.nanos)
                results[index] = WriteResult(write.path, update_time=stamp)
            else:
                code = _CODE_NAMES.get(status.code, "UNKNOWN")
                error = translate_error(
                    code,
                    status.message.split("\n")[0] or code,
                    path=write.path,
                    guarded=write.precondition is not None,
                )
                results[index] = WriteResult(write.path, error=error)

    def close(self) -> None:
        _OPEN.discard(self)
        self._channel.close()


_OPEN: weakref.WeakSet[FirestoreStore] = weakref.WeakSet()
"""Stores not closed yet. The connection check's gRPC polling thread lingers ~0.2 s after it, and
closing a channel waits for that thread: at interpreter shutdown (when such a daemon thread can no
longer run) a channel left to be collected then would wait forever. So the stores still open are
closed at exit, while threads still run."""


@atexit.register
def _close_open_stores() -> None:
    for store in list(_OPEN):
        with contextlib.suppress(Exception):  # exiting anyway: a channel that fails to close is moot
            store.close()


def _set_read_time(request: Any, read_time: Timestamp | None) -> None:
    """Read at ``read_time`` (every read request has the field), or live when None."""
    if read_time is not None:
        request.read_time.seconds = read_time.seconds
        request.read_time.nanos = read_time.nanos


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _write_problem(write: Write) -> str | None:
    """Why Firestore would refuse this write as a whole request, checked before sending it."""
    if write.kind in (WriteKind.SET, WriteKind.CREATE):
        return document_problem(write.path, write.data or {})
    if write.kind == WriteKind.UPDATE and write.fields:
        # Nest the field paths (not "a.b" keys) so each name is checked as the segment it is.
        touched: dict[str, Value] = {}
        for field_path, value in write.fields.items():
            if value is DELETE_FIELD:
                continue
            parent = touched
            for segment in field_path[:-1]:
                child = parent.get(segment)
                if not isinstance(child, dict):
                    child = parent[segment] = {}
                parent = child
            parent[field_path[-1]] = value
        return document_problem(write.path, touched)
    return None


STREAM_LOOKAHEAD_BYTES = 4 * 1024 * 1024
"""Bytes a stream may receive ahead of its reader (HTTP/2 flow control). At gRPC's default (64 KiB)
a store 50 ms away sends at most 64 KiB per round trip whenever the reader stops to hand a batch
on (~640 KB/s); 4 MiB covers the bandwidth-delay product of a 100 ms round trip at ~40 MB/s."""


def _channel_options() -> list[tuple[str, int]]:
    # Streams read on the consuming thread instead of handing every message over from gRPC's
    # polling thread: measured on a 20,000-document stream, half the wall time and ~55% less CPU.
    return [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
        ("grpc.http2.lookahead_bytes", STREAM_LOOKAHEAD_BYTES),
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ]


def _parse_reference(name: str) -> Reference:
    parts = name.split("/", 5)
    if len(parts) < 6 or parts[0] != "projects" or parts[2] != "databases":
        raise CodecError(
            f"malformed document reference {name!r}",
            hint="the store returned a reference docshift cannot read; report it",
        )
    return Reference(path=parts[5], project=parts[1], database=parts[3])

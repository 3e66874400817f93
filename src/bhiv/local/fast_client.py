"""In-process DynamoDB and DynamoDB Streams clients for the local stack: moto without the plumbing.

A boto3 call on moto's in-process mock is serialised by botocore, routed through moto's werkzeug
dispatch, answered by moto's response serialiser and parsed again by botocore; 78-90 % of its cost
is that plumbing. These clients keep boto3's interface and behaviour for the calls the adapters
and the stream poller make, and hand the request to moto's handler (or backend) as a dict:

* parameters are validated against botocore's model exactly as boto3 does (ParamValidationError);
* errors come back as the ClientError subclass boto3 raises, parsed by botocore from moto's own
  error body (codes, messages, CancellationReasons, the ALL_OLD Item all identical);
* every successful write goes through `journal_write`, the local stack's journal, like writes that
  arrive over moto's HTTP API (see bhiv.local.durability);
* any other operation is passed to a real boto3 client on the same mock.

Chosen by `bhiv.storage.aws.client` when running locally (BHIV_LOCAL_FAST_CLIENT, see there).
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from botocore.exceptions import ClientError, ParamValidationError
from botocore.parsers import create_parser
from botocore.validate import ParamValidator

from bhiv import fastjson
from bhiv.local import durability

ACCOUNT = "123456789012"
T = TypeVar("T")

# Operations answered in-process; the rest go to boto3 (table admin, TTL, tags, ...).
FAST_DYNAMODB = frozenset(
    {
        "PutItem",
        "GetItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "TransactGetItems",
    }
)
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})


def journal_write(action: str, request: dict[str, Any], write: Callable[[], T]) -> T:
    """Run one DynamoDB write and, when it succeeds, journal it in the local stack's durable state,
    exactly as bhiv.local.durability's hook on moto's HTTP API does (same lock, same record call),
    so writes from this client and from tools on the moto endpoint are journaled alike."""
    state = getattr(durability, "_ACTIVE", None)
    if state is None or not state.enabled:
        return write()
    with durability.WRITE_LOCK:
        state.refuse_writes_if_failed()  # JournalFailed: answered as 503 ServiceUnavailable
        before = state.stream_lengths()
        result = write()
        state.record(action, request, before)  # moto's own copy: its write paths never change a request
        return result


def _parse(text: str) -> Any:
    """DynamoDB's JSON protocol carries every attribute number as a string; its own numbers (Limit,
    Segment, counts) are small. So orjson, without fastjson.loads' guard for integers over 64 bits
    (a scan of the text that costs several times the parse on a 100-item transaction)."""
    return orjson.loads(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")  # what botocore sends for a blob
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_REQUEST_IDS = itertools.count(1)
_PROCESS_TAG = uuid.uuid4().hex[:20]


def _metadata(status: int = 200) -> dict[str, Any]:
    request_id = f"{_PROCESS_TAG}{next(_REQUEST_IDS):012d}"  # unique, without uuid4's urandom call
    return {
        "RequestId": request_id,
        "HTTPStatusCode": status,
        "HTTPHeaders": {"x-amzn-requestid": request_id, "content-type": "application/x-amz-json-1.0"},
        "RetryAttempts": 0,
    }


class _Local:
    """What the two clients share: the boto3 client they mirror, its model, validation, errors.

    validate: check every request against botocore's model first, as boto3 does. Tests always do
    (so adapters cannot send what boto3 would refuse); the stack skips it unless
    BHIV_FAST_CLIENT_VALIDATE=1 (it costs about a fifth of a 100-item transaction)."""

    def __init__(self, boto_client: Any, validate: bool = True) -> None:
        self.validates = validate
        self._boto = boto_client
        self.meta = boto_client.meta
        self.exceptions = boto_client.exceptions
        self._model = boto_client.meta.service_model
        self._validator = ParamValidator()
        self._error_parser = create_parser(self._model.protocol)
        self._region = boto_client.meta.region_name
        self._operations: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._boto, name)

    def _operation(self, name: str) -> Any:
        model = self._operations.get(name)
        if model is None:
            model = self._operations[name] = self._model.operation_model(name)
        return model

    def _validate(self, operation: Any, params: dict[str, Any]) -> None:
        report = self._validator.validate(params, operation.input_shape)
        if report.has_errors():
            raise ParamValidationError(report=report.generate_report())

    def _client_error(self, operation: Any, status: int, headers: dict[str, Any], body: str) -> ClientError:
        """The exception boto3 raises for this error response (parsed by botocore itself)."""
        response = {"status_code": status, "headers": headers, "body": body.encode("utf-8")}
        parsed = self._error_parser.parse(response, operation.output_shape)
        code = parsed.get("Error", {}).get("Code")
        error_shape = self._model.shape_for_error_code(code) if code else None
        if error_shape is not None:  # modeled fields (Item, CancellationReasons), as botocore's endpoint adds them
            parsed.update(self._error_parser.parse(response, error_shape))
        error_class = self.exceptions.from_code(code)
        error: ClientError = error_class(parsed, operation.name)
        return error

    def _moto_error(self, operation: Any, exc: Exception) -> ClientError:
        status = int(getattr(exc, "code", 400) or 400)
        body = getattr(exc, "description", None) or json.dumps(
            {"__type": getattr(exc, "error_type", type(exc).__name__), "message": str(exc)}
        )
        headers = {"content-type": "application/x-amz-json-1.0", "x-amzn-requestid": _metadata()["RequestId"]}
        return self._client_error(operation, status, headers, str(body))

    def _result(self, operation: Any, result: dict[str, Any]) -> dict[str, Any]:
        members = operation.output_shape.members if operation.output_shape is not None else {}
        response = {k: v for k, v in result.items() if k in members}
        response["ResponseMetadata"] = _metadata()
        return response


class FastDynamoDB(_Local):
    """boto3's `dynamodb` client, answered by moto's DynamoHandler in this process.

    The requests are validated as `_Local` says."""

    def __init__(self, boto_client: Any, validate: bool = True) -> None:
        super().__init__(boto_client, validate)
        from moto.dynamodb.responses import DynamoHandler

        self._handler_class = DynamoHandler
        self._methods: dict[str, str] = {}
        for method, operation in boto_client.meta.method_to_api_mapping.items():
            if operation in FAST_DYNAMODB:
                self._methods[operation] = method
                setattr(self, method, self._bind(operation, method))

    def _make_api_call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        """boto3's generic entry point (the journal replay uses it): fast where we can."""
        method = self._methods.get(operation_name)
        if method is None:
            result: dict[str, Any] = self._boto._make_api_call(operation_name, params)
            return result
        return self._call(operation_name, method, params)

    def _bind(self, operation_name: str, method: str) -> Callable[..., dict[str, Any]]:
        def call(**params: Any) -> dict[str, Any]:
            return self._call(operation_name, method, params)

        call.__name__ = method
        return call

    def _handler(self, action: str) -> Any:
        handler = self._handler_class()
        handler.current_account = ACCOUNT
        handler.region = self._region
        handler.headers = {
            "X-Amz-Target": f"DynamoDB_20120810.{action}",
            "Content-Type": "application/x-amz-json-1.0",
        }
        handler.querystring = {}
        handler.uri_match = {}
        handler.response_headers = {}
        return handler

    def _call(self, action: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        operation = self._operation(action)
        if self.validates:
            self._validate(operation, params)
        request_json = fastjson.dumps(params, default=_json_default)
        handler = self._handler(action)
        handler.body = handler.params = _parse(request_json)  # a private copy, as over the wire
        run = getattr(handler, method)
        from werkzeug.exceptions import HTTPException

        try:
            result = journal_write(action, handler.params, run) if action in WRITES else run()
        except HTTPException as exc:
            raise self._moto_error(operation, exc) from None
        except durability.JournalFailed as exc:
            status, headers, body = durability.unavailable_response(exc)
            raise self._client_error(operation, status, {**headers, **_metadata()["HTTPHeaders"]}, body) from None
        body = result.result if hasattr(result, "result") else _parse(result)
        if isinstance(body, Exception):  # moto's newer-style errors come back as results
            raise self._moto_error(operation, body) from None
        return self._result(operation, body)


class FastDynamoDBStreams(_Local):
    """boto3's `dynamodbstreams` client for the stream poller, reading moto's stream objects.
    (describe_stream, called now and then, goes through boto3.)"""

    def _backend(self) -> Any:
        from moto.dynamodbstreams.models import dynamodbstreams_backends

        return dynamodbstreams_backends[ACCOUNT][self._region]

    def _run(self, action: str, params: dict[str, Any], body: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        from werkzeug.exceptions import HTTPException

        operation = self._operation(action)
        if self.validates:
            self._validate(operation, params)
        try:
            result = body(self._backend())
        except HTTPException as exc:
            raise self._moto_error(operation, exc) from None
        except KeyError:  # an iterator moto no longer knows (ours are single-use)
            raise self._client_error(
                operation,
                400,
                {"x-amzn-requestid": uuid.uuid4().hex},
                json.dumps({"__type": "ExpiredIteratorException", "message": "Iterator expired"}),
            ) from None
        return self._result(operation, result)

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        def body(backend: Any) -> dict[str, Any]:
            sequence = params.get("SequenceNumber")
            iterator = backend.get_shard_iterator(
                params["StreamArn"],
                params["ShardId"],
                params["ShardIteratorType"],
                int(sequence) if sequence is not None else None,
            )
            return {"ShardIterator": iterator.arn}

        return self._run("GetShardIterator", params, body)

    def get_records(self, **params: Any) -> dict[str, Any]:
        def body(backend: Any) -> dict[str, Any]:
            result = backend.get_records(params["ShardIterator"], params.get("Limit") or 1000)
            result["Records"] = [_record_copy(record) for record in result["Records"]]
            return dict(result)

        return self._run("GetRecords", params, body)


def _record_copy(record: dict[str, Any]) -> dict[str, Any]:
    """moto hands out its stored record; give the caller its own (images are never changed)."""
    change = dict(record["dynamodb"])
    created = change.get("ApproximateCreationDateTime")
    if isinstance(created, datetime) and created.tzinfo is None:
        # what botocore makes of moto's serialised timestamp: milliseconds, with a time zone
        change["ApproximateCreationDateTime"] = created.replace(
            microsecond=created.microsecond // 1000 * 1000, tzinfo=UTC
        )
    return {**record, "dynamodb": change}

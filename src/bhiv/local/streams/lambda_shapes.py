"""Lambda's shapes for DynamoDB stream events: the record, the context object, and reading the
handler's answer (`batchItemFailures`) as the event source mapping does."""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bhiv.local.template import load_template

Handler = Callable[[dict[str, Any], Any], Any]

FUNCTION_TIMEOUT_S = 10.0  # when template.yaml does not say (Lambda's default is 3 s; our Globals say 10)
FUNCTION_MEMORY_MB = 512


def wall_clock() -> float:
    """Epoch seconds (a function so tests can move time forward)."""
    return time.time()


# --- event and context shapes -----------------------------------------------------------------


class LambdaContext:
    """The parts of Lambda's context object that handlers and powertools use."""

    def __init__(self, function_name: str, function_arn: str, timeout_s: float = FUNCTION_TIMEOUT_S) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function_arn
        self.memory_limit_in_mb = FUNCTION_MEMORY_MB
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _jsonable(value: Any) -> Any:
    """A private copy, as JSON: binary attribute values come from boto3 as bytes, and Lambda events
    carry them base64 encoded (one orjson round trip: a Python walk cost 6x more)."""
    return orjson.loads(orjson.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.timestamp()
    if value is None:
        return wall_clock()
    return float(value)


def lambda_record(raw: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """A get_records record in the shape Lambda hands to a function."""
    ddb = _jsonable({k: v for k, v in (raw.get("dynamodb") or {}).items() if k != "ApproximateCreationDateTime"})
    ddb["ApproximateCreationDateTime"] = _epoch((raw.get("dynamodb") or {}).get("ApproximateCreationDateTime"))
    record: dict[str, Any] = {
        "eventID": raw.get("eventID") or uuid.uuid4().hex,
        "eventName": raw.get("eventName"),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": raw.get("awsRegion") or region,
        "dynamodb": ddb,
        "eventSourceARN": stream_arn,
    }
    if raw.get("userIdentity"):
        record["userIdentity"] = _jsonable(raw["userIdentity"])
    return record


def _seq(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["SequenceNumber"])


def _seq_key(sequence: str) -> tuple[int, int | str]:
    """Sequence numbers are decimal strings of varying length: compare them as numbers."""
    return (0, int(sequence)) if sequence.isdigit() else (1, sequence)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _arn_parts(stream_arn: str) -> tuple[str, str]:
    """(region, account) of an ARN like arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/L."""
    parts = stream_arn.split(":")
    if len(parts) >= 5:
        return parts[3] or "us-east-1", parts[4] or "123456789012"
    return "us-east-1", "123456789012"


def function_timeout(function: str) -> float:
    """The function's Timeout in template.yaml (its own, else Globals), for the context object."""
    try:
        doc = load_template()
        own = doc["Resources"].get(function, {}).get("Properties", {}).get("Timeout")
        default = ((doc.get("Globals") or {}).get("Function") or {}).get("Timeout", FUNCTION_TIMEOUT_S)
        return float(own if own is not None else default)
    except Exception:  # no template or an odd one: the context only needs a number
        return FUNCTION_TIMEOUT_S


def function_arn(function: str, stream_arn: str) -> str:
    region, account = _arn_parts(stream_arn)
    return f"arn:aws:lambda:{region}:{account}:function:{function}"


# --- the handler's answer ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one invocation did: success, a function error, or failed items from index ``failed_at``."""

    ok: bool
    raised: bool = False
    failed_at: int | None = None
    error: str = ""
    function_error: str | None = None


def invoke(
    handler: Handler, records: list[dict[str, Any]], function: str, stream_arn: str, report_item_failures: bool = True
) -> Outcome:
    """Call the handler with one batch and read its answer as Lambda does."""
    timeout_s = function_timeout(function)
    context = LambdaContext(function, function_arn(function, stream_arn), timeout_s)
    started = time.monotonic()
    try:
        result = handler({"Records": records}, context)
    except Exception as exc:  # a function error, whatever the handler raised
        return Outcome(ok=False, raised=True, error=f"{type(exc).__name__}: {exc}", function_error="Unhandled")
    finally:
        took = time.monotonic() - started
        if took > timeout_s:
            logging.getLogger(__name__).warning(
                "handler %s took %.1f s, longer than the function timeout (%.0f s) Lambda would enforce",
                function,
                took,
                timeout_s,
            )
    if not report_item_failures or not isinstance(result, dict):
        return Outcome(ok=True)
    failures = result.get("batchItemFailures")
    if not failures:  # None or an empty list: complete success
        return Outcome(ok=True)
    if not isinstance(failures, list):
        return Outcome(ok=False, raised=True, error="malformed batchItemFailures: not a list")
    index = {_seq(record): i for i, record in enumerate(records)}
    lowest: int | None = None
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in index:
            # an empty, missing or unknown identifier fails the whole batch
            return Outcome(ok=False, raised=True, error=f"malformed batchItemFailures entry: {failure!r}")
        lowest = index[identifier] if lowest is None else min(lowest, index[identifier])
    return Outcome(
        ok=False,
        failed_at=lowest,
        error=f"batchItemFailures: {len(failures)} item(s), first {_seq(records[lowest or 0])}",
    )

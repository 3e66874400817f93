"""The local stream poller: a stand-in for Lambda's DynamoDB event source mapping.

moto's own event source mapping needs Docker to run a function and silently drops the records
without it, so the local stack polls the table's stream itself and behaves like the Lambda
service does for a mapping of template.yaml:

* reads every shard of the table's stream in order (a child shard only after its parent is
  drained) and hands the function batches of up to ``BatchSize`` records, waiting at most
  ``MaximumBatchingWindowInSeconds`` for a batch to fill;
* invokes the handler with exactly Lambda's event shape (``eventSourceARN``, ``awsRegion``, a
  numeric ``ApproximateCreationDateTime``, ...) and a Lambda-like context object;
* ``ReportBatchItemFailures``: everything before the lowest reported sequence number is
  checkpointed and the retry starts at that record; a malformed response fails the whole batch;
* ``BisectBatchOnFunctionError``: a batch whose invocation raises is split in half and the halves
  are retried in order (splitting uses no retry). When a batch reports a failed item, it is
  "bisected at the returned sequence number": the failed record is retried on its own and the
  records behind it go on without it, so only the failing record ever reaches the destination;
* ``MaximumRetryAttempts`` (-1: no limit) with a short backoff, ``MaximumRecordAgeInSeconds``
  (-1: no limit); when either runs out, the records go to the on-failure SQS queue and the poller
  checkpoints past them: a poison record never blocks the records behind it;
* checkpoints per (stream ARN, shard) in a JSON file, written atomically after every batch, so a
  restarted poller resumes after the last handled record (``AFTER_SEQUENCE_NUMBER``).

The on-failure message has the fields Lambda sends (``requestContext``, ``responseContext``,
``DDBStreamBatchInfo``, ``timestamp``, ``version``) **plus** ``records``: the Lambda-shaped
records themselves. Lambda sends only the metadata (you would read the records back from the
stream within its 24 h retention); keeping them in the message is what lets ``bhiv dlq redrive``
re-deliver them with :func:`dlq_redrive`. ``responseContext.errorMessage`` is ours as well.

Differences from Lambda worth knowing: the function timeout is not enforced (a slow handler only
logs a warning), the 6 MB invocation payload limit is not checked, and a message bigger than
256 KiB is split into several on-failure messages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bhiv.local.template import StreamMapping, load_template

Handler = Callable[[dict[str, Any], Any], Any]

FUNCTION_TIMEOUT_S = 10.0  # when template.yaml does not say (Lambda's default is 3 s; our Globals say 10)
FUNCTION_MEMORY_MB = 512
BACKOFF_STEP_S = 0.05  # retry n waits n x 50 ms ...
BACKOFF_CAP_S = 1.0  # ... but never longer than this
READ_AHEAD = 1000  # records fetched ahead per shard at most (also get_records' largest Limit)
SHARD_REFRESH_S = 5.0  # how often the shard list is described again
IDLE_ITERATOR_REFRESH_S = 1.0  # an idle shard gets a fresh iterator this often (moto's stale iterators)
MAX_MESSAGE_BYTES = 256 * 1024  # classic SQS limit; bigger on-failure messages are split
_STOPPED_MESSAGE = "stream poller stopping"


def _wall_clock() -> float:
    """Epoch seconds (a function so tests can move time forward)."""
    return time.time()


class _Stopped(Exception):
    """Raised inside a delivery when the poller is asked to stop."""


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
    """Binary attribute values come from boto3 as bytes; Lambda events carry them base64 encoded."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return value


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.timestamp()
    if value is None:
        return _wall_clock()
    return float(value)


def lambda_record(raw: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """A get_records record in the shape Lambda hands to a function."""
    ddb = {k: _jsonable(v) for k, v in (raw.get("dynamodb") or {}).items() if k != "ApproximateCreationDateTime"}
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


def failure_messages(
    records: list[dict[str, Any]],
    *,
    condition: str,
    function: str,
    stream_arn: str,
    shard_id: str,
    attempts: int,
    outcome: Outcome | None,
) -> list[dict[str, Any]]:
    """The on-failure destination messages for these records (more than one if they are large)."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for record in records:
        record_size = len(json.dumps(record, separators=(",", ":")))
        if chunks[-1] and size + record_size > MAX_MESSAGE_BYTES - 4096:
            chunks.append([])
            size = 0
        chunks[-1].append(record)
        size += record_size + 1
    messages = []
    for chunk in chunks:
        message: dict[str, Any] = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": function_arn(function, stream_arn),
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": outcome.function_error if outcome else None,
                "errorMessage": outcome.error if outcome else "",
            },
            "version": "1.0",
            "timestamp": _iso(_wall_clock()),
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": _seq(chunk[0]),
                "endSequenceNumber": _seq(chunk[-1]),
                "approximateArrivalOfFirstRecord": _iso(chunk[0]["dynamodb"]["ApproximateCreationDateTime"]),
                "approximateArrivalOfLastRecord": _iso(chunk[-1]["dynamodb"]["ApproximateCreationDateTime"]),
                "batchSize": len(chunk),
                "streamArn": stream_arn,
            },
            "records": chunk,
        }
        if len(json.dumps(message)) > MAX_MESSAGE_BYTES:  # one record alone is too big: metadata only
            message["records"] = []
            message["recordsOmitted"] = True
        messages.append(message)
    return messages


# --- checkpoints ------------------------------------------------------------------------------


class Checkpoints:
    """{stream ARN: {shard id: {"sequence_number", "finished"}}} in one JSON file, replaced atomically."""

    def __init__(self, path: Path, log: Any) -> None:
        self.path = path
        self._log = log
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, dict[str, Any]]] = {}
        self._dirty = False
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._streams = {str(arn): dict(shards) for arn, shards in data.get("streams", {}).items()}
            except (OSError, ValueError, AttributeError) as exc:
                broken = path.with_name(path.name + ".corrupt")
                self._log.warning(f"unreadable checkpoint file {path} ({exc}); moved to {broken}, starting over")
                with contextlib.suppress(OSError):
                    os.replace(path, broken)

    def known(self, arn: str) -> bool:
        return arn in self._streams

    def get(self, arn: str, shard_id: str) -> dict[str, Any] | None:
        return self._streams.get(arn, {}).get(shard_id)

    def record(self, arn: str, shard_id: str, sequence_number: str | None, finished: bool = False) -> None:
        with self._lock:
            entry = self._streams.setdefault(arn, {}).setdefault(shard_id, {})
            if sequence_number is not None:
                entry["sequence_number"] = sequence_number
            entry["finished"] = finished
            entry["updated_at"] = _iso(_wall_clock())
            self._dirty = True
        self.save()

    def forget_others(self, arn: str, live_shards: set[str] | None) -> None:
        """Drop other streams of this file (an older table) and shards the stream no longer lists."""
        with self._lock:
            for other in [a for a in self._streams if a != arn]:
                del self._streams[other]
                self._dirty = True
            if live_shards is not None:
                shards = self._streams.get(arn, {})
                for gone in [s for s in shards if s not in live_shards]:
                    del shards[gone]
                    self._dirty = True
        self.save()

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "streams": self._streams}, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            with contextlib.suppress(OSError):  # make the rename itself durable
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            self._dirty = False


# --- the poller -------------------------------------------------------------------------------


@dataclass
class _Shard:
    shard_id: str
    parent_id: str | None
    start_type: str  # where to start without a position: TRIM_HORIZON or LATEST
    position: str | None = None  # sequence number of the last record read (or checkpointed)
    checkpoint: str | None = None
    iterator: str | None = None
    iterator_at: float = 0.0
    buffer: list[dict[str, Any]] = field(default_factory=list)  # read, not yet checkpointed
    first_buffered_at: float | None = None
    exhausted: bool = False  # closed and read to its end
    finished: bool = False  # exhausted and everything checkpointed
    done_in_flight: int = 0


_ITERATOR_ERRORS = frozenset(
    {
        "ExpiredIteratorException",
        "TrimmedDataAccessException",
        "ResourceNotFoundException",
        "ValidationException",
        "InternalFailure",
        "InternalServerError",
    }
)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


class StreamPoller:
    """Polls one table's stream for one function, as the Lambda event source mapping would."""

    def __init__(
        self,
        *,
        mapping: StreamMapping,
        handler: Handler,
        dynamodb: Any,
        streams: Any,
        sqs: Any,
        queue_url: str | None,
        checkpoint_path: Path,
        poll_interval_s: float = 0.05,
        logger: Any | None = None,
    ) -> None:
        self.mapping = mapping
        self.handler = handler
        self._dynamodb = dynamodb
        self._streams = streams
        self._sqs = sqs
        self.queue_url = queue_url
        self.poll_interval_s = poll_interval_s
        self._log: Any = logger or logging.getLogger("bhiv.local.streams")
        self.checkpoints = Checkpoints(Path(checkpoint_path), self._log)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_arn: str | None = None
        self._shards: dict[str, _Shard] = {}
        self._described_at: float | None = None
        self.records_handled = 0  # handed to the handler and checkpointed as successful
        self.records_failed = 0  # sent to the on-failure destination (or discarded without one)
        self.invocations = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.mapping.function}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._log.warning(f"stream poller {self.mapping.function} did not stop within {timeout} s")
            self._thread = None
        self.checkpoints.save()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stream_arn(self) -> str | None:
        return self._stream_arn

    def poll_once(self) -> int:
        """Deliver everything readable now, in batches of at most BatchSize, without waiting for a
        batching window; returns how many records were checkpointed past (handled or sent to the
        on-failure destination)."""
        total = 0
        if not self.running:
            self._stop.clear()
        with self._lock:
            self._describe(force=self._described_at is None)
            while not self._stop.is_set():
                count = self._cycle(drain=True)
                total += count
                if count == 0:
                    break
        return total

    def lag(self) -> int:
        """Records read from the stream and not yet checkpointed (read-ahead is READ_AHEAD a shard)."""
        for _ in range(3):
            try:
                return sum(max(0, len(s.buffer) - s.done_in_flight) for s in list(self._shards.values()))
            except RuntimeError:  # the shard map changed under us
                continue
        return 0

    # --- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        errors = 0
        while not self._stop.is_set():
            try:
                with self._lock:
                    count = self._cycle(drain=False)
                errors = 0
            except Exception as exc:
                errors += 1
                count = 0
                self._log.error(
                    f"stream poller {self.mapping.function}: {type(exc).__name__}: {exc}", exc_info=errors == 1
                )
                if _error_code(exc) == "ResourceNotFoundException":
                    with self._lock:  # the table (or its stream) was re-created: start over
                        self._stream_arn = None
                        self._shards = {}
                        self._described_at = None
            if count == 0:
                self._stop.wait(min(5.0, self.poll_interval_s * (2 ** min(errors, 7))))

    def _cycle(self, drain: bool) -> int:
        """One pass over the shards: read what is there, deliver every batch that is ready."""
        self._describe()
        delivered = 0
        for shard in list(self._shards.values()):
            if self._stop.is_set():
                break
            if shard.finished or not self._parent_done(shard):
                continue
            self._fill(shard)
            try:
                while shard.buffer and (drain or self._batch_ready(shard)) and not self._stop.is_set():
                    self._deliver(shard, shard.buffer[: self.mapping.batch_size])
                    delivered += self._trim(shard)
                    if len(shard.buffer) < self.mapping.batch_size:
                        self._fill(shard)
            except _Stopped:
                return delivered + self._trim(shard)
            except Exception:
                self._trim(shard)  # never hand checkpointed records out again
                raise
            if not shard.buffer:
                shard.first_buffered_at = None
                if shard.exhausted:
                    shard.finished = True
                    self.checkpoints.record(self._arn(), shard.shard_id, shard.checkpoint, finished=True)
                    self._described_at = None  # look for its children now
        return delivered

    @staticmethod
    def _trim(shard: _Shard) -> int:
        """Drop the checkpointed records from the front of the buffer; returns how many."""
        count = 0
        if shard.checkpoint is not None:
            limit = _seq_key(shard.checkpoint)
            while count < len(shard.buffer) and _seq_key(_seq(shard.buffer[count])) <= limit:
                count += 1
        del shard.buffer[:count]
        shard.done_in_flight = 0
        return count

    def _batch_ready(self, shard: _Shard) -> bool:
        if len(shard.buffer) >= self.mapping.batch_size or shard.exhausted:
            return True
        started = shard.first_buffered_at or time.monotonic()
        return time.monotonic() - started >= self.mapping.batching_window_s

    def _parent_done(self, shard: _Shard) -> bool:
        parent = self._shards.get(shard.parent_id or "")
        return parent is None or parent.finished

    # --- reading the stream -------------------------------------------------------------------

    def _arn(self) -> str:
        if self._stream_arn is None:
            table = self._dynamodb.describe_table(TableName=self.mapping.table)["Table"]
            arn = table.get("LatestStreamArn")
            if not arn:
                raise RuntimeError(f"table {self.mapping.table} has no stream")
            self._stream_arn = str(arn)
        return self._stream_arn

    def _describe(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._described_at is not None and now - self._described_at < SHARD_REFRESH_S:
            return
        arn = self._arn()
        first_time = not self._shards
        arn_known = self.checkpoints.known(arn)
        listed: list[dict[str, Any]] = []
        params: dict[str, Any] = {"StreamArn": arn}
        while True:
            description = self._streams.describe_stream(**params)["StreamDescription"]
            listed.extend(description.get("Shards", []))
            last = description.get("LastEvaluatedShardId")
            if not last:
                break
            params["ExclusiveStartShardId"] = last
        live = {str(s["ShardId"]) for s in listed}
        for info in listed:
            shard_id = str(info["ShardId"])
            if shard_id in self._shards:
                continue
            parent = info.get("ParentShardId")
            saved = self.checkpoints.get(arn, shard_id)
            # A shard present when the mapping starts begins at StartingPosition; shards that appear
            # later (children of a split) are read from their start, or records would be skipped.
            child = bool(parent and (parent in live or self.checkpoints.get(arn, parent)))
            initial = first_time and not child and not arn_known
            start_type = self.mapping.starting_position if initial else "TRIM_HORIZON"
            shard = _Shard(shard_id=shard_id, parent_id=str(parent) if parent else None, start_type=start_type)
            if saved:
                shard.checkpoint = saved.get("sequence_number")
                shard.position = shard.checkpoint
                shard.finished = bool(saved.get("finished"))
            self._shards[shard_id] = shard
        for gone in [s for s, shard in self._shards.items() if s not in live and (shard.finished or not shard.buffer)]:
            del self._shards[gone]  # trimmed from the stream
        self.checkpoints.forget_others(arn, live if listed else None)
        self._described_at = now

    def _new_iterator(self, shard: _Shard) -> str:
        arn = self._arn()
        if shard.position is not None:
            try:
                response = self._streams.get_shard_iterator(
                    StreamArn=arn,
                    ShardId=shard.shard_id,
                    ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                    SequenceNumber=shard.position,
                )
                return str(response["ShardIterator"])
            except Exception as exc:
                if _error_code(exc) != "TrimmedDataAccessException":
                    raise
                self._log.warning(
                    f"stream {arn} shard {shard.shard_id}: records after {shard.position} were "
                    "trimmed; continuing at the oldest record"
                )
                shard.position = None
                shard.start_type = "TRIM_HORIZON"
        response = self._streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard.shard_id, ShardIteratorType=shard.start_type
        )
        return str(response["ShardIterator"])

    def _fill(self, shard: _Shard) -> None:
        cap = max(self.mapping.batch_size, READ_AHEAD)
        arn = self._arn()
        region = _arn_parts(arn)[0]
        while not shard.exhausted and len(shard.buffer) < cap:
            now = time.monotonic()
            fresh = shard.iterator is None
            if fresh:
                shard.iterator = self._new_iterator(shard)
                shard.iterator_at = now
            try:
                response = self._streams.get_records(
                    ShardIterator=shard.iterator, Limit=min(READ_AHEAD, cap - len(shard.buffer))
                )
            except Exception as exc:
                # Expired, trimmed or (moto) unknown iterator: start again from what was read.
                self._log.warning(
                    f"stream {arn} shard {shard.shard_id}: get_records failed "
                    f"({_error_code(exc)}: {exc}); taking a new iterator after {shard.position}"
                )
                shard.iterator = None
                if fresh or (_error_code(exc) not in _ITERATOR_ERRORS and not isinstance(exc, KeyError)):
                    raise  # not a stale iterator: let the loop back off
                continue  # once more, with a fresh iterator
            records = response.get("Records", [])
            for raw in records:
                record = lambda_record(raw, arn, region)
                sequence = _seq(record)
                if shard.position is not None and _seq_key(sequence) <= _seq_key(shard.position):
                    continue  # already read (or checkpointed)
                shard.buffer.append(record)
                shard.position = sequence
            if shard.buffer and shard.first_buffered_at is None:
                shard.first_buffered_at = now
            next_iterator = response.get("NextShardIterator")
            if not next_iterator:
                shard.exhausted = True
                shard.iterator = None
                return
            shard.iterator = str(next_iterator)
            if not records:
                # Idle. moto can leave an iterator stale (after a cancelled transaction): now and
                # then, when the position is known exactly, look again with a fresh one.
                if (
                    not fresh
                    and now - shard.iterator_at >= IDLE_ITERATOR_REFRESH_S
                    and (shard.position is not None or shard.start_type == "TRIM_HORIZON")
                ):
                    shard.iterator = None
                    continue
                return

    # --- delivering ---------------------------------------------------------------------------

    def _deliver(self, shard: _Shard, records: list[dict[str, Any]], attempts: int = 0) -> None:
        """Handle these records until each is checkpointed: handled, or sent to the destination."""
        pending = records
        last: Outcome | None = None
        while pending:
            if self._stop.is_set():
                raise _Stopped(_STOPPED_MESSAGE)
            expired = self._expired(pending)
            if expired:
                self._give_up(shard, expired, "RecordAgeExceeded", attempts, last)
                pending = pending[len(expired) :]
                continue
            self.invocations += 1
            outcome = invoke(
                self.handler, pending, self.mapping.function, self._arn(), self.mapping.report_item_failures
            )
            if outcome.ok:
                self._checkpoint(shard, pending, handled=len(pending))
                return
            last = outcome
            attempts += 1
            if outcome.failed_at:  # the records before the failed one are done
                self._checkpoint(shard, pending[: outcome.failed_at], handled=outcome.failed_at)
                pending = pending[outcome.failed_at :]
                attempts = 1
            self._log.warning(
                f"stream {self.mapping.function}: batch of {len(pending)} from {_seq(pending[0])} failed "
                f"(attempt {attempts}): {outcome.error}"
            )
            if self.mapping.bisect_on_error and len(pending) > 1:
                if outcome.raised:
                    middle = len(pending) // 2
                    self._deliver(shard, pending[:middle])
                    self._deliver(shard, pending[middle:])
                else:
                    self._deliver(shard, pending[:1], attempts)
                    self._deliver(shard, pending[1:])
                return
            if 0 <= self.mapping.max_retries < attempts:
                self._give_up(shard, pending, "RetryAttemptsExhausted", attempts, outcome)
                return
            if self._stop.wait(min(BACKOFF_CAP_S, BACKOFF_STEP_S * attempts)):
                raise _Stopped(_STOPPED_MESSAGE)

    def _expired(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.mapping.max_record_age_s < 0:
            return []
        oldest_allowed = _wall_clock() - self.mapping.max_record_age_s
        count = 0
        for record in records:
            if record["dynamodb"]["ApproximateCreationDateTime"] >= oldest_allowed:
                break
            count += 1
        return records[:count]

    def _checkpoint(self, shard: _Shard, records: list[dict[str, Any]], handled: int = 0, failed: int = 0) -> None:
        if not records:
            return
        shard.checkpoint = _seq(records[-1])
        shard.done_in_flight += len(records)
        self.records_handled += handled
        self.records_failed += failed
        self.checkpoints.record(self._arn(), shard.shard_id, shard.checkpoint)

    def _give_up(
        self, shard: _Shard, records: list[dict[str, Any]], condition: str, attempts: int, outcome: Outcome | None
    ) -> None:
        messages = failure_messages(
            records,
            condition=condition,
            function=self.mapping.function,
            stream_arn=self._arn(),
            shard_id=shard.shard_id,
            attempts=attempts,
            outcome=outcome,
        )
        first, last = _seq(records[0]), _seq(records[-1])
        if self.queue_url is None:
            self._log.error(
                f"stream {self.mapping.function}: {condition}; no on-failure destination, "
                f"discarding {len(records)} record(s) {first}..{last}"
            )
        else:
            for message in messages:
                self._send(message)
            self._log.warning(
                f"stream {self.mapping.function}: {condition} after {attempts} invocation(s); "
                f"{len(records)} record(s) {first}..{last} sent to the on-failure destination"
            )
        self._checkpoint(shard, records, failed=len(records))

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":"))
        for attempt in range(3):
            try:
                self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
                return
            except Exception as exc:
                if attempt == 2:
                    # Nowhere left to put it: keep the records in the log rather than block the shard.
                    self._log.error(
                        f"stream {self.mapping.function}: could not send to the on-failure "
                        f"destination ({exc}); message: {body}"
                    )
                    return
                time.sleep(BACKOFF_STEP_S * (attempt + 1))


# --- the on-failure queue ---------------------------------------------------------------------


def _receive_all(sqs: Any, queue_url: str, max_messages: int, visibility_s: int) -> list[dict[str, Any]]:
    """Receive up to max_messages distinct messages, each hidden for visibility_s seconds."""
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < max_messages:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, max_messages - len(seen)),
            VisibilityTimeout=visibility_s,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
        )
        fresh = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen[message["MessageId"]] = message
    return list(seen.values())


def _release(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    """Make messages visible again at once."""
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(chunk)
            ],
        )


def _body(message: dict[str, Any]) -> Any:
    try:
        return json.loads(message["Body"])
    except ValueError:
        return message["Body"]


def dlq_messages(sqs: Any, queue_url: str, max_messages: int = 100) -> list[dict[str, Any]]:
    """The on-failure queue's messages, left in the queue: [{message_id, sent_at, receive_count, body}]."""
    messages = _receive_all(sqs, queue_url, max_messages, visibility_s=30)
    try:
        result = []
        for message in messages:
            attributes = message.get("Attributes", {})
            sent = attributes.get("SentTimestamp")
            result.append(
                {
                    "message_id": message["MessageId"],
                    "sent_at": _iso(int(sent) / 1000) if sent else None,
                    "receive_count": int(attributes.get("ApproximateReceiveCount", 0)),
                    "body": _body(message),
                }
            )
        return result
    finally:
        _release(sqs, queue_url, messages)


def dlq_redrive(sqs: Any, queue_url: str, handler: Handler) -> tuple[int, int]:
    """Hand each message's records to the handler again; a message is deleted once the handler has
    taken all of its records. Returns (messages redriven, messages still failing). A message whose
    handler reports failed items keeps only the records from the first failed one on."""
    log = logging.getLogger("bhiv.local.streams")
    redriven = failing = 0
    keep: list[dict[str, Any]] = []
    try:
        for message in _receive_all(sqs, queue_url, max_messages=10_000, visibility_s=300):
            body = _body(message)
            records = body.get("records") if isinstance(body, dict) else None
            if not records:
                log.warning(f"on-failure message {message['MessageId']} carries no records; cannot redrive it")
                keep.append(message)
                failing += 1
                continue
            batch = body.get("DDBStreamBatchInfo", {})
            arn = str(batch.get("streamArn") or records[0].get("eventSourceARN", ""))
            function = str(body.get("requestContext", {}).get("functionArn", "function")).rsplit(":", 1)[-1]
            outcome = invoke(handler, records, function, arn)
            if outcome.ok:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                redriven += 1
                continue
            failing += 1
            log.warning(f"redrive of {message['MessageId']} failed: {outcome.error}")
            if outcome.failed_at:  # keep only what is still failing
                rest = records[outcome.failed_at :]
                body["records"] = rest
                batch.update({"startSequenceNumber": _seq(rest[0]), "batchSize": len(rest)})
                sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body, separators=(",", ":")))
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            else:
                keep.append(message)
    finally:
        _release(sqs, queue_url, keep)
    return redriven, failing

"""The poller: reads one table's stream for one function as Lambda's event source mapping does."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhiv.local import durability
from bhiv.local.streams import lambda_shapes
from bhiv.local.streams.checkpoints import Checkpoints
from bhiv.local.streams.destination import failure_messages
from bhiv.local.streams.lambda_shapes import Handler, Outcome, _arn_parts, _seq, _seq_key, invoke, lambda_record
from bhiv.local.template import StreamMapping

BACKOFF_STEP_S = 0.05  # retry n waits n x 50 ms ...
BACKOFF_CAP_S = 1.0  # ... but never longer than this
READ_AHEAD = 1000  # records fetched ahead per shard at most (also get_records' largest Limit)
SHARD_REFRESH_S = 5.0  # how often the shard list is described again
IDLE_ITERATOR_REFRESH_S = 1.0  # an idle shard gets a fresh iterator this often (moto's stale iterators)
_STOPPED_MESSAGE = "stream poller stopping"


class _Stopped(Exception):
    """Raised inside a delivery when the poller is asked to stop."""


class _Paused(_Stopped):
    """The stack refuses writes (a failed journal append): the records stay unacknowledged, to be
    handled after a restart, instead of failing into the on-failure destination."""


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
        self.checkpoints.save()
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
            # Lambda polls a stream shard a few times a second, not continuously: records that
            # arrive between two polls go out as one batch. Polling at most every poll_interval_s
            # keeps that (consumers cost per batch, not per record) at a bounded added latency.
            cycle_started = time.monotonic()
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
                self.checkpoints.save()  # idle: the last positions go to the file now
                self._stop.wait(min(5.0, self.poll_interval_s * (2 ** min(errors, 7))))
            else:
                self._stop.wait(max(0.0, cycle_started + self.poll_interval_s - time.monotonic()))

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
                    self.checkpoints.record(self.mapping.table, shard.shard_id, shard.checkpoint, finished=True)
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
        table_known = self.checkpoints.known(self.mapping.table)
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
            saved = self.checkpoints.get(self.mapping.table, shard_id)
            # A shard present when the mapping starts begins at StartingPosition; shards that appear
            # later (children of a split) are read from their start, or records would be skipped.
            child = bool(parent and (parent in live or self.checkpoints.get(self.mapping.table, parent)))
            initial = first_time and not child and not table_known
            start_type = self.mapping.starting_position if initial else "TRIM_HORIZON"
            shard = _Shard(shard_id=shard_id, parent_id=str(parent) if parent else None, start_type=start_type)
            if saved:
                shard.checkpoint = saved.get("sequence_number")
                shard.position = shard.checkpoint
                shard.finished = bool(saved.get("finished"))
            self._shards[shard_id] = shard
        for gone in [s for s, shard in self._shards.items() if s not in live and (shard.finished or not shard.buffer)]:
            del self._shards[gone]  # trimmed from the stream
        self.checkpoints.forget_others(self.mapping.table, live if listed else None)
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
            if durability.writes_refused():
                raise _Paused("writes are refused after a failed journal append; holding the records")
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
        oldest_allowed = lambda_shapes.wall_clock() - self.mapping.max_record_age_s
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
        self.checkpoints.record(self.mapping.table, shard.shard_id, shard.checkpoint)

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

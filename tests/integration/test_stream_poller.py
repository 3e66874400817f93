"""The local stream poller against moto: what the Lambda event source mapping would do."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent
from aws_lambda_powertools.utilities.parser.models import (
    DynamoDBStreamLambdaOnFailureDestinationModel,
    DynamoDBStreamModel,
)
from botocore.config import Config
from botocore.exceptions import ClientError

from bhiv.bucket import runtime
from bhiv.bucket.domain import build_event
from bhiv.local import streams, template
from bhiv.local.streams import StreamPoller, dlq_messages, dlq_redrive, invoke
from bhiv.storage import aws as aws_clients
from bhiv.storage.events import to_item
from bhiv.storage.stats import StatsStore

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
DLQ = "BucketStatsDLQ"


# --- helpers ----------------------------------------------------------------------------------


def _mapping(**changes: Any) -> template.StreamMapping:
    """The template's mapping of the stats function, without the batching window unless asked."""
    (mapping,) = [m for m in template.stream_mappings() if m.function == "BucketStatsFunction"]
    return dataclasses.replace(mapping, **{"batching_window_s": 0.0, **changes})


def _write(dynamodb: Any, count: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + count):
        event = build_event(
            {"event_type": f"t{i % 3}", "user_id": f"u{i % 4}", "n": i}, "req", f"e{i:04d}", T0 + timedelta(seconds=i)
        )
        dynamodb.put_item(TableName="EventsTable", Item=to_item(event))
        ids.append(event.event_id)
    return ids


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["dynamodb"]["NewImage"]["event_id"]["S"] for r in records]


def _streams_client() -> Any:
    return boto3.client("dynamodbstreams", config=Config(account_id_endpoint_mode="disabled"))


def _poller(aws: dict[str, Any], path: Path, handler: Any, streams_client: Any = None, **changes: Any) -> StreamPoller:
    return StreamPoller(
        mapping=_mapping(**changes),
        handler=handler,
        dynamodb=aws["dynamodb"],
        streams=streams_client or _streams_client(),
        sqs=boto3.client("sqs"),
        queue_url=aws["queues"][DLQ],
        checkpoint_path=path,
        poll_interval_s=0.02,
    )


def _dlq(aws: dict[str, Any]) -> list[dict[str, Any]]:
    return [m["body"] for m in dlq_messages(boto3.client("sqs"), aws["queues"][DLQ])]


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class Recorder:
    """A handler that records every batch; `fail` decides, per record, what goes wrong."""

    def __init__(self, fail: Any = None, mode: str = "report") -> None:
        self.fail = fail or (lambda event_id: False)
        self.mode = mode  # "report": batchItemFailures; "raise": a function error
        self.batches: list[list[str]] = []
        self.succeeded: list[str] = []
        self.contexts: list[Any] = []
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self.lock:
            ids = _ids(event["Records"])
            self.batches.append(ids)
            self.contexts.append(context)
            self.events.append(event)
            failed = [r for r in event["Records"] if self.fail(_ids([r])[0])]
            if failed and self.mode == "raise":
                raise ValueError(f"poison record {_ids(failed)[0]}")
            self.succeeded.extend(i for i in ids if not self.fail(i))
            return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in failed]}

    @property
    def seen(self) -> Counter[str]:
        return Counter(i for batch in self.batches for i in batch)


# --- delivery ---------------------------------------------------------------------------------


def test_records_arrive_in_order_in_batches_of_batch_size_in_lambda_shape(aws: dict[str, Any], tmp_path: Path) -> None:
    written_from = time.time()
    ids = _write(aws["dynamodb"], 25)
    written_until = time.time()
    handler = Recorder()
    poller = _poller(aws, tmp_path / "cp.json", handler, batch_size=10)
    assert poller.poll_once() == 25
    assert [len(b) for b in handler.batches] == [10, 10, 5]
    assert [i for b in handler.batches for i in b] == ids
    assert poller.lag() == 0 and poller.poll_once() == 0

    arn = aws["dynamodb"].describe_table(TableName="EventsTable")["Table"]["LatestStreamArn"]
    for raw in handler.events:
        json.dumps(raw)  # what Lambda hands over is plain JSON
        DynamoDBStreamModel.model_validate(raw)  # powertools' parser accepts it
        event = DynamoDBStreamEvent(raw)
        for record in event.records:
            assert record.event_source_arn == arn
            assert record.aws_region == "us-east-1"
            assert record.event_source == "aws:dynamodb" and record.event_version == "1.1"
            assert record.event_name is not None and record.event_name.name == "INSERT"
            assert record.dynamodb is not None
            # epoch seconds of the write itself (Lambda's shape), not a datetime or the delivery time
            created = record.dynamodb.approximate_creation_date_time or 0
            assert int(written_from) - 1 <= created <= written_until + 1
            assert record.dynamodb.new_image["event_type"] in {"t0", "t1", "t2"}
            assert record.dynamodb.sequence_number and record.dynamodb.size_bytes
    sequences = [int(r["dynamodb"]["SequenceNumber"]) for e in handler.events for r in e["Records"]]
    assert sequences == sorted(sequences)
    context = handler.contexts[0]
    assert context.function_name == "BucketStatsFunction"
    assert context.aws_request_id and context.aws_request_id != handler.contexts[1].aws_request_id
    assert 0 < context.get_remaining_time_in_millis() <= 10_000
    assert context.invoked_function_arn.endswith(":function:BucketStatsFunction")


def test_the_batching_window_gathers_records_before_invoking(aws: dict[str, Any], tmp_path: Path) -> None:
    handler = Recorder()
    poller = _poller(aws, tmp_path / "cp.json", handler, batching_window_s=0.4)
    poller.start()
    try:
        time.sleep(0.1)  # the poller is idle and polling
        started = time.monotonic()
        _write(aws["dynamodb"], 6)
        _wait_for(lambda: len(handler.succeeded) == 6)
        waited = time.monotonic() - started
    finally:
        poller.stop()
    assert [len(b) for b in handler.batches] == [6]  # one batch, not one per poll
    assert waited >= 0.35


@pytest.mark.parametrize("bisect", [True, False])
def test_a_reported_item_failure_is_retried_from_that_record_then_sent_to_the_dlq(
    aws: dict[str, Any], tmp_path: Path, bisect: bool
) -> None:
    ids = _write(aws["dynamodb"], 10)
    handler = Recorder(fail=lambda event_id: event_id == "e0004")
    poller = _poller(aws, tmp_path / "cp.json", handler, batch_size=10, max_retries=2, bisect_on_error=bisect)
    assert poller.poll_once() == 10
    seen = handler.seen
    assert all(seen[i] == 1 for i in ids[:4])  # checkpointed before the failure: never again
    assert seen["e0004"] == 3  # the first try and two retries
    assert all(seen[i] >= 1 for i in ids[5:])  # the ones behind it were not held back
    assert set(handler.succeeded) == set(ids) - {"e0004"}
    (message,) = _dlq(aws)
    DynamoDBStreamLambdaOnFailureDestinationModel.model_validate(message)
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["approximateInvokeCount"] == 3
    # Bisect splits at the reported record: only it reaches the DLQ. Without bisect, Lambda gives
    # up on the whole batch it kept retrying: the failed record and everything behind it.
    expected = ["e0004"] if bisect else ids[4:]
    assert _ids(message["records"]) == expected
    assert message["DDBStreamBatchInfo"]["batchSize"] == len(expected)
    assert message["DDBStreamBatchInfo"]["startSequenceNumber"] == message["records"][0]["dynamodb"]["SequenceNumber"]
    assert poller.records_failed == len(expected) and poller.lag() == 0


def test_bisect_isolates_a_record_that_makes_the_handler_raise(aws: dict[str, Any], tmp_path: Path) -> None:
    ids = _write(aws["dynamodb"], 10)
    handler = Recorder(fail=lambda event_id: event_id == "e0007", mode="raise")
    poller = _poller(aws, tmp_path / "cp.json", handler, batch_size=10)  # bisect on, 3 retries
    assert poller.poll_once() == 10
    good = [i for i in ids if i != "e0007"]
    assert handler.succeeded == good  # each exactly once, in order
    assert [b for b in handler.batches if b == ["e0007"]] == [["e0007"]] * 4  # alone: 1 try + 3 retries
    (message,) = _dlq(aws)
    assert _ids(message["records"]) == ["e0007"]
    assert message["responseContext"]["functionError"] == "Unhandled"
    assert "poison record e0007" in message["responseContext"]["errorMessage"]
    assert message["requestContext"]["approximateInvokeCount"] == 4


def test_a_handler_that_always_fails_sends_everything_to_the_dlq_and_the_poller_goes_on(
    aws: dict[str, Any], tmp_path: Path
) -> None:
    broken = {"on": True}
    handler = Recorder(fail=lambda event_id: broken["on"], mode="raise")
    poller = _poller(aws, tmp_path / "cp.json", handler, batch_size=5, max_retries=1)
    poller.start()
    try:
        ids = _write(aws["dynamodb"], 8)
        _wait_for(lambda: poller.records_failed == 8)
        assert poller.running
        dead = [i for body in _dlq(aws) for i in _ids(body["records"])]
        assert sorted(dead) == ids and handler.succeeded == []
        broken["on"] = False
        later = _write(aws["dynamodb"], 4, start=100)
        _wait_for(lambda: handler.succeeded == later)
    finally:
        poller.stop()
    assert not poller.running
    assert len(_dlq(aws)) == len(dead)  # nothing new failed


def test_records_older_than_the_maximum_age_go_to_the_dlq_without_an_invocation(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _write(aws["dynamodb"], 3)
    monkeypatch.setattr(streams.lambda_shapes, "wall_clock", lambda: time.time() + 3601)
    handler = Recorder()
    poller = _poller(aws, tmp_path / "cp.json", handler)
    assert poller.poll_once() == 3
    assert handler.batches == []
    (message,) = _dlq(aws)
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert _ids(message["records"]) == ids


# --- checkpoints ------------------------------------------------------------------------------


def test_checkpoints_survive_a_restart(aws: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoints.json"
    first = Recorder()
    poller = _poller(aws, path, first)
    poller.start()
    ids = _write(aws["dynamodb"], 5)
    _wait_for(lambda: first.succeeded == ids)
    poller.stop()
    saved = json.loads(path.read_text(encoding="utf-8"))
    ((table, shards),) = saved["tables"].items()
    assert table == "EventsTable"  # not the stream ARN, which moto relabels at every start
    ((_, entry),) = shards.items()
    assert entry["sequence_number"] == first.events[-1]["Records"][-1]["dynamodb"]["SequenceNumber"]
    assert [p.name for p in path.parent.iterdir()] == ["checkpoints.json"]  # no temporary files left

    second = Recorder()
    again = _poller(aws, path, second)
    assert again.poll_once() == 0 and second.batches == []
    more = _write(aws["dynamodb"], 3, start=5)
    assert again.poll_once() == 3
    assert second.succeeded == more


def test_a_poller_without_checkpoints_starts_at_the_trim_horizon(aws: dict[str, Any], tmp_path: Path) -> None:
    ids = _write(aws["dynamodb"], 4)
    handler = Recorder()
    _poller(aws, tmp_path / "a.json", handler).poll_once()
    _poller(aws, tmp_path / "b.json", handler).poll_once()
    assert handler.succeeded == ids + ids


# --- stale iterators --------------------------------------------------------------------------


class FlakyStreams:
    """The real streams client, but get_records fails once when asked to."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail_next = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_records(self, **kwargs: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise ClientError({"Error": {"Code": "ExpiredIteratorException", "Message": "expired"}}, "GetRecords")
        return self.inner.get_records(**kwargs)


def test_an_expired_iterator_is_replaced_from_the_position(aws: dict[str, Any], tmp_path: Path) -> None:
    flaky = FlakyStreams(_streams_client())
    handler = Recorder()
    poller = _poller(aws, tmp_path / "cp.json", handler, streams_client=flaky)
    ids = _write(aws["dynamodb"], 3)
    assert poller.poll_once() == 3
    ids += _write(aws["dynamodb"], 3, start=3)
    flaky.fail_next = True
    assert poller.poll_once() == 3
    assert handler.succeeded == ids and not flaky.fail_next


def test_a_stale_moto_iterator_is_refreshed(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.dynamodb.models import dynamodb_backends

    monkeypatch.setattr(streams.poller, "IDLE_ITERATOR_REFRESH_S", 0.0)
    handler = Recorder()
    poller = _poller(aws, tmp_path / "cp.json", handler)
    ids = _write(aws["dynamodb"], 2)
    assert poller.poll_once() == 2
    # What moto does when it rolls back a cancelled TransactWriteItems: the tables (and their
    # stream shards) are replaced by copies, and iterators handed out before see no new records.
    backend = dynamodb_backends["123456789012"]["us-east-1"]
    backend.tables = copy.deepcopy(backend.tables)
    ids += _write(aws["dynamodb"], 2, start=2)
    assert poller.poll_once() == 2
    assert handler.succeeded == ids


# --- several shards (a fake stream: moto has one shard that never closes) ---------------------


class ShardedStreams:
    """A stream whose first shard closed and split into a child, listed child first."""

    ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/EventsTable/stream/2026-11-29T00:00:00.000"

    def __init__(self) -> None:
        self.records = {
            "shardId-00000000000000000001-aaaaaaaa": [self._raw(100 + i) for i in range(5)],
            "shardId-00000000000000000002-bbbbbbbb": [self._raw(200 + i) for i in range(4)],
        }

    @staticmethod
    def _raw(sequence: int) -> dict[str, Any]:
        return {
            "eventID": str(sequence),
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": datetime.now(UTC),
                "Keys": {"event_id": {"S": f"e{sequence}"}},
                "NewImage": {"event_id": {"S": f"e{sequence}"}},
                "SequenceNumber": str(sequence),
                "SizeBytes": 20,
                "StreamViewType": "NEW_IMAGE",
            },
        }

    def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"LatestStreamArn": self.ARN}}

    def describe_stream(self, StreamArn: str, **_: Any) -> dict[str, Any]:
        parent, child = self.records
        return {
            "StreamDescription": {
                "Shards": [
                    {
                        "ShardId": child,
                        "ParentShardId": parent,
                        "SequenceNumberRange": {"StartingSequenceNumber": "200"},
                    },
                    {
                        "ShardId": parent,
                        "SequenceNumberRange": {"StartingSequenceNumber": "100", "EndingSequenceNumber": "104"},
                    },
                ]
            }
        }

    def get_shard_iterator(
        self,
        StreamArn: str,
        ShardId: str,
        ShardIteratorType: str,
        SequenceNumber: str | None = None,
    ) -> dict[str, Any]:
        records = self.records[ShardId]
        start = 0
        if ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
            start = next((i + 1 for i, r in enumerate(records) if r["dynamodb"]["SequenceNumber"] == SequenceNumber))
        return {"ShardIterator": f"{ShardId}|{start}"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard_id, start = ShardIterator.split("|")
        records = self.records[shard_id][int(start) : int(start) + Limit]
        end = int(start) + len(records)
        closed = shard_id.endswith("aaaaaaaa") and end == len(self.records[shard_id])
        return {"Records": records, **({} if closed else {"NextShardIterator": f"{shard_id}|{end}"})}


def test_a_parent_shard_is_drained_before_its_child(aws: dict[str, Any], tmp_path: Path) -> None:
    fake = ShardedStreams()
    handler = Recorder()
    path = tmp_path / "cp.json"
    poller = StreamPoller(
        mapping=_mapping(batch_size=3),
        handler=handler,
        dynamodb=fake,
        streams=fake,
        sqs=boto3.client("sqs"),
        queue_url=None,
        checkpoint_path=path,
    )
    assert poller.poll_once() == 9
    assert handler.succeeded == [f"e{100 + i}" for i in range(5)] + [f"e{200 + i}" for i in range(4)]
    assert [len(b) for b in handler.batches] == [3, 2, 3, 1]  # a batch never spans shards
    shards = json.loads(path.read_text(encoding="utf-8"))["tables"]["EventsTable"]
    assert shards["shardId-00000000000000000001-aaaaaaaa"]["finished"] is True
    assert shards["shardId-00000000000000000002-bbbbbbbb"] == {
        **shards["shardId-00000000000000000002-bbbbbbbb"],
        "sequence_number": "203",
        "finished": False,
    }
    restarted = StreamPoller(
        mapping=_mapping(batch_size=3),
        handler=handler,
        dynamodb=fake,
        streams=fake,
        sqs=boto3.client("sqs"),
        queue_url=None,
        checkpoint_path=path,
    )
    assert restarted.poll_once() == 0


# --- the handler's answer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "ok", "raised", "failed_at"),
    [
        (None, True, False, None),
        ({"batchItemFailures": []}, True, False, None),
        ({"batchItemFailures": [{"itemIdentifier": "12"}, {"itemIdentifier": "11"}]}, False, False, 1),
        ({"batchItemFailures": [{"itemIdentifier": "99"}]}, False, True, None),  # not in the batch
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, False, True, None),
        ({"batchItemFailures": [{"id": "11"}]}, False, True, None),
        ({"batchItemFailures": "11"}, False, True, None),
    ],
)
def test_the_response_is_read_as_lambda_reads_it(response: Any, ok: bool, raised: bool, failed_at: int | None) -> None:
    records = [{"dynamodb": {"SequenceNumber": str(n)}} for n in (10, 11, 12)]
    outcome = invoke(lambda event, context: response, records, "F", ShardedStreams.ARN)
    assert (outcome.ok, outcome.raised, outcome.failed_at) == (ok, raised, failed_at)


# --- the on-failure queue ---------------------------------------------------------------------


def test_dlq_messages_peeks_and_redrive_redelivers(aws: dict[str, Any], tmp_path: Path) -> None:
    sqs, queue = boto3.client("sqs"), aws["queues"][DLQ]
    _write(aws["dynamodb"], 4)
    poller = _poller(aws, tmp_path / "cp.json", Recorder(fail=lambda i: i == "e0002", mode="raise"), max_retries=0)
    assert poller.poll_once() == 4
    for _ in range(2):  # looking does not consume
        (message,) = dlq_messages(sqs, queue)
        assert _ids(message["body"]["records"]) == ["e0002"]
        assert message["message_id"] and message["sent_at"]

    still_broken = Recorder(fail=lambda i: True, mode="raise")
    assert dlq_redrive(sqs, queue, still_broken) == (0, 1)
    assert still_broken.batches == [["e0002"]]
    assert len(dlq_messages(sqs, queue)) == 1

    fixed = Recorder()
    assert dlq_redrive(sqs, queue, fixed) == (1, 0)
    assert fixed.succeeded == ["e0002"]
    assert fixed.contexts[0].function_name == "BucketStatsFunction"
    arn = aws["dynamodb"].describe_table(TableName="EventsTable")["Table"]["LatestStreamArn"]
    assert DynamoDBStreamModel.model_validate(fixed.events[0]).Records[0].eventSourceARN == arn
    assert dlq_messages(sqs, queue) == []
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert dlq_redrive(sqs, queue, fixed) == (0, 0)


# --- with the real consumer -------------------------------------------------------------------


def test_the_stats_handler_counts_each_event_once_even_when_records_come_twice(
    aws: dict[str, Any], tmp_path: Path
) -> None:
    for cached in (runtime.stats_store, runtime.service, aws_clients.client):
        cached.cache_clear()
    try:
        n = 30
        _write(aws["dynamodb"], n)
        assert _poller(aws, tmp_path / "a.json", runtime.handle_stats_stream).poll_once() == n
        stats = StatsStore(aws["dynamodb"], "BucketStatsTable")
        assert stats.totals()["total_events"] == n
        assert stats.totals()["agents_tracked"] == 4
        # A poller without a checkpoint delivers every record again: nothing is counted twice.
        again = _poller(aws, tmp_path / "b.json", runtime.handle_stats_stream)
        assert again.poll_once() == n and again.records_handled == n
        assert stats.totals()["total_events"] == n
        assert _dlq(aws) == []
    finally:
        for cached in (runtime.stats_store, runtime.service, aws_clients.client):
            cached.cache_clear()


def test_while_the_stack_refuses_writes_records_are_held_neither_failed_nor_checkpointed(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bhiv.local import durability

    refused = {"on": True, "asked": 0}

    def writes_refused() -> bool:
        refused["asked"] += refused["on"]
        return bool(refused["on"])

    monkeypatch.setattr(durability, "writes_refused", writes_refused)
    handler = Recorder()
    poller = _poller(aws, tmp_path / "cp.json", handler, batch_size=5, max_retries=0)
    poller.start()
    try:
        ids = _write(aws["dynamodb"], 8)
        _wait_for(lambda: refused["asked"] >= 5)  # five deliveries held back
        assert handler.batches == [] and poller.records_failed == 0 and poller.records_handled == 0
        assert _dlq(aws) == []
        refused["on"] = False  # restarted, as it were: the held records go out, in order
        _wait_for(lambda: handler.succeeded == ids)
    finally:
        poller.stop()
    assert _dlq(aws) == [] and poller.records_failed == 0

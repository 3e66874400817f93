"""The local stack's in-process clients behave like boto3's on the same moto: answers, errors,
request validation, stream records, and the journal of every successful write."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError
from moto import mock_aws

from bhiv.bucket.domain import build_event
from bhiv.local import durability, fast_client, moto_patch, template
from bhiv.local.streams import StreamPoller, lambda_record
from bhiv.storage import aws as aws_clients
from bhiv.storage.events import to_item

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
ITEM = {"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "1"}}


def _outcome(call: Any, **params: Any) -> tuple[str, Any]:
    """What a caller sees: the response, or the exception's class, response and message."""
    try:
        response = dict(call(**params))
        response.pop("ResponseMetadata")
        return "ok", response
    except ClientError as exc:
        error = dict(exc.response)
        error.pop("ResponseMetadata")
        return type(exc).__name__, (error, str(exc))
    except ParamValidationError as exc:
        return type(exc).__name__, str(exc)


# Calls that change nothing (or fail), so both clients can make them on the same table in turn.
SAME_ANSWER_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("get_item", {"TableName": "KarmaTable", "Key": {"pk": {"S": "a"}, "sk": {"S": "1"}}, "ConsistentRead": True}),
    ("get_item", {"TableName": "KarmaTable", "Key": {"pk": {"S": "none"}, "sk": {"S": "1"}}}),
    ("get_item", {"TableName": "NoSuchTable", "Key": {"pk": {"S": "a"}, "sk": {"S": "1"}}}),
    ("get_item", {"TableName": "KarmaTable", "Key": {"pk": {"S": "a"}}}),
    ("get_item", {"TableName": "KarmaTable", "Key": {"pk": {"N": 1}}}),
    ("get_item", {"TableName": "KarmaTable", "Keys": {}}),
    (
        "put_item",
        {
            "TableName": "KarmaTable",
            "Item": ITEM,
            "ConditionExpression": "attribute_not_exists(pk)",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        },
    ),
    ("put_item", {"TableName": "KarmaTable", "Item": ITEM, "ConditionExpression": "attribute_not_exists(pk)"}),
    ("put_item", {"TableName": "KarmaTable", "Item": ITEM, "ReturnValues": "ALL_NEW"}),
    (
        "query",
        {
            "TableName": "KarmaTable",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
            "Limit": 1,
            "ReturnConsumedCapacity": "TOTAL",
        },
    ),
    ("query", {"TableName": "KarmaTable", "KeyConditionExpression": "nope = :p", "ExpressionAttributeValues": {}}),
    (
        "transact_write_items",
        {
            "TransactItems": [
                {"Put": {"TableName": "KarmaTable", "Item": {"pk": {"S": "t"}, "sk": {"S": "1"}}}},
                {
                    "Put": {
                        "TableName": "KarmaTable",
                        "Item": ITEM,
                        "ConditionExpression": "attribute_not_exists(pk)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                },
            ]
        },
    ),
    (
        "batch_get_item",
        {
            "RequestItems": {
                "KarmaTable": {"Keys": [{"pk": {"S": "a"}, "sk": {"S": "1"}}, {"pk": {"S": "b"}, "sk": {"S": "1"}}]}
            }
        },
    ),
    ("describe_table", {"TableName": "KarmaTable"}),
]


@pytest.mark.parametrize(
    ("method", "params"), SAME_ANSWER_CALLS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(SAME_ANSWER_CALLS)]
)
def test_answers_and_errors_are_boto3s(aws: dict[str, Any], method: str, params: dict[str, Any]) -> None:
    boto = aws["dynamodb"]
    boto.put_item(TableName="KarmaTable", Item=ITEM)
    fast = fast_client.FastDynamoDB(boto)
    assert _outcome(getattr(fast, method), **params) == _outcome(getattr(boto, method), **params)


def test_an_error_is_the_exception_class_boto3_raises(aws: dict[str, Any]) -> None:
    fast = fast_client.FastDynamoDB(aws["dynamodb"])
    fast.put_item(TableName="KarmaTable", Item=ITEM)
    with pytest.raises(fast.exceptions.ConditionalCheckFailedException) as failed:
        fast.put_item(
            TableName="KarmaTable",
            Item=ITEM,
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert failed.value.response["Item"] == ITEM


def test_the_factory_hands_out_the_fast_client_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for setting, expected in (("0", False), ("1", True)):
        monkeypatch.setenv("BHIV_LOCAL_FAST_CLIENT", setting)
        aws_clients.client.cache_clear()
        try:
            assert isinstance(aws_clients.client("dynamodb"), fast_client.FastDynamoDB) is expected
            assert isinstance(aws_clients.client("dynamodbstreams"), fast_client.FastDynamoDBStreams) is expected
            assert not isinstance(aws_clients.client("sqs"), fast_client.FastDynamoDB)
        finally:
            aws_clients.client.cache_clear()


def _items(client: Any) -> list[dict[str, Any]]:
    return sorted(client.scan(TableName="KarmaTable")["Items"], key=lambda item: (item["pk"]["S"], item["sk"]["S"]))


def test_every_successful_write_is_journaled_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write made through the fast client survives a restart exactly like one made over HTTP."""
    for key, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        moto_patch.install()
        boto, sqs = boto3.client("dynamodb"), boto3.client("sqs")
        template.create_resources(boto, sqs)
        state = durability.DurableState(tmp_path, "us-east-1")
        state.restore(boto, sqs)
        durability.activate(state)
        try:
            fast = fast_client.FastDynamoDB(boto)
            fast.put_item(TableName="KarmaTable", Item=ITEM)
            with pytest.raises(ClientError):
                fast.put_item(TableName="KarmaTable", Item=ITEM, ConditionExpression="attribute_not_exists(pk)")
            fast.update_item(
                TableName="KarmaTable",
                Key={"pk": {"S": "a"}, "sk": {"S": "1"}},
                UpdateExpression="ADD v :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
            fast.transact_write_items(
                TransactItems=[{"Put": {"TableName": "KarmaTable", "Item": {"pk": {"S": "b"}, "sk": {"S": "2"}}}}]
            )
            fast.batch_write_item(
                RequestItems={"KarmaTable": [{"PutRequest": {"Item": {"pk": {"S": "c"}, "sk": {"S": "3"}}}}]}
            )
            fast.delete_item(TableName="KarmaTable", Key={"pk": {"S": "c"}, "sk": {"S": "3"}})
            before = _items(boto)
        finally:
            durability.activate(None)
            state.close()
    assert [item["pk"]["S"] for item in before] == ["a", "b"]
    with mock_aws():
        boto, sqs = boto3.client("dynamodb"), boto3.client("sqs")
        template.create_resources(boto, sqs)
        restored = durability.DurableState(tmp_path, "us-east-1")
        restored.restore(boto, sqs)
        restored.close()
        assert _items(boto) == before


def _write_events(dynamodb: Any, count: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + count):
        event = build_event({"event_type": "t", "n": i}, "req", f"e{i:04d}", T0 + timedelta(seconds=i))
        dynamodb.put_item(TableName="EventsTable", Item=to_item(event))
        ids.append(event.event_id)
    return ids


def test_stream_reads_are_boto3s(aws: dict[str, Any]) -> None:
    boto = aws["dynamodb"]
    _write_events(boto, 5)
    arn = boto.describe_table(TableName="EventsTable")["Table"]["LatestStreamArn"]
    slow = boto3.client("dynamodbstreams", config=Config(account_id_endpoint_mode="disabled"))
    fast = fast_client.FastDynamoDBStreams(slow)
    descriptions = [c.describe_stream(StreamArn=arn)["StreamDescription"] for c in (slow, fast)]
    assert descriptions[0] == descriptions[1]
    shard = descriptions[0]["Shards"][0]["ShardId"]
    reads = []
    for client in (slow, fast):
        iterator = client.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        first = client.get_records(ShardIterator=iterator["ShardIterator"], Limit=3)
        after = client.get_shard_iterator(
            StreamArn=arn,
            ShardId=shard,
            ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            SequenceNumber=first["Records"][-1]["dynamodb"]["SequenceNumber"],
        )
        rest = client.get_records(ShardIterator=after["ShardIterator"])
        reads.append([lambda_record(r, arn, "us-east-1") for r in first["Records"] + rest["Records"]])
        assert set(rest) == {"Records", "NextShardIterator", "ResponseMetadata"}
    assert reads[0] == reads[1]
    assert len(reads[1]) == 5
    for client in (slow, fast):
        with pytest.raises(ClientError) as unknown:
            client.describe_stream(StreamArn=arn.replace("EventsTable", "NoSuchTable"))
        assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ParamValidationError):
        fast.get_records(ShardIterator=iterator["ShardIterator"], Limit="10")


def test_the_poller_delivers_through_the_fast_reader(aws: dict[str, Any], tmp_path: Path) -> None:
    (mapping,) = [m for m in template.stream_mappings() if m.function == "BucketStatsFunction"]
    seen: list[str] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.extend(r["dynamodb"]["NewImage"]["event_id"]["S"] for r in event["Records"])
        return {"batchItemFailures": []}

    streams_client = boto3.client("dynamodbstreams", config=Config(account_id_endpoint_mode="disabled"))
    poller = StreamPoller(
        mapping=dataclasses.replace(mapping, batching_window_s=0.0),
        handler=handler,
        dynamodb=aws["dynamodb"],
        streams=fast_client.FastDynamoDBStreams(streams_client),
        sqs=boto3.client("sqs"),
        queue_url=aws["queues"]["BucketStatsDLQ"],
        checkpoint_path=tmp_path / "checkpoints.json",
        poll_interval_s=0.02,
    )
    ids = _write_events(aws["dynamodb"], 7)
    poller.poll_once()
    ids += _write_events(aws["dynamodb"], 4, start=7)
    poller.poll_once()
    assert seen == ids


def test_a_snapshot_loads_straight_into_moto_and_answers_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up from a clean-stop snapshot fills moto's tables directly; items, queries and later
    writes behave as if the items had been written through the API."""
    for key, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
    }.items():
        monkeypatch.setenv(key, value)
    history = {
        "TableName": "KarmaTable",
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :h)",
        "ExpressionAttributeValues": {":pk": {"S": "a"}, ":h": {"S": "h#"}},
        "ScanIndexForward": False,
        "Limit": 3,
    }
    with mock_aws():
        moto_patch.install()
        boto, sqs = boto3.client("dynamodb"), boto3.client("sqs")
        template.create_resources(boto, sqs)
        for i in range(6):
            boto.put_item(TableName="KarmaTable", Item={"pk": {"S": "a"}, "sk": {"S": f"h#{i}"}, "n": {"N": str(i)}})
        boto.put_item(
            TableName="KarmaTable", Item={"pk": {"S": "a"}, "sk": {"S": "state"}, "m": {"M": {"x": {"L": []}}}}
        )
        state = durability.DurableState(tmp_path, "us-east-1")
        state.restore(boto, sqs)
        state.compact()
        state.close()
        before, page = _items(boto), boto.query(**history)
    with mock_aws():
        moto_patch.install()
        boto, sqs = boto3.client("dynamodb"), boto3.client("sqs")
        template.create_resources(boto, sqs)
        restored = durability.DurableState(tmp_path, "us-east-1")
        restored.restore(boto, sqs)
        restored.close()
        assert restored.loaded_items == len(before)
        assert _items(boto) == before
        assert boto.query(**history)["Items"] == page["Items"]
        boto.put_item(TableName="KarmaTable", Item={"pk": {"S": "a"}, "sk": {"S": "h#9"}})
        assert boto.query(**history)["Items"][0]["sk"] == {"S": "h#9"}
        with pytest.raises(ClientError):
            boto.put_item(
                TableName="KarmaTable",
                Item={"pk": {"S": "a"}, "sk": {"S": "h#0"}},
                ConditionExpression="attribute_not_exists(pk)",
            )

"""The write journal and snapshots reproduce moto's tables and streams exactly (issue 9)."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from bhiv.local import durability, moto_patch, template
from tests.integration.conftest import use_offline_aws

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    use_offline_aws(monkeypatch)
    yield
    durability.activate(None)


def _start(state_dir: Path) -> tuple[Any, durability.DurableState]:
    moto_patch.install()
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    template.create_resources(dynamodb, sqs)
    state = durability.DurableState(state_dir, REGION)
    state.restore(dynamodb, sqs)
    durability.activate(state)
    return dynamodb, state


def _picture() -> dict[str, Any]:
    """Every table's items and every stream's records (sequence number, kind, keys, new image)."""
    from moto.dynamodb.models import dynamodb_backends

    backend = dynamodb_backends[durability.ACCOUNT][REGION]
    tables = {
        name: sorted(json.dumps(item.to_json()["Attributes"], sort_keys=True) for item in table.all_items())
        for name, table in backend.tables.items()
    }
    streams = {}
    for name, table in backend.tables.items():
        if table.stream_shard is not None:
            shard = table.stream_shard
            streams[name] = {
                "next": shard.starting_sequence_number + len(shard.items),
                "records": [
                    (
                        r.to_json()["dynamodb"]["SequenceNumber"],
                        r.to_json()["eventName"],
                        json.dumps(r.to_json()["dynamodb"].get("Keys"), sort_keys=True),
                        json.dumps(r.to_json()["dynamodb"].get("NewImage"), sort_keys=True),
                    )
                    for r in shard.items
                ],
            }
    return {"tables": tables, "streams": streams}


def _workload(dynamodb: Any, start: int) -> None:
    for i in range(start, start + 5):
        dynamodb.put_item(TableName="EventsTable", Item=_event(i))
    dynamodb.update_item(  # creates an item: moto emits two stream records for it
        TableName="EventsTable",
        Key=_key(start + 300),
        UpdateExpression="ADD events :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    dynamodb.update_item(  # a table without a stream
        TableName="BucketStatsTable",
        Key={"pk": {"S": "totals"}, "sk": {"S": f"n{start}"}},
        UpdateExpression="ADD events :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    dynamodb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": "EventsTable", "Item": _event(start + 100)}},
            {"Delete": {"TableName": "EventsTable", "Key": _key(start)}},
        ]
    )
    dynamodb.batch_write_item(
        RequestItems={
            "EventsTable": [
                {"PutRequest": {"Item": _event(start + 200)}},
                {"DeleteRequest": {"Key": _key(start + 1)}},
            ]
        }
    )
    with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):  # refused: journals nothing
        dynamodb.put_item(
            TableName="EventsTable", Item=_event(start + 2), ConditionExpression="attribute_not_exists(event_id)"
        )


def _key(i: int) -> dict[str, Any]:
    item = _event(i)
    return {name: item[name] for name in _event_key_names()}


def _event_key_names() -> list[str]:
    doc = template.load_template()
    return [k["AttributeName"] for k in doc["Resources"]["EventsTable"]["Properties"]["KeySchema"]]


def _event(i: int) -> dict[str, Any]:
    from datetime import UTC, datetime

    from bhiv.bucket.domain import build_event
    from bhiv.storage.events import to_item

    event = build_event(
        {"event_type": "probe", "n": i}, "workflow_executor", f"evt-{i:05d}", datetime(2026, 1, 1, tzinfo=UTC)
    )
    return to_item(event)


def _restart(state_dir: Path) -> dict[str, Any]:
    durability.activate(None)
    with mock_aws():
        _start(state_dir)
        return _picture()


def test_a_restart_after_a_crash_reproduces_tables_and_streams_exactly(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        live = _picture()
        state.close()  # as a kill leaves it: no snapshot, only the journal
    assert live["streams"]["EventsTable"]["records"]
    assert _restart(tmp_path) == live


def test_compaction_keeps_the_unread_tail_and_numbering_continues(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        events = _picture()["streams"]["EventsTable"]["records"]
        horizon = int(events[3][0])  # every consumer has read up to the 4th record
        state.compact({"EventsTable": horizon})
        _workload(dynamodb, 1000)
        live = _picture()
        state.close()
    assert live["streams"]["EventsTable"]["records"][0][0] == str(horizon + 1)
    assert _restart(tmp_path) == live


def test_a_torn_tail_is_truncated_and_the_next_append_starts_a_clean_line(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        _workload(dynamodb, 0)
        state.close()
    with open(tmp_path / "journal.jsonl", "ab") as journal:
        journal.write(b'{"g": 0, "p": [["EventsTable", {"pk"')
    durability.activate(None)
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        assert state.truncated_bytes > 0
        _workload(dynamodb, 1000)
        live = _picture()
        state.close()
    assert _restart(tmp_path) == live


def test_a_compaction_keeps_odd_values_exactly(tmp_path: Path) -> None:
    """Items whose JSON is unusual (non-ASCII, a line separator, a 40-digit number, nested sets)
    come back from a snapshot exactly as they were written."""
    odd = {
        "pk": {"S": "odd"},
        "sk": {"S": "caf\u00e9 \U0001f600 \u2028"},
        "big": {"N": "1234567890123456789012345678901234567890"},
        "nested": {"M": {"l": {"L": [{"SS": ["a", "\u00e9"]}, {"NS": ["1", "2.5"]}, {"NULL": True}]}}},
    }
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        dynamodb.put_item(TableName="BucketStatsTable", Item=odd)
        _workload(dynamodb, 0)
        state.compact({"EventsTable": None})
        live = _picture()
        state.close()
    assert any("odd" in item for item in live["tables"]["BucketStatsTable"])
    assert _restart(tmp_path) == live


class _FullDisk:
    """The journal file on a full disk: every append fails as the kernel fails it."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        self.real.flush()

    def fileno(self) -> int:
        return int(self.real.fileno())


def _stored(dynamodb: Any, i: int) -> bool:
    return "Item" in dynamodb.get_item(TableName="EventsTable", Key=_key(i), ConsistentRead=True)


def test_after_a_failed_journal_append_every_write_is_refused_and_a_restart_has_what_was_acknowledged(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    from bhiv.bucket.domain import build_event
    from bhiv.errors import StorageUnavailable
    from bhiv.local.fast_client import FastDynamoDB
    from bhiv.storage.events import EventStore

    once = Config(retries={"max_attempts": 1})
    with mock_aws():
        dynamodb, state = _start(tmp_path)
        client = boto3.client("dynamodb", region_name=REGION, config=once)
        client.put_item(TableName="EventsTable", Item=_event(1))  # acknowledged and journaled
        real, state._journal = state._journal, _FullDisk(state._journal)
        with pytest.raises(ClientError) as failed:
            client.put_item(TableName="EventsTable", Item=_event(2))
        assert failed.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        state._journal = real  # the disk has room again: still refused until a restart
        sqs = boto3.client("sqs", region_name=REGION, config=once)
        refused: list[Callable[[], Any]] = [
            lambda: client.put_item(TableName="EventsTable", Item=_event(3)),
            lambda: FastDynamoDB(client).put_item(TableName="EventsTable", Item=_event(4)),
            lambda: FastDynamoDB(client).transact_write_items(
                TransactItems=[{"Put": {"TableName": "EventsTable", "Item": _event(5)}}]
            ),
            lambda: sqs.send_message(QueueUrl=sqs.list_queues()["QueueUrls"][0], MessageBody="after the failure"),
        ]
        for write in refused:
            with pytest.raises(ClientError) as again:
                write()
            assert again.value.response["Error"]["Code"] == "ServiceUnavailable"
        event = build_event({"event_type": "probe"}, "workflow_executor", "evt-00006", datetime(2026, 1, 1, tzinfo=UTC))
        with pytest.raises(StorageUnavailable):  # what the Bucket answers as 503
            EventStore(FastDynamoDB(client), "EventsTable").append(event)
        assert [_stored(client, i) for i in (1, 3, 4, 5, 6)] == [True, False, False, False, False]
        state.close()
    durability.activate(None)
    with mock_aws():
        dynamodb, _ = _start(tmp_path)
        assert [_stored(dynamodb, i) for i in (1, 2, 3, 4, 5, 6)] == [True, False, False, False, False, False]

"""Aggregates from the stream: each event counted exactly once, whatever the re-deliveries."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from bhiv.storage.stats import StatsStore


@pytest.fixture(params=["boto3", "fast"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs through boto3 and through the local stack's fast client."""
    return str(request.param)


def _event(i: int, agent: str | None = None, event_type: str = "t") -> dict[str, Any]:
    event = {
        "event_id": f"e{i}",
        "event_type": event_type,
        "requester_id": "req",
        "received_at": f"2026-11-29T00:00:{i:02d}.000000Z",
    }
    if agent:
        event["agent_key"] = agent
    return event


def test_each_event_counts_once_even_when_redelivered(aws: dict[str, Any]) -> None:
    stats = StatsStore(aws["dynamodb"], "BucketStatsTable")
    events = [_event(1, "alice", "a"), _event(2, "bob", "a"), _event(3, "alice", "b"), _event(4)]
    assert [stats.apply(e) for e in events] == [True, True, True, True]
    assert [stats.apply(e) for e in events] == [False, False, False, False]
    totals = stats.totals()
    assert totals["total_events"] == 4
    assert totals["agents_tracked"] == 2
    assert stats.breakdown() == {"by_event_type": {"a": 2, "b": 1, "t": 1}, "by_requester": {"req": 4}}
    alice = stats.agent("alice")
    assert alice is not None and alice["event_count"] == 2


def test_a_cancelled_transaction_writes_nothing(aws: dict[str, Any]) -> None:
    client = aws["dynamodb"]
    client.put_item(TableName="BucketStatsTable", Item={"pk": {"S": "x"}, "sk": {"S": "taken"}})
    with pytest.raises(ClientError) as err:
        client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "BucketStatsTable", "Item": {"pk": {"S": "x"}, "sk": {"S": "new"}}}},
                {
                    "Put": {
                        "TableName": "BucketStatsTable",
                        "Item": {"pk": {"S": "x"}, "sk": {"S": "taken"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
    reasons = [r["Code"] for r in err.value.response["CancellationReasons"]]
    assert reasons == ["None", "ConditionalCheckFailed"]
    assert "Item" not in client.get_item(TableName="BucketStatsTable", Key={"pk": {"S": "x"}, "sk": {"S": "new"}})


def test_a_batch_is_counted_once_with_its_agents_and_types(aws: dict[str, Any]) -> None:
    stats = StatsStore(aws["dynamodb"], "BucketStatsTable")
    assert stats.apply(_event(0, "old-agent", "a"))
    batch = [_event(i, f"agent{i % 3}" if i % 4 else "old-agent", "ab"[i % 2]) for i in range(1, 41)]
    assert stats.apply_batch([*batch, batch[0]]) == 40  # a duplicate inside the batch counts once
    assert stats.apply_batch(batch[10:30]) == 0  # a redelivered part of it counts nothing
    totals = stats.totals()
    assert totals["total_events"] == 41
    assert totals["agents_tracked"] == 4  # old-agent, agent0..2
    assert stats.breakdown()["by_event_type"] == {"a": 21, "b": 20}
    old = stats.agent("old-agent")
    assert old is not None and old["event_count"] == 11


def test_groups_stay_within_the_transaction_limit(aws: dict[str, Any]) -> None:
    stats = StatsStore(aws["dynamodb"], "BucketStatsTable")
    batch = [_event(i % 60, f"agent{i}", f"type{i}") for i in range(60)]  # 3 counters per event
    batch = [{**e, "event_id": f"g{i}"} for i, e in enumerate(batch)]
    assert stats.apply_batch(batch) == 60
    assert stats.totals()["agents_tracked"] == 60


def test_two_consumers_with_their_own_caches_lose_no_count(aws: dict[str, Any]) -> None:
    """Each process caches the counters it wrote; another process's writes make that cache stale,
    which must cost a retry, never a count."""
    first, second = StatsStore(aws["dynamodb"], "BucketStatsTable"), StatsStore(aws["dynamodb"], "BucketStatsTable")
    assert first.apply_batch([_event(i, "alice", "a") for i in range(0, 5)]) == 5
    assert second.apply_batch([_event(i, "alice", "a") for i in range(5, 12)]) == 7
    assert first.apply_batch([_event(i, "alice" if i % 2 else "bob", "a") for i in range(10, 20)]) == 8
    assert second.apply_batch([_event(i, "bob", "b") for i in range(18, 22)]) == 2
    totals = first.totals()
    assert totals["total_events"] == 22
    assert totals["agents_tracked"] == 2
    assert first.breakdown()["by_event_type"] == {"a": 20, "b": 2}
    alice, bob = first.agent("alice"), first.agent("bob")
    assert alice is not None and alice["event_count"] == 12 + 4
    assert alice["first_event_at"] == _event(0)["received_at"]
    assert bob is not None and bob["event_count"] == 4 + 2
    assert bob["last_event_at"] == _event(21)["received_at"]

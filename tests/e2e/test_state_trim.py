"""A running stack keeps only the stream records some consumer has not read (issue 12)."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.e2e.stack import RunningStack, poll_until, start_stack
from tests.e2e.test_restarts import _applied, _write

pytestmark = pytest.mark.e2e


def _stream_records(stack: RunningStack) -> list[dict[str, Any]]:
    """Every record the events stream still holds, read from its horizon through the moto endpoint."""
    url = json.loads((stack.state_dir / "stack.json").read_text(encoding="utf-8"))["urls"]["aws"]
    options: dict[str, Any] = {
        "endpoint_url": url,
        "region_name": "us-east-1",
        "aws_access_key_id": "local",
        "aws_secret_access_key": "local",
    }
    streams = boto3.client("dynamodbstreams", **options)
    arn = streams.list_streams(TableName="EventsTable")["Streams"][0]["StreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records: list[dict[str, Any]] = streams.get_records(ShardIterator=iterator["ShardIterator"], Limit=1000)["Records"]
    return records


def test_consumed_stream_records_are_dropped_and_a_restart_delivers_nothing_twice(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stack = start_stack(state)
    user = f"u-{uuid.uuid4().hex[:8]}"
    try:
        for i in range(20):
            assert _write(stack, user, f"evt-trim-{i:03d}") in (200, 201)
        poll_until(lambda: _applied(stack, user), lambda n: n == 20, timeout=60)
        # both consumers have checkpointed past every record: the stream keeps none of them
        poll_until(lambda: len(_stream_records(stack)), lambda n: n == 0, timeout=30)
        for i in range(20, 25):
            assert _write(stack, user, f"evt-trim-{i:03d}") in (200, 201)
        poll_until(lambda: _applied(stack, user), lambda n: n == 25, timeout=60)
    finally:
        stack.stop(signal.SIGKILL)  # the journal replays every record since the last compaction
    again = start_stack(state)
    try:
        for i in range(25, 27):
            assert _write(again, user, f"evt-trim-{i:03d}") in (200, 201)
        poll_until(lambda: _applied(again, user), lambda n: n == 27, timeout=60)  # nothing delivered twice
        poll_until(lambda: len(_stream_records(again)), lambda n: n == 0, timeout=30)
    finally:
        again.stop()
    assert _applied_after_restart(state, user) == 27


def _applied_after_restart(state: Path, user: str) -> int:
    stack = start_stack(state)
    try:
        return int(_applied(stack, user))
    finally:
        stack.stop()


def test_an_ephemeral_stack_drops_consumed_records_too(tmp_path: Path) -> None:
    stack = start_stack(tmp_path / "state", "--ephemeral")
    user = f"u-{uuid.uuid4().hex[:8]}"
    try:
        for i in range(10):
            assert _write(stack, user, f"evt-eph-{i:03d}") in (200, 201)
        poll_until(lambda: _applied(stack, user), lambda n: n == 10, timeout=60)
        poll_until(lambda: len(_stream_records(stack)), lambda n: n == 0, timeout=30)
        assert _write(stack, user, "evt-eph-010") in (200, 201)
        poll_until(lambda: _applied(stack, user), lambda n: n == 11, timeout=60)
    finally:
        stack.stop()

"""Karma figures.

consumer  events applied/s through the real stream handler (`functions/karma/app.py:on_event`) in
          batches of 100 Lambda-shaped records against in-process moto; baseline in the same run:
          raw moto put_item of the same number of items (the cheapest write one event could cost)
latency   on the live local stack: Bucket write acknowledged -> the user's Karma visible, p50/p99

Usage: .venv/bin/python bench/bench_karma.py [--events 2000] [--latency-samples 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from tests.e2e.stack import start_stack  # noqa: E402


def _records(count: int) -> list[dict[str, Any]]:
    from bhiv.bucket.domain import build_event
    from bhiv.storage.events import to_item

    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    records = []
    for i in range(count):
        data: dict[str, Any] = {
            "event_type": "workflow_execution",
            "trace_id": f"b{i}",
            "user_id": f"user{i % 200}",
            "action_type": "task",
            "status": "success" if i % 5 else "failed",
            "execution_result": {},
        }
        item = to_item(build_event(data, "workflow_executor", f"b{i:06d}", t0 + timedelta(milliseconds=i)))
        records.append(
            {
                "eventID": str(i),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:1:table/EventsTable/stream/x",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1.8e9,
                    "Keys": {"event_id": item["event_id"]},
                    "NewImage": item,
                    "SequenceNumber": f"{i:021d}",
                    "SizeBytes": 500,
                    "StreamViewType": "NEW_IMAGE",
                },
            }
        )
    return records


def consumer_throughput(count: int) -> tuple[float, float]:
    import boto3
    from moto import mock_aws

    from bhiv.local import moto_patch, server, template

    os.environ.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="b",
        AWS_SECRET_ACCESS_KEY="b",
        AWS_ACCOUNT_ID_ENDPOINT_MODE="disabled",
    )
    with mock_aws():
        moto_patch.install()
        client = boto3.client("dynamodb")
        template.create_resources(client, boto3.client("sqs"))
        os.environ.update(template.function_environment("KarmaStreamFunction"))
        handler = server.resolve_handler("functions/karma/", "app.on_event")
        records = _records(count)
        started = time.perf_counter()
        for start in range(0, count, 100):
            result = handler({"Records": records[start : start + 100]}, None)
            assert not result["batchItemFailures"], result
        applied = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(count):
            client.put_item(
                TableName="KarmaTable", Item={"pk": {"S": f"bench{i}"}, "sk": {"S": "x"}, "v": {"S": "y" * 300}}
            )
        baseline = count / (time.perf_counter() - started)
    return applied, baseline


def stream_latency(samples: int) -> list[float]:
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "state")
        try:
            writer = requests.Session()
            reader = requests.Session()
            writer.headers.update(stack.auth("workflow_executor"))
            reader.headers.update(stack.auth("bhiv_reader"))
            for i in range(samples):
                user = f"lat-{uuid.uuid4().hex[:10]}"
                response = writer.post(
                    f"{stack.bucket_url}/core/write-event",
                    json={
                        "requester_id": "workflow_executor",
                        "event_data": {
                            "event_type": "workflow_execution",
                            "trace_id": f"lat{i}",
                            "user_id": user,
                            "action_type": "task",
                            "status": "success",
                            "execution_result": {},
                        },
                    },
                    timeout=5,
                )
                acknowledged = time.perf_counter()
                assert response.status_code == 200
                while reader.get(f"{stack.karma_url}/api/v1/karma/{user}", timeout=5).status_code != 200:
                    if time.perf_counter() - acknowledged > 10:
                        raise AssertionError("event never reached Karma")
                    time.sleep(0.002)
                latencies.append(time.perf_counter() - acknowledged)
        finally:
            stack.stop()
    return latencies


def main() -> int:
    # measures the services, not the per-requester limiter (src/bhiv/requesters.yaml); the stack inherits it
    os.environ["BHIV_RATE_LIMITS"] = "off"
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()
    applied, baseline = consumer_throughput(args.events)
    latencies = sorted(stream_latency(args.latency_samples))
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"baseline moto put_item (in-process)     : {baseline:8.0f} ops/s")
    print(
        f"karma consumer, batches of 100          : {applied:8.0f} events/s  ratio {applied / baseline:.2f}"
        f"  (n={args.events})"
    )
    print(f"stream latency, write ack -> karma state: p50 {p50:.0f} ms  p99 {p99:.0f} ms  (n={len(latencies)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

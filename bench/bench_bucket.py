"""Bucket ingest figures, as ratios against raw moto measured in the same run.

baseline  conditional put_item of a stored-event item into a copy of EventsTable (same indexes and
          stream), in-process moto: the one storage operation an ingest needs
single    POST /core/write-event through the live local stack (`bhiv up` subprocess), one
          kept-alive connection, sequential: events/s, p50/p99 latency
batch     POST /core/write-events, 100 events per request

Usage: .venv/bin/python bench/bench_bucket.py [--events 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import start_stack  # noqa: E402


def baseline_conditional_puts(count: int) -> float:
    import boto3
    from moto import mock_aws

    from bhiv.bucket.domain import build_event
    from bhiv.local import template
    from bhiv.storage.events import to_item

    os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="b", AWS_SECRET_ACCESS_KEY="b")
    with mock_aws():
        client = boto3.client("dynamodb")
        props = template.resources("AWS::DynamoDB::Table")["EventsTable"]["Properties"]
        client.create_table(**template.table_create_args("Baseline", props))
        now = datetime.now(UTC)
        items = [to_item(build_event(_event_data(i), "workflow_executor", None, now)) for i in range(count)]
        started = time.perf_counter()
        for item in items:
            client.put_item(TableName="Baseline", Item=item, ConditionExpression="attribute_not_exists(event_id)")
        return count / (time.perf_counter() - started)


def _event_data(i: int) -> dict[str, object]:
    return {"event_type": "bench", "trace_id": f"bench-{i}", "user_id": f"user-{i % 50}", "n": i, "message": "x" * 200}


def _post(conn: http.client.HTTPConnection, path: str, token: str, body: object) -> tuple[int, bytes]:
    conn.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    response = conn.getresponse()
    return response.status, response.read()


def main() -> int:
    # measures the services, not the per-requester limiter (src/bhiv/requesters.yaml); the stack inherits it
    os.environ["BHIV_RATE_LIMITS"] = "off"
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    n = args.events

    baseline = baseline_conditional_puts(n)
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "state")
        try:
            token = stack.tokens["workflow_executor"]
            host, port = stack.bucket_url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            for i in range(50):  # warm-up
                _post(
                    conn,
                    "/core/write-event",
                    token,
                    {"requester_id": "workflow_executor", "event_data": _event_data(-i)},
                )
            latencies = []
            started = time.perf_counter()
            for i in range(n):
                t0 = time.perf_counter()
                status, _ = _post(
                    conn,
                    "/core/write-event",
                    token,
                    {"requester_id": "workflow_executor", "event_data": _event_data(i)},
                )
                latencies.append(time.perf_counter() - t0)
                assert status == 200, status
            single = n / (time.perf_counter() - started)
            batches = max(1, n // 100)
            started = time.perf_counter()
            for b in range(batches):
                events = [{"event_data": _event_data(n + b * 100 + j)} for j in range(100)]
                status, raw = _post(
                    conn, "/core/write-events", token, {"requester_id": "workflow_executor", "events": events}
                )
                assert status == 201, raw[:200]
            batch = batches * 100 / (time.perf_counter() - started)
        finally:
            stack.stop()

    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"baseline moto conditional put_item : {baseline:8.0f} ops/s (in-process)")
    print(
        f"single ingest over HTTP             : {single:8.0f} events/s  ratio {single / baseline:.2f}"
        f"  p50 {p50:.2f} ms  p99 {p99:.2f} ms  (n={n})"
    )
    print(f"batch ingest over HTTP (100/request): {batch:8.0f} events/s  ratio {batch / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Executor figures on the live local stack (`bhiv up` subprocess).

end-to-end  execute request sent -> its event in the Bucket -> the user's Karma updated: p50/p99
throughput  sequential execute requests (task action) per second, one kept-alive connection;
            baseline in the same run: Bucket single-event ingest over HTTP (the one downstream
            write every execution needs), so the ratio shows what running the workflow costs

Usage: .venv/bin/python bench/bench_executor.py [--workflows 200]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from tests.e2e.stack import start_stack  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)] * 1000


def main() -> int:
    # measures the services, not the per-requester limiter (src/bhiv/requesters.yaml); the stack inherits it
    os.environ["BHIV_RATE_LIMITS"] = "off"
    parser = argparse.ArgumentParser()
    parser.add_argument("--workflows", type=int, default=200)
    args = parser.parse_args()
    n = args.workflows
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "state")
        try:
            executor, bucket, reader = requests.Session(), requests.Session(), requests.Session()
            executor.headers.update(stack.auth("bhiv_core"))
            bucket.headers.update(stack.auth("workflow_executor"))
            reader.headers.update(stack.auth("bhiv_core"))

            def execute(trace: str, user: str) -> requests.Response:
                return executor.post(
                    f"{stack.executor_url}/api/workflow/execute",
                    json={
                        "trace_id": trace,
                        "decision": "workflow",
                        "data": {
                            "workflow_type": "workflow",
                            "payload": {"action_type": "task", "user_id": user, "title": f"bench {trace}"},
                        },
                    },
                    timeout=10,
                )

            for i in range(20):  # warm-up
                execute(f"warm-{i}-{uuid.uuid4().hex[:6]}", "warm")
            end_to_end, to_bucket = [], []
            for i in range(n):
                trace, user = f"e2e-{i}-{uuid.uuid4().hex[:6]}", f"bench-{uuid.uuid4().hex[:10]}"
                started = time.perf_counter()
                response = execute(trace, user)
                assert response.status_code == 200 and response.json()["delivery_state"] == "delivered"
                while (
                    reader.get(f"{stack.bucket_url}/core/events", params={"trace_id": trace}, timeout=5).json()["count"]
                    != 1
                ):
                    time.sleep(0.001)
                to_bucket.append(time.perf_counter() - started)
                while reader.get(f"{stack.karma_url}/api/v1/karma/{user}", timeout=5).status_code != 200:
                    time.sleep(0.002)
                end_to_end.append(time.perf_counter() - started)

            started = time.perf_counter()
            for i in range(n):
                assert execute(f"tp-{i}-{uuid.uuid4().hex[:6]}", "tp").status_code == 200
            throughput = n / (time.perf_counter() - started)
            started = time.perf_counter()
            for i in range(n):
                response = bucket.post(
                    f"{stack.bucket_url}/core/write-event",
                    json={
                        "requester_id": "workflow_executor",
                        "event_data": {"event_type": "bench", "trace_id": f"b-{i}"},
                    },
                    timeout=5,
                )
                assert response.status_code == 200
            baseline = n / (time.perf_counter() - started)
        finally:
            stack.stop()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"execute -> event in Bucket          : p50 {_pct(to_bucket, 0.5):.0f} ms  p99 {_pct(to_bucket, 0.99):.0f} ms"
    )
    print(
        f"execute -> Bucket -> Karma updated  : p50 {statistics.median(end_to_end) * 1000:.0f} ms  "
        f"p99 {_pct(end_to_end, 0.99):.0f} ms  (n={n})"
    )
    print(f"baseline Bucket ingest over HTTP    : {baseline:6.0f} req/s")
    print(f"execute throughput (task, delivered): {throughput:6.0f} req/s  ratio {throughput / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

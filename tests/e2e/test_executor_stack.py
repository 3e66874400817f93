"""The Executor on the live local stack: the diagnostic flow, an outage of the Bucket, a rejection."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.proxy import SwitchableProxy
from tests.e2e.stack import BHIV, RunningStack, free_port, poll_until, start_stack
from tests.fake_bucket import FakeBucket

pytestmark = pytest.mark.e2e


def _execute(stack: RunningStack, trace_id: str, user_id: str, title: str = "task") -> requests.Response:
    return requests.post(
        f"{stack.executor_url}/api/workflow/execute",
        headers=stack.auth("bhiv_core"),
        json={
            "trace_id": trace_id,
            "decision": "workflow",
            "data": {
                "workflow_type": "workflow",
                "payload": {"trace_id": trace_id, "action_type": "task", "user_id": user_id, "title": title},
            },
        },
        timeout=30,
    )


def _events_for(stack: RunningStack, trace_id: str) -> list[dict[str, Any]]:
    response = requests.get(
        f"{stack.bucket_url}/core/events", params={"trace_id": trace_id}, headers=stack.auth("bhiv_core"), timeout=5
    )
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json()["events"]
    return events


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("executor") / "state")
    yield running
    running.stop()


def test_bhiv_diagnose_follows_a_workflow_through_every_hop(stack: RunningStack) -> None:
    result = subprocess.run(
        [str(BHIV), "diagnose", "--state-dir", str(stack.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and '"event_type": "workflow_execution"' in result.stdout


def test_execute_is_idempotent_by_trace_id(stack: RunningStack) -> None:
    trace = f"idem-{uuid.uuid4().hex[:8]}"
    first = _execute(stack, trace, "u-idem")
    assert first.status_code == 200 and first.json()["status"] == "success"
    again = _execute(stack, trace, "u-idem")
    assert again.status_code == 200 and again.headers.get("X-Idempotent-Replay") == "true"
    assert again.json()["execution_result"] == first.json()["execution_result"]
    assert _execute(stack, trace, "u-idem", title="different").status_code == 409
    poll_until(lambda: _events_for(stack, trace), lambda events: len(events) == 1, timeout=5)
    skipped = requests.post(
        f"{stack.executor_url}/api/workflow/execute",
        headers=stack.auth("bhiv_core"),
        json={"trace_id": f"s-{trace}", "decision": "respond"},
        timeout=5,
    )
    assert skipped.json()["status"] == "skipped" and not _events_for(stack, f"s-{trace}")


def test_bucket_down_while_50_workflows_run_then_back_all_arrive_once(tmp_path: Path) -> None:
    proxy_port = free_port()
    bucket_port = free_port()
    proxy = SwitchableProxy(bucket_port, proxy_port)
    stack = start_stack(tmp_path / "outage", "--executor-bucket-url", proxy.url, bucket_port=bucket_port)
    try:
        traces = [f"outage-{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda t: _execute(stack, t, "u-outage"), traces))
        assert all(r.status_code == 200 for r in responses)
        assert {r.json()["delivery_state"] for r in responses} == {"queued"}
        proxy.up()
        for trace in traces:
            poll_until(lambda t=trace: _events_for(stack, t), lambda events: len(events) >= 1, timeout=60)
        assert all(len(_events_for(stack, trace)) == 1 for trace in traces)
        health = requests.get(f"{stack.executor_url}/healthz", timeout=5).json()
        poll_until(
            lambda: requests.get(f"{stack.executor_url}/healthz", timeout=5).json()["outbox"]["queued"],
            lambda n: n == 0,
            timeout=10,
        )
        assert health["service"] == "workflow-executor"
    finally:
        proxy.down()
        stack.stop()


def test_a_bucket_answering_403_is_reported_as_a_rejection(tmp_path: Path) -> None:
    fake = FakeBucket()
    fake.mode = "reject"
    stack = start_stack(tmp_path / "reject", "--executor-bucket-url", fake.url)
    try:
        trace = f"rej-{uuid.uuid4().hex[:6]}"
        response = _execute(stack, trace, "u-rej")
        assert response.status_code == 200
        assert response.json()["delivery_state"] == "rejected"
        assert response.json()["delivery"]["status"] == 403
        log = (stack.state_dir / "logs" / "executor.log").read_text(encoding="utf-8")
        assert "Bucket rejected event" in log and trace in log
        assert "Workflow event logged to Bucket" not in log.split(trace, 1)[1]
    finally:
        stack.stop()
        fake.close()


def test_logs_of_one_trace_span_the_three_services_and_status_reports(stack: RunningStack) -> None:
    trace = f"logs-{uuid.uuid4().hex[:8]}"
    user = f"u-{trace}"
    assert _execute(stack, trace, user).status_code == 200
    poll_until(
        lambda: (
            requests.get(
                f"{stack.karma_url}/api/v1/karma/{user}", headers=stack.auth("bhiv_reader"), timeout=5
            ).status_code
        ),
        lambda s: s == 200,
        timeout=5,
    )
    result = poll_until(
        lambda: subprocess.run(
            [str(BHIV), "logs", trace, "--state-dir", str(stack.state_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ),
        lambda r: "Karma applied event" in r.stdout,
        timeout=5,
    )
    lines = result.stdout.splitlines()
    services = {line.split()[1] for line in lines}
    assert {"executor", "bucket", "karma"} <= services
    messages = [
        line
        for line in lines
        if "Sending workflow event to Bucket" in line
        or "Workflow event logged to Bucket" in line
        or "Received event from workflow_executor" in line
    ]
    assert len(messages) == 3
    assert lines == sorted(lines, key=lambda line: line.split()[0])  # time order
    status = subprocess.run(
        [str(BHIV), "status", "--state-dir", str(stack.state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    for fragment in ("bucket    up", "executor  up", "karma     up", "outbox depth", "DLQ depth", "lag:"):
        assert fragment in status.stdout

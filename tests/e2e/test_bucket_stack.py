"""The Bucket on the live local stack, over HTTP, as clients use it."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.stack import RunningStack, poll_until, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("stack") / "state")
    yield running
    running.stop()


def test_credentials_file_has_a_private_token_per_requester(stack: RunningStack) -> None:
    path = stack.state_dir / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert {"workflow_executor", "bhiv_core", "unified_action_orchestrator", "bhiv_reader"} <= set(stack.tokens)
    assert len(set(stack.tokens.values())) == len(stack.tokens)
    assert str(path) in stack.output()


def test_write_read_back_and_count_from_the_stream(stack: RunningStack) -> None:
    url = stack.bucket_url
    before = requests.get(f"{url}/health", timeout=5).json()["core_integration"]["events_received"]
    trace = f"e2e-{os.getpid()}"
    write = requests.post(
        f"{url}/core/write-event",
        headers=stack.auth("workflow_executor"),
        json={
            "requester_id": "workflow_executor",
            "event_data": {
                "event_type": "workflow_execution",
                "trace_id": trace,
                "user_id": "u-e2e",
                "status": "success",
                "action_type": "task",
                "execution_result": {"ok": True},
                "duration_ms": 12,
            },
        },
        timeout=5,
    )
    assert write.status_code == 201, write.text
    event_id = write.json()["event_id"]
    page = requests.get(
        f"{url}/core/events", params={"trace_id": trace}, headers=stack.auth("bhiv_reader"), timeout=5
    ).json()
    assert [e["event_id"] for e in page["events"]] == [event_id]
    event = page["events"][0]
    assert event["requester_id"] == "workflow_executor" and event["event_type"] == "workflow_execution"
    one = requests.get(f"{url}/core/events/{event_id}", headers=stack.auth("bhiv_reader"), timeout=5)
    assert one.status_code == 200 and one.json()["event"]["trace_id"] == trace
    poll_until(
        lambda: requests.get(f"{url}/health", timeout=5).json()["core_integration"]["events_received"],
        lambda n: n == before + 1,
        timeout=5,
    )
    context = requests.get(
        f"{url}/core/read-context", params={"agent_id": "u-e2e"}, headers=stack.auth("bhiv_reader"), timeout=5
    ).json()
    assert context["recent_event_types"] == ["workflow_execution"]


def test_requests_without_a_valid_token_are_refused_and_store_nothing(stack: RunningStack) -> None:
    url = stack.bucket_url
    body = {"requester_id": "workflow_executor", "event_data": {"event_type": "test", "trace_id": "refused"}}
    assert requests.post(f"{url}/core/write-event", json=body, timeout=5).status_code == 401
    wrong = requests.post(f"{url}/core/write-event", json=body, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["success"] is False
    reader = requests.post(f"{url}/core/write-event", json=body, headers=stack.auth("bhiv_reader"), timeout=5)
    assert reader.status_code == 403
    other = requests.post(f"{url}/core/write-event", json=body, headers=stack.auth("bhiv_core"), timeout=5)
    assert other.status_code == 403
    found = requests.get(
        f"{url}/core/events", params={"trace_id": "refused"}, headers=stack.auth("bhiv_core"), timeout=5
    ).json()
    assert found["count"] == 0


def test_no_auth_serves_legacy_clients_and_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    legacy = start_stack(tmp_path / "legacy", "--no-auth")
    try:
        assert "WARNING" in legacy.output() and "--no-auth" in legacy.output()
        response = requests.post(
            f"{legacy.bucket_url}/core/write-event",
            json={
                "requester_id": "workflow_executor",
                "event_data": {"event_type": "test", "message": "manual test"},
            },
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert response.status_code == 201
        assert response.json()["success"] is True and response.json()["message"] == "Event received"
        listing = requests.get(f"{legacy.bucket_url}/core/events", params={"limit": 100}, timeout=5).json()
        assert listing["events"][0]["event_type"] == "test"
        assert {"count", "showing"} <= set(listing)
        unknown = requests.post(
            f"{legacy.bucket_url}/core/write-event",
            json={"requester_id": "mallory", "event_data": {"event_type": "test"}},
            timeout=5,
        )
        assert unknown.status_code == 403
    finally:
        code = legacy.stop(signal.SIGINT)
    assert code == 0, legacy.output()
    assert "Stopped." in legacy.output()
    assert not (tmp_path / "legacy" / "stack.json").exists()


def test_events_tail_follows_new_events_with_filters(stack: RunningStack) -> None:
    import subprocess
    import time

    from tests.e2e.stack import BHIV

    trace = f"tail-{os.getpid()}-{time.time_ns()}"
    tail = subprocess.Popen(
        [str(BHIV), "events", "tail", "--state-dir", str(stack.state_dir), "--trace-id", trace, "--interval", "0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        response = requests.post(
            f"{stack.bucket_url}/core/write-event",
            headers=stack.auth("workflow_executor"),
            json={"requester_id": "workflow_executor", "event_data": {"event_type": "tailed", "trace_id": trace}},
            timeout=5,
        )
        assert response.status_code == 201
        assert tail.stdout is not None
        line = tail.stdout.readline()  # blocks until tail prints; the test timeout bounds it
        assert trace in line and "tailed" in line and response.json()["event_id"] in line
    finally:
        tail.terminate()
        tail.wait(timeout=5)

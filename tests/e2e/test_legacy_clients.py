"""Clients written for the original system, unchanged, against `bhiv up --no-auth`.

Each request is shaped as ../shared/seed/WORKFLOW_BUCKET_FIX.md and the original diagnostic
script send them: no tokens, the original paths and bodies, polling for their own trace id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.stack import RunningStack, poll_until, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("legacy") / "state", "--no-auth")
    yield running
    running.stop()


def test_check_4_manual_write_answers_event_received(legacy: RunningStack) -> None:
    response = requests.post(
        f"{legacy.bucket_url}/core/write-event",
        headers={"Content-Type": "application/json"},
        json={"requester_id": "workflow_executor", "event_data": {"event_type": "test", "message": "manual test"}},
        timeout=5,
    )
    assert response.status_code in (200, 201)
    body = response.json()
    assert body["success"] is True and body["message"] == "Event received"


def _workflow_events(legacy: RunningStack, limit: int | None = None) -> list[dict[str, object]]:
    url = f"{legacy.bucket_url}/core/events" + (f"?limit={limit}" if limit else "")
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    return [e for e in response.json()["events"] if e["event_type"] == "workflow_execution"]


def test_the_original_diagnostic_flow_passes(legacy: RunningStack) -> None:
    # Step 1: services
    executor_health = requests.get(f"{legacy.executor_url}/healthz", timeout=5)
    assert executor_health.status_code == 200 and executor_health.json()["status"] == "ok"
    assert executor_health.json()["service"] == "workflow-executor"
    assert requests.get(f"{legacy.bucket_url}/health", timeout=5).status_code == 200
    # Step 2: current count
    before = len(_workflow_events(legacy))
    # Step 3: execute
    trace_id = f"diagnostic_{int(time.time() * 1000)}"
    user_id = f"legacy_user_{trace_id[-6:]}"
    response = requests.post(
        f"{legacy.executor_url}/api/workflow/execute",
        json={
            "trace_id": trace_id,
            "decision": "workflow",
            "data": {
                "workflow_type": "workflow",
                "payload": {
                    "trace_id": trace_id,
                    "action_type": "task",
                    "user_id": user_id,
                    "title": "Diagnostic task",
                    "description": "legacy client",
                },
            },
        },
        timeout=30,
    )
    assert response.status_code == 200
    result = response.json()
    assert result["status"] == "success" and result["trace_id"] == trace_id and "execution_result" in result
    # Step 4: poll until the count grows, then find the event by trace id
    poll_until(lambda: len(_workflow_events(legacy)), lambda n: n > before, timeout=5)
    mine = [e for e in _workflow_events(legacy, limit=100) if e["trace_id"] == trace_id]
    assert len(mine) == 1
    event = mine[0]
    assert event["requester_id"] == "workflow_executor" and event["timestamp"]
    # the stats a user checks
    # (aggregates come from the events stream: they trail a write by one poll, ~50 ms)
    stats = poll_until(
        lambda: requests.get(f"{legacy.bucket_url}/core/stats", timeout=5).json(),
        lambda body: body["stats"]["events_received"] > 0,
        timeout=2,
    )
    assert stats["stats"]["events_received"] > 0
    # and Karma learned from it
    karma = poll_until(
        lambda: requests.get(f"{legacy.karma_url}/api/v1/karma/{user_id}", timeout=5),
        lambda r: r.status_code == 200,
        timeout=5,
    )
    assert karma.json()["action_stats"] == {"workflow_success": 1}
    assert requests.get(f"{legacy.karma_url}/health", timeout=5).json()["status"] == "healthy"


def test_original_direct_karma_event_shape(legacy: RunningStack) -> None:
    response = requests.post(
        f"{legacy.karma_url}/v1/event/",
        json={
            "type": "life_event",
            "data": {"user_id": "legacy_direct", "action": "solving_doubts", "role": "learner"},
        },
        timeout=5,
    )
    assert response.status_code == 202
    bad = requests.post(
        f"{legacy.karma_url}/v1/event/",
        json={"type": "life_event", "data": {"user_id": "legacy_direct", "action": "nap", "role": "learner"}},
        timeout=5,
    )
    assert bad.status_code == 422


def test_legacy_mode_is_loud_and_loopback_only(legacy: RunningStack, tmp_path: Path) -> None:
    assert "WARNING" in legacy.output() and "127.0.0.1" in legacy.output()
    assert legacy.bucket_url.startswith("http://127.0.0.1:")

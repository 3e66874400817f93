"""Karma on the live local stack: an event written to the Bucket changes Karma within 2 s."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.stack import RunningStack, poll_until, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("karma") / "state")
    yield running
    running.stop()


def _karma(stack: RunningStack, user_id: str) -> requests.Response:
    return requests.get(f"{stack.karma_url}/api/v1/karma/{user_id}", headers=stack.auth("bhiv_reader"), timeout=5)


def _qtable(stack: RunningStack) -> dict[str, object]:
    response = requests.get(f"{stack.karma_url}/api/v1/q-table", headers=stack.auth("bhiv_reader"), timeout=5)
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


def test_bucket_event_reaches_user_karma_and_q_table(stack: RunningStack) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    assert _karma(stack, user).status_code == 404
    updates_before = _qtable(stack)["updates"]
    write = requests.post(
        f"{stack.bucket_url}/core/write-event",
        headers=stack.auth("workflow_executor"),
        json={
            "requester_id": "workflow_executor",
            "event_data": {
                "event_type": "workflow_execution",
                "trace_id": f"t-{user}",
                "user_id": user,
                "action_type": "task",
                "status": "success",
                "execution_result": {},
                "duration_ms": 3,
            },
        },
        timeout=5,
    )
    assert write.status_code == 200
    karma = poll_until(lambda: _karma(stack, user), lambda r: r.status_code == 200, timeout=2).json()
    assert karma["role"] == "learner"
    assert karma["balances"] == {"DharmaPoints": 2, "SevaPoints": 0, "PunyaTokens": 0}
    assert karma["action_stats"] == {"workflow_success": 1}
    qtable = poll_until(lambda: _qtable(stack), lambda q: q["updates"] == updates_before + 1, timeout=2)  # type: ignore[operator]
    states, actions = qtable["states"], qtable["actions"]
    assert qtable["values"][states.index("learner")][actions.index("workflow_success")] > 0  # type: ignore[index, union-attr]
    history = requests.get(
        f"{stack.karma_url}/api/v1/karma/{user}/history", headers=stack.auth("bhiv_reader"), timeout=5
    ).json()
    assert [e["event_id"] for e in history["events"]] == [write.json()["event_id"]]


def test_direct_event_is_logged_in_the_bucket_and_applied_from_the_stream(stack: RunningStack) -> None:
    user = f"direct-{uuid.uuid4().hex[:8]}"
    body = {"type": "life_event", "data": {"user_id": user, "action": "selfless_service", "role": "learner"}}
    response = requests.post(f"{stack.karma_url}/v1/event/", json=body, headers=stack.auth("bhiv_core"), timeout=5)
    assert response.status_code == 200, response.text
    event_id = response.json()["event_id"]
    logged = requests.get(f"{stack.bucket_url}/core/events/{event_id}", headers=stack.auth("bhiv_core"), timeout=5)
    assert logged.status_code == 200 and logged.json()["event"]["requester_id"] == "karma"
    karma = poll_until(lambda: _karma(stack, user), lambda r: r.status_code == 200, timeout=2).json()
    assert karma["balances"]["PunyaTokens"] == 25 and karma["role"] == "volunteer"  # merit 75


def test_unknown_action_or_role_is_422_and_records_nothing(stack: RunningStack) -> None:
    for data in (
        {"user_id": "x", "action": "teleport", "role": "learner"},
        {"user_id": "x", "action": "cheat", "role": "wizard"},
    ):
        response = requests.post(
            f"{stack.karma_url}/v1/event/",
            json={"type": "life_event", "data": data},
            headers=stack.auth("bhiv_core"),
            timeout=5,
        )
        assert response.status_code == 422
        assert response.json()["error"]["field"] in ("data.action", "data.role")
    assert _karma(stack, "x").status_code == 404


def test_karma_needs_a_token_with_the_right_scope(stack: RunningStack) -> None:
    assert requests.get(f"{stack.karma_url}/api/v1/q-table", timeout=5).status_code == 401
    body = {"type": "life_event", "data": {"user_id": "y", "action": "cheat", "role": "learner"}}
    response = requests.post(f"{stack.karma_url}/v1/event/", json=body, headers=stack.auth("bhiv_reader"), timeout=5)
    assert response.status_code == 403
    assert requests.get(f"{stack.karma_url}/health", timeout=5).json()["status"] == "healthy"

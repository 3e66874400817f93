"""The original system's clients, unchanged, against a live stack with auth off and with auth on.

Each test sends one client's exact request from ../shared/compat/ORIGINAL_API.md ("How old clients
judge success" and the writers' table) and asserts exactly what that client checks; with auth on
the client also sends the token of the requester it is, and nothing else changes. The original's
known bugs stay fixed (a refused write is never 200; event_data never overwrites server fields).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from tests.compat.conftest import OldClients
from tests.e2e.stack import poll_until

pytestmark = pytest.mark.e2e
TIMEOUT = 10


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _write(old: OldClients, requester: str, event_data: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{old.stack.bucket_url}/core/write-event",
        json={"requester_id": requester, "event_data": event_data},
        headers=old.headers(requester),
        timeout=TIMEOUT,
    )


def _events(old: OldClients, limit: int | None = None) -> dict[str, Any]:
    params = {"limit": limit} if limit else {}
    response = requests.get(
        f"{old.stack.bucket_url}/core/events", params=params, headers=old.headers("bhiv_reader"), timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _karma(old: OldClients, user_id: str) -> requests.Response:
    return requests.get(
        f"{old.stack.karma_url}/api/v1/karma/{user_id}", headers=old.headers("bhiv_reader"), timeout=TIMEOUT
    )


def _applied(old: OldClients, user_id: str, actions: dict[str, int]) -> dict[str, Any]:
    """The user's karma once the stream has applied `actions` (polled with a deadline)."""
    response = poll_until(
        lambda: _karma(old, user_id),
        lambda r: r.status_code == 200 and r.json()["action_stats"] == actions,
        timeout=15,
    )
    body: dict[str, Any] = response.json()
    return body


# --- writers: every shape in the writers' table is stored, and the writer sees 200 ---------------


def test_executor_bucket_client_write_counts_as_delivered(old: OldClients) -> None:
    # the Executor's client: status == 200 and success == true
    trace_id, user_id = _id("compat_exec"), _id("compat_user")
    event = {
        "event_type": "workflow_execution",
        "trace_id": trace_id,
        "action_type": "task",
        "status": "success",
        "execution_result": {"success": True, "task_id": "t-1"},
        "metadata": {"trace_id": trace_id, "action_type": "task", "user_id": user_id, "title": "Call Asha"},
        "timestamp": "2026-02-02T10:00:00Z",
    }
    response = _write(old, "workflow_executor", event)
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    # Karma finds the user where the original Executor put it
    assert _applied(old, user_id, {"workflow_success": 1})["role"] == "learner"


def test_orchestrator_write_counts_as_stored(old: OldClients) -> None:
    event = {
        "event_type": "orchestration",
        "timestamp": "2026-02-02T10:00:00Z",
        "action_id": _id("action"),
        "action_type": "send_reminder",
        "state": "completed",
        "payload": {"user_id": "u-1"},
        "error": None,
    }
    response = _write(old, "unified_action_orchestrator", event)
    assert response.status_code == 200, response.text


def test_core_agent_result_and_rl_outcome_are_stored_and_applied(old: OldClients) -> None:
    # Core writes fire-and-forget: a refused event would be lost without anyone noticing
    agent_id, user_id = _id("compat_agent"), _id("compat_core_user")
    agent_result = {
        "event_type": "agent_result",
        "task_id": _id("task"),
        "agent_id": agent_id,
        "result": {"success": True},
    }
    rl_outcome = {"event_type": "rl_outcome", "agent_id": agent_id, "reward": -0.5, "metadata": {"user_id": user_id}}
    for event in (agent_result, {**agent_result, "metadata": {"user_id": user_id}}, rl_outcome):
        response = _write(old, "bhiv_core", event)
        assert response.status_code == 200, response.text
    # the first names no user (an agent is not one): stored, counted as ignored; the others apply
    assert _applied(old, user_id, {"agent_success": 1, "rl_negative": 1})["action_stats"]
    listed = requests.get(
        f"{old.stack.bucket_url}/core/events",
        params={"agent_id": agent_id},
        headers=old.headers("bhiv_reader"),
        timeout=TIMEOUT,
    ).json()["events"]
    assert len(listed) == 3


def test_a_refused_write_is_never_200(old: OldClients) -> None:
    # the original answered 200 success:false; the Executor's client then counted it delivered
    response = requests.post(
        f"{old.stack.bucket_url}/core/write-event",
        json={"requester_id": "somebody_unknown", "event_data": {"event_type": "test"}},
        headers=old.headers("bhiv_core"),
        timeout=TIMEOUT,
    )
    assert response.status_code == 403
    assert response.json()["success"] is False


# --- Core's read-context -----------------------------------------------------------------------


def test_core_read_context_reads_a_context_that_counts_the_event_just_written(old: OldClients) -> None:
    agent_id = _id("compat_ctx")
    url = f"{old.stack.bucket_url}/core/read-context"
    headers = old.headers("bhiv_core")
    params = {"agent_id": agent_id, "requester_id": "bhiv_core"}
    empty = requests.get(url, params=params, headers=headers, timeout=TIMEOUT)
    assert empty.status_code == 200 and empty.json()["context"] is None
    for kind in ("agent_result", "agent_note"):
        assert _write(old, "bhiv_core", {"event_type": kind, "agent_id": agent_id, "task_id": "t"}).status_code == 200
    context = requests.get(url, params=params, headers=headers, timeout=TIMEOUT).json()["context"]
    assert context["agent_id"] == agent_id
    assert context["event_count"] == 2  # straight after the write, not once the stats catch up
    assert context["last_updated"]
    assert context["recent_event_types"] == ["agent_note", "agent_result"]
    stranger = requests.get(url, params={**params, "requester_id": "workflow_executor"}, headers=headers, timeout=10)
    assert stranger.status_code == 403


# --- scripts: /core/events and /core/stats -------------------------------------------------------


def test_scripts_take_the_last_event_as_the_newest_and_count_grows_by_one(old: OldClients) -> None:
    before = _events(old, limit=5)
    trace_id = _id("compat_script")
    event = {"event_type": "test", "trace_id": trace_id, "action_type": "task", "status": "ok", "agent_id": "a-1"}
    assert _write(old, "unified_action_orchestrator", event).status_code == 200
    after = _events(old, limit=5)
    assert after["count"] == before["count"] + 1
    assert after["showing"] == len(after["events"]) == min(5, after["count"])
    newest = after["events"][-1]
    assert newest["trace_id"] == trace_id
    assert (newest["action_type"], newest["status"], newest["agent_id"]) == ("task", "ok", "a-1")
    assert newest["requester_id"] == "unified_action_orchestrator" and newest["timestamp"]
    assert [e["received_at"] for e in after["events"]] == sorted(e["received_at"] for e in after["events"])


def test_server_fields_win_over_event_data(old: OldClients) -> None:
    trace_id = _id("compat_owned")
    event = {"event_type": "test", "trace_id": trace_id, "timestamp": "1999-01-01T00:00:00Z", "requester_id": "x"}
    assert _write(old, "bhiv_core", event).status_code == 200
    newest = _events(old, limit=1)["events"][-1]
    assert newest["trace_id"] == trace_id
    assert newest["timestamp"] != "1999-01-01T00:00:00Z" and newest["requester_id"] == "bhiv_core"


def test_scripts_read_the_original_stats_fields(old: OldClients) -> None:
    assert _write(old, "bhiv_core", {"event_type": "test", "agent_id": _id("compat_stats")}).status_code == 200
    response = requests.get(f"{old.stack.bucket_url}/core/stats", headers=old.headers("bhiv_reader"), timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["integration_status"] == "active"
    stats = body["stats"]
    assert isinstance(stats["total_events"], int) and isinstance(stats["agents_with_context"], int)
    assert isinstance(stats["tracked_agents"], list) and len(stats["tracked_agents"]) <= 100
    poll_until(
        lambda: requests.get(f"{old.stack.bucket_url}/core/stats", headers=old.headers("bhiv_reader"), timeout=10),
        lambda r: r.json()["stats"]["agents_with_context"] > 0 and r.json()["stats"]["tracked_agents"],
    )


def test_health_endpoints_answer_as_the_originals(old: OldClients) -> None:
    bucket = requests.get(f"{old.stack.bucket_url}/health", timeout=TIMEOUT)
    assert bucket.status_code == 200 and isinstance(bucket.json()["core_integration"]["events_received"], int)
    karma = requests.get(f"{old.stack.karma_url}/health", timeout=TIMEOUT)
    assert karma.status_code == 200 and karma.json()["status"] == "healthy"
    executor = requests.get(f"{old.stack.executor_url}/healthz", timeout=TIMEOUT)
    assert executor.status_code == 200
    assert (executor.json()["status"], executor.json()["service"]) == ("ok", "workflow-executor")


# --- Karma: the forwarder's and the orchestrator's POST /v1/event/, the profile ----------------------


@pytest.mark.parametrize("path", ["/v1/event/", "/v1/event"])
def test_forwarder_and_orchestrator_direct_events_get_200_and_apply(old: OldClients, path: str) -> None:
    user_id = _id("compat_direct")
    body = {
        "type": "life_event",
        "data": {
            "user_id": user_id,
            "action": "helping_peers",
            "role": "learner",
            "note": "forwarded",
            "context": json.dumps({"event_type": "workflow_execution", "trace_id": "t-1"}),  # a string
        },
        "timestamp": "2026-02-02T10:00:00Z",
        "source": "bhiv_bucket",
    }
    response = requests.post(f"{old.stack.karma_url}{path}", json=body, headers=old.headers("bhiv_core"), timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and answer["event_type"] == "life_event"
    assert {"message", "data", "timestamp", "routing_info"} <= set(answer)
    profile = _applied(old, user_id, {"helping_peers": 1})
    for name in ("merit_score", "paap_score", "net_karma", "weighted_karma_score"):
        assert isinstance(profile[name], int | float), name
    assert isinstance(profile["corrective_guidance"], list) and isinstance(profile["module_scores"], dict)
    assert isinstance(profile["balances"], dict) and profile["last_updated"]


def test_direct_event_errors_keep_the_original_codes(old: OldClients) -> None:
    url, headers = f"{old.stack.karma_url}/v1/event/", old.headers("bhiv_core")
    missing = requests.post(url, json={"type": "life_event", "data": {"user_id": "u"}}, headers=headers, timeout=10)
    assert missing.status_code == 400
    unknown = requests.post(url, json={"type": "atonement", "data": {}}, headers=headers, timeout=10)
    assert unknown.status_code == 400
    assert _karma(old, _id("nobody")).status_code == 404  # no made-up profile


def test_a_cheat_shows_as_paap(old: OldClients) -> None:
    user_id = _id("compat_cheat")
    body = {"type": "life_event", "data": {"user_id": user_id, "action": "cheat", "role": "learner"}}
    response = requests.post(
        f"{old.stack.karma_url}/v1/event/", json=body, headers=old.headers("bhiv_core"), timeout=10
    )
    assert response.status_code == 200
    profile = _applied(old, user_id, {"cheat": 1})
    assert profile["paap_score"] == 2 and profile["net_karma"] == profile["merit_score"] == -2
    assert profile["weighted_karma_score"] == -4
    assert any("cheat" in line for line in profile["corrective_guidance"])


# --- Executor clients: raise_for_status(), then status and execution_result ----------------------


def _execute(old: OldClients, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    trace_id = _id("compat_wf")
    response = requests.post(
        f"{old.stack.executor_url}/api/workflow/execute",
        json={
            "trace_id": trace_id,
            "decision": "workflow",
            "data": {"workflow_type": "workflow", "payload": {"trace_id": trace_id, **payload}},
        },
        headers=old.headers("bhiv_core"),
        timeout=30,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return trace_id, body


def _bucket_event_of(old: OldClients, trace_id: str) -> dict[str, Any]:
    events = poll_until(
        lambda: requests.get(
            f"{old.stack.bucket_url}/core/events",
            params={"trace_id": trace_id},
            headers=old.headers("bhiv_reader"),
            timeout=TIMEOUT,
        ).json()["events"],
        lambda found: len(found) == 1,
    )
    event: dict[str, Any] = events[0]
    return event


def test_executor_clients_read_success(old: OldClients) -> None:
    user_id = _id("compat_wf_user")
    trace_id, body = _execute(old, {"action_type": "task", "user_id": user_id, "title": "Diagnostic task"})
    assert (body["trace_id"], body["status"]) == (trace_id, "success")
    assert body["execution_result"]["success"] is True
    assert _bucket_event_of(old, trace_id)["status"] == "success"


@pytest.mark.parametrize(
    ("payload", "error_code"),
    [
        ({"action_type": "meeting"}, "unsupported_action_type"),
        ({"title": "no action type"}, "missing_action_type"),
        ({"action_type": "task"}, "missing_task_title"),
        ({"action_type": "email", "recipient": "a@example.com", "body": "b"}, "missing_subject"),
        ({"action_type": "whatsapp", "recipient": "+919876543210"}, "missing_message"),
        ({"action_type": "ai"}, "missing_prompt"),
    ],
)
def test_executor_clients_read_a_failure_and_the_bucket_hears_of_it(
    old: OldClients, payload: dict[str, Any], error_code: str
) -> None:
    user_id = _id("compat_wf_fail")
    trace_id, body = _execute(old, {**payload, "user_id": user_id})
    assert body["status"] == "failed"
    result = body["execution_result"]
    assert result["success"] is False and result["error_code"] == error_code and result["message"]
    event = _bucket_event_of(old, trace_id)  # "no silent failures"
    assert (event["event_type"], event["status"]) == ("workflow_execution", "failed")
    assert _applied(old, user_id, {"workflow_failure": 1})


def test_malformed_execute_requests_stay_4xx(old: OldClients) -> None:
    url, headers = f"{old.stack.executor_url}/api/workflow/execute", old.headers("bhiv_core")
    no_trace = requests.post(url, json={"decision": "workflow"}, headers=headers, timeout=10)
    bad_decision = requests.post(url, json={"trace_id": _id("t"), "decision": "dance"}, headers=headers, timeout=10)
    not_json = requests.post(url, data=b"{not json", headers=headers, timeout=10)
    assert (no_trace.status_code, bad_decision.status_code) == (422, 422)
    # a body that is not JSON: 400, or 415 where auth is off and the request is not labelled JSON
    # (cross-site writes are refused, docs/security.md)
    assert not_json.status_code in ((400, 415) if not old.auth else (400,)), not_json.text


# --- unknown paths and methods -------------------------------------------------------------------


@pytest.mark.parametrize("service", ["bucket_url", "karma_url", "executor_url"])
def test_unknown_paths_are_404_and_never_echo_the_token(old: OldClients, service: str) -> None:
    base = getattr(old.stack, service)
    token = "bhiv_" + "s3cret" * 6
    response = requests.get(f"{base}/core/nothing-here", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 404
    assert response.json()["success"] is False and response.json()["error"]["code"] == "not_found"
    assert token not in response.text and "s3cret" not in response.text


@pytest.mark.parametrize(
    ("service", "path", "allow"), [("bucket_url", "/core/events", "GET"), ("karma_url", "/v1/event", "POST")]
)
def test_wrong_methods_are_405_with_allow(old: OldClients, service: str, path: str, allow: str) -> None:
    response = requests.delete(f"{getattr(old.stack, service)}{path}", headers=old.headers("bhiv_core"), timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("service", "path"),
    [("bucket_url", "/core/stats"), ("karma_url", "/health"), ("executor_url", "/healthz"), ("bucket_url", "/health")],
)
def test_get_routes_ignore_the_content_type(old: OldClients, service: str, path: str) -> None:
    headers = {**old.headers("bhiv_reader"), "Content-Type": "text/plain"}
    response = requests.get(f"{getattr(old.stack, service)}{path}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def test_auth_off_is_loud_and_loopback_only(stack_without_auth: Any) -> None:
    assert "WARNING" in stack_without_auth.output() and "127.0.0.1" in stack_without_auth.output()
    assert stack_without_auth.bucket_url.startswith("http://127.0.0.1:")


def test_the_original_diagnostic_flow_passes(old: OldClients) -> None:
    """seed/WORKFLOW_BUCKET_FIX.md's diagnostic script, step by step (was tests/e2e/test_legacy_clients.py)."""

    def workflow_events() -> list[dict[str, Any]]:
        return [e for e in _events(old)["events"] if e["event_type"] == "workflow_execution"]

    before = len(workflow_events())
    trace_id, body = _execute(old, {"action_type": "task", "user_id": _id("diag_user"), "title": "Diagnostic task"})
    assert body["status"] == "success" and body["trace_id"] == trace_id and "execution_result" in body
    poll_until(lambda: len(workflow_events()), lambda n: n > before or n == 100)
    mine = [e for e in workflow_events() if e["trace_id"] == trace_id]
    assert len(mine) == 1 and mine[0]["requester_id"] == "workflow_executor" and mine[0]["timestamp"]
    stats = poll_until(
        lambda: requests.get(f"{old.stack.bucket_url}/core/stats", headers=old.headers("bhiv_reader"), timeout=10),
        lambda r: r.json()["stats"]["events_received"] > 0,
    )
    assert stats.status_code == 200

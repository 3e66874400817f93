"""Finding 6: executions were shared across requesters. A trace run by one requester could be read
and replayed by another, and any requester could squat a trace id to force 409s on another. Now
an execution belongs to the requester that ran it, and its event names that requester."""

from __future__ import annotations

import json

from tests.fake_bucket import FakeBucket
from tests.security.conftest import Api, envelope, task_workflow

OWNER, OTHER = "unified_action_orchestrator", "bhiv_core"


def test_another_requester_cannot_read_an_execution(executor: Api) -> None:
    assert executor.request("POST", "/api/workflow/execute", as_=OWNER, body=task_workflow("own-1")).status_code == 200
    assert executor.request("GET", "/api/workflow/executions/own-1", as_=OWNER).status_code == 200
    response = executor.request("GET", "/api/workflow/executions/own-1", as_=OTHER)
    assert response.status_code == 404, response.body
    assert envelope(response)["error"]["code"] == "execution_not_found"


def test_another_requester_cannot_replay_an_execution(executor: Api, fake_bucket: FakeBucket) -> None:
    body = task_workflow("own-2")
    first = executor.request("POST", "/api/workflow/execute", as_=OWNER, body=body)
    again = executor.request("POST", "/api/workflow/execute", as_=OTHER, body=body)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("X-Idempotent-Replay") is None  # a run of its own, not OWNER's result
    assert json.loads(again.body)["event_id"] != json.loads(first.body)["event_id"]
    assert len(fake_bucket.received) == 2
    # the owner's own retry is still a replay
    replay = executor.request("POST", "/api/workflow/execute", as_=OWNER, body=body)
    assert replay.headers.get("X-Idempotent-Replay") == "true"


def test_a_squatted_trace_id_does_not_block_its_owner(executor: Api) -> None:
    squat = executor.request("POST", "/api/workflow/execute", as_=OTHER, body=task_workflow("victim-1", title="squat"))
    assert squat.status_code == 200
    mine = executor.request("POST", "/api/workflow/execute", as_=OWNER, body=task_workflow("victim-1"))
    assert mine.status_code == 200, mine.body  # was 409 trace_id_conflict
    assert json.loads(mine.body)["status"] == "success"


def test_the_event_records_the_requester_that_asked(executor: Api, fake_bucket: FakeBucket) -> None:
    executor.request("POST", "/api/workflow/execute", as_=OWNER, body=task_workflow("who-1"))
    (sent,) = fake_bucket.received
    assert sent["body"]["event_data"]["requested_by"] == OWNER

"""Finding 7: lenient date-times. `due: "2099-01-31T09:00:00"` (no offset) and
`remind_at: "2099-01-31 09:00:00+00:00"` were accepted; the spec says RFC 3339 `date-time`."""

from __future__ import annotations

import json

import pytest

from tests.security.conftest import Api, envelope, task_workflow


def _reminder(trace_id: str, remind_at: str) -> dict[str, object]:
    payload = {"action_type": "reminder", "user_id": "u-1", "message": "m", "remind_at": remind_at}
    return {"trace_id": trace_id, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}}


@pytest.mark.parametrize("due", ["2099-01-31T09:00:00", "2099-01-31 09:00:00+00:00", "2099-01-31T09:00Z"])
def test_task_due_must_be_rfc3339(executor: Api, due: str) -> None:
    response = executor.request("POST", "/api/workflow/execute", body=task_workflow("due-1", due=due))
    # the original's contract: a payload that cannot run is a failed execution, answered 200
    assert response.status_code == 200, response.body
    result = json.loads(response.body)
    assert result["status"] == "failed"
    assert result["execution_result"]["error_code"] == "invalid_action_fields"
    assert "due" in result["execution_result"]["message"]


@pytest.mark.parametrize("remind_at", ["2099-01-31 09:00:00+00:00", "2099-01-31T09:00:00", "20990131T090000Z"])
def test_remind_at_must_be_rfc3339(executor: Api, remind_at: str) -> None:
    response = executor.request("POST", "/api/workflow/execute", body=_reminder("rem-1", remind_at))
    assert response.status_code == 200, response.body
    result = json.loads(response.body)
    assert result["status"] == "failed"
    assert result["execution_result"]["error_code"] == "invalid_action_fields"
    assert "remind_at" in result["execution_result"]["message"]


def test_rfc3339_date_times_are_accepted(executor: Api) -> None:
    response = executor.request(
        "POST", "/api/workflow/execute", body=task_workflow("due-ok", due="2099-01-31T09:00:00+05:30")
    )
    assert response.status_code == 200, response.body


@pytest.mark.parametrize("since", ["2026-12-01", "2026-12-01T00:00:00", "2026-12-01 00:00:00Z"])
def test_bucket_since_must_be_rfc3339(bucket: Api, since: str) -> None:
    response = bucket.request("GET", f"/core/events?since={since.replace(' ', '%20')}")
    assert response.status_code == 400, response.body
    assert envelope(response)["error"]["field"] == "since"


def test_rfc3339_parser() -> None:
    from bhiv import rfc3339

    assert rfc3339.parse("2099-01-31T09:00:00.123456789+05:30") is not None
    assert rfc3339.parse("2016-12-31T23:59:60Z") is not None  # a leap second
    for bad in ("2099-02-30T09:00:00Z", "2099-01-31T24:00:00Z", "2099-01-31T09:00:00+24:00", "٢٠٩٩-01-31T09:00:00Z"):
        assert rfc3339.parse(bad) is None, bad

"""Findings 1-3: hostile JSON is a 400 in the error envelope on every write route, and changes nothing.

1. 10,000 nested `[` and a lone surrogate (`"\\ud800"`) gave 500.
2. NaN / Infinity were stored and sent back as bare `NaN`, breaking every reader's listing.
3. Duplicate keys: the last won, so a second `event_type` slipped past the event's contract.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.security.conftest import Api, envelope, strict_json, task_workflow, write_event

WRITE_ROUTES = [
    ("bucket", "/core/write-event"),
    ("bucket", "/core/write-events"),
    ("karma", "/v1/event"),
    ("executor", "/api/workflow/execute"),
]


def _api(request: pytest.FixtureRequest, name: str) -> Api:
    api: Api = request.getfixturevalue(name)
    return api


def _events(bucket: Api) -> list[dict[str, Any]]:
    response = bucket.request("GET", "/core/events?limit=1000")
    assert response.status_code == 200
    events: list[dict[str, Any]] = strict_json(response)["events"]
    return events


@pytest.mark.parametrize(("app", "path"), WRITE_ROUTES)
def test_ten_thousand_nested_brackets_are_400(request: pytest.FixtureRequest, app: str, path: str) -> None:
    depth = 8_000 if app == "karma" else 10_000  # Karma's body limit is 16 KB (413 before parsing)
    response = _api(request, app).request("POST", path, raw=b"[" * depth + b"]" * depth)
    assert response.status_code == 400, response.body
    error = envelope(response)["error"]
    assert error["code"] == "invalid_json" and "nested deeper than 64" in error["message"]


@pytest.mark.parametrize(("app", "path"), WRITE_ROUTES)
def test_deep_nesting_inside_a_valid_body_is_400(request: pytest.FixtureRequest, app: str, path: str) -> None:
    nested = "[" * 200 + "]" * 200
    raw = f'{{"requester_id": "bhiv_core", "event_data": {{"event_type": "probe", "x": {nested}}}}}'.encode()
    response = _api(request, app).request("POST", path, raw=raw)
    assert response.status_code == 400, response.body
    assert envelope(response)["error"]["code"] == "invalid_json"


def test_nesting_up_to_the_documented_limit_is_accepted(bucket: Api) -> None:
    value: Any = "leaf"
    for _ in range(64 - 2):  # body -> event_data -> ... (64 levels in all, the documented limit)
        value = [value]
    response = bucket.request("POST", "/core/write-event", body=write_event({"event_type": "probe", "x": value}))
    assert response.status_code == 200, response.body


@pytest.mark.parametrize(("app", "path"), WRITE_ROUTES)
def test_lone_surrogate_is_400(request: pytest.FixtureRequest, app: str, path: str) -> None:
    raw = b'{"requester_id": "bhiv_core", "event_data": {"event_type": "probe", "note": "\\ud800"}}'
    response = _api(request, app).request("POST", path, raw=raw)
    assert response.status_code == 400, response.body
    assert "surrogate" in envelope(response)["error"]["message"]


def test_lone_surrogate_in_an_event_is_not_stored(bucket: Api) -> None:
    raw = b'{"requester_id": "bhiv_core", "event_data": {"event_type": "probe", "\\udfff": 1}}'
    assert bucket.request("POST", "/core/write-event", raw=raw).status_code == 400
    assert _events(bucket) == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_numbers_are_refused_and_the_listing_stays_strict_json(bucket: Api, number: str) -> None:
    raw = f'{{"requester_id": "bhiv_core", "event_data": {{"event_type": "probe", "x": {number}}}}}'.encode()
    response = bucket.request("POST", "/core/write-event", raw=raw)
    assert response.status_code == 400, response.body
    assert envelope(response)["error"]["code"] == "invalid_json"
    assert _events(bucket) == []  # nothing stored, and the listing parses with a strict parser


def test_agent_result_score_nan_does_not_pass_the_bounds(bucket: Api) -> None:
    raw = (
        b'{"requester_id": "bhiv_core", "event_data": {"event_type": "agent_result", "agent_id": "a-1",'
        b' "task_id": "t-1", "result": {}, "outcome": "success", "score": NaN}}'
    )
    response = bucket.request("POST", "/core/write-event", raw=raw)
    assert response.status_code == 400, response.body
    assert _events(bucket) == []


def test_nan_in_a_workflow_payload_is_refused(executor: Api) -> None:
    raw = json.dumps(task_workflow("nan-1")).replace('"Call Asha"', "NaN").encode()
    response = executor.request("POST", "/api/workflow/execute", raw=raw)
    assert response.status_code == 400, response.body
    assert envelope(response)["error"]["code"] == "invalid_json"


def test_duplicate_event_type_cannot_slip_past_the_workflow_contract(bucket: Api) -> None:
    raw = (
        b'{"requester_id": "bhiv_core", "event_data": {"event_type": "workflow_execution",'
        b' "event_type": "probe", "trace_id": "dup-1"}}'
    )
    response = bucket.request("POST", "/core/write-event", raw=raw)
    assert response.status_code == 400, response.body
    error = envelope(response)["error"]
    assert error["code"] == "invalid_json" and "duplicate key 'event_type'" in error["message"]
    assert _events(bucket) == []


@pytest.mark.parametrize(("app", "path"), WRITE_ROUTES)
def test_duplicate_keys_are_400_everywhere(request: pytest.FixtureRequest, app: str, path: str) -> None:
    response = _api(request, app).request("POST", path, raw=b'{"a": 1, "a": 2}')
    assert response.status_code == 400, response.body
    assert "duplicate key" in envelope(response)["error"]["message"]


def test_strict_parser_keeps_what_json_allows() -> None:
    from bhiv import strictjson

    text = '{"emoji": "\\ud83d\\ude00", "big": 12345678901234567890, "f": 1.5e300, "nested": [[{"a": null}]]}'
    assert strictjson.loads(text) == json.loads(text)
    assert strictjson.loads(text.encode()) == json.loads(text)

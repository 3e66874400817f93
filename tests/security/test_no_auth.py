"""Finding 5: with auth off (`bhiv up --no-auth`, for legacy clients) any web page the user opened
could write (a text/plain POST from Origin: evil got 201/202, the Executor sent an email) and read
through DNS rebinding (Host: rebind.evil.example got 200 with events). Now: only loopback Host
values, no cross-origin writes, and write routes take application/json only."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import MotoEnv
from tests.fake_bucket import FakeBucket
from tests.security.conftest import Api, clear_services, envelope, task_workflow, write_event

EVIL = {"Origin": "http://evil.example"}


@pytest.fixture
def auth_off(all_functions_env: MotoEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BHIV_AUTH_DISABLED", "1")
    clear_services()
    yield
    clear_services()


def _stored(bucket: Api) -> int:
    count: int = json.loads(bucket.request("GET", "/core/events", as_=None).body)["count"]
    return count


def test_cross_site_text_plain_write_is_refused(auth_off: None, bucket: Api) -> None:
    body = json.dumps(write_event({"event_type": "probe"})).encode()
    response = bucket.request(
        "POST", "/core/write-event", as_=None, raw=body, headers={**EVIL, "Content-Type": "text/plain"}
    )
    assert response.status_code == 403, response.body
    assert envelope(response)["error"]["code"] == "cross_origin_refused"
    assert _stored(bucket) == 0


def test_text_plain_without_an_origin_is_415(auth_off: None, bucket: Api) -> None:
    body = json.dumps(write_event({"event_type": "probe"})).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
        response = bucket.request("POST", "/core/write-event", as_=None, raw=body, headers=headers)
        assert response.status_code == 415, (content_type, response.body)
        assert envelope(response)["error"]["code"] == "unsupported_media_type"
    assert _stored(bucket) == 0


def test_cross_site_execute_runs_nothing(auth_off: None, executor: Api, fake_bucket: FakeBucket) -> None:
    payload = {"action_type": "email", "recipient": "victim@example.com", "subject": "hi", "body": "x"}
    body = {"trace_id": "csrf-1", "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}}
    for headers in ({**EVIL, "Content-Type": "text/plain"}, {**EVIL, "Content-Type": "application/json"}):
        response = executor.request("POST", "/api/workflow/execute", as_=None, body=body, headers=headers)
        assert response.status_code == 403, response.body
    assert executor.request("GET", "/api/workflow/executions/csrf-1", as_=None).status_code == 404
    assert fake_bucket.received == []


def test_cross_site_karma_event_is_refused(auth_off: None, karma: Api) -> None:
    body = {"type": "life_event", "data": {"user_id": "u-1", "action": "selfless_service", "role": "learner"}}
    response = karma.request("POST", "/v1/event", as_=None, body=body, headers={**EVIL, "Content-Type": "text/plain"})
    assert response.status_code == 403, response.body


@pytest.mark.parametrize("host", ["rebind.evil.example", "rebind.evil.example:8001", "10.0.0.5:8001", "localhost.evil"])
def test_dns_rebinding_host_is_refused(auth_off: None, bucket: Api, host: str) -> None:
    bucket.request("POST", "/core/write-event", as_=None, body=write_event({"event_type": "probe"}))
    response = bucket.request("GET", "/core/events", as_=None, headers={"Host": host})
    assert response.status_code == 403, response.body
    error = envelope(response)["error"]
    assert error["code"] == "host_not_allowed" and "events" not in json.loads(response.body)


@pytest.mark.parametrize("host", ["127.0.0.1:8001", "localhost:8001", "LOCALHOST", "[::1]:8001", "127.0.0.2"])
def test_loopback_clients_keep_working(auth_off: None, bucket: Api, host: str) -> None:
    """Legacy clients: JSON, no Origin (not a browser), or the stack's own origin."""
    plain = bucket.request(
        "POST", "/core/write-event", as_=None, body=write_event({"event_type": "probe"}), headers={"Host": host}
    )
    assert plain.status_code == 200, plain.body
    same_origin = bucket.request(
        "POST",
        "/core/write-event",
        as_=None,
        body=write_event({"event_type": "probe"}),
        headers={"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json; charset=utf-8"},
    )
    assert same_origin.status_code == 200, same_origin.body
    assert bucket.request("GET", "/core/events", as_=None, headers={"Host": host}).status_code == 200


def test_with_auth_on_a_token_is_what_counts(bucket: Api) -> None:
    """Browsers never send the bearer token on their own, so with auth on an Origin changes nothing."""
    response = bucket.request(
        "POST", "/core/write-event", body=write_event({"event_type": "probe"}), headers={**EVIL, "Host": "api.example"}
    )
    assert response.status_code == 200, response.body


def test_execute_still_takes_json_from_loopback(auth_off: None, executor: Api) -> None:
    response = executor.request("POST", "/api/workflow/execute", as_=None, body=task_workflow("legacy-1"))
    assert response.status_code == 200, response.body

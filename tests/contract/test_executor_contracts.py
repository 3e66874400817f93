"""The execute request's contract, its examples, openapi/executor.yaml and the Executor agree.

contracts/workflow_request.schema.json is the request's outer shape (tests/contract/test_contracts.py
checks the examples under contracts/examples/workflow_request/ against it). Here:
* the spec's `WorkflowRequest` component is that contract translated to OpenAPI 3.0, and the spec's
  request examples are exactly the valid example files (one per action type, steps, a skip);
* every valid example satisfies the spec's full request schema and is executed by the Executor
  (moto behind it, a fake Bucket on loopback): 200, its actions succeed, one event is delivered,
  a replay runs nothing, and the execution reads back;
* every invalid example is refused with 422; requests the contract allows but the Executor
  refuses (no payload, unknown action, bad fields) get the documented 400/422 naming the field,
  and the spec's request schema refuses them too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from chalice.test import Client
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from tests.conftest import MotoEnv
from tests.contract.test_contracts import to_openapi30
from tests.fake_bucket import FakeBucket

from bhiv import auth
from bhiv.executor import runtime
from bhiv.executor.actions import REGISTRY
from bhiv.executor.event import event_id_for
from bhiv.local.server import load_function_module

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "contracts" / "workflow_request.schema.json"
EXAMPLES = ROOT / "contracts" / "examples" / "workflow_request"
SPEC = ROOT / "openapi" / "executor.yaml"
EXECUTE = "/api/workflow/execute"
CALLER = "bhiv_core"
TOKENS = {requester: auth.new_token() for requester in auth.load_requesters()}


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec


def examples(kind: str) -> list[Path]:
    return sorted((EXAMPLES / kind).glob("*.json"))


def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def spec_request_examples() -> dict[str, Any]:
    body = load_spec()["paths"][EXECUTE]["post"]["requestBody"]["content"]["application/json"]
    return {name: example["value"] for name, example in body["examples"].items()}


def request_validator() -> Any:
    """The spec's full request schema (ExecuteRequest), OpenAPI 3.0 semantics, formats checked."""
    root = {"$ref": "#/components/schemas/ExecuteRequest", "components": load_spec()["components"]}
    return OAS30Validator(root, format_checker=OAS30Validator.FORMAT_CHECKER)


def _workflow(payload: dict[str, Any], trace_id: str = "semantic-1") -> dict[str, Any]:
    return {"trace_id": trace_id, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}}


# --- the spec against the contract and the example files ------------------------------------------


def test_the_spec_is_valid_openapi_30() -> None:
    spec = load_spec()
    assert spec["openapi"] == "3.0.3"
    validate_spec(spec)


def test_spec_component_equals_the_contract() -> None:
    component = load_spec()["components"]["schemas"]["WorkflowRequest"]
    assert component == to_openapi30(read(CONTRACT)), (
        "openapi/executor.yaml#/components/schemas/WorkflowRequest differs from contracts/workflow_request.schema.json"
    )
    request = load_spec()["components"]["schemas"]["ExecuteRequest"]
    assert request["allOf"][0] == {"$ref": "#/components/schemas/WorkflowRequest"}


def test_spec_examples_are_the_valid_example_files() -> None:
    in_spec = sorted(json.dumps(value, sort_keys=True) for value in spec_request_examples().values())
    in_files = sorted(json.dumps(read(path), sort_keys=True) for path in examples("valid"))
    assert in_spec == in_files, "the spec's request examples and contracts/examples/workflow_request/valid differ"


def test_every_registered_action_has_an_example_and_a_schema() -> None:
    schemas = load_spec()["components"]["schemas"]
    branches = [ref["$ref"].rsplit("/", 1)[1] for ref in schemas["Action"]["anyOf"]]
    in_schema = sorted(schemas[name]["properties"]["action_type"]["enum"][0] for name in branches)
    assert in_schema == sorted(REGISTRY), "the spec's Action schemas and the action registry differ"
    shown = {
        step.get("action_type")
        for body in spec_request_examples().values()
        for step in [body.get("data", {}).get("payload", {}), *body.get("data", {}).get("payload", {}).get("steps", [])]
    }
    assert set(REGISTRY) <= shown, f"actions with no request example: {sorted(set(REGISTRY) - shown)}"


@pytest.mark.parametrize("path", examples("valid"), ids=lambda p: p.stem)
def test_valid_example_satisfies_the_spec_request_schema(path: Path) -> None:
    errors = [error.message for error in request_validator().iter_errors(read(path))]
    assert not errors, errors


# --- the Executor runs them ---------------------------------------------------------------------------


@pytest.fixture
def api_tokens() -> dict[str, str]:
    return dict(TOKENS)


@pytest.fixture
def function_logical_id() -> str:
    return "ExecutorFunction"


@pytest.fixture(scope="module")
def fake_bucket() -> Iterator[FakeBucket]:
    bucket = FakeBucket()
    yield bucket
    bucket.close()


@pytest.fixture
def executor(aws_env: MotoEnv, fake_bucket: FakeBucket, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    fake_bucket.mode = "ok"
    fake_bucket.received.clear()
    fake_bucket.stored.clear()
    monkeypatch.setenv("BUCKET_URL", fake_bucket.url)
    monkeypatch.setenv("EXECUTOR_DELIVERY_BUDGET_S", "0.2")
    monkeypatch.setenv("BHIV_LOCAL", "1")
    monkeypatch.setenv("BHIV_EXECUTOR_TOKEN", TOKENS["workflow_executor"])  # not SSM
    runtime.service.cache_clear()
    auth.authenticator_from_env.cache_clear()
    app = load_function_module("functions/executor/").app
    with Client(app, project_dir=str(ROOT / "functions" / "executor")) as client:
        yield client
    runtime.service.cache_clear()


def _post(client: Client, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS[CALLER]}"}
    return client.http.post(EXECUTE, headers=headers, body=raw)


def _get(client: Client, trace_id: str) -> Any:
    return client.http.get(
        f"/api/workflow/executions/{trace_id}", headers={"Authorization": f"Bearer {TOKENS[CALLER]}"}
    )


@pytest.mark.parametrize("path", examples("valid"), ids=lambda p: p.stem)
def test_executor_runs_valid_example(executor: Client, fake_bucket: FakeBucket, path: Path) -> None:
    body = read(path)
    response = _post(executor, body)
    assert response.status_code == 200, response.body
    result = response.json_body
    if body["decision"] != "workflow":
        assert result["status"] == "skipped" and result["event_id"] is None
        assert fake_bucket.received == []
        assert _get(executor, result["trace_id"]).status_code == 404  # nothing stored
        return
    payload = body["data"]["payload"]
    actions = payload.get("steps") or [payload]
    assert result["status"] == "success", result
    assert [s["action_type"] for s in result["execution_result"]["steps"]] == [a["action_type"] for a in actions]
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in result["execution_result"]["steps"])
    assert result["trace_id"] == body["trace_id"]
    assert result["event_id"] == event_id_for(body["trace_id"], CALLER)
    assert result["delivery_state"] == "delivered"
    assert [r["body"]["event_id"] for r in fake_bucket.received] == [result["event_id"]]
    event = fake_bucket.received[0]["body"]["event_data"]
    assert (event["event_type"], event["trace_id"], event["user_id"]) == (
        "workflow_execution",
        body["trace_id"],
        payload["user_id"],
    )

    again = _post(executor, body)  # idempotent: the stored result, nothing run or sent again
    assert again.status_code == 200
    assert again.headers.get("X-Idempotent-Replay") == "true"
    assert again.json_body["execution_result"] == result["execution_result"]
    assert len(fake_bucket.received) == 1

    stored = _get(executor, body["trace_id"])
    assert stored.status_code == 200, stored.body
    assert stored.json_body["execution_result"] == result["execution_result"]
    assert stored.json_body["delivery_state"] == "delivered"


@pytest.mark.parametrize("path", examples("invalid"), ids=lambda p: p.stem)
def test_executor_refuses_invalid_example(executor: Client, fake_bucket: FakeBucket, path: Path) -> None:
    response = _post(executor, read(path))
    assert response.status_code == 422, response.body
    error = response.json_body["error"]
    assert response.json_body["success"] is False
    assert error["code"] == "validation_error" and error["field"]
    assert fake_bucket.received == []
    assert list(request_validator().iter_errors(read(path))), "the spec's request schema must refuse it too"


def _future() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="seconds")


# Bodies the contract allows and the Executor refuses: (id, body, status, code, field).
SEMANTIC_REFUSALS: list[tuple[str, dict[str, Any], int, str, str]] = [
    (
        "workflow_without_data",
        {"trace_id": "s-1", "decision": "workflow"},
        400,
        "missing_workflow_payload",
        "data.payload",
    ),
    ("empty_payload", _workflow({}), 400, "missing_workflow_payload", "data.payload"),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in SEMANTIC_REFUSALS],
)
def test_executor_refuses_what_the_spec_refuses(
    executor: Client, fake_bucket: FakeBucket, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    assert list(request_validator().iter_errors(body)), "the spec's request schema must refuse it"
    response = _post(executor, body)
    assert response.status_code == status, response.body
    error = response.json_body["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert fake_bucket.received == []
    assert _get(executor, body["trace_id"]).status_code == 404  # nothing was stored


# Payloads that cannot run: the original's contract answers them as failed executions (200,
# `status: failed`, `error_code`), reported to the Bucket like any other: (id, payload, code, field).
UNRUNNABLE: list[tuple[str, dict[str, Any], str, str]] = [
    ("no_action_type", {"title": "t", "user_id": "u-1"}, "missing_action_type", "data.payload.action_type"),
    ("meeting", {"action_type": "meeting", "user_id": "u-1"}, "unsupported_action_type", "data.payload.action_type"),
    ("unknown_action", {"action_type": "fax", "number": "1"}, "unsupported_action_type", "data.payload.action_type"),
    ("task_without_title", {"action_type": "task"}, "missing_task_title", "data.payload.title"),
    ("task_blank_title", {"action_type": "task", "title": " \t\x1c"}, "missing_task_title", "data.payload.title"),
    (
        "email_without_recipient",
        {"action_type": "email", "subject": "s", "body": "b"},
        "missing_recipient",
        "data.payload.recipient",
    ),
    (
        "email_bad_recipient",
        {"action_type": "email", "recipient": "not-an-address", "subject": "s", "body": "b"},
        "invalid_action_fields",
        "data.payload.recipient",
    ),
    (
        "email_two_line_subject",
        {"action_type": "email", "recipient": "a@example.com", "subject": "a\nb", "body": "b"},
        "invalid_action_fields",
        "data.payload.subject",
    ),
    (
        "whatsapp_without_message",
        {"action_type": "whatsapp", "recipient": "+919876543210"},
        "missing_message",
        "data.payload.message",
    ),
    (
        "whatsapp_not_e164",
        {"action_type": "whatsapp", "recipient": "98765 43210", "message": "hi"},
        "invalid_action_fields",
        "data.payload.recipient",
    ),
    ("ai_without_prompt", {"action_type": "ai", "model": "x"}, "missing_prompt", "data.payload.prompt"),
    (
        "reminder_not_a_time",
        {"action_type": "reminder", "message": "m", "remind_at": "tomorrow"},
        "invalid_action_fields",
        "data.payload.remind_at",
    ),
    (
        "reminder_in_the_past",
        {"action_type": "reminder", "message": "m", "remind_at": "2001-01-01T00:00:00Z"},
        "invalid_action_fields",
        "data.payload.remind_at",
    ),
    (
        "steps_and_action_type",
        {"action_type": "task", "title": "t", "steps": [{"action_type": "task", "title": "t"}]},
        "invalid_steps",
        "data.payload.action_type",
    ),
    ("no_steps", {"steps": []}, "invalid_steps", "data.payload.steps"),
    (
        "bad_second_step",
        {"steps": [{"action_type": "task", "title": "t"}, {"action_type": "ai", "prompt": ""}]},
        "missing_prompt",
        "data.payload.steps.1.prompt",
    ),
    (
        "retry_interval_too_long",
        {"action_type": "task", "title": "t", "retry": {"interval_seconds": 61}},
        "invalid_retry",
        "data.payload.retry.interval_seconds",
    ),
    (
        "retry_unknown_field",
        {"action_type": "task", "title": "t", "retry": {"jitter": True}},
        "invalid_retry",
        "data.payload.retry",
    ),
    ("user_id_empty", {"action_type": "task", "title": "t", "user_id": ""}, "invalid_user_id", "data.payload.user_id"),
]


@pytest.mark.parametrize(("payload", "code", "field"), [pytest.param(*case[1:], id=case[0]) for case in UNRUNNABLE])
def test_an_unrunnable_payload_is_a_failed_execution_reported_to_the_bucket(
    executor: Client, fake_bucket: FakeBucket, payload: dict[str, Any], code: str, field: str
) -> None:
    body = _workflow(payload, trace_id=f"unrunnable-{code}-{len(payload)}")
    assert not list(request_validator().iter_errors(body)), "the spec's request schema takes it"
    response = _post(executor, body)
    assert response.status_code == 200, response.body
    result = response.json_body
    assert result["status"] == "failed"
    assert result["execution_result"]["success"] is False
    assert (result["execution_result"]["error_code"], result["execution_result"]["field"]) == (code, field)
    assert result["execution_result"]["message"]
    if code == "unsupported_action_type":
        assert result["execution_result"]["known"] == sorted(REGISTRY)
    (delivered,) = fake_bucket.received  # "no silent failures": the failure is an event too
    event = delivered["body"]["event_data"]
    assert (event["event_type"], event["status"], event["trace_id"]) == (
        "workflow_execution",
        "failed",
        body["trace_id"],
    )
    assert event["execution_result"]["error_code"] == code
    action_type = payload.get("action_type")
    assert event["action_type"] == (action_type if isinstance(action_type, str) else None)
    assert _get(executor, body["trace_id"]).json_body["status"] == "failed"


def test_a_future_reminder_runs(executor: Client) -> None:
    future = _workflow({"action_type": "reminder", "message": "m", "remind_at": _future()}, trace_id="semantic-2")
    assert _post(executor, future).json_body["status"] == "success"


def test_a_trace_id_reused_with_another_body_is_409(executor: Client, fake_bucket: FakeBucket) -> None:
    first = _workflow({"action_type": "task", "title": "first"}, trace_id="reused-1")
    assert _post(executor, first).status_code == 200
    response = _post(executor, _workflow({"action_type": "task", "title": "second"}, trace_id="reused-1"))
    assert response.status_code == 409
    assert response.json_body["error"]["code"] == "trace_id_conflict"
    assert len(fake_bucket.received) == 1


def test_malformed_and_oversize_bodies(executor: Client) -> None:
    malformed = _post(executor, b'{"decision": ')
    assert (malformed.status_code, malformed.json_body["error"]["code"]) == (400, "invalid_json")
    big = _workflow({"action_type": "task", "title": "t", "description": "x" * 9000, "pad": "y" * 70_000})
    oversize = _post(executor, big)
    assert (oversize.status_code, oversize.json_body["error"]["code"]) == (413, "payload_too_large")

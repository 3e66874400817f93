"""Karma's direct-event contract, its examples, openapi/karma.yaml, the policy and the app agree.

`contracts/karma_direct_event.schema.json` is the shape of POST /v1/event; openapi/karma.yaml's
`KarmaDirectEvent` is that contract translated to OpenAPI 3.0 plus the policy's actions and roles
as enums on `data.action` and `data.role` (the app answers 422 for any other). Every example under
contracts/examples/karma_direct_event/{valid,invalid}/ is checked against both, and posted to the
Karma app: the valid ones are recorded in the Bucket's log and applied from the stream, the
invalid ones are refused with 422 and leave no trace.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from chalice.test import Client
from jsonschema import Draft202012Validator
from moto import mock_aws

from bhiv import auth
from bhiv.karma import runtime
from bhiv.karma.policy import default_policy
from bhiv.local import moto_patch, template
from bhiv.local.server import load_function_module
from bhiv.storage import aws as aws_clients
from bhiv.storage.events import from_item
from bhiv.validation import ContractValidator

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "contracts" / "karma_direct_event.schema.json"
EXAMPLES = ROOT / "contracts" / "examples" / "karma_direct_event"
SPEC = ROOT / "openapi" / "karma.yaml"
KARMA_DIR = ROOT / "functions" / "karma"
POLICY = default_policy()
ENUM_FIELDS = ("action", "role")  # data.<field> carries the policy's names as an enum in the spec

AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}
FOREIGN_ENV = (
    "BHIV_AWS_ENDPOINT_URL",
    "BHIV_AUTH_DISABLED",
    "BHIV_CREDENTIALS_FILE",
    "BHIV_TOKEN_HASHES_PARAMETER",
    "BHIV_REQUESTERS_FILE",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)


def load_contract() -> dict[str, Any]:
    contract: dict[str, Any] = json.loads(CONTRACT.read_text(encoding="utf-8"))
    return contract


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec


def component() -> dict[str, Any]:
    schemas: dict[str, Any] = load_spec()["components"]["schemas"]
    result: dict[str, Any] = schemas["KarmaDirectEvent"]
    return result


def to_openapi30(schema: Any) -> Any:
    """The contract as OpenAPI 3.0.3 writes it: `const` → one-value `enum`; `$schema`/`$id` dropped."""
    if isinstance(schema, list):
        return [to_openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("$schema", "$id"):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: to_openapi30(sub) for name, sub in value.items()}
        else:
            out[key] = to_openapi30(value)
    return out


def examples(kind: str) -> list[Path]:
    return sorted((EXAMPLES / kind).glob("*.json"))


def all_examples() -> list[Any]:
    return [
        pytest.param(kind == "valid", path, id=f"{kind}/{path.stem}")
        for kind in ("valid", "invalid")
        for path in examples(kind)
    ]


def body_of(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- spec, contract and policy ----------------------------------------------------------------


def test_component_is_the_contract_plus_the_policy_enums() -> None:
    translated = to_openapi30(load_contract())
    without_enums = copy.deepcopy(component())
    for name in ENUM_FIELDS:
        without_enums["properties"]["data"]["properties"][name].pop("enum")
    assert without_enums == translated, (
        "openapi/karma.yaml#/components/schemas/KarmaDirectEvent differs from the contract"
    )


def test_enums_are_the_policy_actions_and_roles() -> None:
    data = component()["properties"]["data"]["properties"]
    assert data["action"]["enum"] == list(POLICY.action_names)
    assert data["role"]["enum"] == list(POLICY.states)
    schemas = load_spec()["components"]["schemas"]
    assert schemas["Role"]["enum"] == list(POLICY.states)
    assert schemas["SystemStats"]["properties"]["users_by_role"]["required"] == list(POLICY.states)
    for name in ENUM_FIELDS:  # every name fits the contract's own bounds
        bounds = load_contract()["properties"]["data"]["properties"][name]
        assert all(bounds["minLength"] <= len(v) <= bounds["maxLength"] for v in data[name]["enum"])


def test_the_direct_event_operation_uses_the_component() -> None:
    post = load_spec()["paths"]["/v1/event"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/KarmaDirectEvent"
    }
    errors = [
        e.message
        for name, example in post["requestBody"]["content"]["application/json"]["examples"].items()
        for e in Draft202012Validator(component()).iter_errors(example["value"])
    ]
    assert not errors, f"the operation's own examples break the component: {errors}"


# --- the examples -------------------------------------------------------------------------------


def test_there_are_enough_examples() -> None:
    assert len(examples("valid")) >= 2
    assert len(examples("invalid")) >= 3


@pytest.mark.parametrize(("valid", "path"), all_examples())
def test_example_against_contract_and_component(valid: bool, path: Path) -> None:
    body = body_of(path)
    contract_errors = [e.message for e in ContractValidator(load_contract()).iter_errors(body)]
    # OpenAPI 3.0 schemas without `nullable` read the same as JSON Schema
    component_errors = [e.message for e in Draft202012Validator(component()).iter_errors(body)]
    if valid:
        assert not contract_errors, f"{path.name} breaks the contract: {contract_errors}"
        assert not component_errors, f"{path.name} breaks openapi/karma.yaml: {component_errors}"
    else:
        assert contract_errors, f"{path.name} should break the contract"
        assert component_errors, f"{path.name} should break openapi/karma.yaml"


# --- the app takes exactly the valid examples --------------------------------------------------


@pytest.fixture
def tokens() -> dict[str, str]:
    return {requester: auth.new_token() for requester in auth.load_requesters()}


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str]) -> Iterator[Any]:
    """moto with template.yaml's resources and KarmaFunction's environment."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in FOREIGN_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BHIV_TOKEN_HASHES", json.dumps({r: auth.hash_token(t) for r, t in tokens.items()}))

    def clear() -> None:
        runtime.store.cache_clear()
        runtime.service.cache_clear()
        auth.authenticator_from_env.cache_clear()
        aws_clients.client.cache_clear()

    clear()
    with mock_aws():
        moto_patch.install()
        client = boto3.client("dynamodb")
        template.create_resources(client, boto3.client("sqs"))
        for key, value in template.function_environment("KarmaFunction").items():
            monkeypatch.setenv(key, value)
        try:
            yield client
        finally:
            clear()


@pytest.fixture
def karma(dynamodb: Any) -> Iterator[Client]:
    app = load_function_module(KARMA_DIR.relative_to(ROOT)).app
    with Client(app, project_dir=str(KARMA_DIR)) as client:
        yield client


def post(client: Client, tokens: dict[str, str], body: Any, requester: str = "bhiv_core") -> Any:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {tokens[requester]}"}
    return client.http.post("/v1/event", headers=headers, body=json.dumps(body).encode())


def stored_events(dynamodb: Any) -> list[dict[str, Any]]:
    items = dynamodb.scan(TableName="EventsTable", ConsistentRead=True)["Items"]
    return [from_item(item) for item in items]


def apply_from_the_stream(dynamodb: Any) -> dict[str, Any]:
    """Hand every stored event to the stream handler as Lambda would (INSERT records, in order)."""
    items = sorted(dynamodb.scan(TableName="EventsTable", ConsistentRead=True)["Items"], key=lambda i: i["ts_id"]["S"])
    records = [
        {"eventName": "INSERT", "dynamodb": {"SequenceNumber": str(n), "NewImage": item}}
        for n, item in enumerate(items, start=1)
    ]
    return runtime.handle_stream({"Records": records}, None)


@pytest.mark.parametrize(("valid", "path"), all_examples())
def test_karma_takes_the_examples(
    karma: Client, dynamodb: Any, tokens: dict[str, str], valid: bool, path: Path
) -> None:
    body = body_of(path)
    response = post(karma, tokens, body)
    stored = stored_events(dynamodb)
    if not valid:
        # the original's codes: an unknown type or a missing user_id/action/role is 400, the rest 422
        assert response.status_code in (400, 422), response.body
        assert response.json_body["success"] is False
        expected = "validation_error" if response.status_code == 422 else ("unknown_event_type", "missing_field")
        assert response.json_body["error"]["code"] in expected
        assert stored == []
        return
    assert response.status_code == 200, response.body  # the original senders require 200
    assert response.json_body["status"] == "success" and response.json_body["event_type"] == "life_event"
    assert {"message", "data", "timestamp", "routing_info"} <= set(response.json_body)
    (event,) = stored
    assert event["event_id"] == response.json_body["event_id"]
    assert event["requester_id"] == "karma"  # Karma writes under its own requester, not the caller's
    assert event["event_type"] == "life_event"
    kept = {"source": body["source"]} if "source" in body else {}
    kept |= {"sent_at": body["timestamp"]} if "timestamp" in body else {}
    assert json.loads(event["event_data"]) == {"event_type": "life_event", **body["data"], **kept}
    datetime.fromisoformat(event["received_at"].replace("Z", "+00:00"))
    assert apply_from_the_stream(dynamodb) == {"batchItemFailures": []}
    user_id = body["data"]["user_id"]
    read = karma.http.get(f"/api/v1/karma/{user_id}", headers={"Authorization": f"Bearer {tokens['bhiv_reader']}"})
    assert read.status_code == 200, read.body
    assert read.json_body["action_stats"] == {body["data"]["action"]: 1}
    assert read.json_body["role"] == "learner"  # a new user starts as learner, whatever the body's role says


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"action": "teleport"}, ["data.action"]),
        ({"role": "emperor"}, ["data.role"]),
        ({"action": "Helping_Peers", "role": "Guru"}, ["data.action", "data.role"]),
    ],
    ids=["unknown_action", "unknown_role", "both"],
)
def test_contract_valid_but_unknown_to_the_policy_is_422(
    karma: Client, dynamodb: Any, tokens: dict[str, str], data: dict[str, str], fields: list[str]
) -> None:
    body = {"type": "life_event", "data": {"user_id": "user-42", "action": "helping_peers", "role": "learner", **data}}
    assert not list(ContractValidator(load_contract()).iter_errors(body))
    assert list(Draft202012Validator(component()).iter_errors(body)), "the spec's enums must refuse it too"
    response = post(karma, tokens, body)
    assert response.status_code == 422, response.body
    error = response.json_body["error"]
    assert error["field"] == fields[0]
    assert [e["field"] for e in error["errors"]] == fields
    assert "known:" in error["message"]
    assert stored_events(dynamodb) == []


def test_recording_needs_karma_write(karma: Client, dynamodb: Any, tokens: dict[str, str]) -> None:
    body = body_of(EXAMPLES / "valid" / "minimal.json")
    response = post(karma, tokens, body, requester="bhiv_reader")  # karma:read only
    assert response.status_code == 403, response.body
    assert response.json_body["error"]["code"] == "insufficient_scope"
    anonymous = karma.http.post("/v1/event", headers={"Content-Type": "application/json"}, body=json.dumps(body))
    assert anonymous.status_code == 401
    assert stored_events(dynamodb) == []

"""The event contracts, their examples, the pydantic models and openapi/bucket.yaml agree.

Three places describe the Bucket's shapes: the JSON Schemas in contracts/ (the source of truth),
the pydantic models in bhiv.bucket.models, and the components of openapi/bucket.yaml. Every example
under contracts/examples/<schema>/{valid,invalid}/ is run through all of them, the OpenAPI components
are compared with the contracts after the translation to OpenAPI 3.0, and the examples are posted
to the Bucket, which must accept exactly the valid ones.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chalice.test import Client
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError
from tests.conftest import MotoEnv, load_chalice_app

from bhiv.bucket import models
from bhiv.validation import ContractValidator

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
EXAMPLES = CONTRACTS / "examples"
SPEC = ROOT / "openapi" / "bucket.yaml"
APP = ROOT / "functions" / "bucket" / "app.py"
MIN_VALID, MIN_INVALID = 2, 3

# contract -> pydantic model that must agree with it on every example
MODELS: dict[str, type[BaseModel]] = {
    "write_event_request": models.WriteEventRequest,
    "write_events_request": models.WriteEventsRequest,
    "stored_event": models.StoredEvent,
}
# contract -> component of openapi/bucket.yaml that must equal it (after the 3.0 translation)
COMPONENTS = {
    "write_event_request": "WriteEventRequest",
    "write_events_request": "WriteEventsRequest",
    "stored_event": "StoredEvent",
    "events/workflow_execution": "WorkflowExecutionEvent",
    "events/agent_result": "AgentResultEvent",
    "events/rl_outcome": "RlOutcomeEvent",
}


def contract_names() -> list[str]:
    return sorted(
        str(path.relative_to(CONTRACTS)).removesuffix(".schema.json")
        for path in CONTRACTS.rglob("*.schema.json")
        if EXAMPLES not in path.parents
    )


def event_types() -> list[str]:
    return sorted(name.removeprefix("events/") for name in contract_names() if name.startswith("events/"))


def load_contract(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CONTRACTS / f"{name}.schema.json").read_text(encoding="utf-8"))
    return schema


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec


def examples(name: str, kind: str) -> list[Path]:
    return sorted((EXAMPLES / name / kind).glob("*.json"))


def all_examples(only: Callable[[str], bool] = lambda name: True) -> list[Any]:
    """(contract, valid?, path) of every example, as pytest params, for the contracts `only` picks."""
    return [
        pytest.param(name, kind == "valid", path, id=f"{name}/{kind}/{path.stem}")
        for name in contract_names()
        if only(name)
        for kind in ("valid", "invalid")
        for path in examples(name, kind)
    ]


def contract_validator(name: str) -> ContractValidator:
    """JSON Schema 2020-12 with ECMA-262 patterns (as the Bucket validates) and formats checked."""
    schema = load_contract(name)
    Draft202012Validator.check_schema(schema)
    validator: ContractValidator = ContractValidator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return validator


# --- the examples themselves ------------------------------------------------------------------


@pytest.mark.parametrize("name", contract_names())
def test_every_contract_has_examples(name: str) -> None:
    assert len(examples(name, "valid")) >= MIN_VALID, f"{name}: fewer than {MIN_VALID} valid examples"
    assert len(examples(name, "invalid")) >= MIN_INVALID, f"{name}: fewer than {MIN_INVALID} invalid examples"


def test_every_example_directory_belongs_to_a_contract() -> None:
    names = set(contract_names())
    for kind_dir in EXAMPLES.rglob("*"):
        if kind_dir.is_dir() and kind_dir.name in ("valid", "invalid"):
            assert str(kind_dir.parent.relative_to(EXAMPLES)) in names, f"examples for no contract: {kind_dir}"


@pytest.mark.parametrize(("name", "valid", "path"), all_examples())
def test_example_against_contract(name: str, valid: bool, path: Path) -> None:
    instance = json.loads(path.read_text(encoding="utf-8"))
    errors = [error.message for error in contract_validator(name).iter_errors(instance)]
    if valid:
        assert not errors, f"{path.name} should be valid: {errors}"
    else:
        assert errors, f"{path.name} should be invalid"


# --- pydantic models agree with the contracts -------------------------------------------------


@pytest.mark.parametrize(("name", "valid", "path"), all_examples(lambda name: name in MODELS))
def test_pydantic_model_agrees_with_contract(name: str, valid: bool, path: Path) -> None:
    model = MODELS[name]
    try:
        model.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        assert not valid, f"{model.__name__} refuses the valid example {path.name}: {exc}"
    else:
        assert valid, f"{model.__name__} accepts the invalid example {path.name}"


# --- openapi/bucket.yaml equals the contracts -------------------------------------------------


def to_openapi30(schema: Any, defs_prefix: str = "#/components/schemas/") -> Any:
    """A JSON Schema 2020-12 contract as OpenAPI 3.0.3 writes it.

    `const` becomes a one-value `enum`; `"type": [T, "null"]` becomes `type: T` + `nullable: true`;
    `$ref`s to `$defs` point at components; `$schema`, `$id` and `$defs` are dropped (the `$defs`
    are components of their own, see `defs_of`).
    """
    if isinstance(schema, list):
        return [to_openapi30(item, defs_prefix) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("$schema", "$id", "$defs"):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            assert len(types) == 1, f"OpenAPI 3.0 has no union type for {value}"
            out["type"] = types[0]
            if "null" in value:
                out["nullable"] = True
        elif key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out["$ref"] = defs_prefix + value.removeprefix("#/$defs/")
        elif key in ("properties", "$defs", "patternProperties"):
            out[key] = {prop: to_openapi30(sub, defs_prefix) for prop, sub in value.items()}
        else:
            out[key] = to_openapi30(value, defs_prefix)
    return out


def defs_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {name: to_openapi30(sub) for name, sub in (schema.get("$defs") or {}).items()}


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_openapi_component_equals_contract(name: str) -> None:
    components = load_spec()["components"]["schemas"]
    contract = load_contract(name)
    assert components[COMPONENTS[name]] == to_openapi30(contract), (
        f"openapi/bucket.yaml#/components/schemas/{COMPONENTS[name]} differs from contracts/{name}.schema.json"
    )
    for def_name, translated in defs_of(contract).items():
        assert components[def_name] == translated, f"component {def_name} differs from {name}'s $defs/{def_name}"


def test_every_bucket_contract_is_in_the_spec() -> None:
    bucket_contracts = {"write_event_request", "write_events_request", "stored_event"}
    bucket_contracts |= {f"events/{t}" for t in event_types()}
    missing = bucket_contracts - set(COMPONENTS)
    assert not missing, f"contracts with no component in openapi/bucket.yaml: {sorted(missing)}"


def test_write_event_body_holds_event_data_to_its_type_contract() -> None:
    """The write body is the contract, with event_data also held to its event type's contract."""
    spec = load_spec()
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/core/write-event"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["allOf"][0] == {"$ref": "#/components/schemas/WriteEventRequest"}
    assert body["allOf"][1]["properties"]["event_data"] == {"$ref": "#/components/schemas/TypedEventData"}
    branches = schemas["TypedEventData"]["anyOf"]
    typed = [branch["allOf"][1]["$ref"].rsplit("/", 1)[1] for branch in branches[:-1]]
    assert sorted(typed) == sorted(COMPONENTS[f"events/{t}"] for t in event_types())
    assert all(branch["allOf"][0] == {"$ref": "#/components/schemas/EventData"} for branch in branches)
    untyped = branches[-1]["allOf"][1]["properties"]["event_type"]["not"]["enum"]
    assert sorted(untyped) == event_types(), "the free-form branch must exclude exactly the contracted event types"
    batch = spec["paths"]["/core/write-events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch == {"$ref": "#/components/schemas/WriteEventsRequest"}


def test_normaliser_translates_what_openapi_30_lacks() -> None:
    contract = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"a": {"const": "x"}, "b": {"type": ["string", "null"]}, "c": {"$ref": "#/$defs/C"}},
        "$defs": {"C": {"type": ["integer"]}},
    }
    assert to_openapi30(copy.deepcopy(contract)) == {
        "type": "object",
        "properties": {
            "a": {"enum": ["x"]},
            "b": {"type": "string", "nullable": True},
            "c": {"$ref": "#/components/schemas/C"},
        },
    }
    assert defs_of(contract) == {"C": {"type": "integer"}}


# --- the Bucket accepts exactly the valid examples --------------------------------------------


@pytest.fixture
def bucket(aws_env: MotoEnv) -> Iterator[tuple[Client, MotoEnv]]:
    with Client(load_chalice_app(APP), project_dir=str(APP.parent)) as client:
        yield client, aws_env


def _post(client: Client, env: MotoEnv, path: str, body: Any) -> Any:
    requester = body.get("requester_id") if isinstance(body, dict) else None
    token_owner = requester if requester in env.tokens else "bhiv_core"
    headers = {"Content-Type": "application/json", **env.bearer(token_owner)}
    return client.http.post(path, headers=headers, body=json.dumps(body).encode())


def _stored_events(client: Client, env: MotoEnv) -> list[dict[str, Any]]:
    response = client.http.get("/core/events?limit=1000", headers=env.bearer("bhiv_core"))
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json_body["events"]
    return events


def _assert_stored_event_shape(event: dict[str, Any]) -> None:
    errors = [e.message for e in contract_validator("stored_event").iter_errors(event)]
    assert not errors, errors
    models.StoredEvent.model_validate_json(json.dumps(event))


@pytest.mark.parametrize(
    ("name", "valid", "path"), all_examples(lambda name: name in ("write_event_request", "write_events_request"))
)
def test_bucket_takes_write_examples(bucket: tuple[Client, MotoEnv], name: str, valid: bool, path: Path) -> None:
    client, env = bucket
    body = json.loads(path.read_text(encoding="utf-8"))
    route = "/core/write-event" if name == "write_event_request" else "/core/write-events"
    response = _post(client, env, route, body)
    stored = _stored_events(client, env)
    if not valid:
        assert response.status_code in (413, 422), response.body
        assert response.json_body["success"] is False
        assert stored == []
        return
    assert response.status_code == (200 if name == "write_event_request" else 201), response.body
    sent = [body["event_data"]] if name == "write_event_request" else [item["event_data"] for item in body["events"]]
    if name == "write_events_request":
        assert [r["status"] for r in response.json_body["results"]] == ["stored"] * len(sent)
    assert sorted(json.dumps(e["event_data"], sort_keys=True) for e in stored) == sorted(
        json.dumps(data, sort_keys=True) for data in sent
    )
    for event in stored:
        _assert_stored_event_shape(event)
        assert event["requester_id"] == body["requester_id"]
        assert event["timestamp"] == event["received_at"]  # the server's clock, never the body's


@pytest.mark.parametrize(("name", "valid", "path"), all_examples(lambda name: name.startswith("events/")))
def test_bucket_holds_events_to_their_type_contract(
    bucket: tuple[Client, MotoEnv], name: str, valid: bool, path: Path
) -> None:
    client, env = bucket
    event_data = json.loads(path.read_text(encoding="utf-8"))
    assert event_data.get("event_type") == name.removeprefix("events/"), "an example must be of its own type"
    response = _post(client, env, "/core/write-event", {"requester_id": "bhiv_core", "event_data": event_data})
    if valid:
        assert response.status_code == 200, response.body
        event_id = response.json_body["event_id"]
        read = client.http.get(f"/core/events/{event_id}", headers=env.bearer("bhiv_core"))
        assert read.status_code == 200
        _assert_stored_event_shape(read.json_body["event"])
        assert read.json_body["event"]["event_data"] == event_data
    else:
        assert response.status_code == 422, response.body
        assert response.json_body["error"]["field"].startswith("event_data")
        assert _stored_events(client, env) == []
    # the same event inside a batch: stored, or refused on its own without sinking its neighbour
    batch = {
        "requester_id": "bhiv_core",
        "events": [{"event_data": event_data}, {"event_data": {"event_type": "neighbour"}}],
    }
    results = _post(client, env, "/core/write-events", batch).json_body["results"]
    assert [r["status"] for r in results] == [("stored" if valid else "error"), "stored"]
    if not valid:
        assert results[0]["error"]["status"] == 422
        assert results[0]["error"]["field"].startswith("events.0.event_data")

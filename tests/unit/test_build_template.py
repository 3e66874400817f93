"""scripts/build_template.py: the deployable template carries the specs of openapi/ at the edge.

The built template is transformed with aws-sam-translator and linted with cfn-lint offline, as
template.yaml is in test_template.py; every operation of each spec must reach API Gateway with the
request validator and a Lambda proxy integration to the function serving it; the request models
use only keywords the gateway enforces, apply to every content type, and never refuse what the
spec allows; and whatever the gateway answers by itself is the project's JSON error envelope with
the status the function would give.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator
from openapi_schema_validator import OAS30Validator
from samtranslator.translator.transform import transform
from scripts import build_template

from bhiv.local.template import _CfnLoader
from tests.unit.test_template import (
    PSEUDO_PARAMETERS,
    REGION,
    _describe,
    _lint,
    _NoIamManagedPolicyLoader,
    _refuse_network,
    _translator_artifact,
)

ROOT = Path(__file__).resolve().parents[2]
HTTP_METHODS = set(build_template.HTTP_METHODS)


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_network)
        mp.setattr(socket, "create_connection", _refuse_network)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def built_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "template.yaml"
    assert build_template.main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def built(built_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(built_path.read_text(encoding="utf-8"), Loader=_CfnLoader)
    return doc


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return build_template.load(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def cfn(built: dict[str, Any], built_path: Path, offline: None) -> dict[str, Any]:
    packaged = copy.deepcopy(built)
    for name, resource in packaged["Resources"].items():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                # sam build resolves local paths against the built template's directory
                target = (built_path.parent / props[key]).resolve()
                if resource["Type"] == "AWS::Serverless::LayerVersion":
                    # the layer `make package` builds for the Lambda platform, deployed as is
                    assert target == (ROOT / "build" / "layer").resolve(), f"{name}.{key} {props[key]!r}"
                    assert "Metadata" not in resource
                else:
                    assert target.is_dir(), f"{name}.{key} {props[key]!r}"
                props[key] = f"s3://bhiv-artifacts/{name}.zip"
    loader: Any = _NoIamManagedPolicyLoader()
    transformed: dict[str, Any] = transform(packaged, dict(PSEUDO_PARAMETERS), loader)
    return transformed


def _spec(api: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / build_template.APIS[api]).read_text(encoding="utf-8"))
    return spec


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def _served_by(source: dict[str, Any], api: str) -> dict[tuple[str, str], str]:
    """(path, method) -> function, read from template.yaml's Api events (independently of the script)."""
    routes = {}
    for name, resource in source["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for event in (resource["Properties"].get("Events") or {}).values():
            props = event.get("Properties") or {}
            if event["Type"] == "Api" and props.get("RestApiId") == {"Ref": api}:
                routes[(props["Path"], props["Method"].lower())] = name
    return routes


# --- transform and lint ------------------------------------------------------------------------------


def test_built_sam_template_lints_clean(built_path: Path, offline: None) -> None:
    assert _describe(_lint(built_path.read_text(encoding="utf-8"))) == []


def test_built_template_transforms_and_lints_clean(cfn: dict[str, Any]) -> None:
    matches = _lint(json.dumps(cfn))
    assert _describe([m for m in matches if not _translator_artifact(m, cfn)]) == []


def test_source_template_has_no_definition_bodies(source: dict[str, Any]) -> None:
    """The specs are generated into the built template, never copied into template.yaml."""
    for api in build_template.APIS:
        assert source["Resources"][api]["Type"] == "AWS::Serverless::Api"
        assert not {"DefinitionBody", "DefinitionUri"} & set(source["Resources"][api]["Properties"]), api


# --- every operation validated and integrated ----------------------------------------------------------


@pytest.mark.parametrize("api", sorted(build_template.APIS))
def test_every_operation_is_validated_and_integrated_with_its_function(
    api: str, cfn: dict[str, Any], source: dict[str, Any]
) -> None:
    rest_api = cfn["Resources"][api]
    assert rest_api["Type"] == "AWS::ApiGateway::RestApi"
    body = rest_api["Properties"]["Body"]
    assert body["x-amazon-apigateway-request-validators"] == {
        "all": {"validateRequestBody": True, "validateRequestParameters": True}
    }
    served = _served_by(source, api)
    operations = _operations(_spec(api))
    assert set(operations) == set(served)
    for (path, method), spec_operation in operations.items():
        operation = body["paths"][path][method]
        assert operation["operationId"] == spec_operation["operationId"]
        assert operation["x-amazon-apigateway-request-validator"] == "all", (path, method)
        integration = operation["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and integration["httpMethod"] == "POST", (path, method)
        function = served[(path, method)]
        assert integration["uri"] == {
            "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/"
            f"${{{function}.Arn}}/invocations"
        }, (path, method)
        assert cfn["Resources"][function]["Type"] == "AWS::Lambda::Function"
    # API Gateway may invoke each function for each of its routes (SAM's permissions from the events)
    permissions = [
        res["Properties"]["FunctionName"]
        for res in cfn["Resources"].values()
        if res["Type"] == "AWS::Lambda::Permission" and res["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    for function in set(served.values()):
        assert {"Ref": function} in permissions, function


# --- the request models: only what the gateway enforces, never stricter than the specs -------------------

# The keywords API Gateway's models enforce as documented (JSON Schema draft 4 without anyOf, oneOf,
# allOf, not and additionalProperties). Listed here on purpose, independently of the script.
GATEWAY_KEYWORDS = {
    "$ref",
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "title",
    "description",
}


def _keywords(model: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(model, dict):
        for key, value in model.items():
            found.add(key)
            if key == "properties":
                for sub in value.values():
                    found |= _keywords(sub)
            elif key == "items":
                found |= _keywords(value)
    return found


def _gateway_validator(body: dict[str, Any], path: str, method: str, content_type: str) -> Draft4Validator:
    """The model API Gateway picks for a request: its content type's, else ``$default``'s."""
    content = body["paths"][path][method]["requestBody"]["content"]
    media = content.get(content_type) or content["$default"]
    return Draft4Validator({**media["schema"], "components": body.get("components", {})})


def _spec_validator(spec: dict[str, Any], schema: dict[str, Any]) -> OAS30Validator:
    return OAS30Validator({**schema, "components": spec["components"]})


WRONG_VALUES: tuple[Any, ...] = (None, 42, "x" * 300, [], {})


def _mutations(example: Any) -> Iterator[Any]:
    """Near misses of a valid body: each field dropped, retyped or joined by an unknown one, recursively."""
    yield 42
    yield "not an object"
    if isinstance(example, dict):
        yield {**example, "unexpected_field": 1}
        for key, value in example.items():
            yield {k: v for k, v in example.items() if k != key}
            for wrong in WRONG_VALUES:
                yield {**example, key: wrong}
            for inner in _mutations(value):
                yield {**example, key: inner}
    elif isinstance(example, list) and example:
        yield []
        yield [*example, *example] * 60
        for inner in _mutations(example[0]):
            yield [inner, *example[1:]]


def test_the_build_lists_the_gateway_keywords() -> None:
    assert build_template.SUPPORTED_KEYWORDS == GATEWAY_KEYWORDS


@pytest.mark.parametrize("api", sorted(build_template.APIS))
def test_models_use_only_keywords_the_gateway_enforces(api: str, built: dict[str, Any]) -> None:
    body = built["Resources"][api]["Properties"]["DefinitionBody"]
    models = list(body.get("components", {}).get("schemas", {}).values())
    for item in body["paths"].values():
        for operation in item.values():
            models += [media["schema"] for media in operation.get("requestBody", {}).get("content", {}).values()]
    for model in models:
        assert _keywords(model) <= GATEWAY_KEYWORDS, sorted(_keywords(model) - GATEWAY_KEYWORDS)
        Draft4Validator.check_schema(model)


@pytest.mark.parametrize("keyword", ["anyOf", "oneOf", "additionalProperties", "uniqueItems", "minProperties"])
def test_a_model_keyword_the_gateway_does_not_support_fails_the_build(keyword: str) -> None:
    """Known unsupported keywords are converted away; any other unknown keyword stops the build."""
    spec = _spec("BucketApi")
    event_data = spec["components"]["schemas"]["EventData"]
    value: Any = {"anyOf": [{"required": ["x"]}], "oneOf": [{"required": ["x"]}]}.get(keyword, 1)
    event_data[keyword] = False if keyword == "additionalProperties" else value
    routes = build_template.api_routes(build_template.load(ROOT / "template.yaml"), "BucketApi")
    if keyword in build_template.LOOSENED_KEYWORDS:
        converted = build_template.definition_body(spec, routes)
        assert keyword not in json.dumps(converted["components"])
    else:
        with pytest.raises(build_template.BuildError, match=keyword):
            build_template.definition_body(spec, routes)


@pytest.mark.parametrize("api", sorted(build_template.APIS))
def test_the_gateway_never_refuses_what_the_spec_allows(api: str, built: dict[str, Any]) -> None:
    """Each spec example passes the gateway model; every near miss it refuses, the spec refuses too."""
    spec = _spec(api)
    body = built["Resources"][api]["Properties"]["DefinitionBody"]
    bodies = 0
    for (path, method), spec_operation in _operations(spec).items():
        spec_body = spec_operation.get("requestBody")
        operation = body["paths"][path][method]
        if spec_body is None:
            assert "requestBody" not in operation, (path, method)
            continue
        bodies += 1
        assert operation["requestBody"]["required"] == spec_body.get("required", False)
        media = spec_body["content"]["application/json"]
        full = _spec_validator(spec, media["schema"])
        for content_type in ("application/json", "text/plain"):
            edge = _gateway_validator(body, path, method, content_type)
            for name, example in (media.get("examples") or {}).items():
                assert full.is_valid(example["value"]), name
                assert edge.is_valid(example["value"]), f"{api} {method.upper()} {path} example {name}"
                for near_miss in _mutations(example["value"]):
                    if not edge.is_valid(near_miss):
                        assert not full.is_valid(near_miss), (path, near_miss)
    assert bodies >= 1


@pytest.mark.parametrize("api", sorted(build_template.APIS))
def test_parameters_keep_names_places_and_required(api: str, built: dict[str, Any]) -> None:
    """The gateway checks only that required parameters are present; those are the specs'."""
    spec = _spec(api)
    body = built["Resources"][api]["Properties"]["DefinitionBody"]
    for (path, method), spec_operation in _operations(spec).items():
        operation = body["paths"][path][method]
        want = set()
        for parameter in [*spec["paths"][path].get("parameters", []), *spec_operation.get("parameters", [])]:
            if "$ref" in parameter:
                parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
            want.add((parameter["name"], parameter["in"], bool(parameter.get("required", False))))
        got_parameters = {(p["name"], p["in"], bool(p.get("required", False))) for p in operation.get("parameters", [])}
        assert got_parameters == want, (path, method)


def test_request_models_keep_their_validation(built: dict[str, Any]) -> None:
    """A body the Bucket's write contract refuses for a missing or mistyped field is refused at the edge too."""
    body = built["Resources"]["BucketApi"]["Properties"]["DefinitionBody"]
    edge = _gateway_validator(body, "/core/write-event", "post", "application/json")
    assert edge.is_valid({"requester_id": "bhiv_core", "event_data": {"event_type": "page_view"}})
    assert not edge.is_valid({"requester_id": "bhiv_core"})  # event_data missing
    assert not edge.is_valid({"requester_id": "", "event_data": {"event_type": "page_view"}})
    assert not edge.is_valid({"requester_id": "bhiv_core", "event_data": {"event_type": "no spaces"}})
    # unknown fields and typed event data are the function's to refuse (422): the gateway can't
    assert edge.is_valid({"requester_id": "bhiv_core", "event_data": {"event_type": "x"}, "extra": 1})


@pytest.mark.parametrize(
    ("api", "path"),
    [
        ("BucketApi", "/core/write-event"),
        ("BucketApi", "/core/write-events"),
        ("KarmaApi", "/v1/event"),
        ("ExecutorApi", "/api/workflow/execute"),
    ],
)
def test_a_text_plain_body_is_validated_at_the_edge(api: str, path: str, built: dict[str, Any]) -> None:
    """The functions read any body as JSON, so the gateway must validate every content type."""
    content = built["Resources"][api]["Properties"]["DefinitionBody"]["paths"][path]["post"]["requestBody"]["content"]
    assert content["$default"] == content["application/json"]
    edge = _gateway_validator(built["Resources"][api]["Properties"]["DefinitionBody"], path, "post", "text/plain")
    assert not edge.is_valid({})  # every write body has required fields
    assert not edge.is_valid("hello")  # and is an object


def test_nullable_becomes_draft4_without_refusing_null() -> None:
    converted = build_template.convert_schema(
        {"type": "string", "nullable": True, "maxLength": 3, "enum": ["a"], "example": "a", "default": "a"}
    )
    assert converted == {"maxLength": 3, "enum": ["a", None]}
    validator = Draft4Validator(converted)
    assert validator.is_valid(None) and validator.is_valid("a") and not validator.is_valid("b")
    assert build_template.convert_schema({"oneOf": [{"type": "integer", "format": "int64"}]}) == {}


def test_all_of_is_merged_and_conflicts_are_loosened() -> None:
    schemas = {"Base": {"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "maxLength": 2}}}}
    merged = build_template.convert_schema(
        {
            "allOf": [
                {"$ref": "#/components/schemas/Base"},
                {"type": "object", "required": ["b"], "properties": {"a": {"type": "integer"}, "b": {"minLength": 1}}},
                {"minLength": 1},
                {"minLength": 2},
            ]
        },
        schemas,
    )
    assert merged == {
        "type": "object",
        "required": ["a", "b"],
        "properties": {"a": {"type": "string", "maxLength": 2}, "b": {"minLength": 1}},
    }


# --- gateway responses: the project's envelope, the function's statuses -----------------------------------

# What API Gateway answers by itself, and the status and code the functions give for the same request.
EXPECTED_GATEWAY_RESPONSES = {
    "BAD_REQUEST_BODY": (422, "validation_error"),
    "BAD_REQUEST_PARAMETERS": (400, "invalid_parameter"),
    "MISSING_AUTHENTICATION_TOKEN": (404, "not_found"),
    "UNAUTHORIZED": (401, "unauthorized"),
    "ACCESS_DENIED": (403, "forbidden"),
    "THROTTLED": (429, "rate_limited"),
    "QUOTA_EXCEEDED": (429, "rate_limited"),
    "REQUEST_TOO_LARGE": (413, "payload_too_large"),
    "DEFAULT_4XX": (None, "bad_request"),
    "DEFAULT_5XX": (None, "service_unavailable"),
}
# Values the gateway substitutes, with the characters that break naive templates.
HOSTILE_CONTEXT = {
    "$context.error.messageString": json.dumps('Invalid request body: "event_data" is \\ required'),
    "$context.error.message": 'Invalid request body: "event_data" is \\ required',
    "$context.error.validationErrorString": '[object has missing required properties (["event_data"])]',
    "$context.requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
}


def _render(template: str) -> str:
    for name in sorted(HOSTILE_CONTEXT, key=len, reverse=True):
        template = template.replace(name, HOSTILE_CONTEXT[name])
    assert "$" not in template, f"unrendered variable in {template!r}"
    return template


@pytest.mark.parametrize("api", sorted(build_template.APIS))
def test_every_gateway_response_is_the_project_envelope(api: str, cfn: dict[str, Any]) -> None:
    body = cfn["Resources"][api]["Properties"]["Body"]
    responses = body["x-amazon-apigateway-gateway-responses"]
    assert set(responses) == set(EXPECTED_GATEWAY_RESPONSES)
    for kind, (status, code) in EXPECTED_GATEWAY_RESPONSES.items():
        response = responses[kind]
        assert response.get("statusCode") == status, kind
        assert set(response["responseTemplates"]) == {"application/json"}, kind
        rendered = json.loads(_render(response["responseTemplates"]["application/json"]))
        assert rendered["success"] is False, kind
        assert rendered["error"]["code"] == code, kind
        assert isinstance(rendered["error"]["message"], str) and rendered["error"]["message"], kind
        assert response["responseParameters"]["gatewayresponse.header.Content-Type"] == "'application/json'"


def test_gateway_statuses_are_the_functions(built: dict[str, Any]) -> None:
    """Each status the gateway answers on its own is one the spec documents for the function."""
    documented = {
        int(status)
        for api in build_template.APIS
        for operation in _operations(_spec(api)).values()
        for status in operation.get("responses", {})
        if str(status).isdigit()
    }
    for kind, (status, _code) in EXPECTED_GATEWAY_RESPONSES.items():
        if status is not None and kind not in ("MISSING_AUTHENTICATION_TOKEN", "THROTTLED", "QUOTA_EXCEEDED"):
            assert status in documented, kind


def test_a_route_without_its_operation_is_refused(source: dict[str, Any]) -> None:
    extra = copy.deepcopy(source)
    events = extra["Resources"]["KarmaFunction"]["Properties"]["Events"]
    events["Extra"] = {
        "Type": "Api",
        "Properties": {"Path": "/nope", "Method": "get", "RestApiId": {"Ref": "KarmaApi"}},
    }
    with pytest.raises(build_template.BuildError, match="/nope"):
        build_template.build(extra, ROOT, ROOT, ROOT / "build")

    missing = copy.deepcopy(source)
    del missing["Resources"]["KarmaFunction"]["Properties"]["Events"]["QTable"]
    with pytest.raises(build_template.BuildError, match="q-table"):
        build_template.build(missing, ROOT, ROOT, ROOT / "build")


def test_a_hand_copied_definition_is_refused(source: dict[str, Any]) -> None:
    copied = copy.deepcopy(source)
    copied["Resources"]["ExecutorApi"]["Properties"]["DefinitionBody"] = {"openapi": "3.0.3", "paths": {}}
    with pytest.raises(build_template.BuildError, match="ExecutorApi"):
        build_template.build(copied, ROOT, ROOT, ROOT / "build")


# --- throttling: stage-wide in template.yaml, per write route from requesters.yaml ------------------------

LIMITED_REQUESTERS = {
    "rate_limits": {"default": {"per_second": 20, "burst": 200}},
    "requesters": {
        "writer": {"scopes": ["events:write"], "rate_limit": {"per_second": 100, "burst": 1000}},
        "core": {"scopes": ["events:write", "karma:write", "workflows:execute"]},
        "reader": {"scopes": ["events:read"], "rate_limit": {"per_second": 1, "burst": 1}},
        "ops": {"scopes": ["workflows:execute"], "rate_limit": None},
    },
}


def _stage_settings(cfn: dict[str, Any], api: str) -> dict[tuple[str, str], dict[str, Any]]:
    stages = [
        res
        for res in cfn["Resources"].values()
        if res["Type"] == "AWS::ApiGateway::Stage" and res["Properties"]["RestApiId"] == {"Ref": api}
    ]
    assert len(stages) == 1, api
    return {(s["ResourcePath"], s["HttpMethod"]): s for s in stages[0]["Properties"].get("MethodSettings", [])}


def test_every_stage_is_throttled(cfn: dict[str, Any], source: dict[str, Any]) -> None:
    for api in build_template.APIS:
        stage_wide = _stage_settings(cfn, api)[("/*", "*")]
        assert stage_wide["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRate"}, api
        assert stage_wide["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurst"}, api
    plan = cfn["Resources"]["ApiUsagePlan"]["Properties"]
    assert {stage["ApiId"]["Ref"] for stage in plan["ApiStages"]} == set(build_template.APIS)
    assert plan["Throttle"] == {"RateLimit": {"Ref": "ApiThrottleRate"}, "BurstLimit": {"Ref": "ApiThrottleBurst"}}


def test_write_routes_are_throttled_at_the_sum_of_their_callers_limits(source: dict[str, Any], offline: None) -> None:
    built = build_template.build(source, ROOT, ROOT, ROOT / "build", LIMITED_REQUESTERS)
    settings = {
        api: {
            (s["ResourcePath"], s["HttpMethod"]): s
            for s in built["Resources"][api]["Properties"].get("MethodSettings", [])
        }
        for api in build_template.APIS
    }
    write = settings["BucketApi"][("/~1core~1write-event", "POST")]
    assert (write["ThrottlingRateLimit"], write["ThrottlingBurstLimit"]) == (120, 1200)  # writer + core
    batch = settings["BucketApi"][("/~1core~1write-events", "POST")]
    assert (batch["ThrottlingRateLimit"], batch["ThrottlingBurstLimit"]) == (120, 1200)
    direct = settings["KarmaApi"][("/~1v1~1event", "POST")]
    assert (direct["ThrottlingRateLimit"], direct["ThrottlingBurstLimit"]) == (20, 200)  # core (the default)
    assert ("/~1api~1workflow~1execute", "POST") not in settings["ExecutorApi"]  # ops is unlimited
    assert settings["ExecutorApi"] == {}  # the stage-wide limit comes from template.yaml's Globals
    # what API Gateway gets after the transform: the stage carries the routes' limits
    packaged = copy.deepcopy(built)
    for resource in packaged["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in (resource.get("Properties") or {}):
                resource["Properties"][key] = "s3://bhiv-artifacts/code.zip"
    cfn = transform(packaged, dict(PSEUDO_PARAMETERS), _NoIamManagedPolicyLoader())
    assert _stage_settings(cfn, "BucketApi")[("/~1core~1write-event", "POST")]["ThrottlingRateLimit"] == 120


def test_route_limits_come_from_requesters_yaml_only(source: dict[str, Any]) -> None:
    duplicated = copy.deepcopy(source)
    duplicated["Resources"]["BucketApi"]["Properties"]["MethodSettings"] = [
        {"ResourcePath": "/~1core~1write-event", "HttpMethod": "POST", "ThrottlingRateLimit": 5}
    ]
    with pytest.raises(build_template.BuildError, match=r"requesters\.yaml"):
        build_template.build(duplicated, ROOT, ROOT, ROOT / "build", LIMITED_REQUESTERS)


def test_gateway_limits_are_in_line_with_the_local_ones(built: dict[str, Any], source: dict[str, Any]) -> None:
    """Drift: no requester within its local limit is refused by a route or stage limit of the gateway."""
    requesters = yaml.safe_load(build_template.REQUESTERS.read_text(encoding="utf-8"))
    default = (requesters.get("rate_limits") or {}).get("default")
    stage_rate = source["Parameters"]["ApiThrottleRate"]["Default"]
    stage_burst = source["Parameters"]["ApiThrottleBurst"]["Default"]
    for api, routes in build_template.RATE_LIMITED_ROUTES.items():
        settings = {
            (s["ResourcePath"], s["HttpMethod"]): s
            for s in built["Resources"][api]["Properties"].get("MethodSettings", [])
        }
        for (path, method), scope in routes.items():
            callers = [r for r in requesters["requesters"].values() if scope in r.get("scopes", [])]
            limits = [r.get("rate_limit", default) for r in callers]
            route = settings.get((build_template.method_setting_path(path), method.upper()))
            if not limits or any(limit is None for limit in limits):
                assert route is None, (api, path)  # unlimited locally: only the stage limit
                continue
            assert route is not None, (api, path)
            assert route["ThrottlingRateLimit"] == sum(limit["per_second"] for limit in limits if limit), (api, path)
            assert route["ThrottlingBurstLimit"] == sum(limit["burst"] for limit in limits if limit), (api, path)
            assert route["ThrottlingRateLimit"] <= stage_rate and route["ThrottlingBurstLimit"] <= stage_burst


# --- the ai action's backend, per stage --------------------------------------------------------------------


def test_the_executor_may_invoke_only_its_stages_bedrock_model(cfn: dict[str, Any], source: dict[str, Any]) -> None:
    assert source["Parameters"]["AiBackend"]["Default"] == "deterministic-local"  # no model unless chosen
    env = cfn["Resources"]["ExecutorFunction"]["Properties"]["Environment"]["Variables"]
    assert env["AI_BACKEND"] == {"Ref": "AiBackend"} and env["AI_MODEL_ID"] == {"Ref": "AiModelId"}
    grants = []
    for resource in cfn["Resources"].values():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies") or []:
            text = json.dumps(policy)
            if "bedrock:" in text:
                grants.append(policy)
    assert len(grants) == 1
    condition, granted, otherwise = grants[0]["Fn::If"]
    assert condition == "UseBedrock" and otherwise == {"Ref": "AWS::NoValue"}
    assert cfn["Conditions"]["UseBedrock"] == {"Fn::Equals": [{"Ref": "AiBackend"}, "bedrock"]}
    (statement,) = granted["PolicyDocument"]["Statement"]
    assert statement["Action"] in (["bedrock:InvokeModel"], "bedrock:InvokeModel")
    assert statement["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:bedrock:${AWS::Region}::foundation-model/${AiModelId}"
    }

"""scripts/build_template.py: the deployable template carries the specs of openapi/ at the edge.

The built template is transformed with aws-sam-translator and linted with cfn-lint offline, as
template.yaml is in test_template.py; every operation of each spec must reach API Gateway with the
request validator and a Lambda proxy integration to the function serving it, and the request
schemas API Gateway gets must be the specs' (differing only by the documented conversions).
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
# Keywords the conversion may drop from a spec's schema (see the script's docstring).
DROPPED = build_template.DROPPED_KEYWORDS | {"exclusiveMinimum", "exclusiveMaximum"}


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


# --- the request schemas are the specs' -----------------------------------------------------------------


def _same_but_converted(spec: Any, got: Any, where: str) -> None:
    """``got`` is ``spec`` but for the documented conversions (checked node by node)."""
    if isinstance(spec, list):
        assert isinstance(got, list) and len(got) == len(spec), where
        for i, (a, b) in enumerate(zip(spec, got, strict=True)):
            _same_but_converted(a, b, f"{where}/{i}")
        return
    if not isinstance(spec, dict):
        assert got == spec, where
        return
    assert isinstance(got, dict), where
    nullable = spec.get("nullable") is True
    expected_keys = {
        ("anyOf" if key == "oneOf" else key)
        for key in spec
        if key not in DROPPED
        and not (key == "format" and spec[key] in build_template.DROPPED_FORMATS)
        and not (nullable and key in ("type", "nullable"))
    }
    assert set(got) == expected_keys, f"{where}: {sorted(set(got) ^ expected_keys)}"
    for key, value in spec.items():
        target = "anyOf" if key == "oneOf" else key
        if target not in got:
            continue
        if key == "enum" and nullable:
            assert got[key] == value + ([] if None in value else [None]), where
        elif key in ("properties", "patternProperties", "definitions"):
            assert set(got[key]) == set(value), where
            for name in value:
                _same_but_converted(value[name], got[key][name], f"{where}/{key}/{name}")
        elif key in ("enum", "required"):
            assert got[key] == value, where
        else:
            _same_but_converted(value, got[key], f"{where}/{key}")


@pytest.mark.parametrize("api", sorted(build_template.APIS))
def test_request_schemas_are_the_specs(api: str, built: dict[str, Any]) -> None:
    spec = _spec(api)
    body = built["Resources"][api]["Properties"]["DefinitionBody"]
    components = body.get("components", {}).get("schemas", {})
    for name, schema in components.items():
        _same_but_converted(spec["components"]["schemas"][name], schema, f"{api}/components/schemas/{name}")
        Draft4Validator.check_schema(schema)
    bodies = 0
    for (path, method), spec_operation in _operations(spec).items():
        operation = body["paths"][path][method]
        spec_body = spec_operation.get("requestBody")
        if spec_body is None:
            assert "requestBody" not in operation, (path, method)
        else:
            bodies += 1
            assert operation["requestBody"]["required"] == spec_body.get("required", False)
            assert set(operation["requestBody"]["content"]) == set(spec_body["content"])
            for media, content in spec_body["content"].items():
                got = operation["requestBody"]["content"][media]["schema"]
                _same_but_converted(content["schema"], got, f"{api} {method.upper()} {path}")
                # The spec's own examples pass the gateway's (draft 4) validation; a non-object does not.
                validator = Draft4Validator({**got, "components": {"schemas": components}})
                for example_name, example in (content.get("examples") or {}).items():
                    errors = [e.message for e in validator.iter_errors(example["value"])]
                    assert errors == [], f"{api} {method.upper()} {path} example {example_name}: {errors}"
                assert not validator.is_valid(42)
        # parameters: the same names, places and required-ness (all the gateway checks)
        want = set()
        for parameter in [*spec["paths"][path].get("parameters", []), *spec_operation.get("parameters", [])]:
            if "$ref" in parameter:
                parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
            want.add((parameter["name"], parameter["in"], bool(parameter.get("required", False))))
        got_parameters = {(p["name"], p["in"], bool(p.get("required", False))) for p in operation.get("parameters", [])}
        assert got_parameters == want, (path, method)
    assert bodies >= 1


def test_request_schemas_keep_their_validation(built: dict[str, Any]) -> None:
    """A body the Bucket's write contract refuses is refused at the edge too."""
    body = built["Resources"]["BucketApi"]["Properties"]["DefinitionBody"]
    schema = body["paths"]["/core/write-event"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = Draft4Validator({**schema, "components": body["components"]})
    assert validator.is_valid({"requester_id": "bhiv_core", "event_data": {"event_type": "page_view"}})
    assert not validator.is_valid({"requester_id": "bhiv_core"})  # event_data missing
    assert not validator.is_valid({"requester_id": "bhiv_core", "event_data": {"event_type": "x"}, "extra": 1})
    workflow = {"event_type": "workflow_execution", "trace_id": "t"}  # no status, execution_result
    assert not validator.is_valid({"requester_id": "bhiv_core", "event_data": workflow})


# --- the script's conversions and refusals ----------------------------------------------------------------


def test_nullable_becomes_draft4_without_refusing_null() -> None:
    converted = build_template.convert_schema(
        {"type": "string", "nullable": True, "maxLength": 3, "enum": ["a"], "example": "a", "default": "a"}
    )
    assert converted == {"maxLength": 3, "enum": ["a", None]}
    validator = Draft4Validator(converted)
    assert validator.is_valid(None) and validator.is_valid("a") and not validator.is_valid("b")
    assert build_template.convert_schema({"oneOf": [{"type": "integer", "format": "int64"}]}) == {
        "anyOf": [{"type": "integer"}]
    }


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

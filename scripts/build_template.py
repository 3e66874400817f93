"""Generate the deployable template: template.yaml with the OpenAPI specs of openapi/ at the edge.

    python scripts/build_template.py [--template template.yaml] [--out build/template.yaml]
    sam build --template build/template.yaml && sam deploy --guided

Each ``AWS::Serverless::Api`` of ``APIS`` gets a ``DefinitionBody`` generated from its spec, so API
Gateway validates request bodies and parameters before a function runs. The specs are never copied
into template.yaml by hand; template.yaml stays deployable on its own (its ``Api`` events describe
the same routes, without validation), and the drift tests keep events, specs and Chalice routes equal.

Per operation the generated definition adds

* ``x-amazon-apigateway-integration``: Lambda proxy (``aws_proxy``, ``POST``) to the function whose
  ``Api`` event in template.yaml serves that path and method (an operation no event serves, or an
  event no operation describes, is an error: the definition and the events must agree);
* ``x-amazon-apigateway-request-validator: all``, with the document-level validator ``all``
  (``validateRequestBody`` and ``validateRequestParameters``).

API Gateway imports a subset of OpenAPI 3.0 (its "important notes for REST APIs"): models are JSON
Schema draft 4 *without* ``anyOf``, ``oneOf``, ``allOf``, ``not`` and ``additionalProperties``, and
several other keywords are unsupported. What the import would reject, ignore or misread is
converted here, never in the specs (which the local stack and Schemathesis use as they are). Every
conversion only *loosens* what the gateway checks; the function still validates everything the
spec says, so no request the spec allows is refused at the edge. After conversion every model is
checked against ``SUPPORTED_KEYWORDS``: a keyword outside it fails the build (a new keyword in a
spec needs a decision here, not a silent pass-through). docs/deploy.md has the table of which rule
is enforced where.

``servers``, ``security``, ``components.securitySchemes``
    dropped: ``servers`` names the local stack; the only importable scheme type is ``apiKey``
    (bearer tokens are ``type: http``), and the functions check the tokens themselves.
response ``content``, ``headers``, ``links`` and ``components.responses``
    dropped (each response keeps its status and description): responses are not validated, a
    method response's schema must be an object (``oneOf`` in the Executor's 200 is not), and
    ``$ref`` to a reference response is not supported. Schemas only responses used go with them.
``$ref`` to ``components.parameters``
    inlined. Parameters keep ``name``, ``in``, ``required``, ``description`` and their schema's
    ``type``: the gateway checks only that required parameters are present (not their type,
    format, pattern or range: the function does).
``example``, ``examples``, ``default``, ``readOnly``, ``writeOnly``, ``deprecated``, ``discriminator``, ``xml``
    dropped from schemas and media types (annotations the import does not support).
``nullable: true``
    not a draft-4 keyword; the import would keep ``type`` and refuse ``null``. The schema drops
    ``type`` (and ``nullable``) and keeps its other keywords, which draft 4 applies only to values
    of their type, and ``null`` is added to an ``enum``: ``null`` and the right type pass.
``allOf``
    merged into the schema holding it (members' ``$ref`` resolved): ``required`` is the union
    (exact), ``properties`` are merged with the first definition of a name winning (looser than
    requiring both), other keywords are kept when no member disagrees.
``anyOf``, ``oneOf``, ``not``, ``additionalProperties``
    dropped (unsupported): typed event data, the workflow payload's alternatives, unknown fields.
``exclusiveMinimum``, ``exclusiveMaximum``, ``minItems``, ``maxItems``, ``format``
    dropped: unsupported or not documented as enforced; ``minimum`` / ``maximum`` stay.

Each body is mapped for ``application/json`` and for ``$default``: the gateway validates a body only
against the model of its content type, and the functions parse every body as JSON whatever its
label, so without ``$default`` a ``text/plain`` body would skip the edge.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bhiv.local.template import _CfnLoader  # noqa: E402

# API resource of template.yaml -> its spec (relative to the repository root)
APIS = {
    "BucketApi": "openapi/bucket.yaml",
    "KarmaApi": "openapi/karma.yaml",
    "ExecutorApi": "openapi/executor.yaml",
}
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
VALIDATOR = "all"
REQUEST_VALIDATORS = {VALIDATOR: {"validateRequestBody": True, "validateRequestParameters": True}}
INTEGRATION_URI = (
    "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${%s.Arn}/invocations"
)
# Annotations the import does not support, dropped from schemas and media types.
DROPPED_KEYWORDS = frozenset(
    {"example", "examples", "default", "readOnly", "writeOnly", "deprecated", "discriminator", "xml"}
)
# Validation keywords the gateway does not support (or does not document as enforced): dropped, so
# the edge checks less and the function, which validates the whole spec, checks the rest.
LOOSENED_KEYWORDS = frozenset(
    {"anyOf", "oneOf", "not", "additionalProperties", "exclusiveMinimum", "exclusiveMaximum"}
    | {"minItems", "maxItems", "format"}
)
# Everything a generated model may contain. Anything else fails the build.
SUPPORTED_KEYWORDS = frozenset(
    {"$ref", "type", "properties", "required", "items", "enum", "minimum", "maximum"}
    | {"minLength", "maxLength", "pattern", "title", "description"}
)
PARAMETER_KEYS = ("name", "in", "required", "description")
# Bodies labelled with a content type the spec does not list are validated against this model key.
DEFAULT_CONTENT = "$default"
JSON_CONTENT = "application/json"

# Answers API Gateway gives itself (the function never runs), in the services' error envelope and
# with the status the function would give. ``statusCode`` None keeps the gateway's own status
# (DEFAULT_4XX/5XX cover many). The templates embed only values that are JSON-safe as they are:
# ``$context.error.messageString`` is the message already quoted for JSON, ``$context.requestId``
# is a UUID; ``$context.error.validationErrorString`` holds double quotes and is never embedded.
GATEWAY_ERRORS: dict[str, tuple[int | None, str]] = {
    "BAD_REQUEST_BODY": (422, "validation_error"),
    "BAD_REQUEST_PARAMETERS": (400, "invalid_parameter"),
    "MISSING_AUTHENTICATION_TOKEN": (404, "not_found"),  # API Gateway's answer to an unknown route
    "UNAUTHORIZED": (401, "unauthorized"),
    "ACCESS_DENIED": (403, "forbidden"),
    "THROTTLED": (429, "rate_limited"),
    "QUOTA_EXCEEDED": (429, "rate_limited"),
    "REQUEST_TOO_LARGE": (413, "payload_too_large"),
    "DEFAULT_4XX": (None, "bad_request"),
    "DEFAULT_5XX": (None, "service_unavailable"),
}
ENVELOPE_TEMPLATE = (
    '{"success": false, "error": {"code": "%s", "message": $context.error.messageString, '
    '"request_id": "$context.requestId"}}'
)


def gateway_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for kind, (status, code) in GATEWAY_ERRORS.items():
        response: dict[str, Any] = {
            "responseTemplates": {JSON_CONTENT: ENVELOPE_TEMPLATE % code},
            "responseParameters": {"gatewayresponse.header.Content-Type": "'application/json'"},
        }
        if status is not None:
            response["statusCode"] = status
        responses[kind] = response
    return responses


Route = tuple[str, str]  # (path, lower-case method)

REQUESTERS = ROOT / "src" / "bhiv" / "requesters.yaml"
# The routes the functions rate-limit per requester (token buckets configured in requesters.yaml),
# with the scope a caller needs there. At the edge each gets the sum of the limits of the requesters
# that may call it: no requester within its own limit is throttled by the gateway, and the gateway
# caps the route at what all of them together may send.
RATE_LIMITED_ROUTES: dict[str, dict[Route, str]] = {
    "BucketApi": {("/core/write-event", "post"): "events:write", ("/core/write-events", "post"): "events:write"},
    "KarmaApi": {("/v1/event", "post"): "karma:write"},
    "ExecutorApi": {("/api/workflow/execute", "post"): "workflows:execute"},
}


class BuildError(Exception):
    """The template and the specs disagree (a route without its other half)."""


# --- schemas ---------------------------------------------------------------------------------------


def _resolve(schema: Any, schemas: dict[str, Any]) -> Any:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str):
        return schema
    name = ref.rsplit("/", 1)[1]
    if not ref.startswith("#/components/schemas/") or name not in schemas:
        raise BuildError(f"$ref to missing schema {ref!r} (external references are not supported)")
    return schemas[name]


def _merge_all_of(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``allOf`` members merged in (see the module docstring)."""
    if "allOf" not in schema:
        return schema
    merged: dict[str, Any] = {key: value for key, value in schema.items() if key != "allOf"}
    conflicting: set[str] = set()
    for member in schema["allOf"]:
        resolved = _resolve(member, schemas)
        if not isinstance(resolved, dict):
            raise BuildError(f"allOf member is not a schema: {member!r}")
        for key, value in _merge_all_of(resolved, schemas).items():
            if key == "properties":
                properties = merged.setdefault("properties", {})
                for name, sub in value.items():
                    properties.setdefault(name, sub)
            elif key == "required":
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            elif key in conflicting:
                continue
            elif key not in merged:
                merged[key] = value
            elif merged[key] != value and key not in ("title", "description"):
                del merged[key]  # both must hold; checking neither is the loosening
                conflicting.add(key)
    return merged


def convert_schema(schema: Any, schemas: dict[str, Any] | None = None) -> Any:
    """A request schema of a spec as API Gateway's model import takes it (see the module docstring).

    ``schemas`` are the spec's component schemas, for the ``$ref`` members of ``allOf``.
    """
    components = schemas or {}
    if isinstance(schema, list):
        return [convert_schema(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = _merge_all_of(schema, components)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DROPPED_KEYWORDS or key in LOOSENED_KEYWORDS or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: convert_schema(sub, components) for name, sub in value.items()}
        elif key in ("enum", "required"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = convert_schema(value, components)
    if schema.get("nullable") is True:
        out.pop("type", None)
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def unsupported_keywords(model: Any, where: str = "") -> list[str]:
    """``where/keyword`` of every keyword of a converted model outside SUPPORTED_KEYWORDS."""
    found: list[str] = []
    if isinstance(model, list):
        for i, item in enumerate(model):
            found += unsupported_keywords(item, f"{where}/{i}")
    elif isinstance(model, dict):
        for key, value in model.items():
            if key not in SUPPORTED_KEYWORDS:
                found.append(f"{where}/{key}")
            elif key == "properties":
                for name, sub in value.items():
                    found += unsupported_keywords(sub, f"{where}/properties/{name}")
            elif key == "items":
                found += unsupported_keywords(value, f"{where}/items")
    return found


def _refs(node: Any) -> set[str]:
    """Names of the component schemas a node references."""
    if isinstance(node, list):
        return {name for item in node for name in _refs(item)}
    if not isinstance(node, dict):
        return set()
    found = set()
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        found.add(ref.rsplit("/", 1)[1])
    for value in node.values():
        found |= _refs(value)
    return found


def _models(roots: set[str], schemas: dict[str, Any]) -> dict[str, Any]:
    """The converted component schemas that the converted request bodies reach, by name."""
    models: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in models:
            continue
        if name not in schemas:
            raise BuildError(f"$ref to missing schema {name!r} (external references are not supported)")
        models[name] = convert_schema(schemas[name], schemas)
        todo.extend(_refs(models[name]) - set(models))
    return {name: models[name] for name in schemas if name in models}


# --- operations ------------------------------------------------------------------------------------


def _resolve_parameter(parameter: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = parameter.get("$ref")
    if isinstance(ref, str):
        prefix = "#/components/parameters/"
        if not ref.startswith(prefix):
            raise BuildError(f"unsupported parameter reference {ref!r}")
        resolved: dict[str, Any] = spec["components"]["parameters"][ref[len(prefix) :]]
        return resolved
    return parameter


def convert_parameter(parameter: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    resolved = _resolve_parameter(parameter, spec)
    out = {key: copy.deepcopy(resolved[key]) for key in PARAMETER_KEYS if key in resolved}
    kind = (resolved.get("schema") or {}).get("type")
    out["schema"] = {"type": kind} if kind else {}
    return out


def _convert_responses(responses: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for status, response in responses.items():
        ref = response.get("$ref")
        if isinstance(ref, str):
            response = spec["components"]["responses"][ref.rsplit("/", 1)[1]]
        out[str(status)] = {"description": response.get("description") or ""}
    return out


def _integration(function: str) -> dict[str, Any]:
    return {
        "type": "aws_proxy",
        "httpMethod": "POST",
        "uri": {"Fn::Sub": INTEGRATION_URI % function},
        "passthroughBehavior": "when_no_match",
    }


def convert_operation(
    operation: dict[str, Any], path_parameters: list[Any], spec: dict[str, Any], function: str
) -> Any:
    out: dict[str, Any] = {}
    for key in ("operationId", "summary", "description", "tags"):
        if key in operation:
            out[key] = copy.deepcopy(operation[key])
    by_name: dict[tuple[str, str], dict[str, Any]] = {}
    for parameter in [*path_parameters, *(operation.get("parameters") or [])]:  # operation-level wins
        converted = convert_parameter(parameter, spec)
        by_name[(converted["name"], converted["in"])] = converted
    if by_name:
        out["parameters"] = list(by_name.values())
    body = operation.get("requestBody")
    if body:
        if "$ref" in body:
            raise BuildError("requestBody $ref is not supported: inline it in the spec")
        schemas = (spec.get("components") or {}).get("schemas") or {}
        content = {
            media: {"schema": convert_schema(media_type.get("schema") or {}, schemas)}
            for media, media_type in (body.get("content") or {}).items()
        }
        if JSON_CONTENT not in content:
            raise BuildError(f"request body without {JSON_CONTENT}: the functions read every body as JSON")
        content.setdefault(DEFAULT_CONTENT, copy.deepcopy(content[JSON_CONTENT]))
        out["requestBody"] = {
            **({"description": body["description"]} if "description" in body else {}),
            "required": bool(body.get("required", False)),
            "content": content,
        }
    out["responses"] = _convert_responses(operation.get("responses") or {}, spec)
    out["x-amazon-apigateway-request-validator"] = VALIDATOR
    out["x-amazon-apigateway-integration"] = _integration(function)
    return out


def definition_body(spec: dict[str, Any], routes: dict[Route, str]) -> dict[str, Any]:
    """The DefinitionBody of an API: ``spec`` converted, each operation integrated with routes' function."""
    if not str(spec.get("openapi", "")).startswith("3.0"):
        raise BuildError(f"API Gateway imports OpenAPI 3.0, not {spec.get('openapi')!r}")
    paths: dict[str, Any] = {}
    served: set[Route] = set()
    for path, item in spec["paths"].items():
        converted_item: dict[str, Any] = {}
        for method in HTTP_METHODS:
            if method not in item:
                continue
            function = routes.get((path, method))
            if function is None:
                raise BuildError(f"{method.upper()} {path} of the spec has no Api event in template.yaml")
            served.add((path, method))
            converted_item[method] = convert_operation(item[method], item.get("parameters") or [], spec, function)
        paths[path] = converted_item
    unserved = set(routes) - served
    if unserved:
        raise BuildError(f"Api events in template.yaml with no operation in the spec: {sorted(unserved)}")

    schemas = (spec.get("components") or {}).get("schemas") or {}
    models = _models(_refs(paths), schemas)
    body: dict[str, Any] = {
        "openapi": spec["openapi"],
        "info": {key: copy.deepcopy(spec["info"][key]) for key in ("title", "version") if key in spec["info"]},
        "paths": paths,
        "x-amazon-apigateway-request-validators": copy.deepcopy(REQUEST_VALIDATORS),
        "x-amazon-apigateway-gateway-responses": gateway_responses(),
    }
    if models:
        body["components"] = {"schemas": models}
    for name in models:
        if not name.isalnum():
            raise BuildError(f"model names must be alphanumeric: {name!r}")
    unsupported = [
        found for name, model in models.items() for found in unsupported_keywords(model, f"#/components/schemas/{name}")
    ]
    for path, item in paths.items():
        for method, operation in item.items():
            for media, media_type in (operation.get("requestBody") or {}).get("content", {}).items():
                unsupported += unsupported_keywords(media_type["schema"], f"{method.upper()} {path} {media}")
    if unsupported:
        raise BuildError(f"model keywords API Gateway does not support: {unsupported}")
    return body


# --- throttling --------------------------------------------------------------------------------------


def method_setting_path(path: str) -> str:
    """A path as a stage's MethodSetting names it: ``/core/events`` is ``/~1core~1events``."""
    return "/" + path.replace("/", "~1")


def route_throttles(requesters: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per API, the MethodSettings throttling each rate-limited route (see RATE_LIMITED_ROUTES).

    A route any of whose callers is unlimited (``rate_limit: null``), or a requesters file without
    rate limits, gets no route limit: the stage's limit (template.yaml) is all that applies.
    """
    default = (requesters.get("rate_limits") or {}).get("default")
    settings: dict[str, list[dict[str, Any]]] = {}
    for api, routes in RATE_LIMITED_ROUTES.items():
        for (path, method), scope in routes.items():
            limits = [
                entry.get("rate_limit", default)
                for entry in (requesters.get("requesters") or {}).values()
                if scope in (entry.get("scopes") or [])
            ]
            if not limits or any(limit is None for limit in limits):
                continue
            settings.setdefault(api, []).append(
                {
                    "ResourcePath": method_setting_path(path),
                    "HttpMethod": method.upper(),
                    "ThrottlingRateLimit": float(sum(limit["per_second"] for limit in limits)),
                    "ThrottlingBurstLimit": int(sum(limit["burst"] for limit in limits)),
                }
            )
    return settings


# --- the template ------------------------------------------------------------------------------------


def _ref_name(value: Any) -> str | None:
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    return None


def api_routes(template: dict[str, Any], api: str) -> dict[Route, str]:
    """(path, method) -> function, from the ``Api`` events of the functions that name ``api``."""
    routes: dict[Route, str] = {}
    for name, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        for event in ((resource.get("Properties") or {}).get("Events") or {}).values():
            props = event.get("Properties") or {}
            if event.get("Type") != "Api" or _ref_name(props.get("RestApiId")) != api:
                continue
            route = (str(props["Path"]), str(props["Method"]).lower())
            if route in routes:
                raise BuildError(f"{route} of {api} is served by both {routes[route]} and {name}")
            routes[route] = name
    return routes


def _relocate(uri: Any, source_dir: Path, out_dir: Path) -> Any:
    """A local CodeUri/ContentUri relative to the built template's directory (as sam build resolves it)."""
    if not isinstance(uri, str) or "://" in uri or os.path.isabs(uri):
        return uri
    relative = os.path.relpath(source_dir / uri, out_dir)
    return relative + ("/" if uri.endswith("/") else "")


def build(
    template: dict[str, Any], root: Path, source_dir: Path, out_dir: Path, requesters: dict[str, Any] | None = None
) -> dict[str, Any]:
    built = copy.deepcopy(template)
    resources = built["Resources"]
    if requesters is None:
        requesters = yaml.safe_load(REQUESTERS.read_text(encoding="utf-8"))
    throttles = route_throttles(requesters)
    for api, spec_path in APIS.items():
        resource = resources.get(api)
        if resource is None or resource.get("Type") != "AWS::Serverless::Api":
            raise BuildError(f"template has no AWS::Serverless::Api {api}")
        spec = yaml.safe_load((root / spec_path).read_text(encoding="utf-8"))
        props = resource.setdefault("Properties", {})
        if "DefinitionBody" in props or "DefinitionUri" in props:
            raise BuildError(f"{api} already has a definition: the specs are generated in, not copied")
        props["DefinitionBody"] = definition_body(spec, api_routes(template, api))
        existing = props.get("MethodSettings") or []
        for setting in throttles.get(api, []):
            if any(
                (other.get("ResourcePath"), other.get("HttpMethod")) == (setting["ResourcePath"], setting["HttpMethod"])
                for other in existing
            ):
                raise BuildError(
                    f"{api} throttles {setting['HttpMethod']} {setting['ResourcePath']} in template.yaml: "
                    "route limits come from src/bhiv/requesters.yaml"
                )
        if throttles.get(api):
            props["MethodSettings"] = [*existing, *throttles[api]]
    for resource in resources.values():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = _relocate(props[key], source_dir, out_dir)
        if resource.get("Type") == "AWS::Serverless::LayerVersion":
            # Deploy the layer `make package` built for the Lambda platform (the bhiv package, its
            # contracts and the pinned dependencies), as is: no rebuild from src/ by sam build.
            props["ContentUri"] = _relocate("build/layer/", root, out_dir)
            resource.pop("Metadata", None)
    return built


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "template.yaml")
    args = parser.parse_args(argv)
    source: Path = args.template.resolve()
    out: Path = args.out.resolve()
    try:
        built = build(load(source), ROOT, source.parent, out.parent)
    except BuildError as error:
        print(f"build_template: {error}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Generated by scripts/build_template.py from {os.path.relpath(source, out.parent)} and openapi/.\n"
    out.write_text(header + yaml.safe_dump(built, sort_keys=False, width=120, allow_unicode=True), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

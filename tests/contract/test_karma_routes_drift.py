"""Karma's routes are the same in its Chalice app, openapi/karma.yaml and template.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bhiv.local.server import load_function_module
from bhiv.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "karma.yaml"
CODE_URI = "functions/karma/"
FUNCTION = "KarmaFunction"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PUBLIC = {("/health", "get")}  # the only operations without a credential

Route = tuple[str, str]  # (path, lower-case method)


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec


def chalice_routes() -> set[Route]:
    app: Any = load_function_module(CODE_URI).app
    return {(path, method.lower()) for path, entries in app.routes.items() for method in entries}


def spec_operations() -> dict[Route, dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in load_spec()["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def template_routes() -> set[Route]:
    template = load_template()
    props = template["Resources"][FUNCTION]["Properties"]
    assert props["CodeUri"] == CODE_URI, f"{FUNCTION} no longer serves {CODE_URI}"
    routes = set()
    for event in (props.get("Events") or {}).values():
        if event.get("Type") == "Api":
            routes.add((str(event["Properties"]["Path"]), str(event["Properties"]["Method"]).lower()))
    return routes


def test_the_app_serves_routes() -> None:
    assert len(chalice_routes()) >= 6


def test_every_chalice_route_is_in_the_spec() -> None:
    missing = chalice_routes() - set(spec_operations())
    assert not missing, f"routes of {CODE_URI}app.py missing from {SPEC.name}: {sorted(missing)}"


def test_every_spec_operation_is_a_chalice_route() -> None:
    missing = set(spec_operations()) - chalice_routes()
    assert not missing, f"operations of {SPEC.name} with no Chalice route: {sorted(missing)}"


def test_template_api_events_match_the_app() -> None:
    only_template, only_app = template_routes() - chalice_routes(), chalice_routes() - template_routes()
    assert not only_template and not only_app, (
        f"{FUNCTION}'s Api events in template.yaml differ from the app's routes: "
        f"only in template {sorted(only_template)}, only in app {sorted(only_app)}"
    )


def test_path_parameters_are_declared() -> None:
    """Every `{name}` of a path is a required path parameter of each of its operations."""
    spec = load_spec()
    for (path, method), operation in spec_operations().items():
        declared = set()
        for parameter in operation.get("parameters", []):
            if "$ref" in parameter:
                parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
            if parameter["in"] == "path":
                assert parameter.get("required") is True, f"{method.upper()} {path}: {parameter['name']} not required"
                declared.add(parameter["name"])
        in_path = {part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")}
        assert declared == in_path, f"{method.upper()} {path} declares path parameters {sorted(declared)}"


def test_every_operation_has_an_id_responses_and_auth_errors() -> None:
    spec = load_spec()
    ids = [operation.get("operationId") for operation in spec_operations().values()]
    assert all(ids) and len(set(ids)) == len(ids), f"operationIds missing or repeated: {ids}"
    for (path, method), operation in spec_operations().items():
        label = f"{method.upper()} {path}"
        responses = operation.get("responses") or {}
        assert any(code.startswith("2") for code in responses), f"{label} documents no success"
        assert "503" in responses, f"{label} documents no 503 (storage unreachable)"
        secured = operation.get("security", spec.get("security"))
        if (path, method) in PUBLIC:
            assert secured == [], f"{label} is public but declares security"
            continue
        assert secured, f"{label} needs a credential but declares no security"
        assert "401" in responses, f"{label} is secured but documents no 401"
        assert "403" in responses, f"{label} is secured but documents no 403"

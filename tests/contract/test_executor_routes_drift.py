"""The Executor's routes are the same in its Chalice app, openapi/executor.yaml and template.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bhiv.local.server import load_function_module
from bhiv.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "executor.yaml"
FUNCTION = "ExecutorFunction"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

Route = tuple[str, str]  # (path, lower-case method)


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec


def chalice_routes() -> set[Route]:
    app: Any = load_function_module("functions/executor/").app
    return {(path, method.lower()) for path, entries in app.routes.items() for method in entries}


def spec_routes() -> set[Route]:
    return {(path, method) for path, item in load_spec()["paths"].items() for method in item if method in HTTP_METHODS}


def template_routes() -> set[Route]:
    props = load_template()["Resources"][FUNCTION]["Properties"]
    routes = set()
    for event in (props.get("Events") or {}).values():
        if event.get("Type") == "Api":
            routes.add((str(event["Properties"]["Path"]), str(event["Properties"]["Method"]).lower()))
    return routes


def test_the_app_serves_routes() -> None:
    assert chalice_routes() >= {
        ("/healthz", "get"),
        ("/health", "get"),
        ("/api/workflow/execute", "post"),
        ("/api/workflow/executions/{trace_id}", "get"),
    }


def test_every_chalice_route_is_in_the_spec() -> None:
    missing = chalice_routes() - spec_routes()
    assert not missing, f"routes of functions/executor/app.py missing from {SPEC.name}: {sorted(missing)}"


def test_every_spec_operation_is_a_chalice_route() -> None:
    missing = spec_routes() - chalice_routes()
    assert not missing, f"operations of {SPEC.name} with no Chalice route: {sorted(missing)}"


def test_template_api_events_match_the_app() -> None:
    assert template_routes() == chalice_routes(), (
        f"{FUNCTION}'s Api events in template.yaml differ from the app's routes: "
        f"only in template {sorted(template_routes() - chalice_routes())}, "
        f"only in app {sorted(chalice_routes() - template_routes())}"
    )


def test_every_spec_operation_has_an_operation_id_and_documented_responses() -> None:
    spec = load_spec()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            assert operation.get("operationId"), f"{method.upper()} {path} has no operationId"
            assert operation.get("responses"), f"{method.upper()} {path} documents no responses"
            secured = operation.get("security", spec.get("security"))
            if secured:
                assert "401" in operation["responses"], f"{method.upper()} {path} is secured but documents no 401"
                assert "403" in operation["responses"], f"{method.upper()} {path} is secured but documents no 403"


def test_only_the_health_checks_are_open() -> None:
    """Health is open (ARCHITECTURE.md 6); everything else needs a bearer token."""
    spec = load_spec()
    assert spec["security"] == [{"bearerAuth": []}]
    open_routes = {
        (path, method)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and operation.get("security") == []
    }
    assert open_routes == {("/healthz", "get"), ("/health", "get")}

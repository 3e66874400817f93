"""Karma's HTTP API (routes only) and its DynamoDB stream handler `on_event`."""

from __future__ import annotations

from typing import Any

from chalice import Response

from bhiv.chalice_app import RequestLocalChalice
from bhiv.httpapi import ALL_CONTENT_TYPES, api_view, header, json_response, query_params, raw_body
from bhiv.karma import runtime
from bhiv.validation import parse_json_body

app = RequestLocalChalice(app_name="bhiv-karma")
view = api_view(app, runtime.logger)
MAX_BODY_BYTES = 16 * 1024


@app.route("/health", methods=["GET"])
@view
def health() -> Response:
    status, body = runtime.service().health()
    return json_response(status, body)


@app.route("/api/v1/karma/{user_id}", methods=["GET"])
@view
def karma(user_id: str) -> Response:
    runtime.auth().authenticate(header(app, "authorization"), "karma:read")
    return json_response(200, runtime.service().karma(user_id))


@app.route("/api/v1/karma/{user_id}/history", methods=["GET"])
@view
def history(user_id: str) -> Response:
    runtime.auth().authenticate(header(app, "authorization"), "karma:read")
    return json_response(200, runtime.service().history(user_id, query_params(app)))


@app.route("/api/v1/q-table", methods=["GET"])
@view
def q_table() -> Response:
    runtime.auth().authenticate(header(app, "authorization"), "karma:read")
    return json_response(200, runtime.service().q_table())


@app.route("/v1/stats/system", methods=["GET"])
@view
def system_stats() -> Response:
    runtime.auth().authenticate(header(app, "authorization"), "karma:read")
    return json_response(200, runtime.service().system_stats())


@app.route("/v1/event", methods=["POST"], content_types=ALL_CONTENT_TYPES)
@view
def direct_event() -> Response:
    principal = runtime.auth().authenticate(header(app, "authorization"), "karma:write")
    runtime.auth().throttle(principal, "karma:write")
    body = parse_json_body(raw_body(app), MAX_BODY_BYTES)
    return json_response(202, runtime.service().record_direct_event(body))


def on_event(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """DynamoDB stream handler (events table → karma); wired in template.yaml."""
    return runtime.handle_stream(event, context)

"""Karma's HTTP API (routes only) and its DynamoDB stream handler `on_event`."""

from __future__ import annotations

from typing import Any

from chalice import Response

from bhiv.chalice_app import RequestLocalChalice
from bhiv.chalice_compat import use_error_envelope
from bhiv.httpapi import ALL_CONTENT_TYPES, api_view, header, json_response, query_params, raw_body
from bhiv.karma import runtime
from bhiv.local.attach import attach_from_env
from bhiv.validation import parse_json_body

attach_from_env()  # `chalice local` (see .chalice/config.json); a no-op in Lambda and in `bhiv up`
app = RequestLocalChalice(app_name="bhiv-karma")
use_error_envelope(app)
view = api_view(app, runtime.logger)
MAX_BODY_BYTES = 16 * 1024


@app.route("/health", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def health() -> Response:
    status, body = runtime.service().health()
    return json_response(status, body)


@app.route("/api/v1/karma/{user_id}", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def karma(user_id: str) -> Response:
    runtime.auth().authenticate(header(app, "authorization"), "karma:read")
    return json_response(200, runtime.service().karma(user_id))


@app.route("/api/v1/karma/{user_id}/history", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def history(user_id: str) -> Response:
    runtime.auth().authenticate(header(app, "authorization"), "karma:read")
    return json_response(200, runtime.service().history(user_id, query_params(app)))


@app.route("/api/v1/q-table", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def q_table() -> Response:
    runtime.auth().authenticate(header(app, "authorization"), "karma:read")
    return json_response(200, runtime.service().q_table())


@app.route("/v1/stats/system", methods=["GET"], content_types=ALL_CONTENT_TYPES)
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
    return json_response(200, runtime.service().record_direct_event(body))  # the original senders require 200


def on_event(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """DynamoDB stream handler (events table → karma); wired in template.yaml."""
    return runtime.handle_stream(event, context)

"""The Bucket's HTTP API: routes only; the work happens in bhiv.bucket.service."""

from __future__ import annotations

from typing import Any

from chalice import Response

from bhiv.bucket import runtime
from bhiv.bucket.domain import MAX_BATCH_BYTES
from bhiv.bucket.service import MAX_SINGLE_BODY_BYTES
from bhiv.chalice_app import RequestLocalChalice
from bhiv.chalice_compat import use_error_envelope
from bhiv.httpapi import ALL_CONTENT_TYPES, api_view, header, json_response, query_params, raw_body
from bhiv.local.attach import attach_from_env
from bhiv.validation import parse_json_body

attach_from_env()  # `chalice local` (see .chalice/config.json); a no-op in Lambda and in `bhiv up`
app = RequestLocalChalice(app_name="bhiv-bucket")
use_error_envelope(app)
view = api_view(app, runtime.logger)


@app.route("/health", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def health() -> Response:
    status, body = runtime.service().health()
    return json_response(status, body)


@app.route("/core/write-event", methods=["POST"], content_types=ALL_CONTENT_TYPES)
@view
def write_event() -> Response:
    principal = runtime.service().authenticate(header(app, "authorization"), "events:write")
    runtime.service().throttle(principal)
    body = parse_json_body(raw_body(app), MAX_SINGLE_BODY_BYTES)
    status, result = runtime.service().write_event(principal, body)
    return json_response(status, result)


@app.route("/core/write-events", methods=["POST"], content_types=ALL_CONTENT_TYPES)
@view
def write_events() -> Response:
    principal = runtime.service().authenticate(header(app, "authorization"), "events:write")
    runtime.service().throttle(principal)
    body = parse_json_body(raw_body(app), MAX_BATCH_BYTES)
    runtime.service().throttle_batch_rest(principal, body)
    status, result = runtime.service().write_events(principal, body)
    return json_response(status, result)


@app.route("/core/events", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def list_events() -> Response:
    runtime.service().authenticate(header(app, "authorization"), "events:read")
    return json_response(200, runtime.service().list_events(query_params(app)))


@app.route("/core/events/{event_id}", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def get_event(event_id: str) -> Response:
    runtime.service().authenticate(header(app, "authorization"), "events:read")
    return json_response(200, runtime.service().get_event(event_id))


@app.route("/core/stats", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def stats() -> Response:
    runtime.service().authenticate(header(app, "authorization"), "events:read")
    return json_response(200, runtime.service().stats())


@app.route("/core/read-context", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def read_context() -> Response:
    principal = runtime.service().authenticate(header(app, "authorization"), "events:read")
    return json_response(200, runtime.service().read_context(principal, query_params(app)))


def on_stats_stream(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """DynamoDB stream handler (events table → aggregates); wired in template.yaml."""
    return runtime.handle_stats_stream(event, context)

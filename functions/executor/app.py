"""The Workflow Executor's HTTP API (routes only) and its scheduled outbox redriver."""

from __future__ import annotations

from typing import Any

from chalice import Response

from bhiv.chalice_app import RequestLocalChalice
from bhiv.chalice_compat import use_error_envelope
from bhiv.executor import runtime
from bhiv.httpapi import ALL_CONTENT_TYPES, api_view, header, json_response, raw_body
from bhiv.local.attach import attach_from_env
from bhiv.validation import parse_json_body

attach_from_env()  # `chalice local` (see .chalice/config.json); a no-op in Lambda and in `bhiv up`
app = RequestLocalChalice(app_name="bhiv-executor")
use_error_envelope(app)
view = api_view(app, runtime.logger)
MAX_BODY_BYTES = 64 * 1024


@app.route("/healthz", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def healthz() -> Response:
    status, body = runtime.service().health()
    return json_response(status, body)


@app.route("/health", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def health() -> Response:
    status, body = runtime.service().health()
    return json_response(status, body)


@app.route("/api/workflow/execute", methods=["POST"], content_types=ALL_CONTENT_TYPES)
@view
def execute() -> Response:
    principal = runtime.auth().authenticate(header(app, "authorization"), "workflows:execute")
    runtime.auth().throttle(principal, "workflows:execute")
    body = parse_json_body(raw_body(app), MAX_BODY_BYTES)
    status, result, headers = runtime.service().execute(principal.requester_id, body)
    return json_response(status, result, headers)


@app.route("/api/workflow/executions/{trace_id}", methods=["GET"], content_types=ALL_CONTENT_TYPES)
@view
def execution(trace_id: str) -> Response:
    principal = runtime.auth().authenticate(header(app, "authorization"), "workflows:execute")
    return json_response(200, runtime.service().execution(principal.requester_id, trace_id))


def redrive_outbox(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled (template.yaml): deliver events that wait in the outbox."""
    return runtime.handle_redrive(event, context)
